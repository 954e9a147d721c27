package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/retry"
	"sigs.k8s.io/controller-runtime/pkg/client"

	bootv1 "github.com/ggnet/ggnet/api/v1alpha1"
	"github.com/ggnet/ggnet/bootagent/target"
	"github.com/ggnet/ggnet/internal/lab"
	"github.com/ggnet/ggnet/internal/testbin"
)

// TestMain runs the suite inside a network namespace of its own (it needs
// root, QEMU and tgtd, like CI has).
func TestMain(m *testing.M) {
	if code, ran := lab.InNetns("ggnet-e2e-"+strconv.Itoa(os.Getpid()), false); ran {
		os.Exit(code)
	}
	os.Exit(m.Run())
}

func TestE2E(t *testing.T) {
	RegisterFailHandler(Fail)
	RunSpecs(t, "End to end: QEMU VMs netboot through GGnet")
}

var (
	l   *lab.Lab
	ctx = context.Background()
)

var _ = BeforeSuite(func() {
	bin := GinkgoT().TempDir()
	for _, pkg := range []string{"./cmd/manager", "./cmd/bootagent"} {
		built := testbin.Build(GinkgoT(), pkg)
		Expect(os.Rename(built, filepath.Join(bin, filepath.Base(pkg)))).To(Succeed())
	}
	var err error
	l, err = lab.Start(ctx, GinkgoT(), bin)
	Expect(err).NotTo(HaveOccurred())
})

var nextMAC = 0x10

// machine makes a Machine with a MAC and address of its own.
func machine(policy bootv1.BootPolicy, wb bootv1.WritebackPolicy) *bootv1.Machine {
	nextMAC++
	m, err := l.Machine(ctx, fmt.Sprintf("seat-%d", nextMAC), fmt.Sprintf("52:54:00:67:68:%02x", nextMAC),
		fmt.Sprintf("10.99.0.%d", 100+nextMAC), policy, wb)
	Expect(err).NotTo(HaveOccurred())
	return m
}

func session(m *bootv1.Machine, name string, wb bootv1.WritebackPolicy) *bootv1.BootSession {
	s := &bootv1.BootSession{ObjectMeta: metav1.ObjectMeta{Namespace: lab.Namespace, Name: name}, Spec: bootv1.BootSessionSpec{
		MachineRef: bootv1.LocalObjectReference{Name: m.Name}, ImageRef: bootv1.LocalObjectReference{Name: "demo"}, Writeback: wb}}
	Expect(l.Client.Create(ctx, s)).To(Succeed())
	Eventually(phase(s), time.Minute).Should(Equal(bootv1.SessionReady), func() string {
		return fmt.Sprintf("conditions: %+v", s.Status.Conditions)
	})
	rememberCredentials(s)
	return s
}

func phase(s *bootv1.BootSession) func() bootv1.BootSessionPhase {
	return func() bootv1.BootSessionPhase {
		_ = l.Client.Get(ctx, client.ObjectKeyFromObject(s), s)
		return s.Status.Phase
	}
}

// boot powers the machine on, waits for the disk's marker and powers off.
func boot(m *bootv1.Machine) lab.Boot {
	GinkgoHelper()
	vm, err := l.PowerOn(m.Spec.MAC)
	Expect(err).NotTo(HaveOccurred())
	defer vm.PowerOff()
	b, err := vm.WaitBoot(3 * time.Minute)
	Expect(err).NotTo(HaveOccurred(), "serial:\n%s", b.Serial)
	AddReportEntry("boot "+m.Name, fmt.Sprintf("power-on to marker %s, count %d", b.Elapsed.Round(100*time.Millisecond), b.Count))
	GinkgoWriter.Printf("%s booted in %s (count %d)\n", m.Name, b.Elapsed.Round(100*time.Millisecond), b.Count)
	return b
}

