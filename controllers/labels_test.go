package controllers

import (
	"context"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	"sigs.k8s.io/controller-runtime/pkg/client"

	bootv1 "github.com/ggnet/ggnet/api/v1alpha1"
	"github.com/ggnet/ggnet/internal/fixture"
)

var _ = Describe("Finding sessions with kubectl get bs -l / --field-selector", func() {
	It("labels every session with its machine, image and, once scheduled, storage node; and selects by spec and status fields", func() {
		ctx := context.Background()
		ns := newNamespace(ctx)
		node := "storage-" + ns
		storageNode(ctx, node, "10.20.0.5")
		for _, name := range []string{"win11", "linux"} {
			img := fixture.Image(ns, name)
			Expect(k8sClient.Create(ctx, img)).To(Succeed())
			readyReplica(ctx, img, node)
		}
		Expect(k8sClient.Create(ctx, fixture.Machine(ns, "seat-1"))).To(Succeed())
		Expect(k8sClient.Create(ctx, fixture.Machine(ns, "seat-2", fixture.WithMAC("52:54:00:12:34:57"), fixture.WithAddress("10.20.0.32")))).To(Succeed())
		a := fixture.Session(ns, "a", "seat-1", "win11")
		b := fixture.Session(ns, "b", "seat-2", "linux")
		c := fixture.Session(ns, "c", "seat-3", "linux") // no such Machine: Pending, never scheduled
		for _, s := range []*bootv1.BootSession{a, b, c} {
			Expect(k8sClient.Create(ctx, s)).To(Succeed())
		}
		Eventually(view(ctx, a), eventually).Should(Equal(sessionView{bootv1.SessionReady, "True/Succeeded"}))
		Eventually(view(ctx, b), eventually).Should(Equal(sessionView{bootv1.SessionReady, "True/Succeeded"}))
		Eventually(view(ctx, c), eventually).Should(Equal(sessionView{bootv1.SessionPending, "False/MachineNotFound"}))
		Expect(a.Labels).To(Equal(map[string]string{bootv1.MachineLabel: "seat-1", bootv1.ImageLabel: "win11", bootv1.StorageNodeOfSessionLabel: node}))
		Expect(c.Labels).To(Equal(map[string]string{bootv1.MachineLabel: "seat-3", bootv1.ImageLabel: "linux"}))

		names := func(opts ...client.ListOption) []string {
			var list bootv1.BootSessionList
			Expect(k8sClient.List(ctx, &list, append(opts, client.InNamespace(ns))...)).To(Succeed())
			var out []string
			for _, s := range list.Items {
				out = append(out, s.Name)
			}
			return out
		}
		By("label selectors")
		Expect(names(client.MatchingLabels{bootv1.MachineLabel: "seat-1"})).To(ConsistOf("a"))
		Expect(names(client.MatchingLabels{bootv1.ImageLabel: "linux"})).To(ConsistOf("b", "c"))
		Expect(names(client.MatchingLabels{bootv1.StorageNodeOfSessionLabel: node})).To(ConsistOf("a", "b"))
		Expect(names(client.MatchingLabels{bootv1.ImageLabel: "linux", bootv1.StorageNodeOfSessionLabel: node})).To(ConsistOf("b"))

		By("field selectors, served by the API server (selectableFields)")
		Expect(names(client.MatchingFields{"spec.machineRef.name": "seat-2"})).To(ConsistOf("b"))
		Expect(names(client.MatchingFields{"spec.imageRef.name": "win11"})).To(ConsistOf("a"))
		Expect(names(client.MatchingFields{"status.phase": string(bootv1.SessionPending)})).To(ConsistOf("c"))
		Expect(names(client.MatchingFields{"status.storageNode": node})).To(ConsistOf("a", "b"))

		By("a label changed by hand is set back to the truth")
		change(ctx, a, false, func(s *bootv1.BootSession) { s.Labels[bootv1.MachineLabel] = "seat-2" })
		// Touch the session so that the manager reconciles it.
		change(ctx, a, false, func(s *bootv1.BootSession) { s.Annotations = map[string]string{"touch": "1"} })
		Eventually(func() []string { return names(client.MatchingLabels{bootv1.MachineLabel: "seat-2"}) }, eventually).Should(ConsistOf("b"))
	})
})
