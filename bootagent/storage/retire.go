package storage

import (
	"context"
	"sync"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	bootv1 "github.com/ggnet/ggnet/api/v1alpha1"
	"github.com/ggnet/ggnet/bootagent/target"
)

// The retire hand-over (bootv1.RetireAnnotation): the manager asks to retire
// an AutoSession machine's prepared session that no longer fits the Machine,
// and stops it only if this agent answers that no PC uses it. The agent
// first makes the target refuse new logins (the ACL is bound to
// retiredInitiator, a name no PC has; tgt changes it in place, whoever is
// logged in stays), waits retireSettle for a login already past the ACL
// check to finish, and only then looks for a login: a live connection to the
// target, or one the login watcher ever recorded in the session's timeline.
// None: Retire=True Unused, and the target keeps refusing until the manager
// stops the session (its normal teardown). Some: the real initiator is bound
// again, then Retire=False InUse, and the manager keeps the session. Looking
// after the unbind means that a login cannot slip in between: a PC whose
// login comes later is refused, its iPXE reports the failure, and the boot
// agent sends it back for its machine's next session.
//
// The answer is applied with the rest of the agent's fields of the session
// (sessionStatus), with its field manager.

// retireSettle is how long after the unbind the agent looks for logins: a
// login that passed the ACL check just before is then complete and shown by
// the target daemon (a LAN login takes milliseconds).
var retireSettle = 2 * time.Second

// retiredSuffix makes the initiator name a retired session's target is
// bound to.
const retiredSuffix = ":retired"

// retiredInitiator is the initiator name no PC uses that the target of a
// retiring or retired session is bound to.
func retiredInitiator(iqn string) string { return iqn + retiredSuffix }

// retireAsked is the RetireAnnotation of s (why, and whether asked), counted
// only on an AutoSession session (bootv1.AutoSessionLabel): the manager
// retires only those and acts on the answer only for those, so on a user's
// session the annotation (anyone who may patch its metadata can set it)
// would bind its target to retiredInitiator for good and leave it stuck.
func retireAsked(s *bootv1.BootSession) (why string, asked bool) {
	if !autoSession(s) {
		return "", false
	}
	why, asked = s.Annotations[bootv1.RetireAnnotation]
	return why, asked
}

func autoSession(s *bootv1.BootSession) bool { return s.Labels[bootv1.AutoSessionLabel] == "true" }

// retiring holds when the agent unbound each session's initiator, for the
// retires under way (in memory: after a restart the unbind is made again and
// the settle waited again). Its zero value is ready.
type retiring struct {
	mu    sync.Mutex
	since map[types.NamespacedName]time.Time
}

func (x *retiring) get(k types.NamespacedName) (time.Time, bool) {
	x.mu.Lock()
	defer x.mu.Unlock()
	t, ok := x.since[k]
	return t, ok
}

func (x *retiring) start(k types.NamespacedName, now time.Time) time.Time {
	x.mu.Lock()
	defer x.mu.Unlock()
	if t, ok := x.since[k]; ok {
		return t
	}
	if x.since == nil {
		x.since = map[types.NamespacedName]time.Time{}
	}
	x.since[k] = now
	return now
}

func (x *retiring) done(k types.NamespacedName) {
	x.mu.Lock()
	defer x.mu.Unlock()
	delete(x.since, k)
}

// recordedRetire is the agent's Retire condition of s as the API server
// holds it (the agent's record, else the session's).
func (r *Role) recordedRetire(s *bootv1.BootSession) *metav1.Condition {
	return r.recorded(s, bootv1.RetireCondition, func(st *sessionStatus) *metav1.Condition { return st.Retire })
}

// recordedReady is the agent's StorageReady condition of s as the API
// server holds it.
func (r *Role) recordedReady(s *bootv1.BootSession) *metav1.Condition {
	return r.recorded(s, bootv1.StorageReadyCondition, func(st *sessionStatus) *metav1.Condition { return st.Ready })
}

// recorded is one of the agent's conditions of s as the API server holds
// it: from the agent's record of the session (pick), else the session's
// own condition of type typ.
func (r *Role) recorded(s *bootv1.BootSession, typ string, pick func(*sessionStatus) *metav1.Condition) *metav1.Condition {
	key := client.ObjectKeyFromObject(s)
	r.book.mu.Lock()
	e := r.book.entries[key]
	r.book.mu.Unlock()
	if e != nil {
		e.mu.Lock()
		defer e.mu.Unlock()
		if e.uid == s.UID {
			return pick(&e.st)
		}
	}
	return meta.FindStatusCondition(s.Status.Conditions, typ)
}

// servedInitiator is the initiator name s's target is bound to: the
// session's own, or retiredInitiator while an AutoSession session is
// retiring (unbound, not yet answered) or retired (Retire=True).
func (r *sessionReconciler) servedInitiator(s *bootv1.BootSession) string {
	if !autoSession(s) {
		return s.Status.InitiatorIQN
	}
	if _, ok := r.retiring.get(client.ObjectKeyFromObject(s)); ok {
		return retiredInitiator(s.Status.InitiatorIQN)
	}
	if c := r.recordedRetire(s); c != nil && c.Status == metav1.ConditionTrue {
		return retiredInitiator(s.Status.InitiatorIQN)
	}
	return s.Status.InitiatorIQN
}

