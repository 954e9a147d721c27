package controllers

import (
	"context"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	logf "sigs.k8s.io/controller-runtime/pkg/log"

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
	setMachineSessions(sc.machine, sc.sessions, time.Now(), r.Options.retireTimeout())
	return true, nil
}

// reconcileImage resolves status.image: spec.imageRef when set (a pin),
// else the latest Ready version of spec.imageFamily (latestReady), else
// nothing. setMachineReady says when a followed family has no Ready
// version (NoReadyImageInFamily).
func (r *MachineReconciler) reconcileImage(ctx context.Context, sc *machineScope) (bool, error) {
	m := sc.machine
	switch {
	case m.Spec.ImageRef != nil:
		m.Status.Image = m.Spec.ImageRef.Name
	case m.Spec.ImageFamily != "":
		var list bootv1.ImageList
		if err := r.List(ctx, &list, client.InNamespace(m.Namespace), client.MatchingLabels{bootv1.FamilyLabel: m.Spec.ImageFamily}); err != nil {
			return false, err
		}
		m.Status.Image = ""
		if img := latestReady(list.Items); img != nil {
			m.Status.Image = img.Name
		}
	default:
		m.Status.Image = ""
	}
	return true, nil
}

// reconcilePrepared keeps an AutoSession Machine's next session prepared,
// so that nobody waits for storage at power-on: while the machine is
// AutoSession with an image, status.image (and not discovered, in conflict or being
// deleted) and has no unfinished session that is not stopped, it creates one
// at once (prepared: the storage agent makes its overlay and target, and the
// boot agent serves it at the first DHCP request). That happens when the
// Machine is made, and right after its previous session stops. A prepared
// session that no PC has booted from is kept as it is, never churned; it is
// retired (stopped once its storage agent found no login, and the next one
// prepared) only when it no longer fits the Machine: another image (a new
// latest version of its family, a pin) or writeback, another policy
// (stopUnbooted). A session a PC booted from is never stopped here,
// whatever the new image. It also answers the boot agent's request for a session
// (bootv1.SessionRequestedAnnotation), which a prepared session makes rare,
// and removes the request in the reconcile's one metadata write. After a
// prepared session failed without a boot, the next waits preparedRetry.
func (r *MachineReconciler) reconcilePrepared(ctx context.Context, sc *machineScope) (bool, error) {
	m := sc.machine
	_, asked := m.Annotations[bootv1.SessionRequestedAnnotation]
	delete(m.Annotations, bootv1.SessionRequestedAnnotation)
	auto := m.Spec.BootPolicy == bootv1.BootPolicyAutoSession && m.Status.Image != "" && !discovered(m)
	if err := r.stopUnbooted(ctx, sc, func(s *bootv1.BootSession) string {
		switch {
		case !auto:
			return "Machine " + m.Name + " is no longer AutoSession with an image"
		case s.Spec.ImageRef.Name != m.Status.Image || s.Spec.Writeback != autoWriteback(m):
			return "Machine " + m.Name + " now boots Image " + m.Status.Image + " (" + string(autoWriteback(m)) + ")"
		}
		if o := olderHolder(sc.sessions, s); o != "" {
			return "Machine " + m.Name + " is in session " + o + " again (its storage agent answered the retire after --retire-timeout: a PC uses it)"
		}
		return ""
	}); err != nil {
		return false, err
	}
	if !auto || sc.conflict != "" {
		return true, nil
	}
	// unanswered: retiring sessions whose agent did not answer in time;
	// they no longer hold the machine (setMachineSessions,
	// reconcileExclusive), so its next session goes on. A retire still
	// awaited is looked at again when it falls due.
	var unanswered []*bootv1.BootSession
	has := m.Status.ActiveSession != ""
	now := time.Now()
	for i := range sc.sessions {
		s := &sc.sessions[i]
		if finished(s) || s.Spec.Stopped || s.DeletionTimestamp != nil {
			continue
		}
		left, overdue := retireOverdue(s, now, r.Options.retireTimeout())
		switch {
		case overdue:
			unanswered = append(unanswered, s)
			continue
		case left > 0 && (sc.requeueAfter == 0 || left < sc.requeueAfter):
			sc.requeueAfter = left
		}
		has = true
	}
	if has {
		return true, nil // the machine has its session
	}
	if wait := retryAfterFailure(sc.sessions, time.Now()); wait > 0 && !asked {
		sc.requeueAfter = wait
		return true, nil
	}
	why := "prepared before power-on"
	if asked {
		why = "the machine network-booted"
	}
	name, err := r.createAutoSession(ctx, m)
	if err != nil {
		return false, err
	}
	if asked {
		r.Recorder.Eventf(m, corev1.EventTypeNormal, bootv1.AutoSessionReason, "Created BootSession %s from Image %s: %s", name, m.Status.Image, why)
	}
	for _, s := range unanswered {
		r.Recorder.Eventf(m, corev1.EventTypeWarning, bootv1.RetireTimedOutReason,
			"The storage agent of node %s did not answer the retire of BootSession %s within %s; prepared %s without waiting. "+
				"%s is kept, not handed out, until its agent answers", s.Status.StorageNode, s.Name, r.Options.retireTimeout(), name, s.Name)
	}
	return true, nil
}

