// Package standin holds a stand-in storage agent for the controllers' tests
// and benchmarks: it plays the storage agent's part through the API only.
package standin

import (
	"context"
	"strings"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"

	bootv1 "github.com/ggnet/ggnet/api/v1alpha1"
)

// Storage plays the storage agent through the API: for each session
// scheduled on a node it holds the storage finalizer and reports
// StorageReady with its own field owner; on stop or delete it tears down
// (instantly) and releases the finalizer. Nodes named "broken-*" fail;
// nodes named "gone-*" have no agent (the spec plays it).
type Storage struct {
	client.Client
	// Workers is the number of concurrent reconciles (default 1).
	Workers int
}

func (s *Storage) SetupWithManager(mgr ctrl.Manager) error {
	return ctrl.NewControllerManagedBy(mgr).Named("stand-in-storage").For(&bootv1.BootSession{}).
		WithOptions(controller.Options{MaxConcurrentReconciles: max(1, s.Workers)}).Complete(s)
}

func (s *Storage) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	bs := &bootv1.BootSession{}
	if err := s.Get(ctx, req.NamespacedName, bs); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if bs.Status.StorageNode == "" || strings.HasPrefix(bs.Status.StorageNode, "gone-") {
		return ctrl.Result{}, nil
	}
	if bs.Spec.Stopped || bs.DeletionTimestamp != nil {
		if controllerutil.RemoveFinalizer(bs, bootv1.StorageFinalizer) {
			return ctrl.Result{}, client.IgnoreNotFound(s.Update(ctx, bs))
		}
		return ctrl.Result{}, nil
	}
	if controllerutil.AddFinalizer(bs, bootv1.StorageFinalizer) {
		if err := s.Update(ctx, bs); err != nil {
			return ctrl.Result{}, err
		}
	}
	base := bs.DeepCopy()
	cond := metav1.Condition{Type: bootv1.StorageReadyCondition, Status: metav1.ConditionTrue, Reason: bootv1.SucceededReason, Message: "target ready"}
	if len(bs.Status.StorageNode) > 7 && bs.Status.StorageNode[:7] == "broken-" {
		cond = metav1.Condition{Type: bootv1.StorageReadyCondition, Status: metav1.ConditionFalse, Reason: bootv1.StorageFailedReason, Message: "disk full"}
	}
	if meta.SetStatusCondition(&bs.Status.Conditions, cond) {
		return ctrl.Result{}, client.IgnoreNotFound(s.Status().Patch(ctx, bs, client.MergeFrom(base), client.FieldOwner("stand-in-storage")))
	}
	return ctrl.Result{}, nil
}