func stop(s *bootv1.BootSession) {
	GinkgoHelper()
	Expect(retry.RetryOnConflict(retry.DefaultRetry, func() error {
		if err := l.Client.Get(ctx, client.ObjectKeyFromObject(s), s); err != nil {
			return err
		}
		s.Spec.Stopped = true
		return l.Client.Update(ctx, s)
	})).To(Succeed())
	Eventually(phase(s), time.Minute).Should(Equal(bootv1.SessionStopped))
}

// targetTID returns the tgtd target id of iqn ("" when there is none): a
// rebuilt target gets a new one.
func targetTID(iqn string) string {
	GinkgoHelper()
	out, err := exec.Command("tgtadm", "-C", strconv.Itoa(l.TGTPort()), "--lld", "iscsi", "--mode", "target", "--op", "show").CombinedOutput()
	Expect(err).NotTo(HaveOccurred(), string(out))
	for _, line := range strings.Split(string(out), "\n") {
		if num, name, ok := strings.Cut(strings.TrimPrefix(line, "Target "), ": "); ok && name == iqn {
			return num
		}
	}
	return ""
}

// fileID is the device and inode of path: the same file, not one made anew.
func fileID(path string) string {
	GinkgoHelper()
	var st syscall.Stat_t
	Expect(syscall.Stat(path, &st)).To(Succeed())
	return fmt.Sprintf("%d:%d", st.Dev, st.Ino)
}

func targetIQNs() []string {
	list, err := (&target.TGT{ControlPort: l.TGTPort()}).List(ctx, "iqn.")
	Expect(err).NotTo(HaveOccurred())
	var out []string
	for _, t := range list {
		out = append(out, t.IQN)
	}
	return out
}