// retire is the hook of Reconcile for a session whose storage was ready
// once: it answers the RetireAnnotation (see above) and reports whether it
// handled the reconcile (done); if not, reconcileRunning does, as always.
func (r *sessionReconciler) retire(ctx context.Context, s *bootv1.BootSession, sec *corev1.Secret, log logr.Logger) (res ctrl.Result, done bool, err error) {
	key := client.ObjectKeyFromObject(s)
	x := &r.retiring
	why, asked := retireAsked(s)
	if !asked {
		// Withdrawn before an answer (or never asked, or not an
		// AutoSession session): the target is bound to the session's
		// initiator again by reconcileRunning.
		x.done(key)
		return ctrl.Result{}, false, nil
	}
	if c := r.recordedRetire(s); c != nil {
		x.done(key)
		return ctrl.Result{}, false, nil // answered: retired stays retired, in use stays served
	}
	if c := meta.FindStatusCondition(s.Status.Conditions, bootv1.StorageReadyCondition); c == nil || c.Status != metav1.ConditionTrue {
		x.done(key)
		return ctrl.Result{}, false, nil // answered once the target is back
	}
	if used, err := r.loggedIn(ctx, s); err != nil {
		return ctrl.Result{}, true, err
	} else if used != "" {
		// Someone is there already: nothing to unbind.
		return ctrl.Result{}, true, r.answerRetire(ctx, s, false, used, log)
	}
	if _, lio := r.cfg.Driver.(*target.LIO); lio {
		// The kernel target's driver remakes a target to change its
		// initiator, which drops whoever is logged in: a login that lands
		// between the check above and the unbind would lose its disk. Such
		// a session is kept (InUse), never retired blind; it ends with its
		// PC's stop, and the next one follows the new version.
		return ctrl.Result{}, true, r.answerRetire(ctx, s, false,
			"the LIO target driver cannot unbind the initiator without dropping a login that may be under way", log)
	}
	since := x.start(key, time.Now())
	// Unbind: the target is made again with retiredInitiator.
	res, err = r.reconcileRunning(ctx, s, sec, log)
	if err != nil {
		return res, true, err
	}
	if c := r.recordedReady(s); c == nil || c.Status != metav1.ConditionTrue {
		return res, true, nil // the target is not there; retried as reconcileRunning says
	}
	if wait := retireSettle - time.Since(since); wait > 0 {
		return ctrl.Result{RequeueAfter: wait}, true, nil
	}
	used, err := r.loggedIn(ctx, s)
	if err != nil {
		return ctrl.Result{}, true, err
	}
	if used != "" {
		// Bind the real initiator again before answering.
		x.done(key)
		if res, err = r.reconcileRunning(ctx, s, sec, log); err != nil {
			return res, true, err
		}
		if c := r.recordedReady(s); c == nil || c.Status != metav1.ConditionTrue {
			return res, true, nil
		}
		return res, true, r.answerRetire(ctx, s, false, used, log)
	}
	log.Info("Retired a prepared session no PC logged in to", "why", why)
	if err := r.answerRetire(ctx, s, true, "", log); err != nil {
		return ctrl.Result{}, true, err
	}
	x.done(key) // the record's Retire=True keeps the target unbound
	return ctrl.Result{RequeueAfter: r.cfg.Resync}, true, nil
}

// loggedIn says who logged in to s's target ("" for nobody): a connection
// the target daemon shows now, or a login in the agent's record of the
// session's timeline (the login watcher's).
func (r *sessionReconciler) loggedIn(ctx context.Context, s *bootv1.BootSession) (string, error) {
	iqn := r.sessionIQN(s)
	live, err := r.cfg.Driver.Sessions(ctx, iqn)
	if err != nil {
		return "", err
	}
	if conns := live[iqn]; len(conns) > 0 {
		return "initiator " + conns[0].Initiator + " is logged in from " + conns[0].Address, nil
	}
	key := client.ObjectKeyFromObject(s)
	r.book.mu.Lock()
	e := r.book.entries[key]
	r.book.mu.Unlock()
	tl := s.Status.Timeline
	if e != nil {
		e.mu.Lock()
		if e.uid == s.UID {
			tl = e.st.timeline()
		}
		e.mu.Unlock()
	}
	if tl.ISCSILogin != nil || len(tl.Logins) > 0 {
		return "a PC logged in (timeline.iscsiLogin)", nil
	}
	return "", nil
}

// answerRetire applies the Retire condition: True Unused, or False InUse
// with who.
func (r *sessionReconciler) answerRetire(ctx context.Context, s *bootv1.BootSession, unused bool, who string, log logr.Logger) error {
	status, reason, msg := metav1.ConditionTrue, bootv1.RetireUnusedReason, "no PC logged in; the target refuses logins until the session stops"
	if !unused {
		status, reason, msg = metav1.ConditionFalse, bootv1.InUseReason, who+"; the session is kept"
		log.Info("Not retiring a prepared session: a PC uses it", "who", who)
	}
	return r.writeSession(ctx, s, func(st *sessionStatus) {
		st.Retire = condition(st.Retire, bootv1.RetireCondition, status, reason, msg, s.Generation)
	})
}
