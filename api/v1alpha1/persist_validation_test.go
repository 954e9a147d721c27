package v1alpha1_test

import (
	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	"sigs.k8s.io/controller-runtime/pkg/client"

	bootv1 "github.com/ggnet/ggnet/api/v1alpha1"
	"github.com/ggnet/ggnet/internal/fixture"
)

var _ = Describe("Machine persistentDisks validation", func() {
	It("defaults onDelete to Retain and lets resetGeneration only grow", func() {
		ns := newNamespace()
		m := fixture.Machine(ns, "seat-1", func(m *bootv1.Machine) { m.Spec.PersistentDisks = &bootv1.PersistentDiskPolicy{} })
		Expect(k8sClient.Create(ctx, m)).To(Succeed())
		Expect(m.Spec.PersistentDisks.OnDelete).To(Equal(bootv1.PersistentDiskRetain))

		m.Spec.PersistentDisks.ResetGeneration = 2
		Expect(k8sClient.Update(ctx, m)).To(Succeed(), "raising it resets the disks")

		lower := m.DeepCopy()
		lower.Spec.PersistentDisks.ResetGeneration = 1
		expectRefused(k8sClient.Update(ctx, lower), "spec.persistentDisks.resetGeneration", "resetGeneration may only grow")
		unset := m.DeepCopy()
		unset.Spec.PersistentDisks.ResetGeneration = 0
		expectRefused(k8sClient.Update(ctx, unset), "resetGeneration may only grow")
		dropped := m.DeepCopy()
		dropped.Spec.PersistentDisks = nil
		expectRefused(k8sClient.Update(ctx, dropped), "resetGeneration may only grow")

		m.Spec.PersistentDisks.OnDelete = bootv1.PersistentDiskDelete
		Expect(k8sClient.Update(ctx, m)).To(Succeed(), "onDelete may change")
		Expect(k8sClient.Get(ctx, client.ObjectKeyFromObject(m), m)).To(Succeed())
		Expect(m.Spec.PersistentDisks.ResetGeneration).To(Equal(int64(2)))
	})

	It("refuses an unknown onDelete and a negative resetGeneration", func() {
		ns := newNamespace()
		expectRefused(k8sClient.Create(ctx, fixture.Machine(ns, "seat-1", func(m *bootv1.Machine) {
			m.Spec.PersistentDisks = &bootv1.PersistentDiskPolicy{OnDelete: "Archive"}
		})), "spec.persistentDisks.onDelete", `Unsupported value: "Archive"`)
		expectRefused(k8sClient.Create(ctx, fixture.Machine(ns, "seat-2", func(m *bootv1.Machine) {
			m.Spec.PersistentDisks = &bootv1.PersistentDiskPolicy{ResetGeneration: -1}
		})), "spec.persistentDisks.resetGeneration", "greater than or equal to 0")
	})
})