// olderHolder is the name of a session of sessions older than s that holds
// the machine and is not retiring, or "": s was prepared while that one's
// retire was overdue, and its storage agent then answered that a PC uses it.
// The machine goes back to one session: s is retired.
func olderHolder(sessions []bootv1.BootSession, s *bootv1.BootSession) string {
	for i := range sessions {
		o := &sessions[i]
		if o.Name == s.Name || !olderFirst(o, s) || !holdsMachine(o) || o.Spec.Stopped || o.Status.StorageNode == "" {
			continue
		}
		if asked, _ := retireState(o); !asked {
			return o.Name
		}
	}
	return ""
}

// preparedRetry is how long after a prepared session failed, never booted,
// the next one is prepared (unless the machine asks for one): a storage
// failure is not retried in a tight loop of new sessions.
const preparedRetry = 30 * time.Second

// retryAfterFailure is how long to wait before preparing the next session
// when the machine's newest session is an AutoSession one that failed
// without a boot less than preparedRetry ago, else 0.
func retryAfterFailure(sessions []bootv1.BootSession, now time.Time) time.Duration {
	var newest *bootv1.BootSession
	for i := range sessions {
		if newest == nil || olderFirst(newest, &sessions[i]) {
			newest = &sessions[i]
		}
	}
	if newest == nil || newest.Status.Phase != bootv1.SessionFailed || newest.Labels[bootv1.AutoSessionLabel] != "true" ||
		booted(newest) || newest.Status.Timeline.Stopped == nil {
		return 0
	}
	return max(0, newest.Status.Timeline.Stopped.Add(preparedRetry).Sub(now))
}

// autoWriteback is the writeback of an AutoSession machine's sessions.
func autoWriteback(m *bootv1.Machine) bootv1.WritebackPolicy {
	if m.Spec.Writeback == "" {
		return bootv1.WritebackDiscard
	}
	return m.Spec.Writeback
}

// booted reports whether a PC may have booted from the session: the boot
// agent recorded a DHCP answer or a served script, or the storage agent an
// iSCSI login or, answering a retire, that a PC uses it (Retire=False
// InUse). (The boot agent's DHCP records are paced: in a boot storm one can
// be written seconds after the answer.)
func booted(s *bootv1.BootSession) bool {
	t := s.Status.Timeline
	return t.DHCP != nil || t.ScriptServed != nil || t.ISCSILogin != nil || len(t.Logins) > 0 ||
		meta.IsStatusConditionFalse(s.Status.Conditions, bootv1.RetireCondition)
}

