package controllers

import (
	"context"
	"sync"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	bootv1 "github.com/ggnet/ggnet/api/v1alpha1"
	"github.com/ggnet/ggnet/internal/fixture"
)

// testLeaseDuration is the spec agents' leaseDurationSeconds: short, so
// that a Lease left alone expires soon.
const testLeaseDuration = 2

// holdLease plays a storage agent's Lease (bootagent/storage/lease.go):
// node's Lease in ns, made and renewed every 300 ms until the returned func
// is called.
func holdLease(ctx context.Context, ns, node string) (stop func()) {
	l := &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: bootv1.StorageLeaseName(node),
		Labels: map[string]string{bootv1.StorageLeaseLabel: "true"}}}
	renew := func() error {
		now := metav1.NewMicroTime(time.Now())
		holder, d := node, int32(testLeaseDuration)
		err := k8sClient.Get(ctx, client.ObjectKeyFromObject(l), l)
		if apierrors.IsNotFound(err) {
			l.Spec = coordinationv1.LeaseSpec{HolderIdentity: &holder, LeaseDurationSeconds: &d, RenewTime: &now}
			return k8sClient.Create(ctx, l)
		} else if err != nil {
			return err
		}
		l.Spec.RenewTime = &now
		return k8sClient.Update(ctx, l)
	}
	Expect(renew()).To(Succeed())
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-done:
				return
			case <-time.After(300 * time.Millisecond):
				_ = renew()
			}
		}
	}()
	var once sync.Once
	stop = func() { once.Do(func() { close(done); wg.Wait() }) }
	DeferCleanup(func(ctx context.Context) {
		stop()
		_ = k8sClient.Delete(ctx, l)
	})
	return stop
}

func reachable(ctx context.Context, s *bootv1.BootSession) func() string {
	return func() string {
		if err := k8sClient.Get(ctx, client.ObjectKeyFromObject(s), s); err != nil {
			return err.Error()
		}
		c := meta.FindStatusCondition(s.Status.Conditions, bootv1.StorageReachableCondition)
		if c == nil {
			return "none"
		}
		return string(c.Status) + "/" + c.Reason
	}
}

