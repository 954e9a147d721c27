package storage

import (
	"context"
	"sync"
	"time"

	apiequality "k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	bootv1 "github.com/ggnet/ggnet/api/v1alpha1"
	bootac "github.com/ggnet/ggnet/api/v1alpha1/applyconfiguration/api/v1alpha1"
)

// sessionStatus is every field of a session's status this agent writes, in
// one apply: its StorageReady condition, the overlay path, and the iSCSI
// logins with the first login and the last logout. Two writers make it, the
// session reconciler (StorageReady, overlayPath) and the login watcher (the
// rest); each applies the whole record, so neither removes the other's
// fields. Times are to the second, as the API server keeps them.
type sessionStatus struct {
	Ready *metav1.Condition
	// Retire is the answer to the manager's RetireAnnotation (retire.go).
	Retire      *metav1.Condition
	OverlayPath string
	Logins      []bootv1.SessionLogin
	Login       *metav1.Time
	Logout      *metav1.Time
}

// statusOf reads the agent's fields from a session.
func statusOf(s *bootv1.BootSession) sessionStatus {
	tl := s.Status.Timeline.DeepCopy()
	st := sessionStatus{OverlayPath: s.Status.OverlayPath, Logins: tl.Logins, Login: tl.ISCSILogin, Logout: tl.ISCSILogout}
	if c := meta.FindStatusCondition(s.Status.Conditions, bootv1.StorageReadyCondition); c != nil {
		st.Ready = c.DeepCopy()
	}
	if c := meta.FindStatusCondition(s.Status.Conditions, bootv1.RetireCondition); c != nil {
		st.Retire = c.DeepCopy()
	}
	return st
}

// clone is a deep copy of st.
func (st sessionStatus) clone() sessionStatus {
	out := st
	if st.Ready != nil {
		out.Ready = st.Ready.DeepCopy()
	}
	if st.Retire != nil {
		out.Retire = st.Retire.DeepCopy()
	}
	tl := st.timeline()
	tl = *tl.DeepCopy()
	out.Logins, out.Login, out.Logout = tl.Logins, tl.ISCSILogin, tl.ISCSILogout
	return out
}

// timeline is the login part of st as a timeline.
func (st sessionStatus) timeline() bootv1.SessionTimeline {
	return bootv1.SessionTimeline{Logins: st.Logins, ISCSILogin: st.Login, ISCSILogout: st.Logout}
}

// setTimeline takes the login part of tl, to the second.
func (st *sessionStatus) setTimeline(tl bootv1.SessionTimeline) {
	st.Logins, st.Login, st.Logout = tl.Logins, second(tl.ISCSILogin), second(tl.ISCSILogout)
	for i := range st.Logins {
		st.Logins[i].At = *second(&st.Logins[i].At)
		st.Logins[i].LoggedOutAt = second(st.Logins[i].LoggedOutAt)
	}
}

func second(t *metav1.Time) *metav1.Time {
	if t == nil {
		return nil
	}
	return &metav1.Time{Time: t.Truncate(time.Second)}
}

// applyConfig is st as the apply of s's status.
func (st sessionStatus) applyConfig(s *bootv1.BootSession) *bootac.BootSessionApplyConfiguration {
	status := bootac.BootSessionStatus()
	if st.Ready != nil {
		status.WithConditions(conditionApply(st.Ready))
	}
	if st.Retire != nil {
		status.WithConditions(conditionApply(st.Retire))
	}
	if st.OverlayPath != "" {
		status.WithOverlayPath(st.OverlayPath)
	}
	if len(st.Logins) > 0 || st.Login != nil || st.Logout != nil {
		tl := bootac.SessionTimeline()
		for _, l := range st.Logins {
			row := bootac.SessionLogin().WithAt(l.At).WithInitiator(l.Initiator)
			if l.Address != "" {
				row.WithAddress(l.Address)
			}
			if l.SessionID != "" {
				row.WithSessionID(l.SessionID)
			}
			if l.LoggedOutAt != nil {
				row.WithLoggedOutAt(*l.LoggedOutAt)
			}
			tl.WithLogins(row)
		}
		if st.Login != nil {
			tl.WithISCSILogin(*st.Login)
		}
		if st.Logout != nil {
			tl.WithISCSILogout(*st.Logout)
		}
		status.WithTimeline(tl)
	}
	return bootac.BootSession(s.Name, s.Namespace).WithStatus(status)
}

// statusBook holds, per session, what the API server holds of the agent's
// fields: the agent is their only writer, so its own record is newer than
// its cache, which may not show the agent's last write yet. A session's
// record is read from the session when the agent first writes it (after a
// start, the cache shows the last process's writes) and kept while the
// session may be written again (prune).
type statusBook struct {
	mu      sync.Mutex
	entries map[types.NamespacedName]*bookEntry
}

type bookEntry struct {
	// mu orders the session's writers; it is held across the apply.
	mu  sync.Mutex
	uid types.UID
	st  sessionStatus
	// used is when a writer last took the record (guarded by the book's
	// mu).
	used time.Time
}

func newStatusBook() *statusBook {
	return &statusBook{entries: map[types.NamespacedName]*bookEntry{}}
}

func (b *statusBook) entry(key types.NamespacedName) *bookEntry {
	b.mu.Lock()
	defer b.mu.Unlock()
	e := b.entries[key]
	if e == nil {
		e = &bookEntry{}
		b.entries[key] = e
	}
	e.used = time.Now()
	return e
}

// forget drops a session's record (the session is gone).
func (b *statusBook) forget(key types.NamespacedName) {
	b.mu.Lock()
	defer b.mu.Unlock()
	delete(b.entries, key)
}

// hasOpenLogin reports whether the record of a session has a login row not
// logged out.
func (b *statusBook) hasOpenLogin(key types.NamespacedName) bool {
	b.mu.Lock()
	e := b.entries[key]
	b.mu.Unlock()
	if e == nil {
		return false
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	return openLogin(e.st.Logins)
}

// openLogin reports whether a row is not logged out.
func openLogin(rows []bootv1.SessionLogin) bool {
	for _, l := range rows {
		if l.LoggedOutAt == nil {
			return true
		}
	}
	return false
}

// bookIdle is how long a record outlives the need for it: by then the
// cache shows the agent's last write, and a record read again from it is
// right.
const bookIdle = time.Minute

// prune drops the records of sessions not in keep that were not used for
// bookIdle.
func (b *statusBook) prune(keep map[types.NamespacedName]bool, now time.Time) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for k, e := range b.entries {
		if keep[k] || !e.mu.TryLock() {
			continue
		}
		if now.Sub(e.used) > bookIdle {
			delete(b.entries, k)
		}
		e.mu.Unlock()
	}
}

// writeSession applies the agent's fields of s as change leaves them, in
// one apply with every field the agent owns on s, unless they are as the API
// server holds them already (no write). Writes of one session are in turn.
func (r *Role) writeSession(ctx context.Context, s *bootv1.BootSession, change func(*sessionStatus)) error {
	key := client.ObjectKeyFromObject(s)
	e := r.book.entry(key)
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.uid != s.UID {
		e.uid, e.st = s.UID, statusOf(s)
	}
	next := e.st.clone()
	change(&next)
	if apiequality.Semantic.DeepEqual(e.st, next) {
		return nil
	}
	if err := r.applyStatus(ctx, next.applyConfig(s)); err != nil {
		if apierrors.IsNotFound(err) {
			r.book.forget(key)
			return nil
		}
		return err
	}
	e.st = next
	return nil
}
