package controllers

import (
	"sync"

	"k8s.io/apimachinery/pkg/types"
)

// ownWrites remembers, per session, the resourceVersions that the manager's
// own writes of its last reconcile superseded: the version that reconcile
// read and the one its metadata write made before its status write. A
// reconcile that reads one of them reads a cache that has not yet seen the
// manager's last write (the metadata write's watch event can arrive, and
// requeue the session, while the status write is under way); the watch event
// of that last write is still to come and reconciles the session again, so
// this reconcile does nothing (it would only repeat the Secret create, answered
// AlreadyExists, and the status patch, answered Conflict).
//
// No reconcile is lost: a version is remembered only after a reconcile whose
// writes all succeeded, so a newer version exists and the informer delivers it
// (or the session's deletion) to the same queue; and the informer updates its
// cache before it queues the event, so a reconcile that still reads the old
// version runs before that event's one. Memory is bounded by the sessions
// whose manager's write is not yet in the cache: the entry goes as soon as a
// reconcile reads another version, and when the session is gone. Safe for
// concurrent use (one reconcile per session at a time, many sessions).
type ownWrites struct {
	mu sync.Mutex
	m  map[types.NamespacedName]ownWrite
	// secrets holds the sessions whose Secret this manager created, until
	// they are first Ready: ensureSecret need not read back a Secret it
	// made complete moments ago (an API round trip in the Ready reconcile).
	secrets map[types.NamespacedName]types.UID
}

type ownWrite struct {
	uid types.UID
	// old holds the superseded versions (at most two).
	old []string
}

func newOwnWrites() *ownWrites {
	return &ownWrites{m: map[types.NamespacedName]ownWrite{}, secrets: map[types.NamespacedName]types.UID{}}
}

// madeSecret records that this manager created the session's Secret.
func (o *ownWrites) madeSecret(key types.NamespacedName, uid types.UID) {
	if o == nil {
		return
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	o.secrets[key] = uid
}

// secretMade reports whether this manager created the Secret of the
// session (key, uid) and it has not been Ready since.
func (o *ownWrites) secretMade(key types.NamespacedName, uid types.UID) bool {
	if o == nil {
		return false
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	v, ok := o.secrets[key]
	return ok && v == uid
}

// forgetSecret drops the session's Secret record (it is Ready: later
// reconciles, rare, read the Secret again and remake it if it was deleted).
func (o *ownWrites) forgetSecret(key types.NamespacedName) {
	if o == nil {
		return
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	delete(o.secrets, key)
}

// superseded reports whether version rv of the session (key, uid) was
// superseded by the manager's own last writes. Any other version ends the
// entry: the cache has caught up (or moved past it).
func (o *ownWrites) superseded(key types.NamespacedName, uid types.UID, rv string) bool {
	if o == nil {
		return false
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	w, ok := o.m[key]
	if !ok {
		return false
	}
	if w.uid == uid {
		for _, v := range w.old {
			if v == rv {
				return true
			}
		}
	}
	delete(o.m, key)
	return false
}

// remember records that a reconcile which read the session and wrote it
// successfully left it at version now; read and the others are the versions
// it read and went through. Versions equal to now are not superseded; when
// none is left (the reconcile wrote nothing) the entry goes.
func (o *ownWrites) remember(key types.NamespacedName, uid types.UID, now string, read ...string) {
	if o == nil {
		return
	}
	var old []string
	for _, v := range read {
		if v != "" && v != now && (len(old) == 0 || old[len(old)-1] != v) {
			old = append(old, v)
		}
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	if len(old) == 0 {
		delete(o.m, key)
		return
	}
	o.m[key] = ownWrite{uid: uid, old: old}
}

// forget drops the session's entries (it is gone).
func (o *ownWrites) forget(key types.NamespacedName) {
	if o == nil {
		return
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	delete(o.m, key)
	delete(o.secrets, key)
}

// len is the number of sessions remembered (tests).
func (o *ownWrites) len() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return len(o.m) + len(o.secrets)
}
