package storage

import (
	"context"
	"errors"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/util/retry"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/predicate"

	bootv1 "github.com/ggnet/ggnet/api/v1alpha1"
	"github.com/ggnet/ggnet/bootagent/overlay"
	"github.com/ggnet/ggnet/bootagent/target"
)

// Reasons of the StorageReady condition.
const (
	ReasonTargetReady       = "TargetReady"
	ReasonImageNotOnNode    = "ImageNotOnNode"
	ReasonInsufficientSpace = "InsufficientSpace"
	ReasonNoCredentials     = "WaitingForCredentials"
)

type sessionReconciler struct {
	*Role
	client.Client
}

func (r *sessionReconciler) setup(mgr ctrl.Manager) error {
	mine := predicate.NewPredicateFuncs(func(o client.Object) bool {
		s, ok := o.(*bootv1.BootSession)
		return ok && s.Status.StorageNode == r.cfg.NodeName
	})
	return ctrl.NewControllerManagedBy(mgr).Named("storage-sessions").
		For(&bootv1.BootSession{}, builder.WithPredicates(mine)).
		WithOptions(controller.Options{MaxConcurrentReconciles: 4, SkipNameValidation: &skipNameValidation}).
		Complete(r)
}

// Reconcile makes the session's overlay and target, or tears them down.
func (r *sessionReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	s := &bootv1.BootSession{}
	if err := r.Get(ctx, req.NamespacedName, s); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if s.Status.StorageNode != r.cfg.NodeName {
		return ctrl.Result{}, nil
	}
	r.gcMu.RLock()
	defer r.gcMu.RUnlock()
	log := r.log.WithValues("BootSession", req.String())
	if s.Spec.Stopped || s.DeletionTimestamp != nil || s.Status.Phase == bootv1.SessionFailed {
		return ctrl.Result{}, r.teardown(ctx, s, log)
	}
	if s.Status.Target == nil || s.Status.CHAPSecretRef == nil || s.Status.InitiatorIQN == "" {
		return ctrl.Result{}, nil // the manager has not filled them yet; its write wakes us
	}
	if !controllerutil.ContainsFinalizer(s, bootv1.StorageFinalizer) {
		if err := r.finalizer(ctx, s, true); err != nil {
			return ctrl.Result{}, err
		}
	}

	var img bootv1.Image
	if err := r.Get(ctx, types.NamespacedName{Namespace: s.Namespace, Name: s.Spec.ImageRef.Name}, &img); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	replica := ""
	for _, rep := range img.Status.Replicas {
		if rep.Node == r.cfg.NodeName && rep.State == bootv1.ReplicaReady {
			replica = rep.Path
		}
	}
	if replica == "" {
		return ctrl.Result{RequeueAfter: r.cfg.Resync}, r.storageReady(ctx, s, metav1.ConditionFalse, ReasonImageNotOnNode,
			"image "+img.Name+" has no Ready replica on this node", "")
	}
	var sec corev1.Secret
	if err := r.Get(ctx, types.NamespacedName{Namespace: s.Namespace, Name: s.Status.CHAPSecretRef.Name}, &sec); err != nil {
		if apierrors.IsNotFound(err) {
			return ctrl.Result{RequeueAfter: time.Second}, r.storageReady(ctx, s, metav1.ConditionFalse, ReasonNoCredentials, "waiting for the CHAP Secret", "")
		}
		return ctrl.Result{}, err
	}

	path := r.OverlayPath(s)
	created, err := r.overlays.Ensure(path, replica)
	switch {
	case errors.Is(err, overlay.ErrLowSpace):
		return ctrl.Result{RequeueAfter: 30 * time.Second}, r.storageReady(ctx, s, metav1.ConditionFalse, ReasonInsufficientSpace, err.Error(), "")
	case err != nil:
		log.Error(err, "Making overlay", "path", path)
		return ctrl.Result{}, r.storageReady(ctx, s, metav1.ConditionFalse, bootv1.StorageFailedReason, "cannot make the overlay; see the agent's log", "")
	case created:
		log.Info("Made overlay", "path", path, "image", replica)
	}
	t := sessionTarget(s, &sec, path)
	if err := r.cfg.Driver.Ensure(ctx, t); err != nil {
		log.Error(err, "Making iSCSI target", "iqn", t.IQN)
		return ctrl.Result{RequeueAfter: r.cfg.Resync}, r.storageReady(ctx, s, metav1.ConditionFalse, bootv1.StorageFailedReason, "cannot make the iSCSI target; see the agent's log", path)
	}
	if err := r.storageReady(ctx, s, metav1.ConditionTrue, ReasonTargetReady, "overlay and iSCSI target ready", path); err != nil {
		return ctrl.Result{}, err
	}
	return ctrl.Result{RequeueAfter: r.cfg.Resync}, r.recordLogins(ctx, s, t.IQN)
}

