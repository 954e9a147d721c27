package storage

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/util/retry"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"

	bootv1 "github.com/ggnet/ggnet/api/v1alpha1"
	"github.com/ggnet/ggnet/bootagent/images"
)

type imageReconciler struct {
	*Role
	client.Client
}

func (r *imageReconciler) setup(mgr ctrl.Manager) error {
	return ctrl.NewControllerManagedBy(mgr).Named("storage-images").For(&bootv1.Image{}).
		WithOptions(controller.Options{MaxConcurrentReconciles: 2, SkipNameValidation: &skipNameValidation}).Complete(r)
}

// replicaFinalizer is this node's finalizer on an Image: held while the node
// has a replica file.
func (r *imageReconciler) replicaFinalizer() string { return bootv1.NodeFinalizer(r.cfg.NodeName) }

// Reconcile places or removes this node's replica of an Image.
func (r *imageReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	img := &bootv1.Image{}
	if err := r.Get(ctx, req.NamespacedName, img); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	selected, err := r.selects(ctx, img)
	if err != nil {
		return ctrl.Result{}, err
	}
	if img.DeletionTimestamp != nil || !selected {
		// The manager's finalizer keeps the Image while sessions use it; ours
		// goes once the file is gone.
		if img.DeletionTimestamp != nil && controllerutil.ContainsFinalizer(img, bootv1.ImageFinalizer) {
			return ctrl.Result{}, nil
		}
		if err := r.images.Remove(img.Namespace, img.Name, string(img.UID)); err != nil {
			return ctrl.Result{}, err
		}
		return ctrl.Result{}, r.finalizer(ctx, img, false)
	}
	if err := r.finalizer(ctx, img, true); err != nil {
		return ctrl.Result{}, err
	}
	src := images.Source{Format: string(img.Spec.Format)}
	switch s := img.Spec.Source; {
	case s.HTTP != nil:
		src.URL, src.SHA256 = s.HTTP.URL, s.HTTP.SHA256
	case s.Path != nil:
		src.Path, src.SHA256 = s.Path.Path, s.Path.SHA256
	default:
		return ctrl.Result{}, r.report(ctx, img, bootv1.ReplicaFailed, images.Result{}, images.ReasonUnsupportedFormat, "writeback sources are not supported by this agent yet")
	}
	for _, rep := range img.Status.Replicas {
		if rep.Node == r.cfg.NodeName && rep.State == bootv1.ReplicaReady {
			if _, err := r.images.Ensure(ctx, img.Namespace, img.Name, string(img.UID), images.Source{Path: rep.Path, Format: "raw"}); err == nil {
				return ctrl.Result{}, nil // still there
			}
		}
	}
	state := bootv1.ReplicaDownloading
	if src.Path != "" {
		state = bootv1.ReplicaPending
	}
	if err := r.report(ctx, img, state, images.Result{}, "", "placing the replica"); err != nil {
		return ctrl.Result{}, err
	}
	res, err := r.images.Ensure(ctx, img.Namespace, img.Name, string(img.UID), src)
	var ie *images.Error
	if errors.As(err, &ie) {
		r.log.Info("Replica failed", "Image", req.String(), "reason", ie.Reason, "error", ie.Err.Error())
		return ctrl.Result{RequeueAfter: time.Minute}, r.report(ctx, img, bootv1.ReplicaFailed, images.Result{}, ie.Reason, ie.Err.Error())
	}
	if err != nil {
		return ctrl.Result{}, err
	}
	r.log.Info("Replica ready", "Image", req.String(), "path", res.Path, "bytes", res.SizeBytes)
	return ctrl.Result{}, r.report(ctx, img, bootv1.ReplicaReady, res, bootv1.SucceededReason, "")
}

// selects reports whether the Image's storage node selector picks this node.
func (r *imageReconciler) selects(ctx context.Context, img *bootv1.Image) (bool, error) {
	if img.Spec.StorageNodeSelector == nil {
		return true, nil
	}
	sel, err := metav1.LabelSelectorAsSelector(img.Spec.StorageNodeSelector)
	if err != nil {
		return false, nil
	}
	var node corev1.Node
	if err := r.Get(ctx, types.NamespacedName{Name: r.cfg.NodeName}, &node); err != nil {
		return false, client.IgnoreNotFound(err)
	}
	return sel.Matches(labels.Set(node.Labels)), nil
}

// report applies this node's entry of status.replicas.
func (r *imageReconciler) report(ctx context.Context, img *bootv1.Image, state bootv1.ReplicaState, res images.Result, reason, msg string) error {
	if len(msg) > 1000 {
		msg = msg[:1000]
	}
	entry := map[string]any{"node": r.cfg.NodeName, "state": string(state),
		"lastTransitionTime": metav1.Now().UTC().Format(time.RFC3339)}
	for k, v := range map[string]string{"path": res.Path, "sha256": res.SHA256, "reason": reason, "message": strings.TrimSpace(msg)} {
		if v != "" {
			entry[k] = v
		}
	}
	if res.SizeBytes > 0 {
		entry["sizeBytes"] = res.SizeBytes
	}
	return client.IgnoreNotFound(applyStatus(ctx, r.Client, r.cfg.FieldOwner(), img, "Image", map[string]any{"replicas": []any{entry}}))
}

func (r *imageReconciler) finalizer(ctx context.Context, img *bootv1.Image, add bool) error {
	if controllerutil.ContainsFinalizer(img, r.replicaFinalizer()) == add {
		return nil
	}
	return client.IgnoreNotFound(retry.RetryOnConflict(retry.DefaultRetry, func() error {
		cur := &bootv1.Image{}
		if err := r.reader.Get(ctx, client.ObjectKeyFromObject(img), cur); err != nil {
			return err
		}
		changed := controllerutil.RemoveFinalizer(cur, r.replicaFinalizer())
		if add {
			changed = controllerutil.AddFinalizer(cur, r.replicaFinalizer())
		}
		if !changed {
			return nil
		}
		if err := r.Update(ctx, cur); err != nil {
			return fmt.Errorf("updating the replica finalizer: %w", err)
		}
		return nil
	}))
}
