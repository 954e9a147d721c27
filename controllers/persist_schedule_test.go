package controllers

import (
	"context"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	bootv1 "github.com/ggnet/ggnet/api/v1alpha1"
	"github.com/ggnet/ggnet/internal/fixture"
)

var _ = Describe("A Persist session", func() {
	It("goes to the node that holds the machine's persistent disk, waits when that node cannot serve it, and starts afresh only after a reset", func() {
		ctx := context.Background()
		ns := newNamespace(ctx)
		idle, busy := "pd-idle-"+ns, "pd-disk-"+ns
		storageNode(ctx, idle, "10.20.0.5")
		storageNode(ctx, busy, "10.20.0.6")
		img := fixture.Image(ns, "win11")
		Expect(k8sClient.Create(ctx, img)).To(Succeed())
		readyReplica(ctx, img, idle, busy)
		m := fixture.Machine(ns, "seat-1")
		Expect(k8sClient.Create(ctx, m)).To(Succeed())
		other := fixture.Machine(ns, "seat-2", fixture.WithMAC("52:54:00:00:00:02"), fixture.WithAddress("10.20.0.32"))
		Expect(k8sClient.Create(ctx, other)).To(Succeed())

		By("loading the disk's node with another session, so that load alone would pick the idle one")
		load := fixture.Session(ns, "load", "seat-2", "win11", fixture.WithStorageNode(busy))
		Expect(k8sClient.Create(ctx, load)).To(Succeed())
		Eventually(view(ctx, load), eventually).Should(Equal(sessionView{bootv1.SessionReady, "True/Succeeded"}))

		By("listing seat-1's disk for the Image on the busy node, as its storage agent does")
		used := metav1.NewTime(time.Now().Add(-time.Hour).Truncate(time.Second))
		change(ctx, m, true, func(m *bootv1.Machine) {
			m.Status.PersistentDisks = []bootv1.PersistentDisk{{Node: busy, Image: "win11", ImageUID: string(img.UID),
				Path: "/var/lib/ggnet/overlays/" + ns + "/persist/x.raw", SizeBytes: 10 << 30, LastUsed: &used, State: bootv1.PersistentDiskAvailable}}
		})
		s := fixture.Session(ns, "persist-1", "seat-1", "win11", fixture.WithWriteback(bootv1.WritebackPersist))
		Expect(k8sClient.Create(ctx, s)).To(Succeed())
		Eventually(view(ctx, s), eventually).Should(Equal(sessionView{bootv1.SessionReady, "True/Succeeded"}))
		Expect(s.Status.StorageNode).To(Equal(busy), "the node with the disk, not the least loaded one")

		By("a Discard session of the same machine ignores the disk")
		stopSession(ctx, s)
		d := fixture.Session(ns, "discard-1", "seat-1", "win11")
		Expect(k8sClient.Create(ctx, d)).To(Succeed())
		Eventually(view(ctx, d), eventually).Should(Equal(sessionView{bootv1.SessionReady, "True/Succeeded"}))
		Expect(d.Status.StorageNode).To(Equal(idle))
		stopSession(ctx, d)

		By("the disk's node losing its replica: the next Persist session waits rather than start from a fresh disk elsewhere")
		change(ctx, img, true, func(img *bootv1.Image) {
			for i := range img.Status.Replicas {
				if img.Status.Replicas[i].Node == busy {
					img.Status.Replicas[i].State = bootv1.ReplicaFailed
				}
			}
		})
		// The manager's cache has the failed replica once its Image
		// controller counts one Ready replica (before, a session created at
		// once could still be scheduled from the stale cache).
		Eventually(func() int32 { return get(ctx, img)().Status.ReadyReplicas }, eventually).Should(Equal(int32(1)))
		s2 := fixture.Session(ns, "persist-2", "seat-1", "win11", fixture.WithWriteback(bootv1.WritebackPersist))
		Expect(k8sClient.Create(ctx, s2)).To(Succeed())
		Eventually(view(ctx, s2), eventually).Should(Equal(sessionView{bootv1.SessionPending, "False/" + bootv1.PersistentDiskUnavailableReason}))
		Expect(meta.FindStatusCondition(s2.Status.Conditions, bootv1.ReadyCondition).Message).To(ContainSubstring(busy))
		Consistently(func() string { return get(ctx, s2)().Status.StorageNode }, 2*time.Second).Should(BeEmpty())

		By("raising resetGeneration: the old disk no longer binds the machine, the session starts on a node with a replica")
		change(ctx, m, false, func(m *bootv1.Machine) {
			m.Spec.PersistentDisks = &bootv1.PersistentDiskPolicy{ResetGeneration: 1}
		})
		Eventually(view(ctx, s2), eventually).Should(Equal(sessionView{bootv1.SessionReady, "True/Succeeded"}))
		Expect(s2.Status.StorageNode).To(Equal(idle))
	})
})

// stopSession stops a session and waits until it is Stopped.
func stopSession(ctx context.Context, s *bootv1.BootSession) {
	GinkgoHelper()
	change(ctx, s, false, func(s *bootv1.BootSession) { s.Spec.Stopped = true })
	Eventually(view(ctx, s), eventually).Should(HaveField("Phase", bootv1.SessionStopped))
}
