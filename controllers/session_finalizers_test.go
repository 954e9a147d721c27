package controllers

import (
	"context"
	"slices"
	"sync"
	"time"

	"fmt"
	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	"sigs.k8s.io/controller-runtime/pkg/client"

	bootv1 "github.com/ggnet/ggnet/api/v1alpha1"
	"github.com/ggnet/ggnet/internal/finalizer"
	"github.com/ggnet/ggnet/internal/fixture"
	"github.com/ggnet/ggnet/internal/scheme"
)

// watchFinalizers watches the session name of namespace ns from now on and
// returns a func that gives the finalizer lists of the versions seen so far,
// consecutive equal lists once. The watch ends with the spec.
func watchFinalizers(ctx context.Context, ns, name string) func() [][]string {
	GinkgoHelper()
	wc, err := client.NewWithWatch(cfg, client.Options{Scheme: scheme.New()})
	Expect(err).NotTo(HaveOccurred())
	w, err := wc.Watch(ctx, &bootv1.BootSessionList{}, client.InNamespace(ns))
	Expect(err).NotTo(HaveOccurred())
	DeferCleanup(w.Stop)
	var (
		mu   sync.Mutex
		seen [][]string
	)
	go func() {
		for ev := range w.ResultChan() {
			s, ok := ev.Object.(*bootv1.BootSession)
			if !ok || s.Name != name {
				continue
			}
			f := append([]string{}, s.Finalizers...)
			mu.Lock()
			if len(seen) == 0 || !slices.Equal(seen[len(seen)-1], f) {
				seen = append(seen, f)
			}
			mu.Unlock()
		}
	}()
	return func() [][]string {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(seen)
	}
}

var _ = Describe("BootSession finalizers and Events", func() {
	var (
		ctx context.Context
		ns  string
	)
	BeforeEach(func() {
		ctx = context.Background()
		ns = newNamespace(ctx)
		// No Machine and no Image: the sessions are never scheduled, and no
		// storage agent (not even the stand-in) ever acts on them.
	})

	pending := func(name string) *bootv1.BootSession {
		GinkgoHelper()
		s := fixture.Session(ns, name, "nobody", "nothing")
		Expect(k8sClient.Create(ctx, s)).To(Succeed())
		Eventually(view(ctx, s), eventually).Should(Equal(sessionView{bootv1.SessionPending, "False/" + bootv1.MachineNotFoundReason}))
		Expect(s.Finalizers).To(ConsistOf(bootv1.SessionFinalizer, bootv1.StorageFinalizer), "the manager's first write adds both")
		Expect(s.Status.StorageNode).To(BeEmpty())
		return s
	}

	It("stops a session never scheduled without any storage agent: the manager drops the storage finalizer", func() {
		s := pending("never")
		change(ctx, s, false, func(x *bootv1.BootSession) { x.Spec.Stopped = true })
		Eventually(view(ctx, s), eventually).Should(Equal(sessionView{bootv1.SessionStopped, "False/" + bootv1.StoppedReason}))
		Expect(s.Finalizers).To(ConsistOf(bootv1.SessionFinalizer))
		Expect(s.Status.Timeline.Stopped).NotTo(BeNil())
		Consistently(func() []string { return get(ctx, s)().Finalizers }, time.Second).Should(ConsistOf(bootv1.SessionFinalizer), "never added again")

		By("deleting it")
		Expect(k8sClient.Delete(ctx, s)).To(Succeed())
		Eventually(func() error { return k8sClient.Get(ctx, client.ObjectKeyFromObject(s), s) }, eventually).ShouldNot(Succeed())
	})

	It("deletes a session never scheduled without any storage agent", func() {
		s := pending("deleted")
		Expect(k8sClient.Delete(ctx, s)).To(Succeed())
		Eventually(func() error { return k8sClient.Get(ctx, client.ObjectKeyFromObject(s), s) }, eventually).ShouldNot(Succeed())
	})

	It("creates a session stopped with no storage finalizer", func() {
		s := fixture.Session(ns, "born-stopped", "nobody", "nothing")
		s.Spec.Stopped = true
		Expect(k8sClient.Create(ctx, s)).To(Succeed())
		Eventually(view(ctx, s), eventually).Should(Equal(sessionView{bootv1.SessionStopped, "False/" + bootv1.StoppedReason}))
		Expect(s.Finalizers).To(ConsistOf(bootv1.SessionFinalizer))
	})

	It("keeps the storage finalizer of a scheduled session that stops, until its agent releases it", func() {
		s := pending("scheduled")
		By("a status that says scheduled on a node with no agent (gone-*: the stand-in leaves it alone)")
		storageNode(ctx, "gone-"+ns, "10.20.0.7")
		change(ctx, s, true, func(x *bootv1.BootSession) { x.Status.StorageNode = "gone-" + ns })
		change(ctx, s, false, func(x *bootv1.BootSession) { x.Spec.Stopped = true })
		Eventually(view(ctx, s), eventually).Should(Equal(sessionView{bootv1.SessionStopping, "False/" + bootv1.StoppingReason}))
		Consistently(func() []string { return get(ctx, s)().Finalizers }, time.Second).Should(ContainElement(bootv1.StorageFinalizer))
		By("releasing it as the agent does, by a JSON patch that tests the entry")
		Expect(finalizer.Remove(ctx, k8sClient, k8sClient, s, bootv1.StorageFinalizer)).To(Succeed())
		Eventually(view(ctx, s), eventually).Should(Equal(sessionView{bootv1.SessionStopped, "False/" + bootv1.StoppedReason}))
		Expect(s.Finalizers).To(Equal([]string{bootv1.SessionFinalizer}))
	})
})

var _ = Describe("BootSessions at once", func() {
	It("all reach Ready and Stopped", func() {
		ctx := context.Background()
		ns := newNamespace(ctx)
		node := "storage-" + ns
		storageNode(ctx, node, "10.20.0.6")
		img := fixture.Image(ns, "win11")
		Expect(k8sClient.Create(ctx, img)).To(Succeed())
		readyReplica(ctx, img, node)
		Eventually(func() bootv1.ImagePhase { return get(ctx, img)().Status.Phase }, eventually).Should(Equal(bootv1.ImageReady))
		const n = 20
		var sessions []*bootv1.BootSession
		for i := range n {
			m := fixture.Machine(ns, fmt.Sprintf("pc-%d", i), fixture.WithMAC(fmt.Sprintf("52:54:00:aa:00:%02x", i)), fixture.WithAddress(fmt.Sprintf("10.30.0.%d", 10+i)))
			Expect(k8sClient.Create(ctx, m)).To(Succeed())
		}
		for i := range n {
			s := fixture.Session(ns, fmt.Sprintf("s-%d", i), fmt.Sprintf("pc-%d", i), "win11")
			Expect(k8sClient.Create(ctx, s)).To(Succeed())
			sessions = append(sessions, s)
		}
		for _, s := range sessions {
			Eventually(view(ctx, s), eventually).Should(Equal(sessionView{bootv1.SessionReady, "True/Succeeded"}), s.Name)
		}
		for _, s := range sessions {
			change(ctx, s, false, func(x *bootv1.BootSession) { x.Spec.Stopped = true })
		}
		for _, s := range sessions {
			Eventually(view(ctx, s), eventually).Should(Equal(sessionView{bootv1.SessionStopped, "False/Stopped"}), s.Name)
			Expect(s.Finalizers).To(ConsistOf(bootv1.SessionFinalizer))
		}
	})
})
