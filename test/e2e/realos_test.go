package e2e

import (
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/retry"
	"sigs.k8s.io/controller-runtime/pkg/client"

	bootv1 "github.com/ggnet/ggnet/api/v1alpha1"
	"github.com/ggnet/ggnet/internal/lab"
)

// The real OS (hack/osdisk.sh): a Debian kernel whose initramfs logs in to
// the target from the iBFT iPXE left, mounts the disk's filesystem, counts
// the boot in a file, ticks ten times (each a write and a sync) and powers
// off. Both firmware paths boot it: SeaBIOS with the NIC's iPXE ROM, and
// OVMF whose own PXE client fetches the agent's snponly.efi over TFTP.

var firmwares = []lab.Firmware{lab.FirmwareBIOS, lab.FirmwareUEFI}

// What the VMs print on the way, in order: iPXE starts (from the NIC's ROM,
// or loaded by OVMF over TFTP), runs the session's script, and the OS
// counts its boot.
const (
	ipxeStarted = "iPXE initialising devices"
	scriptRuns  = "GGnet: booting"
	osStarted   = "GGNET-OS-START"
)

// macMu guards nextMAC for osMachine, which runs in two goroutines at once.
var macMu sync.Mutex

// osMachine makes a Machine for the real OS with the firmware setting fw.
func osMachine(fw bootv1.Firmware, wb bootv1.WritebackPolicy) *bootv1.Machine {
	GinkgoHelper()
	macMu.Lock()
	nextMAC++
	n := nextMAC
	macMu.Unlock()
	name := fmt.Sprintf("os-%d", n)
	m := &bootv1.Machine{ObjectMeta: metav1.ObjectMeta{Namespace: lab.Namespace, Name: name}, Spec: bootv1.MachineSpec{
		MAC: fmt.Sprintf("52:54:00:67:68:%02x", n), Hostname: name, Firmware: fw,
		IPv4:     &bootv1.IPv4Reservation{Address: fmt.Sprintf("10.99.0.%d", 100+n), PrefixLength: 24},
		ImageRef: &bootv1.LocalObjectReference{Name: "os"}, BootPolicy: bootv1.BootPolicyManual, Writeback: wb,
	}}
	Expect(l.Client.Create(ctx, m)).To(Succeed())
	return m
}

// osSession makes a session of the real OS for m and waits until it is Ready.
func osSession(m *bootv1.Machine, name string) *bootv1.BootSession {
	GinkgoHelper()
	s := &bootv1.BootSession{ObjectMeta: metav1.ObjectMeta{Namespace: lab.Namespace, Name: name}, Spec: bootv1.BootSessionSpec{
		MachineRef: bootv1.LocalObjectReference{Name: m.Name}, ImageRef: bootv1.LocalObjectReference{Name: "os"}, Writeback: m.Spec.Writeback}}
	Expect(l.Client.Create(ctx, s)).To(Succeed())
	Eventually(phase(s), time.Minute).Should(Equal(bootv1.SessionReady), func() string {
		return fmt.Sprintf("conditions: %+v", s.Status.Conditions)
	})
	rememberCredentials(s)
	return s
}

// osBoot is one boot of the real OS, with when the lab saw each step.
type osBoot struct {
	lab.Boot
	vm                   *lab.VM
	ipxe, script, marker time.Time
}

func (b osBoot) String() string {
	return fmt.Sprintf("%s: power-on to iPXE %s, to script %s, to OS marker %s (count %d)", b.vm.Firmware,
		b.ipxe.Sub(b.vm.Started()).Round(100*time.Millisecond), b.script.Sub(b.vm.Started()).Round(100*time.Millisecond),
		b.Elapsed.Round(100*time.Millisecond), b.Count)
}

// bootOS powers on a VM with firmware fw for m and waits for the OS's
// marker. With wait, it also waits for the OS to finish its ticks and power
// off, and checks it did all its writes.
func bootOS(m *bootv1.Machine, fw lab.Firmware, wait bool) osBoot {
	GinkgoHelper()
	vm, err := l.PowerOnWith(m.Spec.MAC, lab.VMOptions{Firmware: fw})
	Expect(err).NotTo(HaveOccurred())
	b, err := vm.WaitMarker(lab.OSMarker, 4*time.Minute, lab.OSFailMarker)
	Expect(err).NotTo(HaveOccurred(), "%s serial:\n%s", fw, b.Serial)
	ob := osBoot{Boot: b, vm: vm, marker: vm.Started().Add(b.Elapsed)}
	ob.ipxe, _ = vm.SeenAt(ipxeStarted)
	ob.script, _ = vm.SeenAt(scriptRuns)
	Expect(ob.ipxe).NotTo(BeZero(), vm.Serial())
	Expect(ob.script).NotTo(BeZero(), vm.Serial())
	AddReportEntry("real OS "+m.Name, ob.String())
	GinkgoWriter.Println(m.Name, ob)
	if wait {
		finishOS(vm)
	}
	return ob
}

