package controllers

import (
	"context"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/client-go/tools/record"
	"k8s.io/client-go/util/workqueue"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	bootv1 "github.com/ggnet/ggnet/api/v1alpha1"
)

// MachineReconciler renders reservations, detects conflicts, keeps the
// active session and the last boot's timeline, and keeps an AutoSession
// Machine's next session prepared.
type MachineReconciler struct {
	client.Client
	Recorder record.EventRecorder
	Options  Options
}

// machineScope carries what the phases of one Machine reconcile share.
type machineScope struct {
	machine *bootv1.Machine
	// conflict is filled by reconcileConflict: why the machine has
	// Conflict=True, or "".
	conflict string
	// replaced is set by reconcileConflict when the machine was a
	// discovered placeholder it deleted: nothing more is done or written.
	replaced bool
	// sessions are filled by reconcileSessions: the machine's sessions.
	sessions []bootv1.BootSession
	// requeueAfter is set by reconcilePrepared: when to prepare the next
	// session after a failed one, or once a retire's answer is overdue.
	requeueAfter time.Duration
}

// Reconcile has the skeleton of every GGnet reconciler (see
// BootSessionReconciler.Reconcile): fetch; deletion (reconcileDelete);
// finalizer; the phases in order over a scope; one metadata write and one
// status write at the end, each only when something changed. The Machine's
// finalizer is written before the phases, which may create sessions: a
// Machine deleted meanwhile then still waits for them.
//
// Its status writes are merge patches from the object it read, with
// optimistic locking: they carry only the fields it changed (never, for
// example, status.persistentDisks, which the storage agents apply), and a
// write from a cache that has not yet seen another writer's change to a
// list it shares (conditions) is refused and retried rather than erasing
// it.
func (r *MachineReconciler) Reconcile(ctx context.Context, req ctrl.Request) (res ctrl.Result, retErr error) {
	m := &bootv1.Machine{}
	if err := r.Get(ctx, req.NamespacedName, m); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	sc := &machineScope{machine: m}
	base := m.DeepCopy()
	defer func() {
		if !sc.replaced {
			finish(ctx, r.Client, base, m, func() bool { return equality.Semantic.DeepEqual(base.Status, m.Status) }, &res, &retErr)
		}
	}()
	if m.DeletionTimestamp != nil {
		return r.reconcileDelete(ctx, sc)
	}
	if controllerutil.AddFinalizer(m, bootv1.MachineFinalizer) {
		if err := writeMetadata(ctx, r.Client, base, m); err != nil {
			return ctrl.Result{}, client.IgnoreNotFound(err)
		}
	}
	for _, phase := range []func(context.Context, *machineScope) (bool, error){
		r.reconcileConflict, r.reconcileSessions, r.reconcileImage, r.reconcilePrepared, r.reconcileReservation,
	} {
		ok, err := phase(ctx, sc)
		if err != nil {
			return ctrl.Result{}, err
		}
		if !ok {
			return ctrl.Result{}, nil
		}
	}
	m.Status.ObservedGeneration = m.Generation
	return ctrl.Result{RequeueAfter: sc.requeueAfter}, nil
}

// reconcileDelete keeps a deleted Machine, its reservation and its sessions'
// scripts served by the boot agent, while sessions use it (blocksDeletion),
// then releases bootv1.MachineFinalizer. A prepared session no PC has
// booted from is stopped first (stopUnbooted). Conditions:
// Ready=False InUse naming the sessions, with a Warning Event when the wait
// starts.
func (r *MachineReconciler) reconcileDelete(ctx context.Context, sc *machineScope) (ctrl.Result, error) {
	m := sc.machine
	if !controllerutil.ContainsFinalizer(m, bootv1.MachineFinalizer) {
		return ctrl.Result{}, nil
	}
	if _, err := r.reconcileSessions(ctx, sc); err != nil {
		return ctrl.Result{}, err
	}
	// A prepared session no PC booted from holds nothing of anyone's.
	if err := r.stopUnbooted(ctx, sc, func(*bootv1.BootSession) string { return "Machine " + m.Name + " is being deleted" }); err != nil {
		return ctrl.Result{}, err
	}
	if users := deletionBlockers(sc.sessions); len(users) > 0 {
		msg := inUseMessage(users, "this machine")
		if setMachineInUse(m, msg) {
			r.Recorder.Event(m, corev1.EventTypeWarning, bootv1.InUseReason, msg)
		}
		return ctrl.Result{}, nil
	}
	controllerutil.RemoveFinalizer(m, bootv1.MachineFinalizer)
	return ctrl.Result{}, nil
}

// SetupWithManager registers the controller: Machines, and the sessions and
// other Machines that change their status.
func (r *MachineReconciler) SetupWithManager(mgr ctrl.Manager) error {
	return ctrl.NewControllerManagedBy(mgr).
		For(&bootv1.Machine{}).
		Watches(&bootv1.BootSession{}, machineOfSession{delay: sessionToMachineDelay}).
		Watches(&bootv1.Machine{}, handler.EnqueueRequestsFromMapFunc(r.sharing)).
		Watches(&bootv1.Image{}, followers{r.Client}).
		WithOptions(controllerOptions(r.Options)).
		Complete(r)
}

