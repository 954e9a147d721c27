package controllers

import (
	"context"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	admissionv1 "k8s.io/api/admissionregistration/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	bootv1 "github.com/ggnet/ggnet/api/v1alpha1"
	"github.com/ggnet/ggnet/internal/fixture"
)

// storageDownLabel marks the sessions whose storage the spec holds down.
const storageDownLabel = "test.ggnet.io/storage-down"

// holdStorageDown installs a ValidatingAdmissionPolicy that refuses every
// status write making StorageReady True on sessions labelled
// storageDownLabel: the stand-in storage agent cannot restore it, as a real
// agent could not while tgtd is down. It returns when the policy is in force.
func holdStorageDown(ctx context.Context, name string) {
	GinkgoHelper()
	deny := admissionv1.Deny
	fail := admissionv1.Fail
	policy := &admissionv1.ValidatingAdmissionPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: admissionv1.ValidatingAdmissionPolicySpec{
			FailurePolicy: &fail,
			MatchConstraints: &admissionv1.MatchResources{ResourceRules: []admissionv1.NamedRuleWithOperations{{
				RuleWithOperations: admissionv1.RuleWithOperations{
					Operations: []admissionv1.OperationType{admissionv1.Update},
					Rule: admissionv1.Rule{APIGroups: []string{bootv1.GroupVersion.Group}, APIVersions: []string{"*"},
						Resources: []string{"bootsessions/status"}},
				},
			}}},
			Validations: []admissionv1.Validation{{
				Expression: `!has(object.status.conditions) || !object.status.conditions.exists(c, c.type == 'StorageReady' && c.status == 'True')`,
				Message:    "the spec holds this session's storage down",
			}},
		},
	}
	binding := &admissionv1.ValidatingAdmissionPolicyBinding{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: admissionv1.ValidatingAdmissionPolicyBindingSpec{
			PolicyName:        name,
			ValidationActions: []admissionv1.ValidationAction{deny},
			MatchResources: &admissionv1.MatchResources{ObjectSelector: &metav1.LabelSelector{
				MatchLabels: map[string]string{storageDownLabel: "true"}}},
		},
	}
	Expect(k8sClient.Create(ctx, policy)).To(Succeed())
	Expect(k8sClient.Create(ctx, binding)).To(Succeed())
	DeferCleanup(func(ctx context.Context) {
		Expect(client.IgnoreNotFound(k8sClient.Delete(ctx, binding))).To(Succeed())
		Expect(client.IgnoreNotFound(k8sClient.Delete(ctx, policy))).To(Succeed())
	})
}

// setStorageReady writes the storage agent's condition as a real agent
// would (its own field owner).
func setStorageReady(ctx context.Context, s *bootv1.BootSession, status metav1.ConditionStatus, reason, msg string) {
	GinkgoHelper()
	change(ctx, s, true, func(x *bootv1.BootSession) {
		meta.SetStatusCondition(&x.Status.Conditions, metav1.Condition{Type: bootv1.StorageReadyCondition,
			Status: status, Reason: reason, Message: msg})
	})
}

