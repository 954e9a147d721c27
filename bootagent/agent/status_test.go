package agent

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
	"github.com/insomniacslk/dhcp/dhcpv4"
	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	metav1ac "k8s.io/client-go/applyconfigurations/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/interceptor"

	bootv1 "github.com/ggnet/ggnet/api/v1alpha1"
	bootac "github.com/ggnet/ggnet/api/v1alpha1/applyconfiguration/api/v1alpha1"
	"github.com/ggnet/ggnet/bootagent/table"
	"github.com/ggnet/ggnet/internal/fixture"
	"github.com/ggnet/ggnet/internal/scheme"
)

// ownedBy is the status fields a field manager owns on obj, as the API
// server's managedFields say (its FieldsV1, raw).
func ownedBy(obj client.Object, manager string) string {
	var out []string
	for _, e := range obj.GetManagedFields() {
		if e.Manager == manager && e.Subresource == "status" && e.FieldsV1 != nil {
			out = append(out, e.FieldsV1.GetRawString())
		}
	}
	return strings.Join(out, "\n")
}

var _ = Describe("Boot agent's status writes", func() {
	It("apply its three fields in one shape beside the manager's and the storage agent's, and a stale cache takes none back", func() {
		ctx := context.Background()
		ns := newNamespace(ctx)
		m := fixture.Machine(ns, "seat-041", fixture.WithMAC("52:54:00:12:34:41"), fixture.WithAddress("10.20.0.141"))
		Expect(k8sClient.Create(ctx, m)).To(Succeed())
		s := fixture.Session(ns, "seat-041-a", "seat-041", "win11")
		Expect(k8sClient.Create(ctx, s)).To(Succeed())
		makeReady(ctx, k8sClient, s, "52:54:00:12:34:41", sessionToken)
		key := ns + "/" + s.Name

		By("the manager's condition (merge patch with optimistic lock, as controllers/ writes) and the storage agent's (its own apply)")
		base := s.DeepCopy()
		meta.SetStatusCondition(&s.Status.Conditions, metav1.Condition{Type: bootv1.ReadyCondition, Status: metav1.ConditionTrue,
			Reason: "SessionReady", Message: "ready"})
		Expect(k8sClient.Status().Patch(ctx, s, client.MergeFromWithOptions(base, client.MergeFromWithOptimisticLock{}),
			client.FieldOwner("manager"))).To(Succeed())
		storageReady := func(status metav1.ConditionStatus) {
			Expect(k8sClient.Status().Apply(ctx, bootac.BootSession(s.Name, ns).WithStatus(bootac.BootSessionStatus().WithConditions(
				metav1ac.Condition().WithType(bootv1.StorageReadyCondition).WithStatus(status).WithReason("TargetReady").
					WithMessage("overlay and iSCSI target ready").WithLastTransitionTime(metav1.Now()))),
				client.FieldOwner("ggnet-storage-n1"), client.ForceOwnership)).To(Succeed())
		}
		storageReady(metav1.ConditionTrue)

		By("a recorder whose reads return the session as it was before any of its writes (a cache that lags)")
		stale := &bootv1.BootSession{}
		Expect(k8sClient.Get(ctx, client.ObjectKeyFromObject(s), stale)).To(Succeed())
		direct, err := client.NewWithWatch(restCfg, client.Options{Scheme: scheme.New()})
		Expect(err).NotTo(HaveOccurred())
		var applies atomic.Int32
		c := interceptor.NewClient(direct, interceptor.Funcs{
			Get: func(ctx context.Context, c client.WithWatch, k client.ObjectKey, obj client.Object, opts ...client.GetOption) error {
				if got, ok := obj.(*bootv1.BootSession); ok && k == client.ObjectKeyFromObject(stale) {
					stale.DeepCopyInto(got)
					return nil
				}
				return c.Get(ctx, k, obj, opts...)
			},
			SubResourceApply: func(ctx context.Context, c client.Client, sub string, obj runtime.ApplyConfiguration, opts ...client.SubResourceApplyOption) error {
				applies.Add(1)
				return c.SubResource(sub).Apply(ctx, obj, opts...)
			},
		})
		r := newRecorder(c, table.New(), logr.Discard(), nil)
		served, acked, failed := time.Now().Add(-3*time.Second), time.Now().Add(-5*time.Second), time.Now()
		Expect(r.writeSession(ctx, key, &pendingRecord{served: served})).To(Succeed())
		Expect(r.writeSession(ctx, key, &pendingRecord{dhcp: acked})).To(Succeed())
		Expect(r.writeSession(ctx, key, &pendingRecord{failed: "0x0216eb3c", failedAt: failed})).To(Succeed())
		Expect(applies.Load()).To(Equal(int32(3)))
		By("the same news again is no write")
		Expect(r.writeSession(ctx, key, &pendingRecord{served: time.Now(), dhcp: acked.Add(time.Second)})).To(Succeed())
		Expect(applies.Load()).To(Equal(int32(3)))

		check := func(managerReady, storage metav1.ConditionStatus) {
			got := &bootv1.BootSession{}
			Expect(k8sClient.Get(ctx, client.ObjectKeyFromObject(s), got)).To(Succeed())
			tl := got.Status.Timeline
			Expect(tl.ScriptServed).NotTo(BeNil(), "the first write's field survived the next two")
			Expect(tl.ScriptServed.Unix()).To(Equal(served.Unix()))
			Expect(tl.DHCP).NotTo(BeNil())
			Expect(tl.DHCP.Unix()).To(Equal(acked.Unix()))
			Expect(meta.IsStatusConditionTrue(got.Status.Conditions, bootv1.BootFailedCondition)).To(BeTrue())
			Expect(meta.FindStatusCondition(got.Status.Conditions, bootv1.BootFailedCondition).Message).To(ContainSubstring("0x0216eb3c"))
			Expect(meta.FindStatusCondition(got.Status.Conditions, bootv1.ReadyCondition).Status).To(Equal(managerReady), "the manager's condition")
			Expect(meta.FindStatusCondition(got.Status.Conditions, bootv1.StorageReadyCondition).Status).To(Equal(storage), "the storage agent's")
			owned := ownedBy(got, FieldOwner)
			Expect(owned).To(ContainSubstring(`"f:dhcp"`))
			Expect(owned).To(ContainSubstring(`"f:scriptServed"`))
			Expect(owned).To(ContainSubstring(`k:{\"type\":\"BootFailed\"}`))
			Expect(owned).NotTo(ContainSubstring(`k:{\"type\":\"Ready\"}`))
			Expect(owned).NotTo(ContainSubstring(`k:{\"type\":\"StorageReady\"}`))
		}
		check(metav1.ConditionTrue, metav1.ConditionTrue)

		By("the manager's and the storage agent's next writes leave the boot agent's fields")
		Expect(k8sClient.Get(ctx, client.ObjectKeyFromObject(s), s)).To(Succeed())
		base = s.DeepCopy()
		meta.SetStatusCondition(&s.Status.Conditions, metav1.Condition{Type: bootv1.ReadyCondition, Status: metav1.ConditionFalse,
			Reason: "SessionFailed", Message: "failed"})
		Expect(k8sClient.Status().Patch(ctx, s, client.MergeFromWithOptions(base, client.MergeFromWithOptimisticLock{}),
			client.FieldOwner("manager"))).To(Succeed())
		storageReady(metav1.ConditionFalse)
		check(metav1.ConditionFalse, metav1.ConditionFalse)
	})

	It("of two agents on one boot LAN, with field managers of their own, never remove each other's fields", func() {
		ctx := context.Background()
		ns := newNamespace(ctx)
		Expect(k8sClient.Create(ctx, fixture.Machine(ns, "seat-042", fixture.WithMAC("52:54:00:12:34:42"), fixture.WithAddress("10.20.0.142")))).To(Succeed())
		s := fixture.Session(ns, "seat-042-a", "seat-042", "win11")
		Expect(k8sClient.Create(ctx, s)).To(Succeed())
		makeReady(ctx, k8sClient, s, "52:54:00:12:34:42", sessionToken)
		key := ns + "/" + s.Name
		stale := &bootv1.BootSession{}
		Expect(k8sClient.Get(ctx, client.ObjectKeyFromObject(s), stale)).To(Succeed())
		staleReads := func() client.Client {
			direct, err := client.NewWithWatch(restCfg, client.Options{Scheme: scheme.New()})
			Expect(err).NotTo(HaveOccurred())
			return interceptor.NewClient(direct, interceptor.Funcs{
				Get: func(ctx context.Context, c client.WithWatch, k client.ObjectKey, obj client.Object, opts ...client.GetOption) error {
					if got, ok := obj.(*bootv1.BootSession); ok && k == client.ObjectKeyFromObject(stale) {
						stale.DeepCopyInto(got)
						return nil
					}
					return c.Get(ctx, k, obj, opts...)
				},
			})
		}
		a := newRecorder(staleReads(), table.New(), logr.Discard(), nil)
		a.owner = fieldOwner("boot-a")
		b := newRecorder(staleReads(), table.New(), logr.Discard(), nil)
		b.owner = fieldOwner("boot-b")
		Expect(a.owner).To(Equal("ggnet-bootagent-boot-a"))

		By("agent a records the DHCP ACK; agent b, whose cache has not seen it, the script it served")
		acked, served := time.Now().Add(-2*time.Second), time.Now()
		Expect(a.writeSession(ctx, key, &pendingRecord{dhcp: acked})).To(Succeed())
		Expect(b.writeSession(ctx, key, &pendingRecord{served: served})).To(Succeed())
		got := &bootv1.BootSession{}
		Expect(k8sClient.Get(ctx, client.ObjectKeyFromObject(s), got)).To(Succeed())
		Expect(got.Status.Timeline.ScriptServed).NotTo(BeNil())
		Expect(got.Status.Timeline.DHCP).NotTo(BeNil(), "agent b's apply removed agent a's DHCP time")
		Expect(got.Status.Timeline.DHCP.Unix()).To(Equal(acked.Unix()))
	})
})

