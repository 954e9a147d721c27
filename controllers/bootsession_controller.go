package controllers

import (
	"context"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/client-go/tools/record"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	bootv1 "github.com/ggnet/ggnet/api/v1alpha1"
)

// BootSessionReconciler orchestrates one boot: checks, scheduling,
// credentials, waiting for the storage agent, the script.
type BootSessionReconciler struct {
	client.Client
	Recorder record.EventRecorder
	// IQNPrefix starts every IQN GGnet makes (iqn.YYYY-MM.reverse.domain).
	IQNPrefix string
	// ISCSIPort of the storage nodes' portals.
	ISCSIPort int
	Options   Options
	// gone is shared with the StorageNodeReconciler: when the manager first
	// saw a storage node missing.
	gone *goneNodes
	// ownWrites: the resourceVersions of sessions that the manager's own
	// last writes superseded.
	ownWrites *ownWrites
}

// sessionScope carries what the phases of one reconcile share.
type sessionScope struct {
	session *bootv1.BootSession
	// machine and image are filled by reconcileRefs.
	machine *bootv1.Machine
	image   *bootv1.Image
	// conflict is filled by reconcileRefs: why the machine has Conflict=True,
	// or "".
	conflict string
	// node is filled by reconcileSchedule.
	node *corev1.Node
	// storageDown is filled by reconcileStorage: why the storage of a
	// session that was StorageReady once is not ready now, or "".
	storageDown string
	// notes are filled by reconcileRefs and reconcileSchedule: what a
	// session that goes on should say (its Machine or Image being deleted,
	// its storage node missing within the grace); each is added to the
	// Ready message and recorded as an Event when it first appears there.
	notes []sessionNote
	// requeueAfter is set by reconcileSchedule: when to look again (the end
	// of a missing storage node's grace).
	requeueAfter time.Duration
}

// sessionNote is one note of a session that goes on.
type sessionNote struct {
	eventType, reason, msg string
}

// withNotes appends the notes to msg.
func (sc *sessionScope) withNotes(msg string) string {
	for _, n := range sc.notes {
		msg += "; " + n.msg
	}
	return msg
}

