package storage

import (
	"context"
	"path/filepath"
	"strings"

	"sigs.k8s.io/controller-runtime/pkg/client"

	bootv1 "github.com/ggnet/ggnet/api/v1alpha1"
)

// collectOnce, run after the caches synced and then every Resync, removes
// the GGnet targets and Discard overlays on this node that no live session
// wants — what a crash in the middle of a teardown, or sessions deleted
// while the agent was down, leave behind. Persistent disks (the persist/
// directories and the old layout's persist-*.raw) are never collected, and
// nothing a live session uses is ever removed. An agent watching one
// namespace collects only that namespace's.
func (r *Role) collectOnce(ctx context.Context) error {
	r.gcMu.Lock()
	defer r.gcMu.Unlock()
	var list bootv1.BootSessionList
	if err := r.mgr.GetClient().List(ctx, &list, client.UnsafeDisableDeepCopy); err != nil {
		return err
	}
	wantTargets := map[string]bool{}
	wantOverlays := map[string]bool{}
	for i := range list.Items {
		s := &list.Items[i]
		if s.Status.StorageNode != r.cfg.NodeName {
			continue
		}
		live := !s.Spec.Stopped && s.DeletionTimestamp == nil && s.Status.Phase != bootv1.SessionFailed
		// A session still tearing down keeps its files until its own
		// reconcile has done it.
		if live || hasFinalizer(s) {
			// The session's own target name, not the status's: a status
			// rewritten by hand must not make the running PC's target
			// look unwanted.
			wantTargets[r.sessionIQN(s)] = true
			if s.Spec.Writeback != bootv1.WritebackPersist {
				rel, _ := filepath.Rel(r.overlays.Dir(), r.discardPath(s))
				wantOverlays[rel] = true
			}
		}
	}
	targets, err := r.cfg.Driver.List(ctx, ownedIQNPrefix(r.cfg.IQNPrefix, r.cfg.Namespace))
	if err != nil {
		return err
	}
	for _, t := range targets {
		if !wantTargets[t.IQN] {
			r.log.Info("Removing a target no session wants", "iqn", t.IQN)
			if err := r.cfg.Driver.Remove(ctx, t.IQN); err != nil {
				return err
			}
		}
	}
	files, err := r.overlays.List()
	if err != nil {
		return err
	}
	for _, f := range files {
		if persistent(f) || wantOverlays[f] || !ownsOverlay(f, r.cfg.Namespace) {
			continue
		}
		r.log.Info("Removing an overlay no session wants", "overlay", f)
		if err := r.overlays.Remove(filepath.Join(r.overlays.Dir(), f)); err != nil {
			return err
		}
	}
	return nil
}

// ownedIQNPrefix is the IQN prefix of the targets this agent may collect. An
// agent that watches one namespace sees only that namespace's sessions, so it
// must not judge another's targets (the manager names them
// <prefix>:<namespace>:<session>): a second GGnet serving another namespace
// on the same node would lose its running PCs' disks to this one's collector.
func ownedIQNPrefix(prefix, namespace string) string {
	if namespace == "" {
		return prefix
	}
	return strings.TrimSuffix(prefix, ":") + ":" + namespace + ":"
}

// ownsOverlay reports whether an overlay file (relative to the overlay
// directory, <namespace>/<file>) is this agent's to collect, for the same
// reason.
func ownsOverlay(rel, namespace string) bool {
	if namespace == "" {
		return true
	}
	dir, _, ok := strings.Cut(filepath.ToSlash(rel), "/")
	return ok && dir == namespace
}

// persistent reports whether an overlay file (relative to the overlay
// directory) may be a persistent disk, which the collector never touches:
// anything under <namespace>/persist/, and <namespace>/persist-*.raw of the
// old layout (isLegacy: not a Discard session's overlay that is named
// persist-...-<uid>.raw, which is collected like any other).
func persistent(rel string) bool {
	parts := strings.Split(filepath.ToSlash(rel), "/")
	return len(parts) > 2 && parts[1] == persistDir || isLegacy(parts[len(parts)-1])
}

func hasFinalizer(s *bootv1.BootSession) bool {
	for _, f := range s.Finalizers {
		if f == bootv1.StorageFinalizer {
			return true
		}
	}
	return false
}