// stopUnbooted retires the machine's AutoSession sessions that no PC has
// booted from and that why says no longer fit (a non-empty reason). A
// session a PC may run on is never stopped by the manager: only its user
// stops it. The timeline's records of a boot are written asynchronously (the
// boot agent paces them, the login watcher samples), so a session without
// them may still be in use: such a session is not stopped blind but asked
// to retire (bootv1.RetireAnnotation, the why as its value). Its storage
// agent makes the target refuse new logins, looks for one, and answers with
// the Retire condition: True (Unused), the session is stopped here; False
// (InUse), the annotation is removed and the session kept (it is booted).
// While the answer is awaited the session stays the machine's, so its next
// one is not made yet. A retire once asked is not withdrawn (the target may
// refuse logins already); an answer of Unused stops the session even when
// it would fit again.
//
// A session is stopped at once, without asking, when no PC can be using it:
// it is not scheduled, its storage was never ready (the boot agent hands out
// only Ready sessions; a later Ready would have changed the session, and the
// optimistic lock refuses the stop). A session whose storage node is
// unreachable (StorageReachable=False) is not stopped blind: that is when
// the login records cannot be written, and tgtd may serve a PC while the
// agent is down; the retire waits for the agent, or the session fails
// StorageNodeLost once the node is really gone.
func (r *MachineReconciler) stopUnbooted(ctx context.Context, sc *machineScope, why func(*bootv1.BootSession) string) error {
	return retireUnbooted(ctx, r.Client, sc.sessions, why)
}

// retireUnbooted is stopUnbooted over any list of sessions (a Machine's, an
// Image's being deleted): the same hand-over, whoever asks.
func retireUnbooted(ctx context.Context, c client.Client, sessions []bootv1.BootSession, why func(*bootv1.BootSession) string) error {
	log := logf.FromContext(ctx)
	for i := range sessions {
		s := &sessions[i]
		if s.Labels[bootv1.AutoSessionLabel] != "true" || finished(s) || s.Spec.Stopped || s.DeletionTimestamp != nil {
			continue
		}
		asked, answer := retireState(s)
		switch {
		case answer == metav1.ConditionTrue:
			if err := markStopped(ctx, c, s); err != nil {
				return err
			}
			log.Info("Stopped a retired prepared session (its storage agent found no login)", "session", s.Name, "why", s.Annotations[bootv1.RetireAnnotation])
			continue
		case answer == metav1.ConditionFalse:
			if asked {
				if err := clearRetire(ctx, c, s); err != nil {
					return err
				}
				log.Info("Kept a prepared session a PC logged in to", "session", s.Name)
			}
			continue
		case !asked && booted(s):
			continue
		}
		reason := s.Annotations[bootv1.RetireAnnotation]
		if !asked {
			if reason = why(s); reason == "" {
				continue
			}
		}
		if unusable(s) {
			if err := markStopped(ctx, c, s); err != nil {
				return err
			}
			log.Info("Stopped a prepared session no PC can use", "session", s.Name, "why", reason)
			continue
		}
		if _, ok := retireAsked(s, time.Now()); !asked || !ok {
			// Asked now, or asked without a time (an older manager, a
			// person) or with one ahead of now: the deadline counts from
			// now.
			if err := askRetire(ctx, c, s, reason); err != nil {
				return err
			}
			if !asked {
				log.Info("Asked the storage agent to retire a prepared session if unused", "session", s.Name, "why", reason)
			}
		}
	}
	return nil
}

// retireState is whether the session is asked to retire, and the storage
// agent's answer (its Retire condition's status, "" while none).
func retireState(s *bootv1.BootSession) (asked bool, answer metav1.ConditionStatus) {
	_, asked = s.Annotations[bootv1.RetireAnnotation]
	if c := meta.FindStatusCondition(s.Status.Conditions, bootv1.RetireCondition); c != nil {
		answer = c.Status
	}
	return asked, answer
}

// unusable reports whether no PC can be using a session's disk: it is not
// scheduled, or its storage was never ready (see stopUnbooted).
func unusable(s *bootv1.BootSession) bool {
	return s.Status.StorageNode == "" ||
		(s.Status.Timeline.StorageReady == nil && !meta.IsStatusConditionTrue(s.Status.Conditions, bootv1.StorageReadyCondition))
}

