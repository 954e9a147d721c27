package controllers

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/record"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	bootv1 "github.com/ggnet/ggnet/api/v1alpha1"
)

// A storage agent alone removes its finalizers: bootv1.StorageFinalizer on
// the sessions of its node (status.storageNode) and bootv1.NodeFinalizer(node)
// on the Images and Machines it keeps files for. When the node's Node object
// is gone, nothing would ever remove them and those objects could never be
// deleted. The manager releases them once the Node has been missing for
// longer than Options.StorageNodeGrace, with a Warning Event
// (StorageNodeGone) on each object; a Node that returns within the grace
// keeps everything.
//
// When a Node went missing is kept in memory (goneNodes), from the first
// time the manager sees it missing: a manager restart or a change of leader
// starts the grace again. That errs only on the side of waiting longer. A
// mark kept on the objects instead would survive a restart, but a mark left
// behind when a node returned while no manager ran could later cut a grace
// short, which is the dangerous side; Kubernetes' own pod garbage collector
// quarantines deleted nodes in memory the same way.

// goneNodes records when the manager first saw a storage node missing. Keys
// are "node/<name>" (the Node of that name is missing: sessions) and
// "finalizer/<key>" (no Node has the finalizer bootv1.NodeFinalizerPrefix +
// key: Images and Machines; NodeFinalizer cuts long names, so two nodes may
// share one). Safe for concurrent use.
type goneNodes struct {
	mu   sync.Mutex
	gone map[string]*goneNode
	// live is what the storage nodes' Leases say (storage_liveness.go);
	// gone's keys "lease/<name>" are the unreachable nodes whose ended
	// sessions were told when their finalizer goes.
	live *storageLiveness
}

type goneNode struct {
	since time.Time
	// announced holds the objects told when their finalizer will be
	// released.
	announced map[types.UID]bool
}

func newGoneNodes() *goneNodes {
	return &goneNodes{gone: map[string]*goneNode{}, live: newStorageLiveness(0)}
}

// missing records that key is missing now, unless it already was, and
// returns since when.
func (g *goneNodes) missing(key string, now time.Time) time.Time {
	g.mu.Lock()
	defer g.mu.Unlock()
	n := g.gone[key]
	if n == nil {
		n = &goneNode{since: now, announced: map[types.UID]bool{}}
		g.gone[key] = n
	}
	return n.since
}

// missingAt records that key is missing since since (the expiry of a
// node's Lease), replacing an earlier record.
func (g *goneNodes) missingAt(key string, since time.Time) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if n := g.gone[key]; n != nil && n.since.Equal(since) {
		return
	}
	g.gone[key] = &goneNode{since: since, announced: map[types.UID]bool{}}
}

// present forgets key: it exists (again), or nothing refers to it.
func (g *goneNodes) present(key string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	delete(g.gone, key)
}

// announce reports whether obj is yet to be told about the missing key, and
// records that it is told.
func (g *goneNodes) announce(key string, uid types.UID) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	n := g.gone[key]
	if n == nil || n.announced[uid] {
		return false
	}
	n.announced[uid] = true
	return true
}

// nodeKey is the part of a node's bootv1.NodeFinalizer after the prefix.
func nodeKey(node string) string {
	return strings.TrimPrefix(bootv1.NodeFinalizer(node), bootv1.NodeFinalizerPrefix)
}

// StorageNodeReconciler releases the storage finalizers of storage nodes
// whose Node is gone, after the grace. Its requests are named after a node,
// or after the key of a node finalizer (bootv1.NodeFinalizer cuts long names).
type StorageNodeReconciler struct {
	client.Client
	Recorder record.EventRecorder
	// Grace is how long a Node must be missing before its finalizers go.
	Grace time.Duration
	// APIReader reads Leases from the API server, not the cache, before a
	// node is called unreachable.
	APIReader client.Reader
	// gone is shared with the BootSession controller, which fails a session
	// whose node is missing for longer than Grace (Setup shares it).
	gone *goneNodes
}

// Reconcile handles the sessions of node req.Name and the Images and
// Machines holding the node finalizer of that name.
func (r *StorageNodeReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	now := time.Now()
	a, err := r.releaseSessions(ctx, req.Name, now)
	if err != nil {
		return requeueOnConflict(ctrl.Result{}, err)
	}
	b, err := r.releaseNodeFinalizers(ctx, nodeKey(req.Name), now)
	if err != nil {
		return requeueOnConflict(ctrl.Result{}, err)
	}
	if a == 0 || (b != 0 && b < a) {
		a = b
	}
	return ctrl.Result{RequeueAfter: a}, nil
}

