package controllers

import (
	"context"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/record"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	bootv1 "github.com/ggnet/ggnet/api/v1alpha1"
)

// MachineReconciler renders reservations, detects conflicts, keeps the
// active session and the last boot's timeline, and answers AutoSession
// requests.
type MachineReconciler struct {
	client.Client
	Recorder record.EventRecorder
	Options  Options
}

// Reconcile computes the Machine's status from the Machine, the other
// Machines with its MAC or address, and its sessions, and holds
// bootv1.MachineFinalizer until a deleted Machine's sessions are done.
//
// Its status writes are merge patches from the object it read, with
// optimistic locking: they carry only the fields it changed (never, for
// example, status.persistentDisks, which the storage agents apply), and a
// write from a cache that has not yet seen another writer's change to a
// list it shares (conditions) is refused and retried rather than erasing
// it.
func (r *MachineReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	m := &bootv1.Machine{}
	if err := r.Get(ctx, req.NamespacedName, m); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if m.DeletionTimestamp == nil && controllerutil.AddFinalizer(m, bootv1.MachineFinalizer) {
		if err := r.Update(ctx, m); err != nil {
			return requeueOnConflict(ctrl.Result{}, client.IgnoreNotFound(err))
		}
	}
	base := m.DeepCopy()
	if m.DeletionTimestamp != nil {
		return r.reconcileDelete(ctx, m, base)
	}

	conflict, err := r.conflict(ctx, m)
	if err != nil || m.Name == "" {
		return ctrl.Result{}, err
	}
	var sessions bootv1.BootSessionList
	if err := r.List(ctx, &sessions, client.InNamespace(m.Namespace), client.MatchingFields{indexSessionMachine: m.Name}); err != nil {
		return ctrl.Result{}, err
	}
	setMachineSessions(m, sessions.Items)
	if err := r.autoSession(ctx, m); err != nil {
		return requeueOnConflict(ctrl.Result{}, err)
	}

	m.Status.Reservation = &bootv1.DHCPReservation{MAC: m.Spec.MAC, Hostname: m.Spec.Hostname}
	if ip := m.Spec.IPv4; ip != nil {
		m.Status.Reservation.Address, m.Status.Reservation.PrefixLength = ip.Address, ip.PrefixLength
		m.Status.Reservation.Gateway, m.Status.Reservation.DNS = ip.Gateway, ip.DNS
	}
	switch {
	case conflict != "":
		setReady(&m.Status.Conditions, m.Generation, false, meta.FindStatusCondition(m.Status.Conditions, bootv1.ConflictCondition).Reason, conflict)
	case m.Spec.IPv4 != nil && !gatewayInSubnet(m.Spec.IPv4):
		setReady(&m.Status.Conditions, m.Generation, false, "InvalidReservation",
			fmt.Sprintf("gateway %s is outside %s/%d", m.Spec.IPv4.Gateway, m.Spec.IPv4.Address, m.Spec.IPv4.PrefixLength))
	default:
		setReady(&m.Status.Conditions, m.Generation, true, bootv1.SucceededReason, "the reservation is served")
	}
	m.Status.ObservedGeneration = m.Generation
	return r.patchStatus(ctx, m, base)
}

// patchStatus writes what changed in m's status since base (see Reconcile).
func (r *MachineReconciler) patchStatus(ctx context.Context, m, base *bootv1.Machine) (ctrl.Result, error) {
	if equality.Semantic.DeepEqual(base.Status, m.Status) {
		return ctrl.Result{}, nil
	}
	return requeueOnConflict(ctrl.Result{}, client.IgnoreNotFound(r.Status().Patch(ctx, m, statusPatch(base))))
}

