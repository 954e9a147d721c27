package storage

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	apiequality "k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/util/retry"
	"k8s.io/client-go/util/workqueue"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	bootv1 "github.com/ggnet/ggnet/api/v1alpha1"
	"github.com/ggnet/ggnet/bootagent/overlay"
	"github.com/ggnet/ggnet/bootagent/target"
	"github.com/ggnet/ggnet/internal/finalizer"
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
	// retiring: the retires under way (retire.go).
	retiring retiring
	// released: the sessions whose storage finalizer this agent removed.
	released released
}

func (r *sessionReconciler) setup(mgr ctrl.Manager) error {
	mine := predicate.NewPredicateFuncs(func(o client.Object) bool {
		s, ok := o.(*bootv1.BootSession)
		return ok && s.Status.StorageNode == r.cfg.NodeName
	})
	if err := mgr.Add(manager.RunnableFunc(newLoginWatcher(r).run)); err != nil {
		return err
	}
	return ctrl.NewControllerManagedBy(mgr).Named("storage-sessions").
		For(&bootv1.BootSession{}, builder.WithPredicates(mine)).
		WithOptions(controller.Options{MaxConcurrentReconciles: 4,
			// A session whose target cannot be made is retried with
			// exponential backoff, capped so that a PC waits at most
			// retryCap for its target once tgtd is back.
			RateLimiter: workqueue.NewTypedItemExponentialFailureRateLimiter[reconcile.Request](retryBase, retryCap)}).
		Complete(r)
}

// Backoff of a session whose target cannot be made.
const (
	retryBase = 500 * time.Millisecond
	retryCap  = 30 * time.Second
)

