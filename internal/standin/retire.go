package standin

import (
	"context"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	bootv1 "github.com/ggnet/ggnet/api/v1alpha1"
)

// Retire plays the storage agent's answer to bootv1.RetireAnnotation
// through the API: on a scheduled session with StorageReady=True it applies
// Retire=False InUse when the timeline has an iSCSI login, else Retire=True
// Unused (the stand-in has no target to unbind). Sessions on nodes named
// "manual-retire-*" are left for the spec to answer. It applies with a field
// manager of its own, apart from Storage's StorageReady.
type Retire struct {
	client.Client
}

// RetireFieldOwner is the field manager of Retire's answers.
const RetireFieldOwner = "stand-in-retire"

func (s *Retire) SetupWithManager(mgr ctrl.Manager) error {
	return ctrl.NewControllerManagedBy(mgr).Named("stand-in-retire").For(&bootv1.BootSession{}).Complete(s)
}

func (s *Retire) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	bs := &bootv1.BootSession{}
	if err := s.Get(ctx, req.NamespacedName, bs); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	node := bs.Status.StorageNode
	if _, asked := bs.Annotations[bootv1.RetireAnnotation]; !asked || node == "" || strings.HasPrefix(node, "gone-") ||
		strings.HasPrefix(node, "manual-retire-") || bs.Spec.Stopped || bs.DeletionTimestamp != nil ||
		!meta.IsStatusConditionTrue(bs.Status.Conditions, bootv1.StorageReadyCondition) ||
		meta.FindStatusCondition(bs.Status.Conditions, bootv1.RetireCondition) != nil {
		return ctrl.Result{}, nil
	}
	used := bs.Status.Timeline.ISCSILogin != nil || len(bs.Status.Timeline.Logins) > 0
	return ctrl.Result{}, client.IgnoreNotFound(ApplyRetire(ctx, s.Client, bs, !used, RetireFieldOwner))
}

// ApplyRetire applies a session's Retire condition as the storage agent
// does: True Unused, or False InUse, with the field manager owner.
func ApplyRetire(ctx context.Context, c client.Client, bs *bootv1.BootSession, unused bool, owner string) error {
	status, reason := metav1.ConditionTrue, bootv1.RetireUnusedReason
	if !unused {
		status, reason = metav1.ConditionFalse, bootv1.InUseReason
	}
	u := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": bootv1.GroupVersion.String(), "kind": "BootSession",
		"metadata": map[string]any{"namespace": bs.Namespace, "name": bs.Name},
		"status": map[string]any{"conditions": []any{map[string]any{
			"type": bootv1.RetireCondition, "status": string(status), "reason": reason, "message": "stand-in storage agent",
			"observedGeneration": bs.Generation, "lastTransitionTime": time.Now().UTC().Truncate(time.Second).Format(time.RFC3339)}}},
	}}
	return c.Status().Apply(ctx, client.ApplyConfigurationFromUnstructured(u), client.FieldOwner(owner), client.ForceOwnership)
}
