package controllers

import (
	"context"
	"strings"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"

	bootv1 "github.com/ggnet/ggnet/api/v1alpha1"
	"github.com/ggnet/ggnet/internal/fixture"
)

// goneFixture is what a storage node named "gone-*" (no stand-in agent: the
// spec plays it) keeps: an Image with a replica there, a Machine with
// persistent disks there, and sessions whose targets are there.
type goneFixture struct {
	ns, node string
	img      *bootv1.Image
	machine  *bootv1.Machine
}

// newGoneFixture makes the node, an Image "win11" with a Ready replica on
// it and the node's finalizer, and Machine seat-1 with the node's finalizer.
// When the spec ends it drops every finalizer the spec's storage agent held,
// as the agent would have.
func newGoneFixture(ctx context.Context, ns string) *goneFixture {
	f := &goneFixture{ns: ns, node: "gone-" + ns}
	storageNode(ctx, f.node, "10.20.0.5")
	f.img = fixture.Image(ns, "win11")
	Expect(k8sClient.Create(ctx, f.img)).To(Succeed())
	readyReplica(ctx, f.img, f.node)
	change(ctx, f.img, false, func(x *bootv1.Image) { controllerutil.AddFinalizer(x, bootv1.NodeFinalizer(f.node)) })
	f.machine = fixture.Machine(ns, "seat-1", fixture.WithMAC("52:54:00:00:9a:01"), fixture.WithAddress("10.20.0.71"))
	Expect(k8sClient.Create(ctx, f.machine)).To(Succeed())
	change(ctx, f.machine, false, func(x *bootv1.Machine) { controllerutil.AddFinalizer(x, bootv1.NodeFinalizer(f.node)) })
	DeferCleanup(func(ctx context.Context) {
		var sessions bootv1.BootSessionList
		Expect(k8sClient.List(ctx, &sessions, client.InNamespace(ns))).To(Succeed())
		for i := range sessions.Items {
			dropFinalizer(ctx, &sessions.Items[i], bootv1.StorageFinalizer)
		}
		var images bootv1.ImageList
		Expect(k8sClient.List(ctx, &images, client.InNamespace(ns))).To(Succeed())
		for i := range images.Items {
			dropFinalizer(ctx, &images.Items[i], bootv1.NodeFinalizer(f.node))
		}
		var machines bootv1.MachineList
		Expect(k8sClient.List(ctx, &machines, client.InNamespace(ns))).To(Succeed())
		for i := range machines.Items {
			dropFinalizer(ctx, &machines.Items[i], bootv1.NodeFinalizer(f.node))
		}
	})
	return f
}

func dropFinalizer[T client.Object](ctx context.Context, obj T, fin string) {
	GinkgoHelper()
	if !controllerutil.ContainsFinalizer(obj, fin) {
		return
	}
	patch := client.MergeFrom(obj.DeepCopyObject().(client.Object))
	controllerutil.RemoveFinalizer(obj, fin)
	Expect(client.IgnoreNotFound(k8sClient.Patch(ctx, obj, patch))).To(Succeed())
}

// readySession makes a session of machine on the fixture's node and plays
// the storage agent: its finalizer and StorageReady=True.
func (f *goneFixture) readySession(ctx context.Context, name, machine string) *bootv1.BootSession {
	GinkgoHelper()
	s := fixture.Session(f.ns, name, machine, "win11", fixture.WithStorageNode(f.node))
	Expect(k8sClient.Create(ctx, s)).To(Succeed())
	Eventually(view(ctx, s), eventually).Should(Equal(sessionView{bootv1.SessionProvisioning, "False/WaitingForStorage"}))
	change(ctx, s, false, func(x *bootv1.BootSession) { controllerutil.AddFinalizer(x, bootv1.StorageFinalizer) })
	setStorageReady(ctx, s, metav1.ConditionTrue, bootv1.SucceededReason, "target ready")
	Eventually(view(ctx, s), eventually).Should(Equal(sessionView{bootv1.SessionReady, "True/Succeeded"}))
	return s
}

func deleteNode(ctx context.Context, name string) {
	GinkgoHelper()
	Expect(k8sClient.Delete(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}})).To(Succeed())
}

func finalizersOf[T client.Object](ctx context.Context, obj T) func() []string {
	return func() []string {
		if err := k8sClient.Get(ctx, client.ObjectKeyFromObject(obj), obj); err != nil {
			return []string{"error: " + err.Error()}
		}
		return obj.GetFinalizers()
	}
}