// Reconcile is the skeleton all the manager's reconcilers share: fetch;
// deletion (reconcileDelete); then the phases in order over a scope, each
// saying whether the next may run; at the end one metadata write (finalizer
// and labels, sessionMetadata) and one status write, each only when
// something changed (finish). The metadata write comes after the phases so
// that the storage node label rides with the finalizer: a new session costs
// one metadata write, not two. Nothing outside the cluster happens before
// the finalizer is on: the Secret the phases may make is owned by the
// session, and the storage agent acts only on a status.storageNode, which
// the status write that follows publishes.
func (r *BootSessionReconciler) Reconcile(ctx context.Context, req ctrl.Request) (res ctrl.Result, retErr error) {
	s := &bootv1.BootSession{}
	if err := r.Get(ctx, req.NamespacedName, s); err != nil {
		if apierrors.IsNotFound(err) {
			r.ownWrites.forget(req.NamespacedName)
		}
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if r.ownWrites.superseded(req.NamespacedName, s.UID, s.ResourceVersion) {
		// This cache predates the manager's own last write to the session:
		// the watch event of that write is on its way and reconciles again.
		// Acting on this copy would only repeat writes the API server
		// refuses (the Secret exists, the status patch conflicts).
		return ctrl.Result{}, nil
	}
	sc := &sessionScope{session: s}
	if s.DeletionTimestamp != nil {
		return r.reconcileDelete(ctx, sc)
	}
	base := s.DeepCopy()
	read := s.ResourceVersion
	defer func() {
		if retErr == nil {
			s.Status.ObservedGeneration = s.Generation
		}
		sessionMetadata(s)
		finish(ctx, r.Client, base, s, func() bool { return equality.Semantic.DeepEqual(base.Status, s.Status) }, &res, &retErr)
		// finish leaves the metadata write's resourceVersion in base and
		// the status write's in s. A conflict comes back as Requeue.
		if retErr == nil && !res.Requeue {
			r.ownWrites.remember(req.NamespacedName, s.UID, s.ResourceVersion, read, base.ResourceVersion)
		}
	}()
	if finished(s) {
		return r.reconcileTTL(ctx, s)
	}
	if s.Spec.Stopped {
		return r.reconcileStop(ctx, sc)
	}
	defer r.noteEvents(sc, base)
	for _, phase := range []func(context.Context, *sessionScope) (bool, error){
		r.reconcileRefs, r.reconcileExclusive, r.reconcileSchedule, r.reconcileCredentials, r.reconcileStorage, r.reconcileScript,
	} {
		ok, err := phase(ctx, sc)
		if err != nil {
			return ctrl.Result{}, err
		}
		if !ok {
			break
		}
	}
	return ctrl.Result{RequeueAfter: sc.requeueAfter}, nil
}

// noteEvents records an Event for each note that is new in the Ready
// message.
func (r *BootSessionReconciler) noteEvents(sc *sessionScope, base *bootv1.BootSession) {
	var before, after string
	if c := meta.FindStatusCondition(base.Status.Conditions, bootv1.ReadyCondition); c != nil {
		before = c.Message
	}
	if c := meta.FindStatusCondition(sc.session.Status.Conditions, bootv1.ReadyCondition); c != nil {
		after = c.Message
	}
	for _, n := range sc.notes {
		if strings.Contains(after, n.msg) && !strings.Contains(before, n.msg) {
			r.Recorder.Event(sc.session, n.eventType, n.reason, n.msg)
		}
	}
}

// grace is how long a storage node may be missing before its sessions fail.
func (r *BootSessionReconciler) grace() time.Duration {
	if r.Options.StorageNodeGrace > 0 {
		return r.Options.StorageNodeGrace
	}
	return DefaultStorageNodeGrace
}

// wait records why the session waits (setSessionWaiting) and, when the
// reason is new, an Event with that reason. The steps of a session's happy
// path have no Event — waiting for the storage agent after scheduling,
// Stopping, Stopped —: its conditions and timeline say them, and at scale
// these Events would be a large share of all API writes.
func (r *BootSessionReconciler) wait(s *bootv1.BootSession, phase bootv1.BootSessionPhase, reason, msg string) {
	if setSessionWaiting(s, phase, reason, msg) && !routineReason(reason) {
		typ := corev1.EventTypeNormal
		if phase == bootv1.SessionFailed || reason == bootv1.MachineBusyReason || reason == bootv1.MachineConflictReason {
			typ = corev1.EventTypeWarning
		}
		r.Recorder.Event(s, typ, reason, msg)
	}
}

// routineReason: a waiting reason of the happy path, recorded without an
// Event.
func routineReason(reason string) bool {
	return reason == bootv1.WaitingForStorageReason || reason == bootv1.StoppingReason || reason == bootv1.StoppedReason
}

// reconcileStop waits for the storage agent to tear the target down (it
// drops StorageFinalizer), then marks the session Stopped. A session never
// scheduled has no storage: sessionMetadata drops StorageFinalizer in the
// same reconcile's metadata write, which goes first and, under its
// optimistic lock, only if the session is still unscheduled.
func (r *BootSessionReconciler) reconcileStop(ctx context.Context, sc *sessionScope) (ctrl.Result, error) {
	s := sc.session
	now := metav1.Now()
	if s.Status.Timeline.Stopping == nil {
		s.Status.Timeline.Stopping = &now
	}
	if storageHeld(s) {
		r.wait(s, bootv1.SessionStopping, bootv1.StoppingReason, "waiting for storage node "+s.Status.StorageNode+" to remove the target")
		return ctrl.Result{}, nil
	}
	s.Status.Timeline.Stopped = &now
	s.Status.Script = ""
	r.wait(s, bootv1.SessionStopped, bootv1.StoppedReason, "the session stopped and its target is gone")
	return r.reconcileTTL(ctx, s)
}

// reconcileTTL deletes a finished session once its TTL passed.
func (r *BootSessionReconciler) reconcileTTL(ctx context.Context, s *bootv1.BootSession) (ctrl.Result, error) {
	if s.Spec.TTLSecondsAfterFinished == nil || s.Status.Timeline.Stopped == nil {
		return ctrl.Result{}, nil
	}
	left := time.Until(s.Status.Timeline.Stopped.Add(time.Duration(*s.Spec.TTLSecondsAfterFinished) * time.Second))
	if left > 0 {
		return ctrl.Result{RequeueAfter: left}, nil
	}
	r.Recorder.Event(s, corev1.EventTypeNormal, bootv1.ExpiredReason, "Deleting the finished session: its TTL passed")
	return ctrl.Result{}, client.IgnoreNotFound(r.Delete(ctx, s))
}

// reconcileDelete waits for the storage agent's finalizer, then releases ours;
// the CHAP Secret goes with its owner. A session never scheduled has no
// storage: both finalizers go in one write, whose optimistic lock makes a
// cache that has not seen the scheduling conflict instead. Like Reconcile,
// it ends with one metadata write and one status write, each only when
// something changed.
func (r *BootSessionReconciler) reconcileDelete(ctx context.Context, sc *sessionScope) (res ctrl.Result, retErr error) {
	s := sc.session
	base := s.DeepCopy()
	defer finish(ctx, r.Client, base, s, func() bool { return equality.Semantic.DeepEqual(base.Status, s.Status) }, &res, &retErr)
	if storageHeld(s) {
		if s.Status.Phase != bootv1.SessionStopping {
			r.wait(s, bootv1.SessionStopping, bootv1.StoppingReason, "deleting: waiting for the storage node to remove the target")
		}
		return ctrl.Result{}, nil
	}
	controllerutil.RemoveFinalizer(s, bootv1.StorageFinalizer)
	controllerutil.RemoveFinalizer(s, bootv1.SessionFinalizer)
	return ctrl.Result{}, nil
}

// storageHeld reports whether a session's storage may exist: it holds
// StorageFinalizer and was scheduled. The manager adds StorageFinalizer to
// every new session; only a scheduled one can have had a target made.
func storageHeld(s *bootv1.BootSession) bool {
	return s.Status.StorageNode != "" && controllerutil.ContainsFinalizer(s, bootv1.StorageFinalizer)
}

// sessionMetadata sets what the manager keeps in a live session's metadata:
// its finalizer, and the labels that mirror its Machine, Image and, once
// scheduled, storage node (bootv1.MachineLabel, ImageLabel,
// StorageNodeOfSessionLabel) so that label selectors find it. A new
// session (no SessionFinalizer yet) that is going on also gets
// StorageFinalizer in the same write, so that the storage agent need not
// add it (one write and one hop fewer); it is added only then, never again
// after the agent removed it. A session that ends (stopped, finished,
// deleted) without ever being scheduled loses StorageFinalizer: no storage
// was made for it. It reports whether it changed anything.
func sessionMetadata(s *bootv1.BootSession) bool {
	ending := s.Spec.Stopped || finished(s) || s.DeletionTimestamp != nil
	changed := controllerutil.AddFinalizer(s, bootv1.SessionFinalizer)
	if changed && !ending {
		controllerutil.AddFinalizer(s, bootv1.StorageFinalizer)
	}
	if ending && s.Status.StorageNode == "" {
		changed = controllerutil.RemoveFinalizer(s, bootv1.StorageFinalizer) || changed
	}
	want := map[string]string{bootv1.MachineLabel: s.Spec.MachineRef.Name, bootv1.ImageLabel: s.Spec.ImageRef.Name}
	if s.Status.StorageNode != "" {
		want[bootv1.StorageNodeOfSessionLabel] = s.Status.StorageNode
	}
	for k, v := range want {
		if cur, ok := s.Labels[k]; (ok && cur == v) || len(validation.IsValidLabelValue(v)) > 0 {
			// A name longer than 63 characters cannot be a label value:
			// such a session is found by its fields (selectableFields).
			continue
		}
		if s.Labels == nil {
			s.Labels = map[string]string{}
		}
		s.Labels[k] = v
		changed = true
	}
	return changed
}

// SetupWithManager registers the controller: sessions, their Secrets, and
// the Machines, Images and Nodes they depend on.
func (r *BootSessionReconciler) SetupWithManager(mgr ctrl.Manager) error {
	if r.gone == nil {
		r.gone = newGoneNodes()
	}
	if r.ownWrites == nil {
		r.ownWrites = newOwnWrites()
	}
	return ctrl.NewControllerManagedBy(mgr).
		For(&bootv1.BootSession{}).
		Watches(&bootv1.Image{}, handler.EnqueueRequestsFromMapFunc(r.sessionsOf(indexSessionImage))).
		Watches(&bootv1.Machine{}, handler.EnqueueRequestsFromMapFunc(r.sessionsOf(indexSessionMachine))).
		// Nodes matter when they come or go, not at every heartbeat.
		Watches(&corev1.Node{}, handler.EnqueueRequestsFromMapFunc(r.sessionsOnNode),
			// Node updates are mostly heartbeats: only a new announced
			// portal or a change of Ready concerns the sessions.
			builder.WithPredicates(predicate.Funcs{UpdateFunc: func(e event.UpdateEvent) bool {
				return e.ObjectOld.GetAnnotations()[bootv1.ISCSIPortalAnnotation] != e.ObjectNew.GetAnnotations()[bootv1.ISCSIPortalAnnotation] ||
					nodeReady(e.ObjectOld.(*corev1.Node)) != nodeReady(e.ObjectNew.(*corev1.Node)) // the Lease's liveness gate
			}})).
		WithOptions(controllerOptions(r.Options)).
		Complete(r)
}

// sessionsOf maps a Machine or Image to the sessions that name it; for a
// Machine also every session of it, so that a waiting one moves on.
func (r *BootSessionReconciler) sessionsOf(index string) handler.MapFunc {
	return func(ctx context.Context, o client.Object) []reconcile.Request {
		var list bootv1.BootSessionList
		if err := r.List(ctx, &list, client.InNamespace(o.GetNamespace()), client.MatchingFields{index: o.GetName()}); err != nil {
			logf.FromContext(ctx).Error(err, "Listing sessions")
			return nil
		}
		out := make([]reconcile.Request, 0, len(list.Items))
		for _, s := range list.Items {
			if !finished(&s) {
				out = append(out, reconcile.Request{NamespacedName: client.ObjectKeyFromObject(&s)})
			}
		}
		return out
	}
}

func (r *BootSessionReconciler) sessionsOnNode(ctx context.Context, o client.Object) []reconcile.Request {
	var list bootv1.BootSessionList
	if err := r.List(ctx, &list, client.MatchingFields{indexSessionNode: o.GetName()}, client.UnsafeDisableDeepCopy); err != nil {
		return nil
	}
	// Pending sessions may now find a node too.
	var pending bootv1.BootSessionList
	if err := r.List(ctx, &pending, client.UnsafeDisableDeepCopy); err == nil {
		for _, s := range pending.Items {
			if s.Status.StorageNode == "" && !finished(&s) {
				list.Items = append(list.Items, s)
			}
		}
	}
	out := make([]reconcile.Request, 0, len(list.Items))
	for _, s := range list.Items {
		out = append(out, reconcile.Request{NamespacedName: client.ObjectKeyFromObject(&s)})
	}
	return out
}