// releaseSessions removes bootv1.StorageFinalizer from the sessions on node
// that are stopped, being deleted or finished, once node has been missing
// for longer than the grace. A live session on a missing node is the
// BootSession controller's: it fails it after the same grace
// (StorageNodeLost), and its finalizer goes then. It returns how long until
// the grace ends, or 0.
func (r *StorageNodeReconciler) releaseSessions(ctx context.Context, node string, now time.Time) (time.Duration, error) {
	key := "node/" + node
	n := &corev1.Node{}
	err := r.Get(ctx, types.NamespacedName{Name: node}, n)
	if err == nil {
		r.gone.present(key)
		// The Node exists: its Lease says whether it is alive.
		return r.reconcileLiveness(ctx, n, now)
	} else if !apierrors.IsNotFound(err) {
		return 0, err
	}
	since := r.gone.missing(key, now)
	return r.releaseHeld(ctx, node, key, since, now, "is gone (missing since "+since.UTC().Format(time.RFC3339))
}

// releaseHeld releases, once since+grace passed, the storage finalizers of
// node's ended sessions (a Warning Event each, and one before, saying when);
// what says what happened to the node (release). It
// returns how long until the grace ends, or 0.
func (r *StorageNodeReconciler) releaseHeld(ctx context.Context, node, key string, since, now time.Time, what string) (time.Duration, error) {
	if key != "node/"+node {
		r.gone.missingAt(key, since)
	}
	var list bootv1.BootSessionList
	if err := r.List(ctx, &list, client.MatchingFields{indexSessionNode: node}); err != nil {
		return 0, err
	}
	var held []*bootv1.BootSession
	live := 0
	for i := range list.Items {
		s := &list.Items[i]
		ending := s.DeletionTimestamp != nil || s.Spec.Stopped || finished(s)
		if !ending {
			live++
		} else if controllerutil.ContainsFinalizer(s, bootv1.StorageFinalizer) {
			held = append(held, s)
		}
	}
	if live == 0 && len(held) == 0 {
		r.gone.present(key) // nothing refers to it: forget it
		return 0, nil
	}
	left := since.Add(r.Grace).Sub(now)
	for _, s := range held {
		if err := r.release(ctx, s, bootv1.StorageFinalizer, node, key, what, since, left); err != nil {
			return 0, err
		}
	}
	if left <= 0 && live == 0 {
		r.gone.present(key) // all released
	}
	return max(left, 0), nil
}

// releaseNodeFinalizers removes the finalizer bootv1.NodeFinalizerPrefix+key
// from the Images and Machines holding it, once no Node has had that
// finalizer for longer than the grace. It returns how long until the grace
// ends, or 0.
func (r *StorageNodeReconciler) releaseNodeFinalizers(ctx context.Context, key string, now time.Time) (time.Duration, error) {
	fin := bootv1.NodeFinalizerPrefix + key
	present, err := r.finalizerHasNode(ctx, key)
	if err != nil || present {
		if present {
			r.gone.present("finalizer/" + key)
		}
		return 0, err
	}
	var objs []client.Object
	var images bootv1.ImageList
	if err := r.List(ctx, &images, client.MatchingFields{indexNodeFinalizer: key}); err != nil {
		return 0, err
	}
	for i := range images.Items {
		objs = append(objs, &images.Items[i])
	}
	var machines bootv1.MachineList
	if err := r.List(ctx, &machines, client.MatchingFields{indexNodeFinalizer: key}); err != nil {
		return 0, err
	}
	for i := range machines.Items {
		objs = append(objs, &machines.Items[i])
	}
	if len(objs) == 0 {
		r.gone.present("finalizer/" + key)
		return 0, nil
	}
	since := r.gone.missing("finalizer/"+key, now)
	left := since.Add(r.Grace).Sub(now)
	for _, o := range objs {
		if err := r.release(ctx, o, fin, key, "finalizer/"+key, "is gone (missing since "+since.UTC().Format(time.RFC3339), since, left); err != nil {
			return 0, err
		}
	}
	if left <= 0 {
		r.gone.present("finalizer/" + key) // all released
	}
	return max(left, 0), nil
}

// finalizerHasNode reports whether a Node exists whose bootv1.NodeFinalizer
// ends in key.
func (r *StorageNodeReconciler) finalizerHasNode(ctx context.Context, key string) (bool, error) {
	if len(key) < len(nodeKey(strings.Repeat("x", 253))) { // 50
		// A key shorter than the cut is one node's whole name.
		err := r.Get(ctx, types.NamespacedName{Name: key}, &corev1.Node{})
		if apierrors.IsNotFound(err) {
			return false, nil
		}
		return err == nil, err
	}
	var nodes corev1.NodeList
	if err := r.List(ctx, &nodes); err != nil {
		return false, err
	}
	for _, n := range nodes.Items {
		if nodeKey(n.Name) == key {
			return true, nil
		}
	}
	return false, nil
}

