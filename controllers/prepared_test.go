package controllers

import (
	"context"
	"k8s.io/apimachinery/pkg/api/meta"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	bootv1 "github.com/ggnet/ggnet/api/v1alpha1"
	"github.com/ggnet/ggnet/internal/fixture"
	"github.com/ggnet/ggnet/internal/standin"
)

var _ = Describe("An AutoSession machine's next session", func() {
	var (
		ctx context.Context
		ns  string
		m   *bootv1.Machine
	)
	// live lists the machine's sessions that are not stopped or finished.
	live := func() []bootv1.BootSession {
		var list bootv1.BootSessionList
		Expect(k8sClient.List(ctx, &list, client.InNamespace(ns), client.MatchingLabels{bootv1.MachineLabel: m.Name})).To(Succeed())
		var out []bootv1.BootSession
		for _, s := range list.Items {
			if !s.Spec.Stopped && !finished(&s) {
				out = append(out, s)
			}
		}
		return out
	}
	// readyOne waits for exactly one live session, Ready, from image, and
	// returns it.
	readyOne := func(image string) *bootv1.BootSession {
		GinkgoHelper()
		var s *bootv1.BootSession
		Eventually(func(g Gomega) {
			l := live()
			g.Expect(l).To(HaveLen(1))
			s = &l[0]
			g.Expect(s.Spec.ImageRef.Name).To(Equal(image))
			g.Expect(s.Status.Phase).To(Equal(bootv1.SessionReady))
		}, eventually).Should(Succeed())
		return s
	}
	BeforeEach(func() {
		ctx = context.Background()
		ns = newNamespace(ctx)
		node := "storage-" + ns
		storageNode(ctx, node, "10.20.0.5")
		for _, name := range []string{"win11", "win11-v2"} {
			img := fixture.Image(ns, name)
			Expect(k8sClient.Create(ctx, img)).To(Succeed())
			readyReplica(ctx, img, node)
		}
		m = fixture.Machine(ns, "seat-1", fixture.WithImage("win11"), fixture.WithBootPolicy(bootv1.BootPolicyAutoSession))
		Expect(k8sClient.Create(ctx, m)).To(Succeed())
	})

	It("is prepared before power-on, kept while unbooted, prepared again once the last one stops, and follows the Machine's image while unbooted", func() {
		By("preparing one session as soon as the Machine exists: Ready (overlay and target made) before any DHCP")
		first := readyOne("win11")
		Expect(first.Labels).To(HaveKeyWithValue(bootv1.AutoSessionLabel, "true"))
		Expect(first.Spec.Writeback).To(Equal(bootv1.WritebackDiscard))
		Expect(first.Status.Timeline.DHCP).To(BeNil())
		Eventually(func() string { return get(ctx, m)().Status.ActiveSession }, eventually).Should(Equal(first.Name))

		By("keeping it, not churning it, while no PC boots")
		Consistently(func() []string {
			var names []string
			for _, s := range live() {
				names = append(names, s.Name)
			}
			return names
		}, 2*time.Second).Should(Equal([]string{first.Name}))

		By("a boot request from the agent, with the prepared session there, makes no second one")
		change(ctx, m, false, func(x *bootv1.Machine) {
			x.Annotations = map[string]string{bootv1.SessionRequestedAnnotation: "2026-11-27T12:00:00Z"}
		})
		Eventually(func() map[string]string { return get(ctx, m)().Annotations }, eventually).ShouldNot(HaveKey(bootv1.SessionRequestedAnnotation))
		Expect(live()).To(HaveLen(1))

		By("replacing the unbooted session when the Machine moves to another image")
		change(ctx, m, false, func(x *bootv1.Machine) { x.Spec.ImageRef.Name = "win11-v2" })
		second := readyOne("win11-v2")
		Expect(second.Name).NotTo(Equal(first.Name))
		Eventually(view(ctx, first), eventually).Should(Equal(sessionView{bootv1.SessionStopped, "False/Stopped"}))

		By("never stopping a session a PC booted from, whatever the Machine's image")
		now := metav1.Now()
		change(ctx, second, true, func(x *bootv1.BootSession) { x.Status.Timeline.DHCP = &now })
		change(ctx, m, false, func(x *bootv1.Machine) { x.Spec.ImageRef.Name = "win11" })
		Consistently(func() []string {
			var names []string
			for _, s := range live() {
				names = append(names, s.Name)
			}
			return names
		}, 2*time.Second).Should(Equal([]string{second.Name}))

		By("preparing the next one right after the booted one stops")
		change(ctx, second, false, func(x *bootv1.BootSession) { x.Spec.Stopped = true })
		third := readyOne("win11")
		Expect(third.Name).NotTo(Equal(second.Name))

		By("stopping the unbooted prepared session when the Machine is deleted, so that the deletion does not wait for a boot")
		Expect(k8sClient.Delete(ctx, m)).To(Succeed())
		Eventually(func() error { return k8sClient.Get(ctx, client.ObjectKeyFromObject(m), m) }, eventually).ShouldNot(Succeed())
		Eventually(view(ctx, third), eventually).Should(Equal(sessionView{bootv1.SessionStopped, "False/Stopped"}))
	})

	It("does not hold up its Image's deletion while unbooted", func() {
		s := readyOne("win11")
		img := &bootv1.Image{}
		img.Namespace, img.Name = ns, "win11"
		Expect(k8sClient.Delete(ctx, img)).To(Succeed())
		Eventually(func() error { return k8sClient.Get(ctx, client.ObjectKeyFromObject(img), img) }, eventually).ShouldNot(Succeed())
		Eventually(view(ctx, s), eventually).Should(Equal(sessionView{bootv1.SessionStopped, "False/Stopped"}))
		By("through the retire hand-over: stopped only after its storage agent found no login")
		Expect(get(ctx, s)().Annotations).To(HaveKey(bootv1.RetireAnnotation))
		retire := meta.FindStatusCondition(get(ctx, s)().Status.Conditions, bootv1.RetireCondition)
		Expect(retire).NotTo(BeNil())
		Expect(string(retire.Status) + "/" + retire.Reason).To(Equal("True/" + bootv1.RetireUnusedReason))
		By("the next one waits for an Image to boot")
		Eventually(func(g Gomega) {
			l := live()
			g.Expect(l).To(HaveLen(1))
			g.Expect(readyReason(l[0].Status.Conditions)).To(Or(Equal("False/ImageDeleting"), Equal("False/ImageNotFound")))
		}, eventually).Should(Succeed())
	})
})