// retireOverdue reports whether the session was asked to retire and its
// storage agent has not answered for timeout (RetireAskedAnnotation): it no
// longer holds the machine's next session back. Otherwise left is how long
// an unanswered retire has still to wait (0 when none is). A retire whose
// time is missing (asked by an older manager), unreadable or ahead of now
// waits the whole timeout: retireUnbooted stamps it with now.
func retireOverdue(s *bootv1.BootSession, now time.Time, timeout time.Duration) (left time.Duration, overdue bool) {
	asked, answer := retireState(s)
	if !asked || answer != "" || s.Labels[bootv1.AutoSessionLabel] != "true" {
		return 0, false
	}
	at, ok := retireAsked(s, now)
	if !ok {
		return timeout, false
	}
	if left = at.Add(timeout).Sub(now); left > 0 {
		return left, false
	}
	return 0, true
}

// retireAsked is the session's RetireAskedAnnotation, and whether it is a
// time no later than now.
func retireAsked(s *bootv1.BootSession, now time.Time) (time.Time, bool) {
	at, err := time.Parse(time.RFC3339, s.Annotations[bootv1.RetireAskedAnnotation])
	return at, err == nil && !at.After(now)
}

// askRetire sets the session's RetireAnnotation to why and its
// RetireAskedAnnotation to now, with optimistic lock: a session whose boot
// was recorded meanwhile is re-read first.
func askRetire(ctx context.Context, c client.Client, s *bootv1.BootSession, why string) error {
	patch := client.MergeFromWithOptions(s.DeepCopy(), client.MergeFromWithOptimisticLock{})
	if s.Annotations == nil {
		s.Annotations = map[string]string{}
	}
	s.Annotations[bootv1.RetireAnnotation] = why
	s.Annotations[bootv1.RetireAskedAnnotation] = time.Now().UTC().Format(time.RFC3339)
	return client.IgnoreNotFound(c.Patch(ctx, s, patch))
}

// clearRetire removes the session's RetireAnnotation and
// RetireAskedAnnotation (the agent answered InUse).
func clearRetire(ctx context.Context, c client.Client, s *bootv1.BootSession) error {
	patch := client.MergeFromWithOptions(s.DeepCopy(), client.MergeFromWithOptimisticLock{})
	delete(s.Annotations, bootv1.RetireAnnotation)
	delete(s.Annotations, bootv1.RetireAskedAnnotation)
	return client.IgnoreNotFound(c.Patch(ctx, s, patch))
}

// markStopped sets a session's spec.stopped, with optimistic lock: a
// session whose boot was recorded meanwhile is re-read, not stopped blind.
func markStopped(ctx context.Context, c client.Client, s *bootv1.BootSession) error {
	patch := client.MergeFromWithOptions(s.DeepCopy(), client.MergeFromWithOptimisticLock{})
	s.Spec.Stopped = true
	return client.IgnoreNotFound(c.Patch(ctx, s, patch))
}

// createAutoSession creates a session of an AutoSession machine from its
// image (status.image) and writeback, with the finalizer and labels the BootSession
// controller would add (sessionMetadata), and returns its name.
func (r *MachineReconciler) createAutoSession(ctx context.Context, m *bootv1.Machine) (string, error) {
	s := &bootv1.BootSession{
		ObjectMeta: metav1.ObjectMeta{Namespace: m.Namespace, Name: fmt.Sprintf("%s-%d", m.Name, time.Now().Unix()),
			Labels: map[string]string{bootv1.AutoSessionLabel: "true"}},
		Spec: bootv1.BootSessionSpec{MachineRef: bootv1.LocalObjectReference{Name: m.Name}, ImageRef: bootv1.LocalObjectReference{Name: m.Status.Image},
			Writeback: autoWriteback(m)},
	}
	sessionMetadata(s)
	// A name taken (a session made in the same second) is a conflict: the
	// reconcile is retried with the next second's name.
	if err := r.Create(ctx, s); apierrors.IsAlreadyExists(err) {
		return "", apierrors.NewConflict(bootv1.GroupVersion.WithResource("bootsessions").GroupResource(), s.Name, err)
	} else if err != nil {
		return "", err
	}
	return s.Name, nil
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
