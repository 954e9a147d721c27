package controllers

import (
	"context"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
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

// imageScope carries what one Image reconcile shares.
type imageScope struct {
	image *bootv1.Image
}

// Reconcile has the skeleton of every GGnet reconciler (see
// BootSessionReconciler.Reconcile): fetch; deletion (reconcileDelete);
// finalizer; the phases (one: reconcileReplicas); one metadata write and one
// status write at the end, each only when something changed.
func (r *ImageReconciler) Reconcile(ctx context.Context, req ctrl.Request) (res ctrl.Result, retErr error) {
	img := &bootv1.Image{}
	if err := r.Get(ctx, req.NamespacedName, img); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	sc := &imageScope{image: img}
	base := img.DeepCopy()
	defer finish(ctx, r.Client, base, img, func() bool { return equality.Semantic.DeepEqual(base.Status, img.Status) }, &res, &retErr)
	if img.DeletionTimestamp != nil {
		return r.reconcileDelete(ctx, sc)
	}
	controllerutil.AddFinalizer(img, bootv1.ImageFinalizer)
	if _, err := r.reconcileReplicas(ctx, sc); err != nil {
		return ctrl.Result{}, err
	}
	img.Status.ObservedGeneration = img.Generation
	return ctrl.Result{}, nil
}

// reconcileReplicas sums the storage agents' replicas into phase,
// readyReplicas, size, sha256 and Ready (summarizeImage).
func (r *ImageReconciler) reconcileReplicas(_ context.Context, sc *imageScope) (bool, error) {
	summarizeImage(sc.image)
	return true, nil
}

// reconcileDelete keeps a deleted Image while sessions use it
// (blocksDeletion), then releases bootv1.ImageFinalizer. A prepared
// AutoSession session no PC has booted from is stopped. Conditions:
// Ready=False InUse naming the sessions, with a Warning Event when the wait
// starts.
func (r *ImageReconciler) reconcileDelete(ctx context.Context, sc *imageScope) (ctrl.Result, error) {
	img := sc.image
	if _, err := r.reconcileReplicas(ctx, sc); err != nil {
		return ctrl.Result{}, err
	}
	var list bootv1.BootSessionList
	if err := r.List(ctx, &list, client.InNamespace(img.Namespace), client.MatchingFields{indexSessionImage: img.Name}); err != nil {
		return ctrl.Result{}, err
	}
	// A prepared session no PC booted from holds nothing of anyone's: it is
	// stopped rather than kept waiting for a boot that would keep the Image.
	for i := range list.Items {
		if x := &list.Items[i]; x.Labels[bootv1.AutoSessionLabel] == "true" && !finished(x) && !x.Spec.Stopped && x.DeletionTimestamp == nil && !booted(x) {
			if err := markStopped(ctx, r.Client, x); err != nil {
				return ctrl.Result{}, err
			}
		}
	}
	if users := deletionBlockers(list.Items); len(users) > 0 {
		msg := inUseMessage(users, "this image")
		if setImageInUse(img, msg) {
			r.Recorder.Event(img, corev1.EventTypeWarning, bootv1.InUseReason, msg)
		}
		return ctrl.Result{}, nil
	}
	controllerutil.RemoveFinalizer(img, bootv1.ImageFinalizer)
	return ctrl.Result{}, nil
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