// reconcileDelete keeps a deleted Machine, its reservation and its sessions'
// scripts served by the boot agent, while sessions use it (blocksDeletion),
// then releases bootv1.MachineFinalizer. Conditions: Ready=False InUse
// naming the sessions, with a Warning Event when the wait starts.
func (r *MachineReconciler) reconcileDelete(ctx context.Context, m, base *bootv1.Machine) (ctrl.Result, error) {
	if !controllerutil.ContainsFinalizer(m, bootv1.MachineFinalizer) {
		return ctrl.Result{}, nil
	}
	var sessions bootv1.BootSessionList
	if err := r.List(ctx, &sessions, client.InNamespace(m.Namespace), client.MatchingFields{indexSessionMachine: m.Name}); err != nil {
		return ctrl.Result{}, err
	}
	setMachineSessions(m, sessions.Items)
	if users := deletionBlockers(sessions.Items); len(users) > 0 {
		msg := inUseMessage(users, "this machine")
		if c := meta.FindStatusCondition(m.Status.Conditions, bootv1.ReadyCondition); c == nil || c.Reason != bootv1.InUseReason {
			r.Recorder.Event(m, corev1.EventTypeWarning, bootv1.InUseReason, msg)
		}
		setReady(&m.Status.Conditions, m.Generation, false, bootv1.InUseReason, msg)
		return r.patchStatus(ctx, m, base)
	}
	controllerutil.RemoveFinalizer(m, bootv1.MachineFinalizer)
	return requeueOnConflict(ctrl.Result{}, client.IgnoreNotFound(r.Update(ctx, m)))
}

// conflict sets the Conflict condition (negative polarity; see
// setConflictCondition) from the other Machines in the cluster with the same
// MAC or address, and returns its message when True. A discovered
// placeholder that shares the MAC of a Machine an operator made is deleted
// instead: the operator has now described that PC. If m itself is such a
// placeholder, m.Name is cleared. Conditions: Conflict.
func (r *MachineReconciler) conflict(ctx context.Context, m *bootv1.Machine) (string, error) {
	claims, err := claimsOf(ctx, r.Client, m)
	if err != nil {
		return "", err
	}
	kept := claims[:0]
	for _, c := range claims {
		o := c.machine
		if c.reason == bootv1.DuplicateMACReason && discovered(o) != discovered(m) {
			if discovered(m) {
				m.Name = ""
				return "", client.IgnoreNotFound(r.Delete(ctx, m.DeepCopy()))
			}
			r.Recorder.Eventf(m, corev1.EventTypeNormal, "DiscoveredReplaced", "Deleting discovered Machine %s/%s: this Machine has its MAC", o.Namespace, o.Name)
			if err := r.Delete(ctx, o); client.IgnoreNotFound(err) != nil {
				return "", err
			}
			continue
		}
		kept = append(kept, c)
	}
	prev := meta.FindStatusCondition(m.Status.Conditions, bootv1.ConflictCondition)
	var prevMsg string
	if prev != nil && prev.Status == metav1.ConditionTrue {
		prevMsg = prev.Message
	}
	msg := setConflictCondition(m, kept)
	if msg != "" && msg != prevMsg {
		r.Recorder.Event(m, corev1.EventTypeWarning, meta.FindStatusCondition(m.Status.Conditions, bootv1.ConflictCondition).Reason, msg)
	}
	return msg, nil
}

// setMachineSessions fills activeSession and lastBoot from the machine's
// sessions.
func setMachineSessions(m *bootv1.Machine, sessions []bootv1.BootSession) {
	m.Status.ActiveSession = ""
	var newest *bootv1.BootSession
	var active *bootv1.BootSession
	for i := range sessions {
		s := &sessions[i]
		if holdsMachine(s) && s.Status.StorageNode != "" && (active == nil || olderFirst(s, active)) {
			active = s
		}
		if newest == nil || olderFirst(newest, s) {
			newest = s
		}
	}
	if active != nil {
		m.Status.ActiveSession = active.Name
	}
	if newest != nil {
		t := newest.Status.Timeline
		created := newest.CreationTimestamp
		m.Status.LastBoot = &bootv1.BootTimeline{Session: newest.Name, Created: &created, Ready: t.Ready, DHCP: t.DHCP,
			ScriptServed: t.ScriptServed, ISCSILogin: t.ISCSILogin, Stopped: t.Stopped}
	}
}