// Reconcile makes the session's overlay and target, or tears them down. A
// session whose storage was ready once (reconcileRunning) never gets
// StorageFailed: while its target cannot be made it shows StorageReady=False
// TargetUnavailable, keeps its overlay and is retried with backoff, and an
// overlay that vanished under it is reported (OverlayLost), never replaced
// (a running PC's disk is sacred; only the session's stop or deletion
// removes it). A new session gets its overlay and target from reconcileNew.
func (r *sessionReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	s := &bootv1.BootSession{}
	if err := r.Get(ctx, req.NamespacedName, s); err != nil {
		if apierrors.IsNotFound(err) {
			r.book.forget(req.NamespacedName)
			r.released.forget(req.NamespacedName)
		}
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
	if own := r.sessionIQN(s); s.Status.Target.IQN != own {
		// Whoever may write bootsessions/status must not make this agent
		// rebuild or serve another session's target (of any namespace) on
		// this session's file. A running session's target is left alone.
		log.Error(nil, "status.target.iqn is not this session's target name; not acting on it", "iqn", s.Status.Target.IQN, "want", own)
		if wasStorageReady(s) {
			return ctrl.Result{}, nil
		}
		return ctrl.Result{}, r.storageReady(ctx, s, metav1.ConditionFalse, bootv1.StorageFailedReason,
			"status.target.iqn is not this session's target name "+own, "")
	}
	if !controllerutil.ContainsFinalizer(s, bootv1.StorageFinalizer) {
		if err := r.finalizer(ctx, s, true); err != nil {
			return ctrl.Result{}, err
		}
	}

	var sec corev1.Secret
	secret := types.NamespacedName{Namespace: s.Namespace, Name: s.Status.CHAPSecretRef.Name}
	err := r.Get(ctx, secret, &sec)
	if apierrors.IsNotFound(err) {
		// The manager makes the Secret before it names it in the status,
		// but this cache may see the session first: ask the API server
		// before writing that the Secret is missing (a write, and a
		// second's wait, for nothing).
		err = r.reader.Get(ctx, secret, &sec)
	}
	if err != nil {
		if apierrors.IsNotFound(err) {
			return ctrl.Result{RequeueAfter: time.Second}, r.storageReady(ctx, s, metav1.ConditionFalse, ReasonNoCredentials, "waiting for the CHAP Secret", s.Status.OverlayPath)
		}
		return ctrl.Result{}, err
	}
	if wasStorageReady(s) {
		if res, done, err := r.retire(ctx, s, &sec, log); done {
			return res, err
		}
		return r.reconcileRunning(ctx, s, &sec, log)
	}
	return r.reconcileNew(ctx, s, &sec, log)
}

// reconcileNew makes the overlay and target of a session that was never
// StorageReady: a fresh clone of the Image's replica on this node for
// Discard, the Machine's persistent disk for the Image for Persist
// (newSessionDisk). Conditions: StorageReady=False ImageNotFound,
// ImageNotOnNode, MachineNotFound, PersistentDiskInUse, MachineDeleting,
// InsufficientSpace, TargetUnavailable or StorageFailed; True TargetReady.
func (r *sessionReconciler) reconcileNew(ctx context.Context, s *bootv1.BootSession, sec *corev1.Secret, log logr.Logger) (ctrl.Result, error) {
	var img bootv1.Image
	if err := r.Get(ctx, types.NamespacedName{Namespace: s.Namespace, Name: s.Spec.ImageRef.Name}, &img); err != nil {
		if apierrors.IsNotFound(err) {
			return ctrl.Result{RequeueAfter: r.cfg.Resync}, r.storageReady(ctx, s, metav1.ConditionFalse, bootv1.ImageNotFoundReason,
				"Image "+s.Spec.ImageRef.Name+" is not known to this storage node", "")
		}
		return ctrl.Result{}, err
	}
	// The replica is this agent's own file for the Image's UID, never the
	// path in the status: whoever may patch images/status must not point a
	// clone at another file of the node.
	replica := ""
	for _, rep := range img.Status.Replicas {
		if rep.Node == r.cfg.NodeName && rep.State == bootv1.ReplicaReady {
			if res, ok := r.images.Existing(img.Namespace, img.Name, string(img.UID)); ok {
				replica = res.Path
			}
		}
	}
	if replica == "" {
		return ctrl.Result{RequeueAfter: r.cfg.Resync}, r.storageReady(ctx, s, metav1.ConditionFalse, ReasonImageNotOnNode,
			"image "+img.Name+" has no Ready replica on this node", "")
	}

	var path string
	var created bool
	var err error
	if s.Spec.Writeback == bootv1.WritebackPersist {
		var unlock func()
		var w *waitFor
		path, created, unlock, w, err = r.newSessionDisk(ctx, s, &img, replica)
		if w != nil {
			return ctrl.Result{RequeueAfter: r.cfg.Resync}, r.storageReady(ctx, s, metav1.ConditionFalse, w.reason, w.msg, "")
		}
		if unlock != nil {
			// Held until the target is made: nothing judges the disk
			// unused in between.
			defer unlock()
		}
		var oe *overlayError
		switch {
		case errors.As(err, &oe):
			err = oe.err
		case err != nil && transient(err):
			return ctrl.Result{}, r.unavailable(ctx, s, sec, "cannot check who uses the persistent disk", err, "")
		case err != nil:
			return ctrl.Result{}, err
		}
	} else {
		path = r.discardPath(s)
		created, err = r.overlays.Ensure(path, replica)
	}
	switch {
	case errors.Is(err, overlay.ErrLowSpace):
		return ctrl.Result{RequeueAfter: 30 * time.Second}, r.storageReady(ctx, s, metav1.ConditionFalse, ReasonInsufficientSpace, err.Error(), "")
	case err != nil:
		log.Error(err, "Making overlay", "path", path)
		return ctrl.Result{}, r.storageReady(ctx, s, metav1.ConditionFalse, bootv1.StorageFailedReason, "cannot make the overlay; see the agent's log", "")
	case created:
		log.Info("Made overlay", "path", path, "image", replica)
	}
	return r.serve(ctx, s, sec, path, log)
}

// reconcileRunning keeps the target of a session that was StorageReady
// once: such a session may have a PC running on its disk, so it needs only
// its overlay (a standalone clone: not the image replica) and its Secret,
// and keeps the overlay path it was served with. An overlay that vanished
// is never made again (see overlayLost).
func (r *sessionReconciler) reconcileRunning(ctx context.Context, s *bootv1.BootSession, sec *corev1.Secret, log logr.Logger) (ctrl.Result, error) {
	path := r.runningPath(s)
	if c := meta.FindStatusCondition(s.Status.Conditions, bootv1.StorageReadyCondition); c != nil && c.Reason == bootv1.OverlayLostReason {
		return ctrl.Result{}, nil // for good: only the session's stop ends it
	}
	if path == "" {
		return ctrl.Result{}, r.overlayLost(ctx, s, "", log)
	}
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		return ctrl.Result{}, r.overlayLost(ctx, s, path, log)
	} else if err != nil {
		log.Error(err, "Checking the overlay of a running session, retrying", "path", path)
		return ctrl.Result{}, r.unavailable(ctx, s, sec, "cannot check the overlay", err, path)
	}
	return r.serve(ctx, s, sec, path, log)
}