var _ = Describe("A storage node whose Lease expires while its Node stays", func() {
	It("marks its sessions StorageReachable=False, schedules nothing there, keeps them when renewed and fails them after the grace from the expiry", func() {
		ctx := context.Background()
		f := newGoneFixture(ctx, newNamespace(ctx))
		stop := holdLease(ctx, f.ns, f.node)
		live := f.readySession(ctx, "live", "seat-1")
		Consistently(reachable(ctx, live), 2*testLeaseDuration*time.Second, 250*time.Millisecond).Should(Equal("none"),
			"a session on a node that renews its Lease gets no condition")

		By("letting the Lease expire: StorageReachable=False, the session stays Ready")
		stop()
		Eventually(reachable(ctx, live), eventually).Should(Equal("False/StorageNodeUnreachable"))
		c := meta.FindStatusCondition(live.Status.Conditions, bootv1.StorageReachableCondition)
		Expect(c.Message).To(And(ContainSubstring("storage node "+f.node+" is unreachable since"), ContainSubstring("the 5s grace")))
		Expect(view(ctx, live)()).To(Equal(sessionView{bootv1.SessionReady, "True/Succeeded"}))
		Eventually(func() []string { return events(ctx, f.ns, bootv1.StorageLeaseName(f.node)) }, eventually).Should(
			ConsistOf(HavePrefix("StorageNodeUnreachable: storage node " + f.node + " is unreachable since")))

		By("scheduling no new session on it")
		Expect(k8sClient.Create(ctx, fixture.Machine(f.ns, "seat-2", fixture.WithMAC("52:54:00:00:9a:02"), fixture.WithAddress("10.20.0.72")))).To(Succeed())
		pinned := fixture.Session(f.ns, "pinned", "seat-2", "win11", fixture.WithStorageNode(f.node))
		Expect(k8sClient.Create(ctx, pinned)).To(Succeed())
		Eventually(view(ctx, pinned), eventually).Should(Equal(sessionView{bootv1.SessionPending, "False/NoStorageNode"}))
		Expect(meta.FindStatusCondition(pinned.Status.Conditions, bootv1.ReadyCondition).Message).To(ContainSubstring("has not renewed its Lease"))
		Expect(pinned.Status.StorageNode).To(BeEmpty())

		By("renewing it within the grace: True again, the session kept, the waiting one scheduled")
		stop = holdLease(ctx, f.ns, f.node)
		Eventually(reachable(ctx, live), eventually).Should(Equal("True/StorageNodeReachable"))
		Eventually(func() string { return get(ctx, pinned)().Status.StorageNode }, eventually).Should(Equal(f.node))
		Consistently(view(ctx, live), storageNodeGrace+time.Second, 250*time.Millisecond).Should(Equal(sessionView{bootv1.SessionReady, "True/Succeeded"}))

		By("letting it expire again: the session fails StorageNodeLost once the grace from the expiry passed, and its finalizer goes")
		stop()
		Eventually(reachable(ctx, live), eventually).Should(Equal("False/StorageNodeUnreachable"))
		expired := meta.FindStatusCondition(live.Status.Conditions, bootv1.StorageReachableCondition).LastTransitionTime.Time
		Consistently(view(ctx, live), time.Until(expired.Add(storageNodeGrace-500*time.Millisecond)), 100*time.Millisecond).Should(
			Equal(sessionView{bootv1.SessionReady, "True/Succeeded"}), "not failed within the grace")
		Eventually(view(ctx, live), eventually).Should(Equal(sessionView{bootv1.SessionFailed, "False/StorageNodeLost"}))
		Expect(meta.FindStatusCondition(live.Status.Conditions, bootv1.ReadyCondition).Message).To(
			And(ContainSubstring("storage node "+f.node+" is unreachable since"), ContainSubstring("longer than the 5s grace")))
		Eventually(finalizersOf(ctx, live), eventually).ShouldNot(ContainElement(bootv1.StorageFinalizer))
		Expect(k8sClient.Delete(ctx, live)).To(Succeed())
		Eventually(gone(ctx, live), eventually).Should(BeTrue())
	})

	It("fails nothing while the Node reports Ready (the agent is down, the machine and tgtd are up), and fails its sessions once the Node is not Ready", func() {
		ctx := context.Background()
		f := newGoneFixture(ctx, newNamespace(ctx))
		setNodeReady := func(st corev1.ConditionStatus) {
			n := &corev1.Node{}
			Expect(k8sClient.Get(ctx, client.ObjectKey{Name: f.node}, n)).To(Succeed())
			n.Status.Conditions = []corev1.NodeCondition{{Type: corev1.NodeReady, Status: st, Reason: "KubeletReady",
				LastHeartbeatTime: metav1.Now(), LastTransitionTime: metav1.Now()}}
			Expect(k8sClient.Status().Update(ctx, n)).To(Succeed())
		}
		setNodeReady(corev1.ConditionTrue)
		stop := holdLease(ctx, f.ns, f.node)
		live := f.readySession(ctx, "live", "seat-1")
		stop()
		Eventually(reachable(ctx, live), eventually).Should(Equal("False/StorageNodeUnreachable"))
		expired := meta.FindStatusCondition(live.Status.Conditions, bootv1.StorageReachableCondition).LastTransitionTime.Time
		By("past the grace from the expiry: still Ready, its storage finalizer kept")
		time.Sleep(time.Until(expired.Add(storageNodeGrace)))
		Consistently(view(ctx, live), 3*time.Second, 250*time.Millisecond).Should(Equal(sessionView{bootv1.SessionReady, "True/Succeeded"}))
		Expect(finalizersOf(ctx, live)()).To(ContainElement(bootv1.StorageFinalizer))

		By("the Node turning not Ready (the machine is gone): the session fails StorageNodeLost")
		setNodeReady(corev1.ConditionUnknown)
		Eventually(view(ctx, live), eventually).Should(Equal(sessionView{bootv1.SessionFailed, "False/StorageNodeLost"}))
	})

	It("leaves a node without a Lease schedulable, its sessions without the condition", func() {
		ctx := context.Background()
		f := newGoneFixture(ctx, newNamespace(ctx))
		live := f.readySession(ctx, "live", "seat-1")
		Consistently(reachable(ctx, live), 2*time.Second, 250*time.Millisecond).Should(Equal("none"))
		Expect(view(ctx, live)()).To(Equal(sessionView{bootv1.SessionReady, "True/Succeeded"}))
	})
})
