package controllers

import (
	"context"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"

	bootv1 "github.com/ggnet/ggnet/api/v1alpha1"
	"github.com/ggnet/ggnet/internal/fixture"
)

// readyMessage is a session's Ready message.
func readyMessage(ctx context.Context, s *bootv1.BootSession) func() string {
	return func() string {
		if c := meta.FindStatusCondition(get(ctx, s)().Status.Conditions, bootv1.ReadyCondition); c != nil {
			return c.Message
		}
		return ""
	}
}

// activeSession makes a session Ready, then Active as the agents would.
func activeSession(ctx context.Context, ns, name, machine, image string) *bootv1.BootSession {
	GinkgoHelper()
	s := fixture.Session(ns, name, machine, image)
	Expect(k8sClient.Create(ctx, s)).To(Succeed())
	Eventually(view(ctx, s), eventually).Should(Equal(sessionView{bootv1.SessionReady, "True/Succeeded"}))
	now := metav1.Now()
	change(ctx, s, true, func(x *bootv1.BootSession) { x.Status.Timeline.ScriptServed, x.Status.Timeline.ISCSILogin = &now, &now })
	Eventually(view(ctx, s), eventually).Should(Equal(sessionView{bootv1.SessionActive, "True/Succeeded"}))
	return s
}

// runsOn checks that a session goes on untouched: Active, Ready, its
// target and script kept.
func runsOn(ctx context.Context, s *bootv1.BootSession, node string) func(Gomega) {
	return func(g Gomega) {
		x := get(ctx, s)()
		g.Expect(sessionView{x.Status.Phase, readyReason(x.Status.Conditions)}).To(Equal(sessionView{bootv1.SessionActive, "True/Succeeded"}))
		g.Expect(x.Status.StorageNode).To(Equal(node))
		g.Expect(x.Status.Script).NotTo(BeEmpty())
		g.Expect(x.Status.Target).NotTo(BeNil())
		g.Expect(x.Status.Timeline.Stopping).To(BeNil())
		g.Expect(controllerutil.ContainsFinalizer(x, bootv1.StorageFinalizer)).To(BeTrue(), "the target stays")
	}
}

