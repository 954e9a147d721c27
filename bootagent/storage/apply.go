package storage

import (
	"context"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/controller-runtime/pkg/client"

	bootv1 "github.com/ggnet/ggnet/api/v1alpha1"
)

// applyStatus server-side-applies status fields with this node's field
// manager: the agent owns its condition and fields, the manager owns its own.
func applyStatus(ctx context.Context, c client.Client, owner string, obj client.Object, kind string, status map[string]any) error {
	u := &unstructured.Unstructured{}
	u.SetAPIVersion(bootv1.GroupVersion.String())
	u.SetKind(kind)
	u.SetNamespace(obj.GetNamespace())
	u.SetName(obj.GetName())
	u.Object["status"] = status
	return c.Status().Apply(ctx, client.ApplyConfigurationFromUnstructured(u), client.FieldOwner(owner), client.ForceOwnership)
}

// condition renders one condition for apply, keeping its transition time
// when its status did not change.
func condition(existing []metav1.Condition, typ string, status metav1.ConditionStatus, reason, msg string, gen int64) map[string]any {
	ltt := metav1.Now()
	if c := meta.FindStatusCondition(existing, typ); c != nil && c.Status == status {
		ltt = c.LastTransitionTime
	}
	return map[string]any{
		"type": typ, "status": string(status), "reason": reason, "message": msg,
		"observedGeneration": gen, "lastTransitionTime": ltt.UTC().Format(time.RFC3339),
	}
}
