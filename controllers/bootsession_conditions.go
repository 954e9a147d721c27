package controllers

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	bootv1 "github.com/ggnet/ggnet/api/v1alpha1"
)

// The BootSession's conditions, as pure setters: Ready and Scheduled (the
// manager's); StorageReady is the storage agent's, BootFailed the boot
// agent's. Each reports whether the condition's status or reason changed.

// setSessionWaiting says why the session does not go on: its phase, and
// Ready=False with reason and msg.
func setSessionWaiting(s *bootv1.BootSession, phase bootv1.BootSessionPhase, reason, msg string) bool {
	s.Status.Phase = phase
	return setCondition(&s.Status.Conditions, s.Generation, bootv1.ReadyCondition, false, reason, msg)
}

// setSessionReady says the machine can boot: the phase from the agents'
// progress (phaseOf) and Ready=True Succeeded with msg.
func setSessionReady(s *bootv1.BootSession, msg string) bool {
	s.Status.Phase = phaseOf(s)
	return setCondition(&s.Status.Conditions, s.Generation, bootv1.ReadyCondition, true, bootv1.SucceededReason, msg)
}

// setSessionScheduled records the storage node chosen at now:
// status.storageNode, timeline.scheduled and Scheduled=True Succeeded.
func setSessionScheduled(s *bootv1.BootSession, node string, now metav1.Time) bool {
	s.Status.StorageNode = node
	s.Status.Timeline.Scheduled = &now
	return setCondition(&s.Status.Conditions, s.Generation, bootv1.ScheduledCondition, true, bootv1.SucceededReason, "scheduled on "+node)
}

// setSessionUnschedulable says why no storage node can take the session:
// Scheduled=False and, phase Pending, Ready=False, both with reason and msg.
func setSessionUnschedulable(s *bootv1.BootSession, reason, msg string) bool {
	setCondition(&s.Status.Conditions, s.Generation, bootv1.ScheduledCondition, false, reason, msg)
	return setSessionWaiting(s, bootv1.SessionPending, reason, msg)
}