// runningPath is the overlay a session that was StorageReady was served
// with: a Discard session's own; for Persist its status.overlayPath when
// that names a persistent disk of the session's namespace (a running
// session keeps its disk, even one of the old layout), else "".
func (r *sessionReconciler) runningPath(s *bootv1.BootSession) string {
	if s.Spec.Writeback != bootv1.WritebackPersist {
		return r.discardPath(s)
	}
	p := s.Status.OverlayPath
	if p == "" || filepath.Clean(p) != p {
		return ""
	}
	dir, name := filepath.Split(p)
	switch filepath.Clean(dir) {
	case r.persistPath(s.Namespace):
		if _, ok := parseDisk(dir, name); ok {
			return p
		}
	case filepath.Join(r.overlays.Dir(), s.Namespace):
		if isLegacy(name) {
			return p
		}
	}
	return ""
}

// overlayLost reports that the overlay of a session that was StorageReady is
// gone: StorageReady=False OverlayLost, for good, and a Warning Event. No
// fresh overlay is made in its place: the PC would find another disk under
// it (a fresh clone, or another session's). The target is left alone: tgtd
// keeps the deleted file open, so a PC logged in goes on with its disk until
// the session stops, and removing the target would cut it off; if the
// target is gone already (tgtd restarted) it is not made again. The
// session's stop removes the target as usual.
func (r *sessionReconciler) overlayLost(ctx context.Context, s *bootv1.BootSession, path string, log logr.Logger) error {
	log.Info("The overlay of a running session is gone; not making another", "path", path)
	msg := "the overlay " + path + " is gone from the storage node; no other disk is served in its place " +
		"(a PC logged in keeps the deleted file through its open target until the session stops); stop the session"
	r.persist.recorder.Event(s, corev1.EventTypeWarning, bootv1.OverlayLostReason, msg)
	return r.storageReady(ctx, s, metav1.ConditionFalse, bootv1.OverlayLostReason, msg, path)
}

// serve makes the session's target on path and reports StorageReady=True.
func (r *sessionReconciler) serve(ctx context.Context, s *bootv1.BootSession, sec *corev1.Secret, path string, log logr.Logger) (ctrl.Result, error) {
	t := sessionTarget(s, sec, path)
	t.InitiatorIQN = r.servedInitiator(s) // the session's, unless it is retired (retire.go)
	if err := r.cfg.Driver.Ensure(ctx, t); err != nil {
		if wasStorageReady(s) || transient(err) {
			// controller-runtime logs the returned error (redacted, as the
			// condition's message) with each retry.
			return ctrl.Result{}, r.unavailable(ctx, s, sec, "cannot make the iSCSI target", err, path)
		}
		log.Error(err, "Making iSCSI target", "iqn", t.IQN)
		return ctrl.Result{RequeueAfter: r.cfg.Resync}, r.storageReady(ctx, s, metav1.ConditionFalse, bootv1.StorageFailedReason, "cannot make the iSCSI target; see the agent's log", path)
	}
	if c := meta.FindStatusCondition(s.Status.Conditions, bootv1.StorageReadyCondition); c != nil && c.Reason == bootv1.TargetUnavailableReason {
		log.Info("Rebuilt the iSCSI target", "iqn", t.IQN)
	}
	// The logins are the login watcher's (loginWatcher), not the resync's.
	return ctrl.Result{RequeueAfter: r.cfg.Resync}, r.storageReady(ctx, s, metav1.ConditionTrue, ReasonTargetReady, "overlay and iSCSI target ready", path)
}