var _ = Describe("Boot agent's recorder", func() {
	It("is bounded and only adds to its queues on the request paths, which repeat no key", func() {
		tbl := table.New()
		r := newRecorder(nil, tbl, logr.Discard(), nil) // not run: nothing is taken from the queues

		By("past maxPending keys a new record is dropped and counted; a waiting key takes more news")
		for i := range maxPending {
			r.ScriptServed(fmt.Sprintf("ns/s-%d", i))
		}
		r.BootFailed("ns/s-0", "0x1")
		Expect(r.queue.Len()).To(Equal(maxPending))
		Expect(testutil.ToFloat64(r.dropped)).To(BeZero())
		r.RequestSession(table.Machine{Key: "ns/m"})
		Expect(r.queue.Len()).To(Equal(maxPending))
		Expect(testutil.ToFloat64(r.dropped)).To(Equal(1.0))
		Expect(r.pending[recordKey{sessionRecord, "ns/s-0"}].failed).To(Equal("0x1"))

		By("DHCP ACKs of one session, however many, wait as one with the first ACK's time")
		hw := "52:54:00:12:34:51"
		m := fixture.Machine("ns", "seat-051", fixture.WithMAC(hw))
		e, ok := machineEntry(m)
		Expect(ok).To(BeTrue())
		tbl.UpsertMachine(e)
		s := fixture.Session("ns", "seat-051-a", "seat-051", "win11")
		s.Status.MAC, s.Status.Phase = hw, bootv1.SessionReady
		s.Status.Target = &bootv1.ISCSITarget{Portal: "127.0.0.1:3260", IQN: "iqn.2026-11.io.ggnet:ns:seat-051-a"}
		tbl.UpsertSession(sessionEntry(s))
		tbl.UpsertSecret("ns/seat-051-a", table.Secret{Credentials: creds, Token: sessionToken})
		_, ok = tbl.Session(mustMAC(hw))
		Expect(ok).To(BeTrue())
		first := time.Now()
		for range 10000 {
			r.Answered(mustMAC(hw), dhcpv4.MessageTypeAck, netip.MustParseAddr("10.20.0.151"))
		}
		Expect(r.dhcpQueue.Len()).To(Equal(1))
		Expect(r.dhcpAt).To(HaveLen(1))
		Expect(r.dhcpAt["ns/seat-051-a"]).To(BeTemporally("~", first, time.Second))
		r.Answered(mustMAC(hw), dhcpv4.MessageTypeOffer, netip.MustParseAddr("10.20.0.151"))
		Expect(r.dhcpQueue.Len()).To(Equal(1), "only ACKs are recorded")
	})
})
