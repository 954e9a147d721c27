package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	bootv1 "github.com/ggnet/ggnet/api/v1alpha1"
	"github.com/ggnet/ggnet/bootagent/target"
)

var _ = Describe("Storage faults", func() {
	// The demo disk halts after its one write, so its iPXE does no more
	// I/O and never logs in again by itself: after tgtd is back, the same
	// session boots the VM once more and the disk's boot counter shows the
	// first boot's write survived the outage.
	It("tgtd killed and kept down 10 s while a VM runs: the session never fails, its overlay stays, the target comes back with the VM's writes", func() {
		m := machine(bootv1.BootPolicyManual, bootv1.WritebackDiscard)
		s := session(m, "tgtd-fault", bootv1.WritebackDiscard)
		vm, err := l.PowerOn(m.Spec.MAC)
		Expect(err).NotTo(HaveOccurred())
		b, err := vm.WaitBoot(3 * time.Minute)
		Expect(err).NotTo(HaveOccurred(), b.Serial)
		Expect(b.Count).To(Equal(1))
		Eventually(phase(s), 30*time.Second).Should(Equal(bootv1.SessionActive))
		overlay, iqn := s.Status.OverlayPath, s.Status.Target.IQN
		conns := func() (int, error) {
			c, err := (&target.TGT{ControlPort: l.TGTPort()}).Connections(ctx, iqn)
			return len(c), err
		}
		Expect(conns()).To(Equal(1), "the VM is logged in")

		By("killing tgtd and holding it down for 10 s (the agent's supervisor restarts it within a second; the spec kills each new one)")
		pattern := fmt.Sprintf("tgtd -f -C %d ", l.TGTPort())
		down := time.Now()
		sawUnavailable := false
		for time.Since(down) < 10*time.Second {
			_ = exec.Command("pkill", "-9", "-f", pattern).Run()
			Expect(l.Client.Get(ctx, client.ObjectKeyFromObject(s), s)).To(Succeed())
			Expect(s.Status.Phase).To(Equal(bootv1.SessionActive), "the running session never fails nor stops")
			Expect(s.Finalizers).To(ContainElement(bootv1.StorageFinalizer))
			_, err := os.Stat(overlay)
			Expect(err).NotTo(HaveOccurred(), "the overlay stays under the running PC")
			if c := meta.FindStatusCondition(s.Status.Conditions, bootv1.StorageReadyCondition); c != nil && c.Status == metav1.ConditionFalse {
				Expect(c.Reason).To(Equal(bootv1.TargetUnavailableReason))
				sawUnavailable = true
			}
			time.Sleep(200 * time.Millisecond)
		}
		Expect(sawUnavailable).To(BeTrue(), "StorageReady=False TargetUnavailable while tgtd is down")

		By("letting the supervisor bring tgtd back: the target is rebuilt and StorageReady returns")
		Eventually(func() bool {
			_ = l.Client.Get(ctx, client.ObjectKeyFromObject(s), s)
			return meta.IsStatusConditionTrue(s.Status.Conditions, bootv1.StorageReadyCondition)
		}, 60*time.Second, 500*time.Millisecond).Should(BeTrue())
		Expect(targetIQNs()).To(ContainElement(iqn))
		Expect(s.Status.Phase).To(Equal(bootv1.SessionActive))
		Expect(s.Status.OverlayPath).To(Equal(overlay))
		n, err := conns()
		Expect(err).NotTo(HaveOccurred())
		GinkgoWriter.Printf("connections of the halted VM after the rebuild: %d\n", n)
		vm.PowerOff()

		By("booting the VM again in the same session: the disk has the first boot's write")
		vm, err = l.PowerOn(m.Spec.MAC)
		Expect(err).NotTo(HaveOccurred())
		b, err = vm.WaitBoot(3 * time.Minute)
		Expect(err).NotTo(HaveOccurred(), b.Serial)
		Expect(b.Count).To(Equal(2), "the write made before the outage is on the rebuilt target")
		Eventually(func() (int, error) { return conns() }, 30*time.Second).Should(Equal(1), "the VM's iSCSI connection is back")
		vm.PowerOff()
		stop(s)
	})
})