// autoSession answers the agent's request for a session: when the machine
// is AutoSession with an image and has no unfinished session, it creates one,
// then removes the request.
func (r *MachineReconciler) autoSession(ctx context.Context, m *bootv1.Machine) error {
	if _, asked := m.Annotations[bootv1.SessionRequestedAnnotation]; !asked {
		return nil
	}
	if m.Spec.BootPolicy == bootv1.BootPolicyAutoSession && m.Spec.ImageRef != nil && m.Status.ActiveSession == "" {
		var list bootv1.BootSessionList
		if err := r.List(ctx, &list, client.InNamespace(m.Namespace), client.MatchingFields{indexSessionMachine: m.Name}); err != nil {
			return err
		}
		busy := false
		for i := range list.Items {
			busy = busy || (!finished(&list.Items[i]) && !list.Items[i].Spec.Stopped)
		}
		if !busy {
			s := &bootv1.BootSession{
				ObjectMeta: metav1.ObjectMeta{Namespace: m.Namespace, Name: fmt.Sprintf("%s-%d", m.Name, time.Now().Unix()),
					Labels: map[string]string{bootv1.AutoSessionLabel: "true", bootv1.MachineLabel: m.Name}},
				Spec: bootv1.BootSessionSpec{MachineRef: bootv1.LocalObjectReference{Name: m.Name}, ImageRef: *m.Spec.ImageRef,
					Writeback: m.Spec.Writeback},
			}
			if s.Spec.Writeback == "" {
				s.Spec.Writeback = bootv1.WritebackDiscard
			}
			if err := r.Create(ctx, s); client.IgnoreAlreadyExists(err) != nil {
				return err
			}
			r.Recorder.Eventf(m, corev1.EventTypeNormal, "AutoSession", "Created BootSession %s from Image %s: the machine network-booted", s.Name, s.Spec.ImageRef.Name)
		}
	}
	patch := client.MergeFrom(m.DeepCopy())
	delete(m.Annotations, bootv1.SessionRequestedAnnotation)
	return client.IgnoreNotFound(r.Patch(ctx, m, patch))
}

// SetupWithManager registers the controller: Machines, and the sessions and
// other Machines that change their status.
func (r *MachineReconciler) SetupWithManager(mgr ctrl.Manager) error {
	return ctrl.NewControllerManagedBy(mgr).
		For(&bootv1.Machine{}).
		Watches(&bootv1.BootSession{}, handler.EnqueueRequestsFromMapFunc(func(_ context.Context, o client.Object) []reconcile.Request {
			s := o.(*bootv1.BootSession)
			return []reconcile.Request{{NamespacedName: client.ObjectKey{Namespace: s.Namespace, Name: s.Spec.MachineRef.Name}}}
		})).
		Watches(&bootv1.Machine{}, handler.EnqueueRequestsFromMapFunc(r.sharing)).
		WithOptions(controllerOptions(r.Options)).
		Complete(r)
}

// sharing maps a Machine to the Machines in any namespace sharing its MAC
// or address, so that a conflict is seen and cleared on both sides.
func (r *MachineReconciler) sharing(ctx context.Context, o client.Object) []reconcile.Request {
	m := o.(*bootv1.Machine)
	var out []reconcile.Request
	add := func(field, value string) {
		var list bootv1.MachineList
		if r.List(ctx, &list, client.MatchingFields{field: value}) == nil {
			for _, x := range list.Items {
				if !sameMachine(&x, m) {
					out = append(out, reconcile.Request{NamespacedName: client.ObjectKeyFromObject(&x)})
				}
			}
		}
	}
	add(indexMachineMAC, m.Spec.MAC)
	if m.Spec.IPv4 != nil {
		add(indexMachineIP, m.Spec.IPv4.Address)
	}
	return out
}
