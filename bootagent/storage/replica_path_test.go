package storage

import (
	"os"
	"path/filepath"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	"sigs.k8s.io/controller-runtime/pkg/client"

	bootv1 "github.com/ggnet/ggnet/api/v1alpha1"
)

var _ = Describe("A replica path in the Image's status", Ordered, func() {
	It("is never what an overlay is cloned from: the agent clones its own replica file of the Image's UID", func() {
		runRole()
		l := newLab()
		img := l.image("pathless", 64<<20)

		By("pointing the replica's status path at another file of the node, as anyone allowed to patch images/status could")
		foreign := filepath.Join(GinkgoT().TempDir(), "foreign.raw")
		Expect(os.WriteFile(foreign, append([]byte("FOREIGN FILE"), make([]byte, 64<<20-12)...), 0o600)).To(Succeed())
		// The agent re-reports its own path; the intruder keeps patching
		// until the session is made.
		done := make(chan struct{})
		key := client.ObjectKeyFromObject(img)
		go func() {
			defer GinkgoRecover()
			for {
				select {
				case <-done:
					return
				default:
				}
				cur := &bootv1.Image{}
				if k8sClient.Get(l.ctx, key, cur) == nil {
					patched := cur.DeepCopy()
					for i := range patched.Status.Replicas {
						patched.Status.Replicas[i].Path = foreign
					}
					_ = k8sClient.Status().Patch(l.ctx, patched, client.MergeFrom(cur), client.FieldOwner("intruder"))
				}
				time.Sleep(5 * time.Millisecond)
			}
		}()
		Eventually(func() string {
			_ = k8sClient.Get(l.ctx, client.ObjectKeyFromObject(img), img)
			return img.Status.Replicas[0].Path
		}, eventually, time.Millisecond).Should(Equal(foreign))
		l.machine("pathless-seat")
		s := l.session("pathless-a", "pathless-seat", "pathless", bootv1.WritebackDiscard)
		close(done)
		b, err := os.ReadFile(s.Status.OverlayPath)
		Expect(err).NotTo(HaveOccurred())
		Expect(string(b[:18])).To(Equal("GGNET GOLDEN IMAGE"), "the overlay is a clone of the agent's replica, not of the status path")
		l.stop(s)
	})
})