var _ = Describe("Deleting a Machine or an Image in use", func() {
	var (
		ctx  context.Context
		ns   string
		node string
		img  *bootv1.Image
	)
	BeforeEach(func() {
		ctx = context.Background()
		ns = newNamespace(ctx)
		node = "storage-" + ns
		storageNode(ctx, node, "10.20.0.5")
		img = fixture.Image(ns, "win11")
		Expect(k8sClient.Create(ctx, img)).To(Succeed())
		readyReplica(ctx, img, node)
		Expect(k8sClient.Create(ctx, fixture.Machine(ns, "seat-1", fixture.WithMAC("52:54:00:00:de:01"), fixture.WithAddress("10.20.0.81")))).To(Succeed())
		Expect(k8sClient.Create(ctx, fixture.Machine(ns, "seat-2", fixture.WithMAC("52:54:00:00:de:02"), fixture.WithAddress("10.20.0.82")))).To(Succeed())
	})

	It("keeps a running session going while its Image is deleted; new sessions wait ImageDeleting; the Image goes when the session stops", func() {
		s := activeSession(ctx, ns, "s", "seat-1", "win11")
		Expect(k8sClient.Delete(ctx, img)).To(Succeed())

		Eventually(func() string { return readyReason(get(ctx, img)().Status.Conditions) }, eventually).Should(Equal("False/InUse"))
		Expect(meta.FindStatusCondition(img.Status.Conditions, bootv1.ReadyCondition).Message).To(Equal("deletion waits for 1 unfinished session(s) that use this image: s"))
		Eventually(readyMessage(ctx, s), eventually).Should(Equal("the machine can boot; phase Active; Image win11 is being deleted: its deletion waits until this session ends"))
		Eventually(func() []string { return events(ctx, ns, "s") }, eventually).Should(ContainElement("ImageDeleting: Image win11 is being deleted: its deletion waits until this session ends"))

		By("a new session waits and is not scheduled")
		s2 := fixture.Session(ns, "s2", "seat-2", "win11")
		Expect(k8sClient.Create(ctx, s2)).To(Succeed())
		Eventually(view(ctx, s2), eventually).Should(Equal(sessionView{bootv1.SessionPending, "False/ImageDeleting"}))
		Eventually(func() []string { return events(ctx, ns, "s2") }, eventually).Should(ContainElement(HavePrefix("ImageDeleting: Image win11 is being deleted; the session is not started")))
		Consistently(func(g Gomega) {
			runsOn(ctx, s, node)(g)
			g.Expect(get(ctx, s2)().Status.StorageNode).To(BeEmpty())
			g.Expect(finalizersOf(ctx, img)()).To(ContainElement(bootv1.ImageFinalizer))
			g.Expect(img.Status.Phase).To(Equal(bootv1.ImageDeleting))
			g.Expect(readyReason(img.Status.Conditions)).To(Equal("False/InUse"), "the waiting session does not hold the Image")
		}, 3*time.Second, 250*time.Millisecond).Should(Succeed())

		By("stopping the running session: the Image goes")
		change(ctx, s, false, func(x *bootv1.BootSession) { x.Spec.Stopped = true })
		Eventually(view(ctx, s), eventually).Should(Equal(sessionView{bootv1.SessionStopped, "False/Stopped"}))
		Eventually(gone(ctx, img), eventually).Should(BeTrue())
		Eventually(view(ctx, s2), eventually).Should(Equal(sessionView{bootv1.SessionPending, "False/ImageNotFound"}))
	})

	It("keeps a running session going while its Machine is deleted; the Machine waits InUse and goes when the session stops", func() {
		m := &bootv1.Machine{}
		m.Namespace, m.Name = ns, "seat-1"
		Eventually(finalizersOf(ctx, m), eventually).Should(ContainElement(bootv1.MachineFinalizer))
		s := activeSession(ctx, ns, "s", "seat-1", "win11")
		Expect(k8sClient.Delete(ctx, m)).To(Succeed())

		Eventually(func() string { return readyReason(get(ctx, m)().Status.Conditions) }, eventually).Should(Equal("False/InUse"))
		Expect(meta.FindStatusCondition(m.Status.Conditions, bootv1.ReadyCondition).Message).To(Equal("deletion waits for 1 unfinished session(s) that use this machine: s"))
		Expect(m.Status.ActiveSession).To(Equal("s"))
		Expect(m.Status.Reservation.Address).To(Equal("10.20.0.81"), "the reservation stays")
		Eventually(func() []string { return events(ctx, ns, "seat-1") }, eventually).Should(ContainElement("InUse: deletion waits for 1 unfinished session(s) that use this machine: s"))
		Eventually(readyMessage(ctx, s), eventually).Should(Equal("the machine can boot; phase Active; Machine seat-1 is being deleted: its deletion waits until this session ends"))
		Eventually(func() []string { return events(ctx, ns, "s") }, eventually).Should(ContainElement("MachineDeleting: Machine seat-1 is being deleted: its deletion waits until this session ends"))

		By("a new session of the Machine waits MachineDeleting, not MachineBusy, and does not hold the deletion")
		s2 := fixture.Session(ns, "s2", "seat-1", "win11")
		Expect(k8sClient.Create(ctx, s2)).To(Succeed())
		Eventually(view(ctx, s2), eventually).Should(Equal(sessionView{bootv1.SessionPending, "False/MachineDeleting"}))
		// Until the Machine controller sees s2's reason, s2 counts.
		Eventually(func() string {
			return meta.FindStatusCondition(get(ctx, m)().Status.Conditions, bootv1.ReadyCondition).Message
		}, eventually).
			Should(HaveSuffix("this machine: s"))
		Consistently(func(g Gomega) {
			runsOn(ctx, s, node)(g)
			g.Expect(get(ctx, s2)().Status.StorageNode).To(BeEmpty())
			g.Expect(finalizersOf(ctx, m)()).To(ContainElement(bootv1.MachineFinalizer))
			g.Expect(meta.FindStatusCondition(m.Status.Conditions, bootv1.ReadyCondition).Message).To(HaveSuffix("this machine: s"))
		}, 3*time.Second, 250*time.Millisecond).Should(Succeed())

		By("stopping the running session: the Machine goes")
		change(ctx, s, false, func(x *bootv1.BootSession) { x.Spec.Stopped = true })
		Eventually(gone(ctx, m), eventually).Should(BeTrue())
		Eventually(view(ctx, s2), eventually).Should(Equal(sessionView{bootv1.SessionPending, "False/MachineNotFound"}))
		Expect(get(ctx, s)().Status.Phase).To(Equal(bootv1.SessionStopped))
	})

	It("deletes an unused Machine at once, and a Machine whose only session never started", func() {
		m := &bootv1.Machine{}
		m.Namespace, m.Name = ns, "seat-2"
		Eventually(finalizersOf(ctx, m), eventually).Should(ContainElement(bootv1.MachineFinalizer))
		Expect(k8sClient.Delete(ctx, m)).To(Succeed())
		Eventually(gone(ctx, m), eventually).Should(BeTrue())

		// seat-1's session waits behind a missing image: it never held storage.
		s := fixture.Session(ns, "s", "seat-1", "win10")
		Expect(k8sClient.Create(ctx, s)).To(Succeed())
		Eventually(view(ctx, s), eventually).Should(Equal(sessionView{bootv1.SessionPending, "False/ImageNotFound"}))
		m.Name = "seat-1"
		Expect(k8sClient.Delete(ctx, m)).To(Succeed())
		Eventually(gone(ctx, m), eventually).Should(BeTrue())
		Eventually(view(ctx, s), eventually).Should(Equal(sessionView{bootv1.SessionPending, "False/MachineNotFound"}))
	})

	It("keeps a deleted Machine's MAC and address claimed while its session runs", func() {
		s := activeSession(ctx, ns, "s", "seat-1", "win11")
		m := &bootv1.Machine{}
		m.Namespace, m.Name = ns, "seat-1"
		Expect(k8sClient.Delete(ctx, m)).To(Succeed())
		Eventually(func() string { return readyReason(get(ctx, m)().Status.Conditions) }, eventually).Should(Equal("False/InUse"))
		time.Sleep(1100 * time.Millisecond) // newer, not tied
		taker := fixture.Machine(ns, "seat-1b", fixture.WithMAC("52:54:00:00:de:01"), fixture.WithAddress("10.20.0.81"))
		Expect(k8sClient.Create(ctx, taker)).To(Succeed())
		Eventually(conflictOf(ctx, taker), eventually).Should(HavePrefix("True/DuplicateMAC: conflicts with MAC 52:54:00:00:de:01 of Machine " + ns + "/seat-1"))

		change(ctx, s, false, func(x *bootv1.BootSession) { x.Spec.Stopped = true })
		Eventually(gone(ctx, m), eventually).Should(BeTrue())
		Eventually(conflictOf(ctx, taker), eventually).Should(Equal("False/NoConflict: the MAC and the address are unique"))
	})
})
