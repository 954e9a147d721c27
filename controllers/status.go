package controllers

import (
	"fmt"
	"sort"
	"strings"

	"k8s.io/apimachinery/pkg/api/meta"

	bootv1 "github.com/ggnet/ggnet/api/v1alpha1"
)

// finished reports whether a session has ended for good.
func finished(s *bootv1.BootSession) bool {
	return s.Status.Phase == bootv1.SessionStopped || s.Status.Phase == bootv1.SessionFailed
}

// holdsMachine reports whether a session counts as the machine's active
// session: not finished, not stopped, not waiting behind another one.
func holdsMachine(s *bootv1.BootSession) bool {
	if finished(s) || s.DeletionTimestamp != nil {
		return false
	}
	if s.Spec.Stopped {
		// A stopping session still holds its target until it is torn down.
		return s.Status.StorageNode != ""
	}
	c := meta.FindStatusCondition(s.Status.Conditions, bootv1.ReadyCondition)
	return c == nil || c.Reason != bootv1.MachineBusyReason
}

// blocksDeletion reports whether a session holds up the deletion of its
// Machine or Image: it has not finished, and it is scheduled (a PC may run
// on its disk), or it is not scheduled yet and has not seen the deletion (its
// Ready reason is not MachineDeleting or ImageDeleting), so that a reconcile
// begun before the deletion could still schedule it. A session not
// scheduled that is stopped or being deleted ends without storage.
func blocksDeletion(s *bootv1.BootSession) bool {
	switch {
	case finished(s):
		return false
	case s.Status.StorageNode != "":
		return true
	case s.Spec.Stopped || s.DeletionTimestamp != nil:
		return false
	}
	c := meta.FindStatusCondition(s.Status.Conditions, bootv1.ReadyCondition)
	return c == nil || (c.Reason != bootv1.MachineDeletingReason && c.Reason != bootv1.ImageDeletingReason)
}

// deletionBlockers returns the names of the sessions that hold up a
// deletion (blocksDeletion), sorted.
func deletionBlockers(sessions []bootv1.BootSession) []string {
	var out []string
	for i := range sessions {
		if blocksDeletion(&sessions[i]) {
			out = append(out, sessions[i].Name)
		}
	}
	sort.Strings(out)
	return out
}

// inUseMessage says which sessions a deletion waits for (at most five by
// name).
func inUseMessage(users []string, what string) string {
	names := users
	if len(names) > 5 {
		names = names[:5]
	}
	msg := fmt.Sprintf("deletion waits for %d unfinished session(s) that use %s: %s", len(users), what, strings.Join(names, ", "))
	if len(users) > len(names) {
		msg += fmt.Sprintf(" and %d more", len(users)-len(names))
	}
	return msg
}

// olderFirst orders sessions by creation, then name: the first one of a
// machine gets it, the others wait.
func olderFirst(a, b *bootv1.BootSession) bool {
	if !a.CreationTimestamp.Equal(&b.CreationTimestamp) {
		return a.CreationTimestamp.Before(&b.CreationTimestamp)
	}
	return a.Name < b.Name
}

// phaseOf computes a Ready session's phase from the boot progress the agents
// recorded.
func phaseOf(s *bootv1.BootSession) bootv1.BootSessionPhase {
	switch {
	case s.Status.Timeline.ISCSILogin != nil:
		return bootv1.SessionActive
	case s.Status.Timeline.ScriptServed != nil:
		return bootv1.SessionBooting
	default:
		return bootv1.SessionReady
	}
}

// scheduleNode picks a storage node for a session: among the nodes with a
// Ready replica of the image (and, when pinned, only the pin), the one with
// the fewest active sessions, then by name. It returns "" when none fits.
func scheduleNode(replicas []bootv1.ImageReplica, pin string, load map[string]int, exists func(string) bool) string {
	best := ""
	for _, r := range replicas {
		if r.State != bootv1.ReplicaReady || (pin != "" && r.Node != pin) || !exists(r.Node) {
			continue
		}
		if best == "" || load[r.Node] < load[best] || (load[r.Node] == load[best] && r.Node < best) {
			best = r.Node
		}
	}
	return best
}