// retireFixture is an AutoSession Machine following the Image family
// "games" whose versions have Ready replicas on one storage node, named
// "manual-retire-*": the stand-in storage agent leaves its Retire answers to
// the spec.
type retireFixture struct {
	ctx  context.Context
	ns   string
	node string
	m    *bootv1.Machine
}

func newRetireFixture() *retireFixture {
	GinkgoHelper()
	f := &retireFixture{ctx: context.Background()}
	f.ns = newNamespace(f.ctx)
	f.node = "manual-retire-" + f.ns
	storageNode(f.ctx, f.node, "10.20.0.5")
	f.version("games-1")
	f.m = fixture.Machine(f.ns, "seat-1", fixture.WithBootPolicy(bootv1.BootPolicyAutoSession))
	f.m.Spec.ImageFamily = "games"
	Expect(k8sClient.Create(f.ctx, f.m)).To(Succeed())
	return f
}

// version makes the family's next version, Ready on the node.
func (f *retireFixture) version(name string) {
	GinkgoHelper()
	img := familyImage(f.ns, name, "games")
	Expect(k8sClient.Create(f.ctx, img)).To(Succeed())
	versionOf(f.ctx, img)
	readyReplica(f.ctx, img, f.node)
}

// notStopped lists the machine's sessions that are not stopped or
// finished, by name, with their image.
func (f *retireFixture) notStopped() map[string]string {
	var list bootv1.BootSessionList
	Expect(k8sClient.List(f.ctx, &list, client.InNamespace(f.ns), client.MatchingLabels{bootv1.MachineLabel: f.m.Name})).To(Succeed())
	out := map[string]string{}
	for _, s := range list.Items {
		if !s.Spec.Stopped && !finished(&s) {
			out[s.Name] = s.Spec.ImageRef.Name
		}
	}
	return out
}