// sessionTarget is the target a session wants: its IQN and initiator from
// the status, its CHAP credentials from the session Secret (mutual CHAP when
// the Secret has the target's; the target's errors never carry them).
func sessionTarget(s *bootv1.BootSession, sec *corev1.Secret, path string) target.Target {
	return target.Target{
		IQN: s.Status.Target.IQN, LUN: int(s.Status.Target.LUN), Path: path, InitiatorIQN: s.Status.InitiatorIQN,
		CHAPUser:       string(sec.Data[bootv1.SecretKeyUsername]),
		CHAPPassword:   string(sec.Data[bootv1.SecretKeyPassword]),
		TargetUser:     string(sec.Data[bootv1.SecretKeyTargetUsername]),
		TargetPassword: string(sec.Data[bootv1.SecretKeyTargetPassword]),
	}
}

// storageReady applies this node's StorageReady condition (and the overlay
// path) unless they already say so.
func (r *sessionReconciler) storageReady(ctx context.Context, s *bootv1.BootSession, status metav1.ConditionStatus, reason, msg, path string) error {
	if c := meta.FindStatusCondition(s.Status.Conditions, bootv1.StorageReadyCondition); c != nil &&
		c.Status == status && c.Reason == reason && c.Message == msg && s.Status.OverlayPath == path {
		return nil
	}
	st := map[string]any{"conditions": []any{condition(s.Status.Conditions, bootv1.StorageReadyCondition, status, reason, msg, s.Generation)}}
	if path != "" {
		st["overlayPath"] = path
	}
	return client.IgnoreNotFound(applyStatus(ctx, r.Client, r.cfg.FieldOwner(), s, "BootSession", st))
}

// recordLogins stamps the first iSCSI login and the logout after it.
func (r *sessionReconciler) recordLogins(ctx context.Context, s *bootv1.BootSession, iqn string) error {
	conns, err := r.cfg.Driver.Connections(ctx, iqn)
	if err != nil {
		return err
	}
	tl := s.Status.Timeline
	var field string
	switch {
	case len(conns) > 0 && tl.ISCSILogin == nil:
		field = "iscsiLogin"
	case len(conns) == 0 && tl.ISCSILogin != nil && tl.ISCSILogout == nil:
		field = "iscsiLogout"
	default:
		return nil
	}
	r.log.Info("Recording iSCSI "+field, "BootSession", s.Namespace+"/"+s.Name)
	patch := client.RawPatch(types.MergePatchType, fmt.Appendf(nil, `{"status":{"timeline":{%q:%q}}}`, field, metav1.Now().UTC().Format(time.RFC3339)))
	return client.IgnoreNotFound(r.Status().Patch(ctx, s, patch, client.FieldOwner(r.cfg.FieldOwner())))
}

// teardown removes the target (closing the initiator's connections) and,
// for Discard, the overlay; then it releases the storage finalizer.
func (r *sessionReconciler) teardown(ctx context.Context, s *bootv1.BootSession, log interface {
	Info(string, ...any)
}) error {
	if !controllerutil.ContainsFinalizer(s, bootv1.StorageFinalizer) {
		return nil
	}
	if s.Status.Target != nil && s.Status.Target.IQN != "" {
		if err := r.cfg.Driver.Remove(ctx, s.Status.Target.IQN); err != nil {
			return err
		}
	}
	if s.Spec.Writeback != bootv1.WritebackPersist {
		if err := r.overlays.Remove(r.OverlayPath(s)); err != nil {
			return err
		}
	}
	log.Info("Removed the session's target", "BootSession", s.Namespace+"/"+s.Name, "overlayKept", s.Spec.Writeback == bootv1.WritebackPersist)
	return r.finalizer(ctx, s, false)
}

func (r *sessionReconciler) finalizer(ctx context.Context, s *bootv1.BootSession, add bool) error {
	return client.IgnoreNotFound(retry.RetryOnConflict(retry.DefaultRetry, func() error {
		cur := &bootv1.BootSession{}
		if err := r.reader.Get(ctx, client.ObjectKeyFromObject(s), cur); err != nil {
			return err
		}
		changed := controllerutil.RemoveFinalizer(cur, bootv1.StorageFinalizer)
		if add {
			changed = controllerutil.AddFinalizer(cur, bootv1.StorageFinalizer)
		}
		if !changed {
			return nil
		}
		return r.Update(ctx, cur)
	}))
}
