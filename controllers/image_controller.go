package controllers

import (
	"context"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/client-go/tools/record"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	bootv1 "github.com/ggnet/ggnet/api/v1alpha1"
)

// ImageReconciler summarizes replicas and holds bootv1.ImageFinalizer on a
// deleted Image while sessions use it (blocksDeletion): a scheduled session
// goes on while its Image is being deleted, and no new one starts.
type ImageReconciler struct {
	client.Client
	Recorder record.EventRecorder
}

// Reconcile computes the Image's summary and handles its finalizer.
func (r *ImageReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	img := &bootv1.Image{}
	if err := r.Get(ctx, req.NamespacedName, img); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if img.DeletionTimestamp == nil && controllerutil.AddFinalizer(img, bootv1.ImageFinalizer) {
		if err := r.Update(ctx, img); err != nil {
			return requeueOnConflict(ctrl.Result{}, err)
		}
	}
	base := img.DeepCopy()
	summarizeImage(img)
	if img.DeletionTimestamp != nil {
		var list bootv1.BootSessionList
		if err := r.List(ctx, &list, client.InNamespace(img.Namespace), client.MatchingFields{indexSessionImage: img.Name}); err != nil {
			return ctrl.Result{}, err
		}
		if users := deletionBlockers(list.Items); len(users) > 0 {
			msg := inUseMessage(users, "this image")
			if c := meta.FindStatusCondition(img.Status.Conditions, bootv1.ReadyCondition); c == nil || c.Reason != bootv1.InUseReason {
				r.Recorder.Event(img, corev1.EventTypeWarning, bootv1.InUseReason, msg)
			}
			setReady(&img.Status.Conditions, img.Generation, false, bootv1.InUseReason, msg)
			if equality.Semantic.DeepEqual(base.Status, img.Status) {
				return ctrl.Result{}, nil
			}
			return requeueOnConflict(ctrl.Result{}, client.IgnoreNotFound(r.Status().Patch(ctx, img, statusPatch(base))))
		}
		if controllerutil.RemoveFinalizer(img, bootv1.ImageFinalizer) {
			return requeueOnConflict(ctrl.Result{}, client.IgnoreNotFound(r.Update(ctx, img)))
		}
		return ctrl.Result{}, nil
	}
	img.Status.ObservedGeneration = img.Generation
	if equality.Semantic.DeepEqual(base.Status, img.Status) {
		return ctrl.Result{}, nil
	}
	return requeueOnConflict(ctrl.Result{}, client.IgnoreNotFound(r.Status().Patch(ctx, img, statusPatch(base))))
}

// SetupWithManager registers the controller; sessions wake their image so a
// pending deletion completes.
func (r *ImageReconciler) SetupWithManager(mgr ctrl.Manager) error {
	return ctrl.NewControllerManagedBy(mgr).
		For(&bootv1.Image{}).
		Watches(&bootv1.BootSession{}, handler.EnqueueRequestsFromMapFunc(func(_ context.Context, o client.Object) []reconcile.Request {
			s := o.(*bootv1.BootSession)
			return []reconcile.Request{{NamespacedName: client.ObjectKey{Namespace: s.Namespace, Name: s.Spec.ImageRef.Name}}}
		})).
		Complete(r)
}