// readyFrom waits for the machine's one live Ready session from image.
func (f *retireFixture) readyFrom(image string) *bootv1.BootSession {
	GinkgoHelper()
	var s bootv1.BootSession
	Eventually(func(g Gomega) {
		var list bootv1.BootSessionList
		g.Expect(k8sClient.List(f.ctx, &list, client.InNamespace(f.ns), client.MatchingLabels{bootv1.MachineLabel: f.m.Name})).To(Succeed())
		var ready []bootv1.BootSession
		for _, x := range list.Items {
			if !x.Spec.Stopped && !finished(&x) && x.Spec.ImageRef.Name == image && x.Status.Phase == bootv1.SessionReady {
				ready = append(ready, x)
			}
		}
		g.Expect(ready).To(HaveLen(1))
		s = ready[0]
	}, eventually).Should(Succeed())
	return &s
}

var _ = Describe("The retire hand-over of an AutoSession machine's prepared session", func() {
	It("asks the storage agent to retire the unbooted prepared session at a new version, stops it only on Retire=True, and keeps it on Retire=False", func() {
		f := newRetireFixture()
		ctx, m := f.ctx, f.m
		first := f.readyFrom("games-1")

		By("a new version: the unbooted prepared session gets the retire annotation, not spec.stopped, and no second session is made meanwhile")
		f.version("games-2")
		Eventually(func() map[string]string { return get(ctx, first)().Annotations }, eventually).Should(HaveKeyWithValue(bootv1.RetireAnnotation, ContainSubstring("games-2")))
		Expect(get(ctx, first)().Annotations).To(HaveKey(bootv1.RetireAskedAnnotation))
		Consistently(f.notStopped, 2*time.Second).Should(Equal(map[string]string{first.Name: "games-1"}))
		Expect(get(ctx, first)().Spec.Stopped).To(BeFalse())

		By("Retire=True (Unused) from the storage agent: the manager stops it and prepares the next from the new version")
		Expect(standin.ApplyRetire(ctx, k8sClient, first, true, "spec-storage-agent")).To(Succeed())
		Eventually(view(ctx, first), eventually).Should(Equal(sessionView{bootv1.SessionStopped, "False/Stopped"}))
		second := f.readyFrom("games-2")

		By("another version: Retire=False (InUse) keeps the session, removes the annotation, and no other session is made")
		f.version("games-3")
		Eventually(func() map[string]string { return get(ctx, second)().Annotations }, eventually).Should(HaveKey(bootv1.RetireAnnotation))
		Expect(standin.ApplyRetire(ctx, k8sClient, second, false, "spec-storage-agent")).To(Succeed())
		Eventually(func() map[string]string { return get(ctx, second)().Annotations }, eventually).ShouldNot(HaveKey(bootv1.RetireAnnotation))
		Expect(get(ctx, second)().Annotations).NotTo(HaveKey(bootv1.RetireAskedAnnotation))
		Consistently(f.notStopped, 2*time.Second).Should(Equal(map[string]string{second.Name: "games-2"}))
		Expect(get(ctx, m)().Status.ActiveSession).To(Equal(second.Name))

		By("the kept session is the machine's booted one: the next, from the latest version, is prepared once it stops")
		change(ctx, second, false, func(x *bootv1.BootSession) { x.Spec.Stopped = true })
		f.readyFrom("games-3")
	})

	It("prepares the next session once the storage agent has not answered for --retire-timeout, keeps the retiring one until it answers, and says so in a Warning", func() {
		f := newRetireFixture()
		ctx := f.ctx
		first := f.readyFrom("games-1")

		By("a new version, and no answer from the storage agent")
		f.version("games-2")
		Eventually(func() map[string]string { return get(ctx, first)().Annotations }, eventually).Should(HaveKey(bootv1.RetireAnnotation))
		asked, err := time.Parse(time.RFC3339, get(ctx, first)().Annotations[bootv1.RetireAskedAnnotation])
		Expect(err).NotTo(HaveOccurred(), "the retire's time is recorded")
		Expect(f.notStopped()).To(Equal(map[string]string{first.Name: "games-1"}), "nothing else while the answer is awaited")

		By("a retire time ahead of now (set by hand) is stamped with now: the deadline is not put off")
		change(ctx, first, false, func(x *bootv1.BootSession) {
			x.Annotations[bootv1.RetireAskedAnnotation] = time.Now().Add(time.Hour).UTC().Format(time.RFC3339)
		})
		Eventually(func(g Gomega) {
			at, err := time.Parse(time.RFC3339, get(ctx, first)().Annotations[bootv1.RetireAskedAnnotation])
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(at).NotTo(BeTemporally(">", time.Now()), "not ahead of now")
		}, eventually).Should(Succeed())

		By("past the timeout: the next session is prepared from the new version; the retiring one is kept, still asked")
		second := f.readyFrom("games-2")
		Expect(second.CreationTimestamp.Time).To(BeTemporally(">=", asked.Add(retireTimeout-time.Second)), "not before the timeout")
		Expect(f.notStopped()).To(Equal(map[string]string{first.Name: "games-1", second.Name: "games-2"}))
		Expect(get(ctx, first)().Annotations).To(HaveKey(bootv1.RetireAnnotation), "still not handed out")
		Eventually(func() []string { return events(ctx, f.ns, f.m.Name) }, eventually).Should(ContainElement(And(
			HavePrefix(bootv1.RetireTimedOutReason+": The storage agent of node "+f.node), ContainSubstring("prepared "+second.Name))))
		Consistently(f.notStopped, 2*time.Second).Should(HaveLen(2), "one next session, not one per reconcile")

		By("the late answer Unused stops the retiring session; the next one stays")
		Expect(standin.ApplyRetire(ctx, k8sClient, first, true, "spec-storage-agent")).To(Succeed())
		Eventually(view(ctx, first), eventually).Should(Equal(sessionView{bootv1.SessionStopped, "False/Stopped"}))
		Consistently(f.notStopped, 2*time.Second).Should(Equal(map[string]string{second.Name: "games-2"}))
	})

	It("goes back to one session when the storage agent answers in use after --retire-timeout: the next one prepared meanwhile is retired", func() {
		f := newRetireFixture()
		ctx := f.ctx
		first := f.readyFrom("games-1")
		f.version("games-2")
		Eventually(func() map[string]string { return get(ctx, first)().Annotations }, eventually).Should(HaveKey(bootv1.RetireAnnotation))
		second := f.readyFrom("games-2")

		By("the late answer InUse: the first is the machine's session again, and the second is asked to retire")
		Expect(standin.ApplyRetire(ctx, k8sClient, first, false, "spec-storage-agent")).To(Succeed())
		Eventually(func() map[string]string { return get(ctx, second)().Annotations }, eventually).Should(HaveKeyWithValue(bootv1.RetireAnnotation, ContainSubstring("is in session "+first.Name+" again")))
		Expect(get(ctx, first)().Annotations).NotTo(HaveKey(bootv1.RetireAnnotation))
		Eventually(func() string { return get(ctx, f.m)().Status.ActiveSession }, eventually).Should(Equal(first.Name))

		By("its agent answers Unused: one session again, the one a PC runs on")
		Expect(standin.ApplyRetire(ctx, k8sClient, second, true, "spec-storage-agent")).To(Succeed())
		Eventually(view(ctx, second), eventually).Should(Equal(sessionView{bootv1.SessionStopped, "False/Stopped"}))
		Consistently(f.notStopped, 2*time.Second).Should(Equal(map[string]string{first.Name: "games-1"}))
	})
})