func gone[T client.Object](ctx context.Context, obj T) func() bool {
	return func() bool {
		err := k8sClient.Get(ctx, client.ObjectKeyFromObject(obj), obj)
		return client.IgnoreNotFound(err) == nil && err != nil
	}
}

var _ = Describe("A storage node that is gone", func() {
	var (
		ctx context.Context
		f   *goneFixture
	)
	BeforeEach(func() {
		ctx = context.Background()
		f = newGoneFixture(ctx, newNamespace(ctx))
	})

	It("has its finalizers released after the grace, with Events, so that its objects can be deleted", func() {
		s := f.readySession(ctx, "s", "seat-1")
		Expect(k8sClient.Create(ctx, fixture.Machine(f.ns, "seat-2", fixture.WithMAC("52:54:00:00:9a:02"), fixture.WithAddress("10.20.0.72")))).To(Succeed())
		live := f.readySession(ctx, "live", "seat-2")

		By("deleting the Node, then the session, the Image and the Machine")
		deleteNode(ctx, f.node)
		deleted := time.Now()
		Expect(k8sClient.Delete(ctx, s)).To(Succeed())
		Expect(k8sClient.Delete(ctx, f.img)).To(Succeed())
		Expect(k8sClient.Delete(ctx, f.machine)).To(Succeed())

		By("keeping everything within the grace; the live session stays Ready and says when it fails")
		Eventually(func() string {
			return meta.FindStatusCondition(get(ctx, live)().Status.Conditions, bootv1.ReadyCondition).Message
		}, eventually).Should(ContainSubstring("storage node " + f.node + " is missing since"))
		Consistently(func(g Gomega) {
			g.Expect(finalizersOf(ctx, s)()).To(ContainElement(bootv1.StorageFinalizer))
			g.Expect(finalizersOf(ctx, f.img)()).To(ContainElement(bootv1.NodeFinalizer(f.node)))
			g.Expect(finalizersOf(ctx, f.machine)()).To(ContainElement(bootv1.NodeFinalizer(f.node)))
			g.Expect(view(ctx, live)()).To(Equal(sessionView{bootv1.SessionReady, "True/Succeeded"}))
		}, time.Until(deleted.Add(storageNodeGrace-time.Second)), 200*time.Millisecond).Should(Succeed())
		Eventually(func() []string { return events(ctx, f.ns, "live") }, eventually).Should(ContainElement(HavePrefix("StorageNodeGone: storage node " + f.node + " is missing since")))
		for _, name := range []string{"s", "win11", "seat-1"} {
			Eventually(func() []string { return events(ctx, f.ns, name) }, eventually).Should(ContainElement(And(HavePrefix("StorageNodeGone: storage node "+f.node+" is gone"),
				ContainSubstring("unless it returns within the 5s grace"))), name)
		}

		By("releasing them after the grace: the objects go")
		Eventually(gone(ctx, s), eventually).Should(BeTrue())
		Eventually(gone(ctx, f.img), eventually).Should(BeTrue())
		Eventually(gone(ctx, f.machine), eventually).Should(BeTrue())
		Expect(time.Since(deleted)).To(BeNumerically(">=", storageNodeGrace))
		released := And(HavePrefix("StorageNodeGone: storage node "+f.node+" is gone (missing since"),
			ContainSubstring("longer than the 5s grace): released finalizer"), ContainSubstring("are no longer tracked"))
		Eventually(func() []string { return events(ctx, f.ns, "s") }, eventually).Should(ContainElement(And(released, ContainSubstring(bootv1.StorageFinalizer))))
		Eventually(func() []string { return events(ctx, f.ns, "win11") }, eventually).Should(ContainElement(And(released, ContainSubstring(bootv1.NodeFinalizer(f.node)), ContainSubstring("this Image had on"))))
		Eventually(func() []string { return events(ctx, f.ns, "seat-1") }, eventually).Should(ContainElement(And(released, ContainSubstring(bootv1.NodeFinalizer(f.node)), ContainSubstring("this Machine had on"))))

		By("failing the live session after the grace and releasing its storage finalizer, so that its deletion completes")
		Eventually(view(ctx, live), eventually).Should(Equal(sessionView{bootv1.SessionFailed, "False/StorageNodeLost"}))
		Expect(meta.FindStatusCondition(live.Status.Conditions, bootv1.ReadyCondition).Message).To(ContainSubstring("longer than the 5s grace"))
		Eventually(finalizersOf(ctx, live), eventually).ShouldNot(ContainElement(bootv1.StorageFinalizer))
		Expect(k8sClient.Delete(ctx, live)).To(Succeed())
		Eventually(gone(ctx, live), eventually).Should(BeTrue())
	})

	It("keeps everything when the Node returns within the grace", func() {
		live := f.readySession(ctx, "live", "seat-1")
		Expect(k8sClient.Create(ctx, fixture.Machine(f.ns, "seat-2", fixture.WithMAC("52:54:00:00:9a:02"), fixture.WithAddress("10.20.0.72")))).To(Succeed())
		stopped := f.readySession(ctx, "stopped", "seat-2")
		change(ctx, stopped, false, func(x *bootv1.BootSession) { x.Spec.Stopped = true })
		Eventually(view(ctx, stopped), eventually).Should(Equal(sessionView{bootv1.SessionStopping, "False/Stopping"}))
		old := fixture.Image(f.ns, "old")
		Expect(k8sClient.Create(ctx, old)).To(Succeed())
		change(ctx, old, false, func(x *bootv1.Image) { controllerutil.AddFinalizer(x, bootv1.NodeFinalizer(f.node)) })
		Eventually(finalizersOf(ctx, old), eventually).Should(ContainElement(bootv1.ImageFinalizer))
		Expect(k8sClient.Delete(ctx, old)).To(Succeed())

		By("deleting the Node; once the manager saw it missing, bringing it back")
		deleteNode(ctx, f.node)
		Eventually(func() []string { return events(ctx, f.ns, "old") }, eventually).Should(ContainElement(HavePrefix("StorageNodeGone: storage node " + f.node + " is gone")))
		storageNode(ctx, f.node, "10.20.0.5")

		Consistently(func(g Gomega) {
			g.Expect(finalizersOf(ctx, old)()).To(ContainElement(bootv1.NodeFinalizer(f.node)), "a deleted Image keeps the returned node's finalizer")
			g.Expect(finalizersOf(ctx, f.img)()).To(ContainElement(bootv1.NodeFinalizer(f.node)))
			g.Expect(finalizersOf(ctx, f.machine)()).To(ContainElement(bootv1.NodeFinalizer(f.node)))
			g.Expect(finalizersOf(ctx, stopped)()).To(ContainElement(bootv1.StorageFinalizer))
			g.Expect(view(ctx, stopped)()).To(Equal(sessionView{bootv1.SessionStopping, "False/Stopping"}))
			g.Expect(view(ctx, live)()).To(Equal(sessionView{bootv1.SessionReady, "True/Succeeded"}))
			g.Expect(finalizersOf(ctx, live)()).To(ContainElement(bootv1.StorageFinalizer))
		}, storageNodeGrace+2*time.Second, 250*time.Millisecond).Should(Succeed())
		Expect(meta.FindStatusCondition(live.Status.Conditions, bootv1.ReadyCondition).Message).To(Equal("the machine can boot; phase Ready"), "the note went with the node's return")
		for _, name := range []string{"old", "win11", "seat-1", "stopped", "live"} {
			Expect(events(ctx, f.ns, name)).NotTo(ContainElement(ContainSubstring("released finalizer")), name)
		}
	})
})

