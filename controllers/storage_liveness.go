package controllers

import (
	"context"
	"fmt"
	"sync"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	bootv1 "github.com/ggnet/ggnet/api/v1alpha1"
)

// Storage node liveness. Each storage agent renews a coordination.k8s.io
// Lease, bootv1.StorageLeaseName(node), holderIdentity the node's name,
// every bootv1.StorageLeaseRenewSeconds (bootagent/storage/lease.go). A
// storage node that dies while its Node object stays (nothing deletes it;
// the node lifecycle controller only marks it NotReady) is seen by its
// Lease alone:
//
//   - a node whose Leases all expired is unreachable from the expiry on:
//     the StorageNodeReconciler sets StorageReachable=False
//     (StorageNodeUnreachable) on its unfinished sessions, one status write
//     each, and records one Warning Event on the Lease (one per node, not
//     one per session: at a thousand sessions those would be a thousand
//     Events); scheduleNode no longer picks it; the boot agent hands out no
//     script of those sessions (a retry instead);
//   - the grace (--storage-node-grace) counts from the expiry as it counts
//     from a Node's deletion: after it the BootSession controller fails the
//     node's live sessions StorageNodeLost and the StorageNodeReconciler
//     releases the storage finalizers of the ended ones (and the node
//     finalizers of the Images and Machines being deleted), as for a
//     deleted Node;
//   - a Lease renewed again (within the grace) sets StorageReachable=True on
//     the sessions that had False — only those: a healthy session gets no
//     condition, which would be a write per session — and keeps them;
//   - a node without a Lease (an agent older than the Lease, or a test
//     without agents) is reachable, as before.
//
// Clocks: the Lease's renewTime is written with the agent's clock; compared
// with the manager's, a node whose clock runs 30 s behind would look dead
// and one ahead would look alive too long. So the manager does as the node
// lifecycle controller does with kubelets' Leases: it records, with its own
// clock, when it first saw each renewTime, and the Lease expires
// leaseDurationSeconds after that. Like goneNodes this is kept in memory: a
// manager that starts (or a new leader) sees every Lease fresh and waits a
// whole duration before it calls a dead node unreachable, which errs on the
// side of waiting longer; it never sets True before it saw a renewal.

// leaseSeen is what the manager last saw of one Lease.
type leaseSeen struct {
	// renew is the Lease's renewTime (or resourceVersion when it has none).
	renew string
	// at is when the manager first saw renew, by its clock.
	at time.Time
	// renewed: the manager saw renew change at least once.
	renewed  bool
	duration time.Duration
}

// nodeLiveness is what the manager makes of a storage node's Leases.
type nodeLiveness struct {
	// hasLease: the node has a Lease; without one it is reachable.
	hasLease bool
	// expires is when its last Lease expires (manager's clock).
	expires time.Time
	// unreachable: all its Leases expired, at expires.
	unreachable bool
	// renewed: a renewal was seen (so True may be set).
	renewed bool
	// lease is the freshest Lease, for messages and the Event.
	lease types.NamespacedName
}

// storageLiveness is shared by the StorageNodeReconciler, which observes
// the Leases, and the BootSession controller, which schedules and fails by
// it. Safe for concurrent use.
type storageLiveness struct {
	// duration is how long after the manager saw a renewal a Lease expires:
	// bootv1.StorageLeaseDurationSeconds, never the Lease's own
	// leaseDurationSeconds (whoever may write a Lease must not make a live
	// node look dead by shortening it).
	duration time.Duration
	mu       sync.Mutex
	leases   map[string]map[types.NamespacedName]leaseSeen
	// down holds the unreachable nodes, and since when.
	down map[string]time.Time
}

func newStorageLiveness(d time.Duration) *storageLiveness {
	if d <= 0 {
		d = bootv1.StorageLeaseDurationSeconds * time.Second
	}
	return &storageLiveness{duration: d, leases: map[string]map[types.NamespacedName]leaseSeen{}, down: map[string]time.Time{}}
}