// finishOS waits until the OS printed its last tick and powered off, and
// checks that it did each write.
func finishOS(vm *lab.VM) {
	GinkgoHelper()
	Expect(vm.Wait(2*time.Minute)).To(BeTrue(), "the OS powers off:\n%s", vm.Serial())
	out := vm.Serial()
	Expect(out).To(ContainSubstring(lab.OSDoneMarker), out)
	Expect(out).NotTo(ContainSubstring(lab.OSFailMarker), out)
	want := []int{}
	for i := 1; i <= lab.OSTicksPerBoot; i++ {
		want = append(want, i)
	}
	Expect(lab.OSTicks(out)).To(Equal(want), "every tick, once, in order:\n%s", out)
	expectNoCHAPSecretOnScreen(out, vm.MAC)
}

// checkLogins checks the session's timeline: two iSCSI logins of the
// session's initiator, the firmware's (iPXE's sanboot: after the lab saw the
// script run, before the OS's kernel started) and then the OS's (iscsistart:
// after its kernel started, and stamped at most two seconds after the OS
// counted its boot on the disk, which it does after logging in). Timeline
// times are whole seconds (truncated), and the lab sees a line up to 100 ms
// after it is printed.
func checkLogins(s *bootv1.BootSession, b osBoot) {
	GinkgoHelper()
	Eventually(func() []bootv1.SessionLogin {
		_ = l.Client.Get(ctx, client.ObjectKeyFromObject(s), s)
		return s.Status.Timeline.Logins
	}, 10*time.Second, 200*time.Millisecond).Should(HaveLen(2), "the firmware's login and the OS's")
	fw, osl := s.Status.Timeline.Logins[0], s.Status.Timeline.Logins[1]
	for _, in := range []bootv1.SessionLogin{fw, osl} {
		Expect(in.Initiator).To(Equal(s.Status.InitiatorIQN), "the OS logs in as the initiator of the iBFT")
	}
	kernel, ok := b.vm.SeenAt(osStarted)
	Expect(ok).To(BeTrue())
	second := func(t time.Time) time.Time { return t.Add(-100 * time.Millisecond).Truncate(time.Second) }
	Expect(fw.At.Time).NotTo(BeTemporally("<", second(b.script)), "the firmware logs in after its script ran")
	Expect(fw.At.Time).To(BeTemporally("<", kernel), "the firmware logs in before the OS's kernel runs")
	Expect(osl.At.Time).NotTo(BeTemporally("<", second(kernel)), "the OS logs in once its kernel runs")
	// A bound, not a timing: the watcher samples twice a second (less often
	// only when a sample is slow) and the OS's marker follows its login by
	// about a second. (Before the watcher, the only login stamped was the
	// first, on the next 5 s resync: the HaveLen(2) above fails on that.)
	Expect(osl.At.Time).To(BeTemporally("<=", b.marker.Add(2*time.Second)), "the OS's login is stamped at its time")
	Expect(s.Status.Timeline.ISCSILogin.Time).To(Equal(fw.At.Time), "iscsiLogin is the first login")
	AddReportEntry("logins "+s.Name, fmt.Sprintf("script seen %s, firmware login %s, kernel seen %s, OS login %s, OS marker seen %s",
		b.script.Format("15:04:05.0"), fw.At.Format("15:04:05"), kernel.Format("15:04:05.0"), osl.At.Format("15:04:05"), b.marker.Format("15:04:05.0")))
}

// tftpServed returns how many transfers of file the agent's TFTP counts.
func tftpServed(file string) int {
	GinkgoHelper()
	resp, err := http.Get(lab.MetricsBase + "/metrics")
	Expect(err).NotTo(HaveOccurred())
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	Expect(err).NotTo(HaveOccurred())
	total := 0
	prefix := `ggnet_tftp_transfers_total{file="` + file + `",result="ok"} `
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, prefix); ok {
			n, _ := strconv.ParseFloat(v, 64)
			total += int(n)
		}
	}
	return total
}