var _ = Describe("Storage nodes whose names share the node finalizer's 50-character cut", func() {
	It("keep the finalizer while either Node exists", func() {
		ctx := context.Background()
		ns := newNamespace(ctx)
		long := "gone-" + ns + "-" + strings.Repeat("x", 50)
		a, b := long+"-a", long+"-b"
		Expect(bootv1.NodeFinalizer(a)).To(Equal(bootv1.NodeFinalizer(b)))
		storageNode(ctx, a, "10.20.0.5")
		storageNode(ctx, b, "10.20.0.6")
		img := fixture.Image(ns, "shared")
		Expect(k8sClient.Create(ctx, img)).To(Succeed())
		change(ctx, img, false, func(x *bootv1.Image) { controllerutil.AddFinalizer(x, bootv1.NodeFinalizer(a)) })
		DeferCleanup(func(ctx context.Context) { dropFinalizer(ctx, get(ctx, img)(), bootv1.NodeFinalizer(a)) })
		Expect(k8sClient.Delete(ctx, img)).To(Succeed())

		deleteNode(ctx, a)
		Consistently(finalizersOf(ctx, img), storageNodeGrace+time.Second, 250*time.Millisecond).Should(ContainElement(bootv1.NodeFinalizer(a)))
		deleteNode(ctx, b)
		deleted := time.Now()
		Eventually(gone(ctx, img), eventually).Should(BeTrue())
		Expect(time.Since(deleted)).To(BeNumerically(">=", storageNodeGrace))
	})
})