var _ = Describe("Netboot", Ordered, func() {
	It("boots a VM from its session's iSCSI overlay, and stopping cleans up", func() {
		m := machine(bootv1.BootPolicyManual, bootv1.WritebackDiscard)
		s := session(m, "first", bootv1.WritebackDiscard)
		b := boot(m)
		Expect(b.Count).To(Equal(1))
		Eventually(phase(s), 30*time.Second).Should(Equal(bootv1.SessionActive), "the iSCSI login is recorded")
		Expect(s.Status.Timeline.DHCP).NotTo(BeNil())
		Expect(s.Status.Timeline.ScriptServed).NotTo(BeNil())
		Expect(s.Status.Timeline.ISCSILogin).NotTo(BeNil())

		overlay, iqn := s.Status.OverlayPath, s.Status.Target.IQN
		Expect(targetIQNs()).To(ContainElement(iqn))
		stop(s)
		Expect(targetIQNs()).NotTo(ContainElement(iqn))
		_, err := os.Stat(overlay)
		Expect(os.IsNotExist(err)).To(BeTrue(), "the Discard overlay is gone")
		Eventually(func() string {
			_ = l.Client.Get(ctx, client.ObjectKeyFromObject(m), m)
			return m.Status.ActiveSession
		}, 30*time.Second).Should(BeEmpty())
	})

	It("Discard: nothing reaches the image; Persist: the next session continues", func() {
		d := machine(bootv1.BootPolicyManual, bootv1.WritebackDiscard)
		for _, name := range []string{"discard-1", "discard-2"} {
			s := session(d, name, bootv1.WritebackDiscard)
			Expect(boot(d).Count).To(Equal(1), name)
			stop(s)
		}
		p := machine(bootv1.BootPolicyManual, bootv1.WritebackPersist)
		for i, name := range []string{"persist-1", "persist-2"} {
			s := session(p, name, bootv1.WritebackPersist)
			Expect(boot(p).Count).To(Equal(i+1), name)
			stop(s)
		}
	})

	It("AutoSession: a machine with a default image and no session boots at power-on", func() {
		m := machine(bootv1.BootPolicyAutoSession, bootv1.WritebackDiscard)
		Expect(boot(m).Count).To(Equal(1))
		var list bootv1.BootSessionList
		Expect(l.Client.List(ctx, &list, client.InNamespace(lab.Namespace), client.MatchingFields{"spec.machineRef.name": m.Name})).To(Succeed())
		Expect(list.Items).To(HaveLen(1))
		Expect(list.Items[0].Labels).To(HaveKeyWithValue(bootv1.AutoSessionLabel, "true"))
		stop(&list.Items[0])
		// The next boot's session is prepared at once (overlay and target
		// Ready before the PC powers on again), and the Machine's deletion
		// takes it, never booted, away with it.
		Eventually(func() []string {
			var l2 bootv1.BootSessionList
			_ = l.Client.List(ctx, &l2, client.InNamespace(lab.Namespace), client.MatchingFields{"spec.machineRef.name": m.Name})
			var ready []string
			for _, s := range l2.Items {
				if s.Name != list.Items[0].Name && s.Status.Phase == bootv1.SessionReady {
					ready = append(ready, s.Name)
				}
			}
			return ready
		}, time.Minute, 200*time.Millisecond).Should(HaveLen(1))
		Expect(l.Client.Delete(ctx, m)).To(Succeed())
		Eventually(func() bool {
			return apierrors.IsNotFound(l.Client.Get(ctx, client.ObjectKeyFromObject(m), &bootv1.Machine{}))
		}, time.Minute, 200*time.Millisecond).Should(BeTrue())
	})

	It("a wrong CHAP secret makes the boot fail and the session says so", func() {
		m := machine(bootv1.BootPolicyManual, bootv1.WritebackDiscard)
		s := session(m, "wrong-chap", bootv1.WritebackDiscard)
		// The target gets another secret than the one in the machine's script
		// (as after a botched rotation by hand).
		var sec corev1.Secret
		Expect(l.Client.Get(ctx, client.ObjectKey{Namespace: lab.Namespace, Name: s.Status.CHAPSecretRef.Name}, &sec)).To(Succeed())
		setTargetPassword(s.Status.Target.IQN, string(sec.Data["username"]), "NotTheSecret1234")

		vm, err := l.PowerOn(m.Spec.MAC)
		Expect(err).NotTo(HaveOccurred())
		defer vm.PowerOff()
		Eventually(func() string {
			_ = l.Client.Get(ctx, client.ObjectKeyFromObject(s), s)
			if c := meta.FindStatusCondition(s.Status.Conditions, bootv1.BootFailedCondition); c != nil && c.Status == metav1.ConditionTrue {
				return c.Message
			}
			return ""
		}, 3*time.Minute, time.Second).Should(ContainSubstring("could not boot from the iSCSI target"), func() string { return vm.Serial() })
		Expect(vm.Serial()).NotTo(ContainSubstring(lab.Marker))
		stop(s)
	})

	It("the agent, init of a PID namespace of its own, killed while a VM runs (a container restart): every process of the namespace dies, tgtd apart keeps the target, the VM never stops ticking", func() {
		m := machine(bootv1.BootPolicyManual, bootv1.WritebackDiscard)
		s := session(m, "restart", bootv1.WritebackDiscard)
		vm, err := l.PowerOn(m.Spec.MAC)
		Expect(err).NotTo(HaveOccurred())
		defer vm.PowerOff()
		b, err := vm.WaitBoot(3 * time.Minute)
		Expect(err).NotTo(HaveOccurred(), b.Serial)
		Eventually(phase(s), 30*time.Second).Should(Equal(bootv1.SessionActive))
		_, err = vm.WaitTick(3, time.Minute)
		Expect(err).NotTo(HaveOccurred(), vm.Serial())
		iqn, overlay := s.Status.Target.IQN, s.Status.OverlayPath
		conns := func() int {
			c, err := (&target.TGT{ControlPort: l.TGTPort()}).Connections(ctx, iqn)
			Expect(err).NotTo(HaveOccurred())
			return len(c)
		}
		Expect(conns()).To(Equal(1), "the VM is logged in")
		tid := targetTID(iqn)
		inode := fileID(overlay)
		ns, initPID, err := l.AgentPIDNamespace()
		Expect(err).NotTo(HaveOccurred())
		hostNS, err := os.Readlink("/proc/self/ns/pid")
		Expect(err).NotTo(HaveOccurred())
		Expect(ns).NotTo(Equal(hostNS), "the agent runs in a PID namespace of its own")

		By("killing the namespace's init with SIGKILL")
		killed := time.Now()
		l.Kill("bootagent")
		Expect(lab.PIDsInNamespace(ns)).To(BeEmpty(), "every process of the agent's PID namespace (init %d) died", initPID)
		atKill := vm.LastTick()
		_, err = vm.WaitTick(atKill+4, time.Minute)
		Expect(err).NotTo(HaveOccurred(), "the VM ticks on while no agent runs")
		Expect(conns()).To(Equal(1))

		By("starting the agent again: it re-attaches to the same target")
		Expect(l.StartAgent()).To(Succeed())
		restarted := time.Now()
		Consistently(func(g Gomega) {
			g.Expect(conns()).To(Equal(1), "the VM keeps its iSCSI session")
			g.Expect(l.Client.Get(ctx, client.ObjectKeyFromObject(s), s)).To(Succeed())
			g.Expect(s.Status.Phase).To(Equal(bootv1.SessionActive))
		}, 8*time.Second, time.Second).Should(Succeed())
		_, err = vm.WaitTick(vm.LastTick()+3, time.Minute)
		Expect(err).NotTo(HaveOccurred())
		Expect(targetTID(iqn)).To(Equal(tid), "the same target: not rebuilt")
		Expect(fileID(overlay)).To(Equal(inode), "the same overlay file")
		Expect(s.Status.OverlayPath).To(Equal(overlay))
		Expect(vm.TickProblems()).To(BeEmpty(), vm.Serial())
		Expect(vm.Serial()).NotTo(ContainSubstring(lab.RetryMarker), "no disk call of the VM failed")
		gap := vm.MaxTickGap(killed, restarted)
		Expect(gap).To(BeNumerically("<", 5*time.Second), "the ticks never paused")
		AddReportEntry("agent restart", fmt.Sprintf("agent down %s, longest pause of the VM's ticks %s",
			restarted.Sub(killed).Round(100*time.Millisecond), gap.Round(100*time.Millisecond)))
		vm.PowerOff()

		stop(s)
		s2 := session(m, "after-restart", bootv1.WritebackDiscard)
		Expect(boot(m).Count).To(Equal(1))
		stop(s2)
	})

	It("the old design, for contrast: tgtd started by the agent inside its PID namespace dies with it and the VM loses its disk", func() {
		By("running tgtd from the agent (--start-tgtd) instead of apart")
		l.Kill("bootagent")
		l.Kill("tgtd")
		var s *bootv1.BootSession
		DeferCleanup(func() {
			// The lab as it was: tgtd apart, the agent without it; then the
			// session is stopped.
			l.Kill("bootagent")
			Expect(l.StartTGTD()).To(Succeed())
			Expect(l.StartAgent()).To(Succeed())
			if s != nil {
				stop(s)
			}
		})
		Expect(l.StartAgentWithTGTD()).To(Succeed())
		m := machine(bootv1.BootPolicyManual, bootv1.WritebackDiscard)
		s = session(m, "old-design", bootv1.WritebackDiscard)
		vm, err := l.PowerOn(m.Spec.MAC)
		Expect(err).NotTo(HaveOccurred())
		defer vm.PowerOff()
		b, err := vm.WaitBoot(3 * time.Minute)
		Expect(err).NotTo(HaveOccurred(), b.Serial)
		_, err = vm.WaitTick(2, time.Minute)
		Expect(err).NotTo(HaveOccurred(), vm.Serial())

		l.Kill("bootagent")
		killed := vm.LastTick()
		Consistently(vm.LastTick, 10*time.Second, time.Second).Should(BeNumerically("<=", killed+1), "the VM's disk went with the agent's container")
		Expect((&target.TGT{ControlPort: l.TGTPort()}).Ping(ctx)).NotTo(Succeed(), "no tgtd runs")
		vm.PowerOff()
	})
})