// inParallel runs one function per firmware at once (the lab's two cores
// run two TCG VMs) and waits for both.
func inParallel(f func(fw lab.Firmware)) {
	GinkgoHelper()
	var wg sync.WaitGroup
	for _, fw := range firmwares {
		wg.Add(1)
		go func() {
			defer GinkgoRecover()
			defer wg.Done()
			f(fw)
		}()
	}
	wg.Wait()
}

var _ = Describe("Real OS", Ordered, func() {
	It("Discard: the OS counts 1 in each session, the timeline has the firmware's login and the OS's; a UEFI PC whose Machine says BIOS gets the BIOS boot file", func() {
		inParallel(func(fw lab.Firmware) {
			setting := bootv1.FirmwareAuto
			if fw == lab.FirmwareUEFI {
				setting = bootv1.FirmwareBIOS
			}
			m := osMachine(setting, bootv1.WritebackDiscard)
			s := osSession(m, m.Name+"-1")
			if fw == lab.FirmwareUEFI {
				By("a UEFI VM whose Machine says BIOS: its firmware gets undionly.kpxe over TFTP and cannot run it")
				before := tftpServed("undionly.kpxe")
				vm, err := l.PowerOnWith(m.Spec.MAC, lab.VMOptions{Firmware: fw})
				Expect(err).NotTo(HaveOccurred())
				Eventually(func() string { return vm.Serial() }, 2*time.Minute, 200*time.Millisecond).
					Should(ContainSubstring(`failed to load Boot0001 "UEFI PXEv4`), func() string { return vm.Serial() })
				vm.PowerOff()
				out := vm.Serial()
				Expect(out).To(ContainSubstring("NBP filename is undionly.kpxe"))
				Expect(out).NotTo(ContainSubstring(ipxeStarted))
				Expect(tftpServed("undionly.kpxe")).To(BeNumerically(">", before), "the agent's TFTP served it")
				_ = l.Client.Get(ctx, client.ObjectKeyFromObject(s), s)
				Expect(s.Status.Timeline.ScriptServed).To(BeNil(), "no iPXE asked for the script")

				By("the Machine says UEFI: the same VM boots")
				Expect(retry.RetryOnConflict(retry.DefaultRetry, func() error {
					if err := l.Client.Get(ctx, client.ObjectKeyFromObject(m), m); err != nil {
						return err
					}
					m.Spec.Firmware = bootv1.FirmwareUEFI
					return l.Client.Update(ctx, m)
				})).To(Succeed())
			}
			efi := tftpServed(lab.UEFIBootFile)
			b := bootOS(m, fw, true)
			Expect(b.Count).To(Equal(1))
			if fw == lab.FirmwareUEFI {
				Expect(b.Serial).To(ContainSubstring("NBP filename is " + lab.UEFIBootFile))
				Expect(tftpServed(lab.UEFIBootFile)).To(BeNumerically(">", efi), "OVMF fetched iPXE from the agent's TFTP")
			}
			checkLogins(s, b)
			n, err := lab.ReadOSCounter(s.Status.OverlayPath)
			Expect(err).NotTo(HaveOccurred())
			Expect(n).To(Equal(1), "the counter on the session's overlay")
			n, err = lab.ReadOSTicks(s.Status.OverlayPath)
			Expect(err).NotTo(HaveOccurred())
			Expect(n).To(Equal(lab.OSTicksPerBoot), "the ticks on the session's overlay")
			stop(s)

			s2 := osSession(m, m.Name+"-2")
			Expect(bootOS(m, fw, true).Count).To(Equal(1), "nothing of the first session reached the image")
			stop(s2)
		})
	})

	It("Persist: the OS counts 1, then 2 in the next session; the agent restarted while the OS runs", func() {
		inParallel(func(fw lab.Firmware) {
			m := osMachine(bootv1.FirmwareAuto, bootv1.WritebackPersist)
			s := osSession(m, m.Name+"-1")
			Expect(bootOS(m, fw, true).Count).To(Equal(1))
			disk := s.Status.OverlayPath
			stop(s)
			n, err := lab.ReadOSCounter(disk)
			Expect(err).NotTo(HaveOccurred())
			Expect(n).To(Equal(1), "the counter on the machine's persistent disk %s", disk)

			s2 := osSession(m, m.Name+"-2")
			Expect(bootOS(m, fw, true).Count).To(Equal(2))
			stop(s2)
			n, err = lab.ReadOSCounter(disk)
			Expect(err).NotTo(HaveOccurred())
			Expect(n).To(Equal(2))
			n, err = lab.ReadOSTicks(disk)
			Expect(err).NotTo(HaveOccurred())
			Expect(n).To(Equal(2*lab.OSTicksPerBoot), "both boots' ticks on the persistent disk")
		})
	})

	It("the agent killed and started again while the OS runs (UEFI): the OS keeps writing to the end", func() {
		m := osMachine(bootv1.FirmwareAuto, bootv1.WritebackDiscard)
		s := osSession(m, m.Name+"-1")
		b := bootOS(m, lab.FirmwareUEFI, false)
		l.Kill("bootagent")
		killed := time.Now()
		Expect(l.StartAgent()).To(Succeed())
		restarted := time.Now()
		finishOS(b.vm)
		done, _ := b.vm.SeenAt(lab.OSDoneMarker)
		Expect(done).To(BeTemporally(">", restarted), "the OS still ran when the agent was back")
		AddReportEntry("agent restart under the OS", fmt.Sprintf("agent down %s; OS marker to done %s",
			restarted.Sub(killed).Round(100*time.Millisecond), done.Sub(b.marker).Round(100*time.Millisecond)))
		stop(s)
	})

	It("a wrong CHAP secret (UEFI): the firmware's login fails and the session says so", func() {
		m := osMachine(bootv1.FirmwareAuto, bootv1.WritebackDiscard)
		s := osSession(m, m.Name+"-1")
		var sec corev1.Secret
		Expect(l.Client.Get(ctx, client.ObjectKey{Namespace: lab.Namespace, Name: s.Status.CHAPSecretRef.Name}, &sec)).To(Succeed())
		setTargetPassword(s.Status.Target.IQN, string(sec.Data["username"]), "NotTheSecret1234")
		vm, err := l.PowerOnWith(m.Spec.MAC, lab.VMOptions{Firmware: lab.FirmwareUEFI})
		Expect(err).NotTo(HaveOccurred())
		defer vm.PowerOff()
		Eventually(func() string {
			_ = l.Client.Get(ctx, client.ObjectKeyFromObject(s), s)
			if c := meta.FindStatusCondition(s.Status.Conditions, bootv1.BootFailedCondition); c != nil && c.Status == metav1.ConditionTrue {
				return c.Message
			}
			return ""
		}, 3*time.Minute, time.Second).Should(ContainSubstring("could not boot from the iSCSI target"), func() string { return vm.Serial() })
		Expect(vm.Serial()).NotTo(ContainSubstring(lab.OSMarker))
		Expect(s.Status.Timeline.Logins).To(BeEmpty())
		expectNoCHAPSecretOnScreen(vm.Serial(), m.Name)
		stop(s)
	})

	It("mutual CHAP (BIOS): the OS verifies the target; another target secret after the firmware's login fails the OS's login", func() {
		m := osMachine(bootv1.FirmwareAuto, bootv1.WritebackDiscard)
		s := osSession(m, m.Name+"-1")
		sec := sessionSecret(s)
		targetUser := string(sec.Data[bootv1.SecretKeyTargetUsername])
		Expect(targetUser).NotTo(BeEmpty(), "the session has mutual CHAP")
		logins := func() []bootv1.SessionLogin {
			_ = l.Client.Get(ctx, client.ObjectKeyFromObject(s), s)
			return s.Status.Timeline.Logins
		}
		vm, err := l.PowerOnWith(m.Spec.MAC, lab.VMOptions{Firmware: lab.FirmwareBIOS})
		Expect(err).NotTo(HaveOccurred())
		defer vm.PowerOff()

		By("the firmware logs in with the target's right secret (iPXE checks it too)")
		Eventually(logins, 3*time.Minute, 200*time.Millisecond).ShouldNot(BeEmpty(), func() string { return vm.Serial() })
		Expect(s.Status.Timeline.Logins).To(HaveLen(1), "only the firmware's login so far")

		By("the target's outgoing account gets another secret while iPXE loads the OS's kernel")
		setTargetOutgoingPassword(s.Status.Target.IQN, targetUser, "NotTheTarget5678")
		changed := time.Now()
		// The change must land before the OS could log in: its kernel has not
		// started, and the timeline still has only the firmware's login.
		// Otherwise the spec proves nothing, and says so.
		_, kernelRan := vm.SeenAt(osStarted)
		Expect(kernelRan).To(BeFalse(), "too late: the OS's kernel ran before the target's secret was changed; nothing is proven:\n%s", vm.Serial())
		Expect(logins()).To(HaveLen(1), "too late: a second login before the target's secret was changed")

		By("the OS asks the target to prove itself, and refuses it")
		b, err := vm.WaitMarker(lab.OSMarker, 3*time.Minute, lab.OSFailMarker)
		Expect(err).To(HaveOccurred(), "the OS booted although the target could not prove itself: it does not verify the target (mutual CHAP)\n%s", b.Serial)
		Expect(vm.Wait(time.Minute)).To(BeTrue(), "the OS powers off after its failure")
		out := vm.Serial()
		Expect(out).To(ContainSubstring(lab.OSFailMarker+"iscsistart -b"), "the OS's login failed:\n%s", out)
		// open-iscsi's words for a target whose CHAP response is wrong: the
		// initiator itself refused the target (not the target the initiator).
		Expect(out).To(ContainSubstring("received incorrect CHAP response from target"), "the OS refused the target's proof:\n%s", out)
		Expect(out).NotTo(ContainSubstring(lab.OSMarker), out)
		kernel, ok := vm.SeenAt(osStarted)
		Expect(ok).To(BeTrue(), "the OS's kernel ran:\n%s", out)
		Expect(kernel).To(BeTemporally(">", changed), "the OS started after the change")
		Expect(logins()).To(HaveLen(1), "no login of the OS on the timeline")
		expectNoCHAPSecretOnScreen(out, m.Name)
		Expect(strings.Contains(out, "NotTheTarget5678")).To(BeFalse(), "the wrong target secret is on the console")
		AddReportEntry("mutual CHAP "+m.Name, fmt.Sprintf("firmware login %s, target secret changed %s, kernel seen %s",
			s.Status.Timeline.Logins[0].At.Format("15:04:05"), changed.Format("15:04:05.0"), kernel.Format("15:04:05.0")))
		stop(s)
	})
})

