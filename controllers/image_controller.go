package controllers

import (
	"context"
	"time"

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

// ImageReconciler numbers the Images of a family, summarizes replicas and
// their progress, deletes old versions of a family nothing uses (retention)
// and holds bootv1.ImageFinalizer on a deleted Image while sessions use it
// (blocksDeletion): a scheduled session goes on while its Image is being
// deleted, and no new one starts.
type ImageReconciler struct {
	client.Client
	Recorder record.EventRecorder
	// Retention is how many Ready versions of each family are kept
	// (--image-retention); 0 keeps every version.
	Retention int
	// versions numbers the families' Images (reconcileVersion).
	versions *familyVersions
}

// imageScope carries what one Image reconcile shares.
type imageScope struct {
	image *bootv1.Image
	// requeueAfter is set by reconcileVersion: when to give the Image its
	// version.
	requeueAfter time.Duration
}

// Reconcile has the skeleton of every GGnet reconciler (see
// BootSessionReconciler.Reconcile): fetch; deletion (reconcileDelete);
// finalizer; the phases (reconcileVersion, reconcileReplicas,
// reconcileRetention); one metadata write and one status write at the end,
// each only when something changed.
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
	for _, phase := range []func(context.Context, *imageScope) (bool, error){
		r.reconcileVersion, r.reconcileReplicas, r.reconcileRetention,
	} {
		ok, err := phase(ctx, sc)
		if err != nil {
			return ctrl.Result{}, err
		}
		if !ok {
			return ctrl.Result{}, nil
		}
	}
	img.Status.ObservedGeneration = img.Generation
	return ctrl.Result{RequeueAfter: sc.requeueAfter}, nil
}

// reconcileReplicas sums the storage agents' replicas into phase,
// readyReplicas, size, sha256 and Ready (summarizeImage), and their
// transfers into progress (progressSummary). Conditions: Ready.
func (r *ImageReconciler) reconcileReplicas(_ context.Context, sc *imageScope) (bool, error) {
	summarizeImage(sc.image)
	sc.image.Status.Progress = progressSummary(sc.image.Status.Replicas)
	return true, nil
}

// reconcileDelete keeps a deleted Image while sessions use it
// (blocksDeletion), then releases bootv1.ImageFinalizer. A prepared
// AutoSession session no PC has booted from is retired (retireUnbooted). Conditions:
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
	// retired (the storage agent's hand-over, retireUnbooted: stopped only
	// once no PC can be logging in to it) rather than kept waiting for a
	// boot that would keep the Image.
	if err := retireUnbooted(ctx, r.Client, list.Items, func(*bootv1.BootSession) string { return "Image " + img.Name + " is being deleted" }); err != nil {
		return ctrl.Result{}, err
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
// pending deletion completes, and sessions and Machines wake the Images they
// use or used so that retention sees them let go.
func (r *ImageReconciler) SetupWithManager(mgr ctrl.Manager) error {
	if r.versions == nil {
		r.versions = newFamilyVersions()
	}
	return ctrl.NewControllerManagedBy(mgr).
		For(&bootv1.Image{}).
		Watches(&bootv1.Machine{}, handler.EnqueueRequestsFromMapFunc(imagesOfMachine)).
		Watches(&bootv1.Image{}, handler.EnqueueRequestsFromMapFunc(r.captureSource)).
		Watches(&bootv1.BootSession{}, handler.EnqueueRequestsFromMapFunc(func(_ context.Context, o client.Object) []reconcile.Request {
			s := o.(*bootv1.BootSession)
			return []reconcile.Request{{NamespacedName: client.ObjectKey{Namespace: s.Namespace, Name: s.Spec.ImageRef.Name}}}
		})).
		Complete(r)
}

// imagesOfMachine maps a Machine to the Images it uses: the one it pins,
// the one it resolves to, and those its persistent disks were made from
// (the handler maps both the old and the new object of an update).
func imagesOfMachine(_ context.Context, o client.Object) []reconcile.Request {
	m := o.(*bootv1.Machine)
	var out []reconcile.Request
	add := func(name string) {
		if name != "" {
			out = append(out, reconcile.Request{NamespacedName: client.ObjectKey{Namespace: m.Namespace, Name: name}})
		}
	}
	if m.Spec.ImageRef != nil {
		add(m.Spec.ImageRef.Name)
	}
	add(m.Status.Image)
	for _, d := range m.Status.PersistentDisks {
		add(d.Image)
	}
	return out
}

// captureSource maps a writeback Image to the Image its source session
// boots, which retention keeps while the capture is in flight.
func (r *ImageReconciler) captureSource(ctx context.Context, o client.Object) []reconcile.Request {
	img := o.(*bootv1.Image)
	if img.Spec.Source.Writeback == nil {
		return nil
	}
	s := &bootv1.BootSession{}
	if r.Get(ctx, client.ObjectKey{Namespace: img.Namespace, Name: img.Spec.Source.Writeback.SessionRef.Name}, s) != nil {
		return nil
	}
	return []reconcile.Request{{NamespacedName: client.ObjectKey{Namespace: img.Namespace, Name: s.Spec.ImageRef.Name}}}
}