// observe records node's Leases as seen at now and returns what they say.
func (l *storageLiveness) observe(node string, leases []coordinationv1.Lease, now time.Time) nodeLiveness {
	l.mu.Lock()
	defer l.mu.Unlock()
	before := l.leases[node]
	seen := map[types.NamespacedName]leaseSeen{}
	var st nodeLiveness
	for i := range leases {
		lease := &leases[i]
		key := client.ObjectKeyFromObject(lease)
		renew := "rv:" + lease.ResourceVersion
		if t := lease.Spec.RenewTime; t != nil {
			renew = t.UTC().Format(time.RFC3339Nano)
		}
		d := l.duration
		o, ok := before[key]
		switch {
		case !ok:
			o = leaseSeen{renew: renew, at: now}
		case o.renew != renew:
			o = leaseSeen{renew: renew, at: now, renewed: true}
		}
		o.duration = d
		seen[key] = o
		if exp := o.at.Add(d); !st.hasLease || exp.After(st.expires) {
			st.expires, st.lease = exp, key
		}
		st.hasLease = true
		st.renewed = st.renewed || o.renewed
	}
	if len(seen) == 0 {
		delete(l.leases, node)
		delete(l.down, node)
		return st
	}
	l.leases[node] = seen
	st.unreachable = !now.Before(st.expires)
	if st.unreachable {
		l.down[node] = st.expires
	} else {
		delete(l.down, node)
	}
	return st
}

// unreachableSince reports whether node is unreachable, and since when.
func (l *storageLiveness) unreachableSince(node string) (time.Time, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	t, ok := l.down[node]
	return t, ok
}

// indexLeaseNode indexes Leases by the storage node whose liveness they
// are: holderIdentity, when the Lease's name is that node's
// bootv1.StorageLeaseName (the manager's leader election Lease and others
// are not indexed).
const indexLeaseNode = "storageLeaseNode"

func leaseNode(o client.Object) string {
	l, ok := o.(*coordinationv1.Lease)
	if !ok || l.Spec.HolderIdentity == nil || *l.Spec.HolderIdentity == "" || l.Name != bootv1.StorageLeaseName(*l.Spec.HolderIdentity) {
		return ""
	}
	return *l.Spec.HolderIdentity
}

// +kubebuilder:rbac:groups=coordination.k8s.io,resources=leases,verbs=get;list;watch

// reconcileLiveness handles node, whose Node exists: it observes its
// Leases, sets StorageReachable on its sessions, and once it has been
// unreachable longer than the grace releases the storage finalizers of its
// ended sessions and the node finalizer of its Images and Machines being
// deleted. It returns when to look again: the Lease's expiry, or the end
// of the grace.
func (r *StorageNodeReconciler) reconcileLiveness(ctx context.Context, n *corev1.Node, now time.Time) (time.Duration, error) {
	node := n.Name
	var leases coordinationv1.LeaseList
	if err := r.List(ctx, &leases, client.MatchingFields{indexLeaseNode: node}); err != nil {
		return 0, err
	}
	before, wasDown := r.gone.live.unreachableSince(node)
	st := r.gone.live.observe(node, leases.Items, now)
	if st.unreachable && !wasDown && r.APIReader != nil {
		// Before calling a node unreachable, read its Leases from the API
		// server: a stalled watch (an overloaded API server, a re-list)
		// must not make every storage node look dead at once.
		live := make([]coordinationv1.Lease, 0, len(leases.Items))
		for i := range leases.Items {
			l := &coordinationv1.Lease{}
			if err := r.APIReader.Get(ctx, client.ObjectKeyFromObject(&leases.Items[i]), l); err != nil {
				if apierrors.IsNotFound(err) {
					continue
				}
				return 0, err
			}
			live = append(live, *l)
		}
		st = r.gone.live.observe(node, live, now)
	}
	if !st.hasLease {
		return 0, r.setReachable(ctx, node, st, now)
	}
	if st.unreachable && !wasDown {
		ctrl.LoggerFrom(ctx).Info("Storage node unreachable: its Lease was not renewed", "node", node, "Lease", st.lease.String(), "since", st.expires)
		r.Recorder.Eventf(leaseRef(st.lease), corev1.EventTypeWarning, bootv1.StorageNodeUnreachableReason,
			"storage node %s is unreachable since %s: its Lease was not renewed for %s; its sessions fail at %s unless it is renewed by then",
			node, st.expires.UTC().Format(time.RFC3339), r.gone.live.duration, st.expires.Add(r.Grace).UTC().Format(time.RFC3339))
	} else if !st.unreachable && wasDown {
		ctrl.LoggerFrom(ctx).Info("Storage node reachable again: its Lease was renewed", "node", node, "Lease", st.lease.String(), "down since", before)
		r.Recorder.Eventf(leaseRef(st.lease), corev1.EventTypeNormal, bootv1.StorageNodeReachableReason,
			"storage node %s is reachable again: its Lease was renewed (unreachable since %s)", node, before.UTC().Format(time.RFC3339))
	}
	if err := r.setReachable(ctx, node, st, now); err != nil {
		return 0, err
	}
	if !st.unreachable {
		r.gone.present("lease/" + node)
		// Look again at the expiry: a renewal before it comes as a watch
		// event and moves it.
		return st.expires.Sub(now) + 100*time.Millisecond, nil
	}
	if nodeReady(n) {
		// The agent is down or cut off from the API server, but the
		// node's kubelet reports Ready: tgtd (its own process) may still
		// serve running PCs. Nothing is failed or released until the Node
		// is not Ready too (a dead machine) or is deleted.
		return nodeReadyRecheck, nil
	}
	left, err := r.releaseHeld(ctx, node, "lease/"+node, st.expires, now,
		"is unreachable (its Lease expired at "+st.expires.UTC().Format(time.RFC3339))
	if err != nil {
		return 0, err
	}
	if left > 0 {
		return left, nil
	}
	return 0, r.releaseDeletingNodeFinalizers(ctx, node, st.expires)
}