var _ = Describe("BootSession storage faults", func() {
	It("keeps a Ready session Active when its storage reports TargetUnavailable, and never fails it", func() {
		ctx := context.Background()
		ns := newNamespace(ctx)
		node := "storage-" + ns
		storageNode(ctx, node, "10.20.0.5")
		img := fixture.Image(ns, "win11")
		Expect(k8sClient.Create(ctx, img)).To(Succeed())
		readyReplica(ctx, img, node)
		Expect(k8sClient.Create(ctx, fixture.Machine(ns, "seat-1", fixture.WithMAC("52:54:00:00:0f:01"), fixture.WithAddress("10.20.0.61")))).To(Succeed())

		s := fixture.Session(ns, "s", "seat-1", "win11")
		Expect(k8sClient.Create(ctx, s)).To(Succeed())
		Eventually(view(ctx, s), eventually).Should(Equal(sessionView{bootv1.SessionReady, "True/Succeeded"}))
		Expect(s.Status.Timeline.StorageReady).NotTo(BeNil())
		now := metav1.Now()
		change(ctx, s, true, func(x *bootv1.BootSession) { x.Status.Timeline.ISCSILogin = &now })
		Eventually(view(ctx, s), eventually).Should(Equal(sessionView{bootv1.SessionActive, "True/Succeeded"}))

		By("holding the storage down: StorageReady=False TargetUnavailable")
		holdStorageDown(ctx, "storage-down-"+ns)
		change(ctx, s, false, func(x *bootv1.BootSession) { metav1.SetMetaDataLabel(&x.ObjectMeta, storageDownLabel, "true") })
		// The policy is in force once it refuses a (dry-run) write of True.
		Eventually(func() error {
			x := &bootv1.BootSession{}
			if err := k8sClient.Get(ctx, client.ObjectKeyFromObject(s), x); err != nil {
				return err
			}
			meta.SetStatusCondition(&x.Status.Conditions, metav1.Condition{Type: bootv1.StorageReadyCondition,
				Status: metav1.ConditionTrue, Reason: bootv1.SucceededReason, Message: "target ready"})
			return k8sClient.Status().Update(ctx, x, client.DryRunAll)
		}, eventually).Should(MatchError(ContainSubstring("holds this session's storage down")))
		setStorageReady(ctx, s, metav1.ConditionFalse, bootv1.TargetUnavailableReason,
			"cannot make the iSCSI target (retrying with backoff; the overlay is kept): connection refused")

		Eventually(func() string {
			_ = k8sClient.Get(ctx, client.ObjectKeyFromObject(s), s)
			return meta.FindStatusCondition(s.Status.Conditions, bootv1.ReadyCondition).Message
		}, eventually).Should(ContainSubstring("StorageReady=False TargetUnavailable"))
		Consistently(func(g Gomega) {
			g.Expect(k8sClient.Get(ctx, client.ObjectKeyFromObject(s), s)).To(Succeed())
			g.Expect(sessionView{s.Status.Phase, readyReason(s.Status.Conditions)}).To(Equal(sessionView{bootv1.SessionActive, "True/Succeeded"}),
				"a session that was StorageReady is never Failed by StorageReady=False")
			g.Expect(s.Finalizers).To(ContainElement(bootv1.StorageFinalizer), "the storage finalizer is kept")
			g.Expect(s.Status.Timeline.Stopped).To(BeNil())
			g.Expect(s.Status.Timeline.Stopping).To(BeNil())
			c := meta.FindStatusCondition(s.Status.Conditions, bootv1.StorageReadyCondition)
			g.Expect(c.Reason).To(Equal(bootv1.TargetUnavailableReason))
		}, 5*time.Second, 250*time.Millisecond).Should(Succeed())
		Eventually(func() []string { return events(ctx, ns, s.Name) }, eventually).Should(ContainElement(HavePrefix(bootv1.TargetUnavailableReason+": ")), "a Warning Event with the condition's reason")

		By("a permanent-looking reason on a session that was StorageReady does not fail it either")
		setStorageReady(ctx, s, metav1.ConditionFalse, bootv1.StorageFailedReason, "disk full")
		Consistently(view(ctx, s), 3*time.Second, 250*time.Millisecond).Should(Equal(sessionView{bootv1.SessionActive, "True/Succeeded"}))

		By("the storage comes back: StorageReady=True and the session goes on")
		change(ctx, s, false, func(x *bootv1.BootSession) { delete(x.Labels, storageDownLabel) })
		Eventually(func() bool {
			_ = k8sClient.Get(ctx, client.ObjectKeyFromObject(s), s)
			return meta.IsStatusConditionTrue(s.Status.Conditions, bootv1.StorageReadyCondition) &&
				!meta.IsStatusConditionFalse(s.Status.Conditions, bootv1.ReadyCondition) &&
				meta.FindStatusCondition(s.Status.Conditions, bootv1.ReadyCondition).Message == "the machine can boot; phase Active"
		}, eventually).Should(BeTrue())
		Expect(s.Status.Phase).To(Equal(bootv1.SessionActive))

		By("only the stop tears it down")
		change(ctx, s, false, func(x *bootv1.BootSession) { x.Spec.Stopped = true })
		Eventually(view(ctx, s), eventually).Should(Equal(sessionView{bootv1.SessionStopped, "False/Stopped"}))
	})
})
