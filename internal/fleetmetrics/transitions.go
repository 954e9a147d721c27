package fleetmetrics

import (
	"k8s.io/apimachinery/pkg/api/meta"

	bootv1 "github.com/ggnet/ggnet/api/v1alpha1"
)

// Results of a boot (ggnet_fleet_boots_total{result}): how a session ended
// up, decided once per session, the first time one of them holds.
const (
	// ResultBooted: the machine logged in to its iSCSI disk
	// (timeline.iscsiLogin): the boot worked.
	ResultBooted = "booted"
	// ResultBootFailed: the machine's iPXE could not sanboot its target
	// (BootFailed=True, from the boot agent) before any login.
	ResultBootFailed = "boot_failed"
	// ResultFailed: the session failed (phase Failed: its storage failed,
	// its storage node was lost, its script could not be rendered) before
	// any login.
	ResultFailed = "failed"
	// ResultCancelled: the session was stopped or deleted before the
	// machine booted or anything failed (a PC never powered on, a session
	// made by mistake). Not a failure.
	ResultCancelled = "cancelled"
)

// Results lists every result, in the order the counter is initialised.
var Results = []string{ResultBooted, ResultBootFailed, ResultFailed, ResultCancelled}

// outcome is the result a session has reached, or "" while it has none.
// booted wins over everything: a session that logged in worked, whatever
// happened after.
func outcome(s *bootv1.BootSession) string {
	switch {
	case s.Status.Timeline.ISCSILogin != nil:
		return ResultBooted
	case meta.IsStatusConditionTrue(s.Status.Conditions, bootv1.BootFailedCondition):
		return ResultBootFailed
	case s.Status.Phase == bootv1.SessionFailed:
		return ResultFailed
	case s.Spec.Stopped || s.DeletionTimestamp != nil || s.Status.Phase == bootv1.SessionStopping || s.Status.Phase == bootv1.SessionStopped:
		return ResultCancelled
	}
	return ""
}

// change is what one update of a session adds to the event-driven metrics.
type change struct {
	// result is the session's result when this update decided it, else "".
	result string
	// createToReady (seconds) when this update set timeline.ready.
	createToReady float64
	hasReady      bool
	// dhcpToLogin (seconds) when this update set timeline.iscsiLogin and
	// the timeline has the DHCP answer before it.
	dhcpToLogin float64
	hasLogin    bool
}

// transition compares a session before and after an update. It needs no
// memory: an update counts only what it changed, so a manager restart (its
// informers list, which gives add events, not updates) counts nothing
// twice, and a resync (old equal to new) counts nothing.
func transition(old, cur *bootv1.BootSession) change {
	var c change
	if outcome(old) == "" {
		c.result = outcome(cur)
	}
	if old.Status.Timeline.Ready == nil && cur.Status.Timeline.Ready != nil {
		c.hasReady = true
		c.createToReady = max(0, cur.Status.Timeline.Ready.Sub(cur.CreationTimestamp.Time).Seconds())
	}
	t := cur.Status.Timeline
	if old.Status.Timeline.ISCSILogin == nil && t.ISCSILogin != nil && t.DHCP != nil && !t.DHCP.After(t.ISCSILogin.Time) {
		c.hasLogin = true
		c.dhcpToLogin = t.ISCSILogin.Sub(t.DHCP.Time).Seconds()
	}
	return c
}