// sessionToMachineDelay is how long a Machine waits after a change of one
// of its sessions before it is reconciled: changes close together (Ready,
// then the boot agent's DHCP record) share one reconcile and one write of
// the Machine's status.
const sessionToMachineDelay = 500 * time.Millisecond

// machineOfSession enqueues a session's Machine, after delay, when the
// session changed in a way the Machine shows or acts on
// (mirroredChanged): not at its creation nor at its scheduling, which the
// Machine shows only once the session is Ready, so that a session's way to
// Ready costs one write of its Machine's status, not three. Changes within
// the delay share one reconcile (the queue keeps one entry per Machine).
type machineOfSession struct{ delay time.Duration }

func (h machineOfSession) add(o client.Object, q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
	if s, ok := o.(*bootv1.BootSession); ok {
		q.AddAfter(reconcile.Request{NamespacedName: client.ObjectKey{Namespace: s.Namespace, Name: s.Spec.MachineRef.Name}}, h.delay)
	}
}

func (h machineOfSession) Create(context.Context, event.CreateEvent, workqueue.TypedRateLimitingInterface[reconcile.Request]) {
}

func (h machineOfSession) Update(_ context.Context, e event.UpdateEvent, q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
	o, ok1 := e.ObjectOld.(*bootv1.BootSession)
	n, ok2 := e.ObjectNew.(*bootv1.BootSession)
	if ok1 && ok2 && mirroredChanged(o, n) {
		h.add(n, q)
	}
}

func (h machineOfSession) Delete(_ context.Context, e event.DeleteEvent, q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
	h.add(e.Object, q)
}

func (h machineOfSession) Generic(_ context.Context, e event.GenericEvent, q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
	h.add(e.Object, q)
}

// mirroredChanged reports whether a session changed in what its Machine
// shows (activeSession, lastBoot) or acts on (its deletion's blockers, the
// next prepared session): Ready and the boot's steps, stop, end, deletion,
// whether it holds the machine or blocks its deletion, and its retire.
func mirroredChanged(o, n *bootv1.BootSession) bool {
	t, u := o.Status.Timeline, n.Status.Timeline
	return finished(o) != finished(n) || o.Spec.Stopped != n.Spec.Stopped || (o.DeletionTimestamp == nil) != (n.DeletionTimestamp == nil) ||
		holdsMachine(o) != holdsMachine(n) || blocksDeletion(o) != blocksDeletion(n) ||
		!t.Ready.Equal(u.Ready) || !t.DHCP.Equal(u.DHCP) || !t.ScriptServed.Equal(u.ScriptServed) ||
		!t.ISCSILogin.Equal(u.ISCSILogin) || !t.Stopped.Equal(u.Stopped) || len(t.Logins) != len(u.Logins) ||
		o.Spec.ImageRef != n.Spec.ImageRef || retireChanged(o, n)
}

// retireChanged reports whether a retire was asked or withdrawn, its time
// changed (retireUnbooted stamps one that is not a past time), or the
// storage agent answered it (stopUnbooted acts on the answer).
func retireChanged(o, n *bootv1.BootSession) bool {
	a1, s1 := retireState(o)
	a2, s2 := retireState(n)
	return a1 != a2 || s1 != s2 || o.Annotations[bootv1.RetireAskedAnnotation] != n.Annotations[bootv1.RetireAskedAnnotation]
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

// followers enqueues the Machines that follow an Image's family
// (spec.imageFamily, indexed) when the Image changes in a way that can
// change which version is the family's latest Ready one: created, deleted,
// numbered, Ready or not, being deleted, or moved to another family. The
// replicas' progress, written often, wakes nobody.
type followers struct{ c client.Client }

func (h followers) add(ctx context.Context, o client.Object, q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
	f := o.GetLabels()[bootv1.FamilyLabel]
	if f == "" {
		return
	}
	var list bootv1.MachineList
	if h.c.List(ctx, &list, client.InNamespace(o.GetNamespace()), client.MatchingFields{indexMachineFamily: f}) != nil {
		return
	}
	for i := range list.Items {
		q.Add(reconcile.Request{NamespacedName: client.ObjectKeyFromObject(&list.Items[i])})
	}
}

func (h followers) Create(ctx context.Context, e event.CreateEvent, q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
	h.add(ctx, e.Object, q)
}

func (h followers) Update(ctx context.Context, e event.UpdateEvent, q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
	o, ok1 := e.ObjectOld.(*bootv1.Image)
	n, ok2 := e.ObjectNew.(*bootv1.Image)
	if !ok1 || !ok2 {
		return
	}
	if o.Labels[bootv1.FamilyLabel] != n.Labels[bootv1.FamilyLabel] {
		h.add(ctx, o, q)
		h.add(ctx, n, q)
		return
	}
	if o.Status.Version != n.Status.Version || (o.DeletionTimestamp == nil) != (n.DeletionTimestamp == nil) ||
		meta.IsStatusConditionTrue(o.Status.Conditions, bootv1.ReadyCondition) != meta.IsStatusConditionTrue(n.Status.Conditions, bootv1.ReadyCondition) {
		h.add(ctx, n, q)
	}
}

func (h followers) Delete(ctx context.Context, e event.DeleteEvent, q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
	h.add(ctx, e.Object, q)
}

func (h followers) Generic(ctx context.Context, e event.GenericEvent, q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
	h.add(ctx, e.Object, q)
}
