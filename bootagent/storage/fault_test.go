package storage

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	bootv1 "github.com/ggnet/ggnet/api/v1alpha1"
)

// iscsiRead reads n bytes at off of a LUN through iSCSI with qemu-io
// (Debian's qemu-block-extra has its iscsi driver). The CHAP secret is read
// from a file through a secret object: no command line carries it. qemu does
// not do mutual CHAP; the target accepts one-way CHAP too.
func iscsiRead(l login, off, n int) (string, error) {
	pw := filepath.Join(GinkgoT().TempDir(), "chap")
	if err := os.WriteFile(pw, []byte(l.password), 0o600); err != nil {
		return "", err
	}
	defer os.Remove(pw)
	opts := "driver=raw,file.driver=iscsi,file.transport=tcp,file.portal=" + tgtd.Portal + ",file.target=" + l.targetIQN +
		",file.lun=1,file.initiator-name=" + l.initiator + ",file.user=" + l.user + ",file.password-secret=chap"
	cmd := exec.Command("qemu-io", "--object", "secret,id=chap,file="+pw, "-r", "--image-opts", opts,
		"-c", "read -v "+strconv.Itoa(off)+" "+strconv.Itoa(n))
	out, err := cmd.CombinedOutput()
	return string(out), err
}

var _ = Describe("Storage role under a tgtd outage", func() {
	It("keeps a StorageReady session and its overlay while tgtd is down, then rebuilds its target with the same data", func() {
		runRole()
		l := newLab()
		l.image("win11", 64<<20)
		l.machine("seat-1")
		s := l.session("s", "seat-1", "win11", bootv1.WritebackDiscard)
		Expect(meta.IsStatusConditionTrue(s.Status.Conditions, bootv1.StorageReadyCondition)).To(BeTrue())
		overlay := s.Status.OverlayPath
		info := credentials(s)

		By("writing a marker into the overlay before the crash")
		const marker, at = "GGNET-MARKER-OK!", 1 << 20
		f, err := os.OpenFile(overlay, os.O_WRONLY, 0)
		Expect(err).NotTo(HaveOccurred())
		_, err = f.WriteAt([]byte(marker), at)
		Expect(err).NotTo(HaveOccurred())
		Expect(f.Close()).To(Succeed())
		out, err := iscsiRead(info, at, len(marker))
		Expect(err).NotTo(HaveOccurred(), out)
		Expect(out).To(ContainSubstring(fmt.Sprintf("% x", marker)), "the LUN reads the overlay")

		By("killing tgtd and keeping it down for 10 s")
		tgtd.Kill()
		down := time.Now()
		sawUnavailable := false
		for time.Since(down) < 10*time.Second {
			Expect(k8sClient.Get(l.ctx, client.ObjectKeyFromObject(s), s)).To(Succeed())
			Expect(s.Status.Phase).NotTo(Equal(bootv1.SessionFailed), "a StorageReady session never fails on a driver error")
			Expect(meta.IsStatusConditionTrue(s.Status.Conditions, bootv1.ReadyCondition)).To(BeTrue(), "the session stays Ready")
			Expect(s.Finalizers).To(ContainElement(bootv1.StorageFinalizer))
			_, err := os.Stat(overlay)
			Expect(err).NotTo(HaveOccurred(), "the overlay is kept")
			if c := meta.FindStatusCondition(s.Status.Conditions, bootv1.StorageReadyCondition); c.Status == metav1.ConditionFalse {
				Expect(c.Reason).To(Equal(bootv1.TargetUnavailableReason))
				Expect(c.Message).To(ContainSubstring("retrying"))
				for _, secret := range []string{info.password, info.targetPassword} {
					Expect(c.Message).NotTo(ContainSubstring(secret), "no credential in the condition")
				}
				sawUnavailable = true
			}
			time.Sleep(250 * time.Millisecond)
		}
		Expect(sawUnavailable).To(BeTrue(), "StorageReady=False TargetUnavailable while tgtd is down")

		By("bringing tgtd back on the same ports: the target is rebuilt and reads the same data")
		tgtd.Restart(GinkgoT())
		Eventually(func() bool {
			_ = k8sClient.Get(l.ctx, client.ObjectKeyFromObject(s), s)
			return meta.IsStatusConditionTrue(s.Status.Conditions, bootv1.StorageReadyCondition)
		}, 45*time.Second).Should(BeTrue(), "StorageReady returns to True within the backoff cap")
		Expect(targetIQNs()).To(ContainElement(info.targetIQN))
		Expect(s.Status.Phase).To(Equal(bootv1.SessionReady))
		Expect(s.Status.OverlayPath).To(Equal(overlay))
		out, err = iscsiRead(info, at, len(marker))
		Expect(err).NotTo(HaveOccurred(), out)
		Expect(out).To(ContainSubstring(fmt.Sprintf("% x", marker)), "the data written before the crash is read back through iSCSI")
		l.stop(s)
	})
})