// errUnavailable is what Reconcile returns while a session's target cannot be
// made: the error makes controller-runtime retry with backoff.
type errUnavailable struct{ msg string }

func (e *errUnavailable) Error() string { return e.msg }

// unavailable reports StorageReady=False TargetUnavailable with what failed
// (the drivers' errors carry no secret; the session's secrets are scrubbed
// again here) and returns an error, so that the session is retried with
// backoff. The overlay path stays in the status.
func (r *sessionReconciler) unavailable(ctx context.Context, s *bootv1.BootSession, sec *corev1.Secret, what string, cause error, path string) error {
	msg := scrub(what+" (retrying with backoff; the overlay is kept): "+cause.Error(), sec)
	if err := r.storageReady(ctx, s, metav1.ConditionFalse, bootv1.TargetUnavailableReason, msg, path); err != nil {
		return err
	}
	return &errUnavailable{msg: "session " + s.Namespace + "/" + s.Name + ": " + msg}
}

// wasStorageReady reports whether the session's storage was ready once: the
// manager stamped timeline.storageReady, or this agent's condition is True,
// OverlayLost, or TargetUnavailable with the overlay's path (a target that
// went away after it was made, before the manager's stamp). Such a session
// may have a PC running on its disk, so no driver error fails it.
// TargetUnavailable without a path is a new session that could not be
// provisioned (tgtd away while its persistent disk's users were checked): it
// is provisioned again as new, never taken for a running one whose overlay
// is lost.
func wasStorageReady(s *bootv1.BootSession) bool {
	if s.Status.Timeline.StorageReady != nil {
		return true
	}
	c := meta.FindStatusCondition(s.Status.Conditions, bootv1.StorageReadyCondition)
	return c != nil && (c.Status == metav1.ConditionTrue || c.Reason == bootv1.OverlayLostReason ||
		c.Reason == bootv1.TargetUnavailableReason && s.Status.OverlayPath != "")
}

// transient reports whether a driver error is the target daemon being away
// (not listening, restarting, timing out) rather than a refusal of the
// request, which a retry would not change.
func transient(err error) bool {
	var refused *target.TGTError
	if errors.As(err, &refused) {
		return false
	}
	for _, e := range []error{syscall.ECONNREFUSED, syscall.ENOENT, syscall.ECONNRESET, syscall.EPIPE,
		io.EOF, io.ErrUnexpectedEOF, os.ErrDeadlineExceeded, context.DeadlineExceeded} {
		if errors.Is(err, e) {
			return true
		}
	}
	var ne net.Error
	return errors.As(err, &ne)
}

