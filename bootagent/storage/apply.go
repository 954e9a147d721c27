package storage

import (
	"context"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	metav1ac "k8s.io/client-go/applyconfigurations/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// Every write of the agent's own fields is a server-side apply of a typed
// apply configuration (api/v1alpha1/applyconfiguration for GGnet's kinds,
// k8s.io/client-go/applyconfigurations for the Node) with this node's field
// manager (Config.FieldOwner), forced: the agent owns those fields, the
// manager and the other nodes' agents own theirs, and a keyed list is owned
// row by row (conditions by type, Image replicas by node, a Machine's
// persistent disks by node and image; api/v1alpha1's list markers).
//
// An apply removes what the same field manager applied before and leaves
// out now. So every object has one apply shape per role, which carries all
// the role owns on it:
//   - a BootSession's status: StorageReady, overlayPath, timeline.logins,
//     iscsiLogin, iscsiLogout (sessionStatus, written by the reconciler and
//     the login watcher from one record, statusBook);
//   - an Image's status: this node's replica row (imageReconciler.report);
//   - a Machine's status: this node's persistent disk rows (applyDisks);
//   - the Node's metadata: the portal and storage annotations (nodeMeta);
//   - the Node's status: the orphaned persistent disks condition
//     (reportOrphans).
// (On the Node, an agent limited to one namespace applies as its own
// manager: nodeFieldOwner.)
// Finalizers are not applied: they are added and removed by an update with
// optimistic locking, as the data they guard needs.

// apply server-side-applies obj (metadata and spec) with the field manager
// owner.
func (r *Role) apply(ctx context.Context, obj runtime.ApplyConfiguration, owner string) error {
	return r.mgr.GetClient().Apply(ctx, obj, client.FieldOwner(owner), client.ForceOwnership)
}

// applyStatus server-side-applies obj's status with the node's field
// manager (or owner, if given).
func (r *Role) applyStatus(ctx context.Context, obj runtime.ApplyConfiguration, owner ...string) error {
	o := r.cfg.FieldOwner()
	if len(owner) > 0 {
		o = owner[0]
	}
	return r.mgr.GetClient().Status().Apply(ctx, obj, client.FieldOwner(o), client.ForceOwnership)
}

// nodeFieldOwner is the field manager of the agent's writes of its Node: the
// node's, and for an agent limited to one namespace the namespace's too, so
// that the agents of two GGnet installations serving different namespaces on
// one node (the Node is the one object they share) do not remove each
// other's condition or annotation.
func (r *Role) nodeFieldOwner() string {
	if r.cfg.Namespace != "" {
		return r.cfg.FieldOwner() + "." + r.cfg.Namespace
	}
	return r.cfg.FieldOwner()
}

// condition is a condition as the agent applies it: its transition time kept
// from cur when the status did not change, else now (to the second, as the
// API server stores it).
func condition(cur *metav1.Condition, typ string, status metav1.ConditionStatus, reason, msg string, gen int64) *metav1.Condition {
	ltt := metav1.NewTime(time.Now().Truncate(time.Second))
	if cur != nil && cur.Status == status {
		ltt = cur.LastTransitionTime
	}
	return &metav1.Condition{Type: typ, Status: status, Reason: reason, Message: msg, ObservedGeneration: gen, LastTransitionTime: ltt}
}

// conditionApply is c as an apply configuration.
func conditionApply(c *metav1.Condition) *metav1ac.ConditionApplyConfiguration {
	return metav1ac.Condition().WithType(c.Type).WithStatus(c.Status).WithReason(c.Reason).WithMessage(c.Message).
		WithObservedGeneration(c.ObservedGeneration).WithLastTransitionTime(c.LastTransitionTime)
}