// setReachable brings StorageReachable on node's unfinished sessions in
// line with st: False while unreachable; True, once a renewal was seen, on
// those that had False; removed when the node has no Lease. Only sessions
// whose condition changes are written.
func (r *StorageNodeReconciler) setReachable(ctx context.Context, node string, st nodeLiveness, now time.Time) error {
	var list bootv1.BootSessionList
	if err := r.List(ctx, &list, client.MatchingFields{indexSessionNode: node}, client.UnsafeDisableDeepCopy); err != nil {
		return err
	}
	for i := range list.Items {
		s := &list.Items[i]
		if finished(s) {
			continue
		}
		c := meta.FindStatusCondition(s.Status.Conditions, bootv1.StorageReachableCondition)
		var want *metav1.Condition
		switch {
		case st.unreachable:
			if c != nil && c.Status == metav1.ConditionFalse {
				continue
			}
			want = &metav1.Condition{Type: bootv1.StorageReachableCondition, Status: metav1.ConditionFalse, Reason: bootv1.StorageNodeUnreachableReason,
				LastTransitionTime: metav1.NewTime(st.expires),
				Message: fmt.Sprintf("storage node %s is unreachable since %s (its Lease %s was not renewed); unless it is renewed by %s (the %s grace), the session fails then if the Node does not report Ready (the storage agent is down or cut off while the machine is up: nothing is failed)",
					node, st.expires.UTC().Format(time.RFC3339), st.lease.Name, st.expires.Add(r.Grace).UTC().Format(time.RFC3339), r.Grace)}
		case c == nil || c.Status == metav1.ConditionTrue:
			continue
		case st.hasLease && !st.renewed:
			continue // a manager that just started has not seen a renewal yet
		case st.hasLease:
			want = &metav1.Condition{Type: bootv1.StorageReachableCondition, Status: metav1.ConditionTrue, Reason: bootv1.StorageNodeReachableReason,
				LastTransitionTime: metav1.NewTime(now), Message: fmt.Sprintf("storage node %s renews its Lease %s again", node, st.lease.Name)}
		}
		w := s.DeepCopy()
		if want == nil {
			meta.RemoveStatusCondition(&w.Status.Conditions, bootv1.StorageReachableCondition)
		} else {
			want.ObservedGeneration = w.Generation
			meta.SetStatusCondition(&w.Status.Conditions, *want)
		}
		if err := r.Status().Patch(ctx, w, statusPatch(s)); client.IgnoreNotFound(err) != nil {
			return err
		}
	}
	return nil
}

