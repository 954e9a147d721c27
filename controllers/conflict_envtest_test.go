package controllers

import (
	"context"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	"k8s.io/apimachinery/pkg/api/meta"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"

	bootv1 "github.com/ggnet/ggnet/api/v1alpha1"
	"github.com/ggnet/ggnet/internal/fixture"
)

// conflictOf reads a Machine's Conflict condition as "status/reason: message".
func conflictOf(ctx context.Context, m *bootv1.Machine) func() string {
	return func() string {
		c := meta.FindStatusCondition(get(ctx, m)().Status.Conditions, bootv1.ConflictCondition)
		if c == nil {
			return ""
		}
		return string(c.Status) + "/" + c.Reason + ": " + c.Message
	}
}

var _ = Describe("Cluster-wide MAC and address ownership", func() {
	const (
		mac1, mac2 = "52:54:00:c0:00:01", "52:54:00:c0:00:02"
	)
	var (
		ctx    context.Context
		nsA    string
		nsB    string
		anchor *bootv1.Machine
	)
	BeforeEach(func() {
		ctx = context.Background()
		nsA, nsB = newNamespace(ctx), newNamespace(ctx)
		anchor = fixture.Machine(nsA, "pc", fixture.WithMAC(mac1), fixture.WithAddress("10.20.0.101"))
		Expect(k8sClient.Create(ctx, anchor)).To(Succeed())
		Eventually(func() string { return readyReason(get(ctx, anchor)().Status.Conditions) }, eventually).Should(Equal("True/Succeeded"))
		// Creation timestamps have a resolution of one second: the later
		// Machines must be newer, not tied.
		time.Sleep(1100 * time.Millisecond)
	})

	It("gives a MAC or address claimed in two namespaces to the older Machine; the newer names it", func() {
		b := fixture.Machine(nsB, "pc", fixture.WithMAC(mac1), fixture.WithAddress("10.20.0.102"))
		Expect(k8sClient.Create(ctx, b)).To(Succeed())
		Eventually(conflictOf(ctx, b), eventually).Should(HavePrefix("True/DuplicateMAC: conflicts with MAC " + mac1 + " of Machine " + nsA + "/pc, which claimed it first"))
		Expect(readyReason(b.Status.Conditions)).To(Equal("False/DuplicateMAC"))
		Expect(b.Status.Reservation.Address).To(Equal("10.20.0.102"), "the reservation is shown but not Ready")
		Eventually(func() []string { return events(ctx, nsB, "pc") }, eventually).Should(ContainElement(ContainSubstring("DuplicateMAC: conflicts with MAC " + mac1 + " of Machine " + nsA + "/pc")))

		Eventually(conflictOf(ctx, anchor), eventually).Should(Equal("False/NoConflict: this Machine keeps its MAC and address; the newer Machines " + nsB + "/pc that claim them have Conflict=True"))
		Expect(readyReason(anchor.Status.Conditions)).To(Equal("True/Succeeded"))
		Expect(events(ctx, nsA, "pc")).NotTo(ContainElement(ContainSubstring("Duplicate")))

		c := fixture.Machine(nsB, "pc-2", fixture.WithMAC(mac2), fixture.WithAddress("10.20.0.101"))
		Expect(k8sClient.Create(ctx, c)).To(Succeed())
		Eventually(conflictOf(ctx, c), eventually).Should(HavePrefix("True/DuplicateIP: conflicts with address 10.20.0.101 of Machine " + nsA + "/pc"))

		By("clearing both once the older Machine is gone")
		Expect(k8sClient.Delete(ctx, anchor)).To(Succeed())
		Eventually(conflictOf(ctx, b), eventually).Should(Equal("False/NoConflict: the MAC and the address are unique"))
		Eventually(conflictOf(ctx, c), eventually).Should(HavePrefix("False/NoConflict"))
		Eventually(func() string { return readyReason(get(ctx, b)().Status.Conditions) }, eventually).Should(Equal("True/Succeeded"))
		Eventually(func() string { return readyReason(get(ctx, c)().Status.Conditions) }, eventually).Should(Equal("True/Succeeded"))
	})

	It("does not schedule a session of a Machine in conflict, and never tears down a Ready one", func() {
		node := "storage-" + nsB
		storageNode(ctx, node, "10.20.0.5")
		img := fixture.Image(nsB, "win11")
		Expect(k8sClient.Create(ctx, img)).To(Succeed())
		readyReplica(ctx, img, node)

		late := fixture.Machine(nsB, "late", fixture.WithMAC(mac1), fixture.WithAddress("10.20.0.103"))
		Expect(k8sClient.Create(ctx, late)).To(Succeed())
		Eventually(conflictOf(ctx, late), eventually).Should(HavePrefix("True/DuplicateMAC"))
		waiting := fixture.Session(nsB, "late-s", "late", "win11")
		Expect(k8sClient.Create(ctx, waiting)).To(Succeed())
		Eventually(view(ctx, waiting), eventually).Should(Equal(sessionView{bootv1.SessionPending, "False/MachineConflict"}))
		Expect(meta.FindStatusCondition(waiting.Status.Conditions, bootv1.ReadyCondition).Message).To(ContainSubstring("of Machine " + nsA + "/pc"))
		Eventually(func() []string { return events(ctx, nsB, "late-s") }, eventually).Should(ContainElement(HavePrefix("MachineConflict: Machine late has Conflict=True")))
		Consistently(func() string { return get(ctx, waiting)().Status.StorageNode }, 2*time.Second).Should(BeEmpty(), "not scheduled")
		Expect(waiting.Status.CHAPSecretRef).To(BeNil(), "no credentials made")

		By("keeping a Ready session when a second Machine claims its MAC")
		// A MAC is immutable: taking one means creating a Machine, which is
		// newer and so loses; the running session is not disturbed.
		pc := fixture.Machine(nsB, "pc", fixture.WithMAC(mac2), fixture.WithAddress("10.20.0.102"))
		Expect(k8sClient.Create(ctx, pc)).To(Succeed())
		running := fixture.Session(nsB, "pc-s", "pc", "win11")
		Expect(k8sClient.Create(ctx, running)).To(Succeed())
		Eventually(view(ctx, running), eventually).Should(Equal(sessionView{bootv1.SessionReady, "True/Succeeded"}))
		time.Sleep(1100 * time.Millisecond) // newer, not tied
		taker := fixture.Machine(nsA, "taker", fixture.WithMAC(mac2), fixture.WithAddress("10.20.0.104"))
		Expect(k8sClient.Create(ctx, taker)).To(Succeed())
		Eventually(conflictOf(ctx, taker), eventually).Should(And(HavePrefix("True/DuplicateMAC: conflicts with"), ContainSubstring("MAC "+mac2+" of Machine "+nsB+"/pc")))
		Eventually(conflictOf(ctx, pc), eventually).Should(HavePrefix("False/NoConflict: this Machine keeps its MAC and address"))
		Consistently(func(g Gomega) {
			s := get(ctx, running)()
			g.Expect(s.Status.Phase).To(Equal(bootv1.SessionReady))
			g.Expect(readyReason(s.Status.Conditions)).To(Equal("True/Succeeded"))
			g.Expect(s.Status.StorageNode).To(Equal(node))
			g.Expect(s.Status.Timeline.Stopping).To(BeNil())
			g.Expect(s.Spec.Stopped).To(BeFalse())
			g.Expect(controllerutil.ContainsFinalizer(s, bootv1.StorageFinalizer)).To(BeTrue(), "the target stays")
			g.Expect(s.Status.Script).NotTo(BeEmpty())
			g.Expect(meta.FindStatusCondition(s.Status.Conditions, bootv1.ReadyCondition).Message).NotTo(ContainSubstring("Conflict=True"))
			g.Expect(conflictOf(ctx, pc)()).To(HavePrefix("False/NoConflict"))
		}, 3*time.Second).Should(Succeed())

		By("scheduling the waiting session once the older Machine is gone")
		Expect(k8sClient.Delete(ctx, anchor)).To(Succeed())
		Eventually(view(ctx, waiting), eventually).Should(Equal(sessionView{bootv1.SessionReady, "True/Succeeded"}))
	})
})