// scrub replaces every secret of the session's Secret in msg.
func scrub(msg string, sec *corev1.Secret) string {
	for _, k := range []string{bootv1.SecretKeyPassword, bootv1.SecretKeyTargetPassword, bootv1.SecretKeyToken} {
		if v := string(sec.Data[k]); v != "" {
			msg = strings.ReplaceAll(msg, v, "[redacted]")
		}
	}
	return msg
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

// storageReady applies this node's StorageReady condition and the overlay
// path (writeSession) unless they say so already: a new observedGeneration
// alone (the session was stopped) is not worth a write.
func (r *sessionReconciler) storageReady(ctx context.Context, s *bootv1.BootSession, status metav1.ConditionStatus, reason, msg, path string) error {
	return r.writeSession(ctx, s, func(st *sessionStatus) {
		if c := st.Ready; c != nil && c.Status == status && c.Reason == reason && c.Message == msg && st.OverlayPath == path {
			return
		}
		st.Ready = condition(st.Ready, bootv1.StorageReadyCondition, status, reason, msg, s.Generation)
		st.OverlayPath = path
	})
}

// loginSampleInterval is how often the login watcher samples who is logged
// in to this node's targets (more seldom when a sample takes more than a
// tenth of it): a login or logout is stamped within about that long of when
// it happened (and the API's times are to the second).
var loginSampleInterval = 500 * time.Millisecond

// loginGoneKeep is how long the watcher remembers when it saw a session
// gone, for a write that has to be retried.
const loginGoneKeep = time.Minute

// loginWatcher keeps every session's timeline.logins (and iscsiLogin,
// iscsiLogout) in step with who is logged in to its target. Twice a second
// it asks the target daemon, in one request for all of this node's targets
// (Driver.Sessions: one tgtd target show), who is logged in, notes when each
// session (target IQN and the daemon's session id) first appeared and when
// it went, and folds that into the status of each session whose rows differ
// (mergeLogins): it writes only on change. The rows are matched to the
// daemon's sessions by session id, so after an agent restart a session
// already in the status is not added again (one that logged in or out while
// the agent was away is stamped when the agent comes back). A sample that
// fails (the daemon away) changes nothing: a daemon that comes back empty
// then shows every session gone, which they are.
type loginWatcher struct {
	r *sessionReconciler
	// seen is when each live session was first seen; gone when one was
	// first seen missing.
	seen, gone map[nexusKey]time.Time
	// failing: the last sample failed (logged once, not every tick).
	failing bool
}

// nexusKey is one iSCSI session of a target.
type nexusKey struct{ iqn, session string }

func newLoginWatcher(r *sessionReconciler) *loginWatcher {
	return &loginWatcher{r: r, seen: map[nexusKey]time.Time{}, gone: map[nexusKey]time.Time{}}
}

func (w *loginWatcher) run(ctx context.Context) error {
	if !w.r.mgr.GetCache().WaitForCacheSync(ctx) {
		return nil
	}
	t := time.NewTimer(loginSampleInterval)
	defer t.Stop()
	for {
		start := time.Now()
		err := w.tick(ctx, start)
		// A sample costs the target daemon and the agent about 50 µs per
		// target (tgtd's show of 500 targets: 26 ms): with thousands of
		// targets they sample less often, at most a tenth of the time (and
		// at least every 5 s).
		t.Reset(max(loginSampleInterval, min(10*time.Since(start), 5*time.Second)))
		switch {
		case ctx.Err() != nil:
		case err != nil && !w.failing:
			w.r.log.Error(err, "Sampling the iSCSI logins (retrying every tick, logged once)")
			w.failing = true
		case err == nil && w.failing:
			w.r.log.Info("Sampling the iSCSI logins again")
			w.failing = false
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// tick takes one sample at now and writes the timelines it changes.
func (w *loginWatcher) tick(ctx context.Context, now time.Time) error {
	c, cancel := context.WithTimeout(ctx, 5*time.Second)
	live, err := w.r.cfg.Driver.Sessions(c, ownedIQNPrefix(w.r.cfg.IQNPrefix, w.r.cfg.Namespace))
	cancel()
	if err != nil {
		return err
	}
	w.observe(live, now)
	var list bootv1.BootSessionList
	if err := w.r.mgr.GetCache().List(ctx, &list, client.UnsafeDisableDeepCopy); err != nil {
		return err
	}
	var errs []error
	keep := map[types.NamespacedName]bool{}
	for i := range list.Items {
		s := &list.Items[i]
		if s.Status.StorageNode != w.r.cfg.NodeName {
			continue
		}
		key := client.ObjectKeyFromObject(s)
		if controllerutil.ContainsFinalizer(s, bootv1.StorageFinalizer) {
			keep[key] = true
		}
		if s.Status.Target == nil {
			continue
		}
		iqn := w.r.sessionIQN(s)
		conns := live[iqn]
		if len(conns) == 0 && !openLogin(s.Status.Timeline.Logins) && !w.r.book.hasOpenLogin(key) {
			// Nobody logged in and no row to log out: a fleet's common
			// case, and every session done with.
			continue
		}
		keep[key] = true
		errs = append(errs, w.r.recordLogins(ctx, s, conns, func(key string) time.Time {
			if t, ok := w.seen[nexusKey{iqn, key}]; ok {
				return t
			}
			if t, ok := w.gone[nexusKey{iqn, key}]; ok {
				return t
			}
			return now
		}))
	}
	// The records of sessions this agent is done with (stopped, deleted).
	w.r.book.prune(keep, now)
	return errors.Join(errs...)
}

// observe notes the sessions of live that are new and those that went.
func (w *loginWatcher) observe(live map[string][]target.Connection, now time.Time) {
	cur := map[nexusKey]bool{}
	for iqn, conns := range live {
		for _, c := range conns {
			k := nexusKey{iqn, connKey(c)}
			cur[k] = true
			if _, ok := w.seen[k]; !ok {
				w.seen[k] = now
				delete(w.gone, k)
				w.r.log.Info("iSCSI login", "target", iqn, "initiator", c.Initiator, "address", c.Address, "sessionID", c.Session)
			}
		}
	}
	for k := range w.seen {
		if !cur[k] {
			delete(w.seen, k)
			w.gone[k] = now
			w.r.log.Info("iSCSI logout", "target", k.iqn, "sessionID", k.session)
		}
	}
	for k, t := range w.gone {
		if now.Sub(t) > loginGoneKeep {
			delete(w.gone, k)
		}
	}
}

// connKey names one session of a target: the daemon's session id, else the
// initiator and its address.
func connKey(c target.Connection) string {
	if c.Session != "" {
		return c.Session
	}
	return c.Initiator + "@" + c.Address
}

func rowKey(l bootv1.SessionLogin) string {
	return connKey(target.Connection{Initiator: l.Initiator, Address: l.Address, Session: l.SessionID})
}

// mergeLogins folds the sessions logged in to a target now (live) into a
// session's timeline and reports whether it changed: a live session without
// an open row (one not logged out) gets a new row, stamped when(its key); an
// open row whose session is not live is logged out at when(its key), never
// before its login. Rows stay oldest first; beyond bootv1.MaxSessionLogins
// the oldest logged-out rows go first. iscsiLogin is set once, to the first
// row; iscsiLogout is the last logout while no row is open and absent while
// one is (a timeline without rows, from before the rows existed, keeps
// both). tl is not modified.
func mergeLogins(tl bootv1.SessionTimeline, live []target.Connection, when func(key string) time.Time) (bootv1.SessionTimeline, bool) {
	rows := slices.Clone(tl.Logins)
	changed := false
	liveKeys := map[string]bool{}
	var fresh []target.Connection
	for _, c := range live {
		if k := connKey(c); !liveKeys[k] {
			liveKeys[k] = true
			fresh = append(fresh, c)
		}
	}
	open := map[string]bool{}
	for i := range rows {
		if rows[i].LoggedOutAt != nil {
			continue
		}
		k := rowKey(rows[i])
		if liveKeys[k] && !open[k] {
			open[k] = true
			continue
		}
		out := when(k)
		if out.Before(rows[i].At.Time) {
			out = rows[i].At.Time
		}
		rows[i].LoggedOutAt = &metav1.Time{Time: out}
		changed = true
	}
	var added []bootv1.SessionLogin
	for _, c := range fresh {
		if k := connKey(c); !open[k] {
			added = append(added, bootv1.SessionLogin{At: metav1.NewTime(when(k)), Initiator: c.Initiator, Address: c.Address, SessionID: c.Session})
		}
	}
	slices.SortStableFunc(added, func(a, b bootv1.SessionLogin) int { return a.At.Compare(b.At.Time) })
	rows = append(rows, added...)
	for len(rows) > bootv1.MaxSessionLogins {
		i := slices.IndexFunc(rows, func(l bootv1.SessionLogin) bool { return l.LoggedOutAt != nil })
		if i < 0 {
			// Every row is a live session: keep the oldest (the firmware's
			// and the OS's); sessions past the cap get no row until one
			// ends. Evicting an open row instead would add it back on the
			// next sample and evict another: a PC holding more sessions
			// than the cap would have its status rewritten every sample.
			rows = rows[:bootv1.MaxSessionLogins]
			break
		}
		rows = slices.Delete(rows, i, i+1)
	}
	if !apiequality.Semantic.DeepEqual(tl.Logins, rows) {
		changed = true
	}
	tl.Logins = rows
	if len(rows) == 0 {
		return tl, changed
	}
	if tl.ISCSILogin == nil {
		first := rows[0].At
		tl.ISCSILogin = &first
		changed = true
	}
	var last *metav1.Time
	for _, l := range rows {
		if l.LoggedOutAt == nil {
			last = nil
			break
		}
		if last == nil || l.LoggedOutAt.After(last.Time) {
			last = l.LoggedOutAt
		}
	}
	if (last == nil) != (tl.ISCSILogout == nil) || last != nil && last.Unix() != tl.ISCSILogout.Unix() {
		tl.ISCSILogout = last
		changed = true
	}
	return tl, changed
}

// recordLogins folds the sessions logged in to a session's target now
// (live; when: the time each was first seen, or seen gone) into its
// timeline's logins, iscsiLogin and iscsiLogout (mergeLogins) and applies
// them when they changed (writeSession). The rows are folded into the
// agent's record of what it wrote, never into a cache that may lag behind
// it.
func (r *sessionReconciler) recordLogins(ctx context.Context, s *bootv1.BootSession, live []target.Connection, when func(key string) time.Time) error {
	return r.writeSession(ctx, s, func(st *sessionStatus) {
		if tl, changed := mergeLogins(st.timeline(), live, when); changed {
			st.setTimeline(tl)
		}
	})
}

// teardown removes the target (closing the initiator's connections) and,
// for Discard, the overlay; then it releases the storage finalizer.
func (r *sessionReconciler) teardown(ctx context.Context, s *bootv1.BootSession, log interface {
	Info(string, ...any)
}) error {
	if !controllerutil.ContainsFinalizer(s, bootv1.StorageFinalizer) || r.released.has(s) {
		// Done; or done already, and this cache has not yet seen the
		// finalizer go (a teardown again would cost tgtd requests and a
		// refused patch).
		return nil
	}
	// Only this session's own target name, whatever the status says.
	if err := r.cfg.Driver.Remove(ctx, r.sessionIQN(s)); err != nil {
		return err
	}
	if s.Spec.Writeback != bootv1.WritebackPersist {
		if err := r.overlays.Remove(r.discardPath(s)); err != nil {
			return err
		}
	}
	log.Info("Removed the session's target", "BootSession", s.Namespace+"/"+s.Name, "overlayKept", s.Spec.Writeback == bootv1.WritebackPersist)
	return r.finalizer(ctx, s, false)
}

// finalizer adds or removes the storage finalizer. The manager adds it in
// its first write of a new session; the agent adds it only to a scheduled
// session that lacks it (made by an older manager), by an update of a fresh
// read. It removes it by a JSON patch that tests the list entry
// (finalizer.Remove), from its cached copy: no resourceVersion, so the
// manager's own writes at the same time (the Stopping status) do not make
// it conflict.
func (r *sessionReconciler) finalizer(ctx context.Context, s *bootv1.BootSession, add bool) error {
	if !add {
		if err := finalizer.Remove(ctx, r.Client, r.reader, s.DeepCopy(), bootv1.StorageFinalizer); err != nil {
			return err
		}
		r.released.add(s)
		return nil
	}
	return client.IgnoreNotFound(retry.RetryOnConflict(retry.DefaultRetry, func() error {
		cur := &bootv1.BootSession{}
		if err := r.reader.Get(ctx, client.ObjectKeyFromObject(s), cur); err != nil {
			return err
		}
		if !controllerutil.AddFinalizer(cur, bootv1.StorageFinalizer) {
			return nil
		}
		return r.Update(ctx, cur)
	}))
}

// released remembers the sessions (by name and UID) whose storage finalizer
// the agent removed, until they are gone: a reconcile from a cache that still
// shows the finalizer does not tear down again. A session never gets the
// finalizer back from the agent (it adds it only to a live session) nor
// from the manager (only to a new one).
type released struct {
	mu sync.Mutex
	m  map[types.NamespacedName]types.UID
}

func (r *released) add(s *bootv1.BootSession) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.m == nil {
		r.m = map[types.NamespacedName]types.UID{}
	}
	r.m[client.ObjectKeyFromObject(s)] = s.UID
}

func (r *released) has(s *bootv1.BootSession) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	uid, ok := r.m[client.ObjectKeyFromObject(s)]
	return ok && uid == s.UID
}

func (r *released) forget(key types.NamespacedName) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.m, key)
}

// sessionIQN is the only target name a session may have, as the manager
// names it: <prefix>:<namespace>:<session>. The status is checked against it,
// never trusted for it.
func (r *Role) sessionIQN(s *bootv1.BootSession) string {
	return bootv1.TargetIQN(r.cfg.IQNPrefix, s.Namespace, s.Name)
}
