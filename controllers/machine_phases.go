package controllers

import (
	"context"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	bootv1 "github.com/ggnet/ggnet/api/v1alpha1"
)

// The Machine's phases, in order. Each returns whether the next may run.

// reconcileConflict sets the Conflict condition (negative polarity; see
// setConflictCondition) from the other Machines in the cluster with the same
// MAC or address. A discovered placeholder that shares the MAC of a Machine
// an operator made is deleted instead: the operator has now described that
// PC. When the machine itself is such a placeholder it is deleted, and the
// reconcile ends there (sc.replaced). Conditions: Conflict, with a Warning
// Event of its reason when its message is new.
func (r *MachineReconciler) reconcileConflict(ctx context.Context, sc *machineScope) (bool, error) {
	m := sc.machine
	claims, err := claimsOf(ctx, r.Client, m)
	if err != nil {
		return false, err
	}
	kept := claims[:0]
	for _, c := range claims {
		o := c.machine
		if c.reason == bootv1.DuplicateMACReason && discovered(o) != discovered(m) {
			if discovered(m) {
				sc.replaced = true
				return false, client.IgnoreNotFound(r.Delete(ctx, m.DeepCopy()))
			}
			r.Recorder.Eventf(m, corev1.EventTypeNormal, bootv1.DiscoveredReplacedReason, "Deleting discovered Machine %s/%s: this Machine has its MAC", o.Namespace, o.Name)
			if err := r.Delete(ctx, o); client.IgnoreNotFound(err) != nil {
				return false, err
			}
			continue
		}
		kept = append(kept, c)
	}
	prevReason, prevMsg := conditionOf(m.Status.Conditions, bootv1.ConflictCondition)
	if prevReason == bootv1.NoConflictReason {
		prevMsg = ""
	}
	sc.conflict = setConflictCondition(m, kept)
	if sc.conflict != "" && sc.conflict != prevMsg {
		reason, _ := conditionOf(m.Status.Conditions, bootv1.ConflictCondition)
		r.Recorder.Event(m, corev1.EventTypeWarning, reason, sc.conflict)
	}
	return true, nil
}

// reconcileSessions reads the machine's sessions and fills activeSession and
// lastBoot from them (setMachineSessions).
func (r *MachineReconciler) reconcileSessions(ctx context.Context, sc *machineScope) (bool, error) {
	var list bootv1.BootSessionList
	if err := r.List(ctx, &list, client.InNamespace(sc.machine.Namespace), client.MatchingFields{indexSessionMachine: sc.machine.Name}); err != nil {
		return false, err
	}
	sc.sessions = list.Items
	setMachineSessions(sc.machine, sc.sessions)
	return true, nil
}

// reconcileAutoSession answers the boot agent's request for a session
// (bootv1.SessionRequestedAnnotation): when the machine is AutoSession with
// an image and has no unfinished session, it creates one; then it removes
// the request (in the reconcile's one metadata write).
func (r *MachineReconciler) reconcileAutoSession(ctx context.Context, sc *machineScope) (bool, error) {
	m := sc.machine
	if _, asked := m.Annotations[bootv1.SessionRequestedAnnotation]; !asked {
		return true, nil
	}
	if m.Spec.BootPolicy == bootv1.BootPolicyAutoSession && m.Spec.ImageRef != nil && m.Status.ActiveSession == "" {
		busy := false
		for i := range sc.sessions {
			busy = busy || (!finished(&sc.sessions[i]) && !sc.sessions[i].Spec.Stopped)
		}
		if !busy {
			if err := r.createAutoSession(ctx, m, "the machine network-booted"); err != nil {
				return false, err
			}
		}
	}
	delete(m.Annotations, bootv1.SessionRequestedAnnotation)
	return true, nil
}

// createAutoSession creates a session of an AutoSession machine from its
// image and writeback, labelled as the manager labels every session.
func (r *MachineReconciler) createAutoSession(ctx context.Context, m *bootv1.Machine, why string) error {
	s := &bootv1.BootSession{
		ObjectMeta: metav1.ObjectMeta{Namespace: m.Namespace, Name: fmt.Sprintf("%s-%d", m.Name, time.Now().Unix()),
			Labels: map[string]string{bootv1.AutoSessionLabel: "true"}},
		Spec: bootv1.BootSessionSpec{MachineRef: bootv1.LocalObjectReference{Name: m.Name}, ImageRef: *m.Spec.ImageRef,
			Writeback: m.Spec.Writeback},
	}
	if s.Spec.Writeback == "" {
		s.Spec.Writeback = bootv1.WritebackDiscard
	}
	sessionMetadata(s)
	if err := r.Create(ctx, s); client.IgnoreAlreadyExists(err) != nil {
		return err
	}
	r.Recorder.Eventf(m, corev1.EventTypeNormal, bootv1.AutoSessionReason, "Created BootSession %s from Image %s: %s", s.Name, s.Spec.ImageRef.Name, why)
	return nil
}

// reconcileReservation renders the reservation and sets Ready
// (setMachineReady).
func (r *MachineReconciler) reconcileReservation(_ context.Context, sc *machineScope) (bool, error) {
	m := sc.machine
	setMachineReservation(m)
	reason, _ := conditionOf(m.Status.Conditions, bootv1.ConflictCondition)
	setMachineReady(m, reason, sc.conflict)
	return true, nil
}
