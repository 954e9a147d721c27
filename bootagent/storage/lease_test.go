package storage

import (
	"context"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	coordinationv1 "k8s.io/api/coordination/v1"
	"k8s.io/apimachinery/pkg/types"

	bootv1 "github.com/ggnet/ggnet/api/v1alpha1"
)

var _ = Describe("The storage role's Lease", func() {
	It("is made when the role starts, renewed every 10 s, and made again when deleted", func() {
		ctx := context.Background()
		key := types.NamespacedName{Namespace: "default", Name: bootv1.StorageLeaseName(nodeName)}
		runRole()

		lease := &coordinationv1.Lease{}
		Eventually(func() error { return k8sClient.Get(ctx, key, lease) }, 20*time.Second).Should(Succeed())
		Expect(lease.Spec.HolderIdentity).To(HaveValue(Equal(nodeName)))
		Expect(lease.Labels).To(HaveKeyWithValue(bootv1.StorageLeaseLabel, "true"), "the manager caches only labelled Leases")
		Expect(lease.Spec.LeaseDurationSeconds).To(HaveValue(BeEquivalentTo(bootv1.StorageLeaseDurationSeconds)))
		Expect(lease.Spec.RenewTime).NotTo(BeNil())
		first := lease.Spec.RenewTime.Time

		By("renewing it")
		Eventually(func() time.Time {
			l := &coordinationv1.Lease{}
			if k8sClient.Get(ctx, key, l) != nil || l.Spec.RenewTime == nil {
				return time.Time{}
			}
			return l.Spec.RenewTime.Time
		}, 3*bootv1.StorageLeaseRenewSeconds*time.Second, 500*time.Millisecond).Should(BeTemporally(">", first))

		By("making it again once deleted")
		Expect(k8sClient.Delete(ctx, lease)).To(Succeed())
		Eventually(func() error { return k8sClient.Get(ctx, key, &coordinationv1.Lease{}) },
			3*bootv1.StorageLeaseRenewSeconds*time.Second, 500*time.Millisecond).Should(Succeed())
	})
})