// releaseDeletingNodeFinalizers releases node's finalizer from the Images
// and Machines being deleted, once the node has been unreachable longer
// than the grace: their deletion would otherwise wait for an agent that
// may never come back. Objects not being deleted keep it (the node may
// return and still hold their files).
func (r *StorageNodeReconciler) releaseDeletingNodeFinalizers(ctx context.Context, node string, since time.Time) error {
	key := nodeKey(node)
	var objs []client.Object
	var images bootv1.ImageList
	if err := r.List(ctx, &images, client.MatchingFields{indexNodeFinalizer: key}); err != nil {
		return err
	}
	for i := range images.Items {
		objs = append(objs, &images.Items[i])
	}
	var machines bootv1.MachineList
	if err := r.List(ctx, &machines, client.MatchingFields{indexNodeFinalizer: key}); err != nil {
		return err
	}
	for i := range machines.Items {
		objs = append(objs, &machines.Items[i])
	}
	what := "is unreachable (its Lease expired at " + since.UTC().Format(time.RFC3339)
	for _, o := range objs {
		if o.GetDeletionTimestamp() == nil {
			continue
		}
		if err := r.release(ctx, o, bootv1.NodeFinalizerPrefix+key, node, "lease/"+node, what, since, 0); err != nil {
			return err
		}
	}
	return nil
}

// nodeReadyRecheck is how often the sessions and finalizers of a node
// whose Lease expired but whose Node reports Ready are looked at again.
const nodeReadyRecheck = 30 * time.Second

// nodeReady reports whether the Node's kubelet reports it Ready (condition
// Ready=True). A Node without the condition (no kubelet, as in a test
// cluster) is not known to be up.
func nodeReady(n *corev1.Node) bool {
	if n == nil {
		return false
	}
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// leaseRef is the object the node's Events are recorded on: its Lease, in
// a namespace the manager watches (a Node's Events would go to default).
func leaseRef(key types.NamespacedName) *coordinationv1.Lease {
	l := &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Namespace: key.Namespace, Name: key.Name}}
	return l
}

// sessionReachableMismatch reports whether s's StorageReachable disagrees
// with what the manager knows of its node, so that the node is looked at
// again (a session scheduled just as the node's Lease expired).
func (l *storageLiveness) sessionReachableMismatch(s *bootv1.BootSession) bool {
	if s.Status.StorageNode == "" || finished(s) {
		return false
	}
	_, down := l.unreachableSince(s.Status.StorageNode)
	c := meta.FindStatusCondition(s.Status.Conditions, bootv1.StorageReachableCondition)
	isFalse := c != nil && c.Status == metav1.ConditionFalse
	return down != isFalse
}

// reachable is reconcileSchedule's liveness hook for a scheduled session
// whose Node exists: while its node's Lease has expired for less than the
// grace the session goes on (its StorageReachable=False is the
// StorageNodeReconciler's) and is looked at again when the grace ends;
// after it, the session fails StorageNodeLost, as for a deleted Node.
func (r *BootSessionReconciler) reachable(s *bootv1.BootSession, node string, sc *sessionScope) (bool, error) {
	since, down := r.gone.live.unreachableSince(node)
	if !down {
		return true, nil
	}
	end := since.Add(r.grace())
	left := time.Until(end)
	if left <= 0 && nodeReady(sc.node) {
		// Its kubelet reports the Node Ready: the machine is up, and tgtd
		// may serve PCs running on it while the agent is down. The
		// session goes on; looked at again in case the Node turns NotReady.
		left = nodeReadyRecheck
	}
	if left > 0 {
		if sc.requeueAfter == 0 || left < sc.requeueAfter {
			sc.requeueAfter = left
		}
		return true, nil
	}
	r.wait(s, bootv1.SessionFailed, bootv1.StorageNodeLostReason,
		fmt.Sprintf("storage node %s is unreachable since %s (its Lease %s was not renewed), longer than the %s grace; the session cannot continue: create a new one",
			node, since.UTC().Format(time.RFC3339), bootv1.StorageLeaseName(node), r.grace()))
	now := metav1.Now()
	s.Status.Timeline.Stopped = &now
	return false, nil
}