// release removes finalizer fin from obj once the grace is over (left <= 0),
// with a Warning Event; before, it tells obj once when that will happen.
// what is what happened to the node, its parenthesis left open: "is gone
// (missing since …" or "is unreachable (its Lease expired at …".
func (r *StorageNodeReconciler) release(ctx context.Context, obj client.Object, fin, node, key, what string, since time.Time, left time.Duration) error {
	kind := kindOf(obj)
	if left > 0 {
		if r.gone.announce(key, obj.GetUID()) {
			r.Recorder.Eventf(obj, corev1.EventTypeWarning, bootv1.StorageNodeGoneReason,
				"storage node %s %s): unless it returns within the %s grace, the manager releases this %s's finalizer %s at %s",
				node, what, r.Grace, kind, fin, since.Add(r.Grace).UTC().Format(time.RFC3339))
		}
		return nil
	}
	patch := client.MergeFromWithOptions(obj.DeepCopyObject().(client.Object), client.MergeFromWithOptimisticLock{})
	if !controllerutil.RemoveFinalizer(obj, fin) {
		return nil
	}
	logf.FromContext(ctx).Info("Releasing the finalizer of a gone storage node", kind, klogRef(obj), "node", node, "finalizer", fin)
	if err := r.Patch(ctx, obj, patch); err != nil {
		return client.IgnoreNotFound(err)
	}
	r.Recorder.Eventf(obj, corev1.EventTypeWarning, bootv1.StorageNodeGoneReason,
		"storage node %s %s, longer than the %s grace): released finalizer %s; the files this %s had on %s are no longer tracked (if that node's disk comes back, check them by hand)",
		node, what, r.Grace, fin, kind, node)
	return nil
}

func kindOf(obj client.Object) string {
	switch obj.(type) {
	case *bootv1.BootSession:
		return "BootSession"
	case *bootv1.Image:
		return "Image"
	case *bootv1.Machine:
		return "Machine"
	}
	return fmt.Sprintf("%T", obj)
}

func klogRef(obj client.Object) string { return obj.GetNamespace() + "/" + obj.GetName() }

// SetupWithManager registers the controller: Nodes as they come and go
// (not their heartbeats), the storage nodes' Leases, sessions that hold a
// storage finalizer and no longer run, and Images and Machines holding
// node finalizers.
func (r *StorageNodeReconciler) SetupWithManager(mgr ctrl.Manager) error {
	if r.gone == nil {
		r.gone = newGoneNodes()
	}
	if err := mgr.GetFieldIndexer().IndexField(context.Background(), &coordinationv1.Lease{}, indexLeaseNode, func(o client.Object) []string {
		if n := leaseNode(o); n != "" {
			return []string{n}
		}
		return nil
	}); err != nil {
		return err
	}
	byFinalizer := handler.EnqueueRequestsFromMapFunc(func(_ context.Context, o client.Object) []reconcile.Request {
		var out []reconcile.Request
		for _, k := range nodeFinalizerKeys(o) {
			out = append(out, reconcile.Request{NamespacedName: types.NamespacedName{Name: k}})
		}
		return out
	})
	return ctrl.NewControllerManagedBy(mgr).
		Named("storagenode").
		// A Node's updates are heartbeats, but for its Ready condition: a
		// node whose Lease expired is failed only once it is not Ready.
		For(&corev1.Node{}, builder.WithPredicates(predicate.Funcs{UpdateFunc: func(e event.UpdateEvent) bool {
			return nodeReady(e.ObjectOld.(*corev1.Node)) != nodeReady(e.ObjectNew.(*corev1.Node))
		}})).
		Watches(&bootv1.BootSession{}, handler.EnqueueRequestsFromMapFunc(func(_ context.Context, o client.Object) []reconcile.Request {
			s := o.(*bootv1.BootSession)
			if s.Status.StorageNode == "" {
				return nil
			}
			// An ended session whose finalizer may be the manager's to
			// release, or one whose StorageReachable disagrees with its
			// node's Lease (scheduled as the Lease expired).
			if !r.gone.live.sessionReachableMismatch(s) && (!controllerutil.ContainsFinalizer(s, bootv1.StorageFinalizer) ||
				!(s.DeletionTimestamp != nil || s.Spec.Stopped || finished(s))) {
				return nil
			}
			return []reconcile.Request{{NamespacedName: types.NamespacedName{Name: s.Status.StorageNode}}}
		})).
		// The storage nodes' Leases (storage_liveness.go): every renewal
		// reconciles the node, which is cheap while nothing changes.
		Watches(&coordinationv1.Lease{}, handler.EnqueueRequestsFromMapFunc(func(_ context.Context, o client.Object) []reconcile.Request {
			if n := leaseNode(o); n != "" {
				return []reconcile.Request{{NamespacedName: types.NamespacedName{Name: n}}}
			}
			return nil
		})).
		Watches(&bootv1.Image{}, byFinalizer).
		Watches(&bootv1.Machine{}, byFinalizer).
		Complete(r)
}