// setTargetPassword gives user another CHAP secret on the target iqn than
// the one in the machine's script (as after a botched rotation by hand).
func setTargetPassword(iqn, user, password string) { rebindAccount(iqn, user, password) }

// setTargetOutgoingPassword gives the target's own (outgoing, mutual CHAP)
// account user another secret on the target iqn than the one the machine's
// script gave the initiator to check the target with.
func setTargetOutgoingPassword(iqn, user, password string) {
	rebindAccount(iqn, user, password, "--outgoing")
}

// rebindAccount makes tgtd's account user again with password and binds it
// to the target iqn (with bindFlags, e.g. --outgoing), at a moment when no
// reconcile of the storage agent's sessions overlaps it. The agent
// reconciles the session at each status write (its own login write among
// them): one that ran while the account was deleted would see it missing and
// make it again with the session's secret, undoing the change or making a
// tgtadm of it fail. The change is made again until no reconcile began or
// ended while it was made.
func rebindAccount(iqn, user, password string, bindFlags ...string) {
	GinkgoHelper()
	storage := l.StorageNodes()[0].MetricsBase
	// The workers first, then the count: controller-runtime counts a
	// reconcile before it releases its worker, so one that ends between the
	// two reads shows in the count.
	reconciles := func(g Gomega) (total, active float64) {
		sel := `controller="storage-sessions"`
		active = metricAt(g, storage, "controller_runtime_active_workers", sel)
		return metricAt(g, storage, "controller_runtime_reconcile_total", sel), active
	}
	Eventually(func(g Gomega) {
		before, active := reconciles(g)
		g.Expect(active).To(BeZero(), "the storage agent is reconciling a session")
		g.Expect(before).NotTo(BeZero(), "the storage agent's reconciles are counted")
		tgtadm := func(args ...string) {
			out, err := exec.Command("tgtadm", append([]string{"-C", strconv.Itoa(l.TGTPort()), "--lld", "iscsi"}, args...)...).CombinedOutput()
			g.Expect(err).NotTo(HaveOccurred(), string(out))
		}
		tid := targetTID(iqn)
		g.Expect(tid).NotTo(BeEmpty())
		tgtadm("--mode", "account", "--op", "delete", "--user", user)
		tgtadm("--mode", "account", "--op", "new", "--user", user, "--password", password)
		tgtadm(append([]string{"--mode", "account", "--op", "bind", "--tid", tid, "--user", user}, bindFlags...)...)
		after, active := reconciles(g)
		g.Expect(active).To(BeZero(), "a reconcile of the storage agent overlapped the change")
		g.Expect(after).To(Equal(before), "a reconcile of the storage agent overlapped the change")
	}, 30*time.Second, 50*time.Millisecond).Should(Succeed())
}
