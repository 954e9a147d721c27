// Package standin holds a stand-in storage agent for the controllers' tests
// and benchmarks: it plays the storage agent's part through the API only.
package standin

import (
	"context"
	"strings"
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"

	bootv1 "github.com/ggnet/ggnet/api/v1alpha1"
	"github.com/ggnet/ggnet/internal/finalizer"
)

// Storage plays the storage agent through the API: for each session
// scheduled on a node it holds the storage finalizer (adding it only when
// the session lacks it, as the manager now adds it) and reports
// StorageReady by a forced server-side apply with its own field manager, as
// the agent does; on stop or delete it tears down (instantly) and releases
// the finalizer. Nodes named "broken-*" fail;
// nodes named "gone-*" have no agent (the spec plays it).
type Storage struct {
	client.Client
	// Reader reads from the API server when a finalizer patch finds the
	// list moved (the agent's uncached reader); nil: the Client.
	Reader client.Reader
	// Workers is the number of concurrent reconciles (default 1).
	Workers int

	// appliedOn is, per session, the resourceVersion its last apply was
	// made from: a reconcile that reads that version again (a cache that
	// has not yet seen the apply) does not apply again — the real agent
	// keeps a record of what it wrote for the same reason
	// (bootagent/storage/session_status.go).
	mu        sync.Mutex
	appliedOn map[types.UID]string
}

func (s *Storage) appliedFrom(uid types.UID, rv string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	v, ok := s.appliedOn[uid]
	return ok && v == rv
}

// setAppliedOn records rv for uid; "" forgets uid.
func (s *Storage) setAppliedOn(uid types.UID, rv string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if rv == "" {
		delete(s.appliedOn, uid)
		return
	}
	if s.appliedOn == nil {
		s.appliedOn = map[types.UID]string{}
	}
	s.appliedOn[uid] = rv
}

func (s *Storage) reader() client.Reader {
	if s.Reader != nil {
		return s.Reader
	}
	return s.Client
}

func (s *Storage) SetupWithManager(mgr ctrl.Manager) error {
	return ctrl.NewControllerManagedBy(mgr).Named("stand-in-storage").For(&bootv1.BootSession{}).
		WithOptions(controller.Options{MaxConcurrentReconciles: max(1, s.Workers)}).Complete(s)
}

func (s *Storage) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	bs := &bootv1.BootSession{}
	if err := s.Get(ctx, req.NamespacedName, bs); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if bs.Status.StorageNode == "" || strings.HasPrefix(bs.Status.StorageNode, "gone-") {
		return ctrl.Result{}, nil
	}
	if bs.Spec.Stopped || bs.DeletionTimestamp != nil {
		s.setAppliedOn(bs.UID, "")
		// As the agent does: a JSON patch that tests the list entry, no
		// resourceVersion.
		return ctrl.Result{}, finalizer.Remove(ctx, s.Client, s.reader(), bs, bootv1.StorageFinalizer)
	}
	// The manager adds the finalizer in its first write of a new session;
	// the agent adds it only to a scheduled session that lacks it (made by
	// an older manager).
	if controllerutil.AddFinalizer(bs, bootv1.StorageFinalizer) {
		if err := s.Update(ctx, bs); err != nil {
			return ctrl.Result{}, err
		}
	}
	cond := metav1.Condition{Type: bootv1.StorageReadyCondition, Status: metav1.ConditionTrue, Reason: bootv1.SucceededReason, Message: "target ready"}
	if strings.HasPrefix(bs.Status.StorageNode, "broken-") {
		cond = metav1.Condition{Type: bootv1.StorageReadyCondition, Status: metav1.ConditionFalse, Reason: bootv1.StorageFailedReason, Message: "disk full"}
	}
	cur := meta.FindStatusCondition(bs.Status.Conditions, bootv1.StorageReadyCondition)
	if (cur != nil && cur.Status == cond.Status && cur.Reason == cond.Reason && cur.Message == cond.Message) || s.appliedFrom(bs.UID, bs.ResourceVersion) {
		return ctrl.Result{}, nil
	}
	// As the storage agent writes it: a forced server-side apply of its
	// own condition, with its own field manager (a merge patch would
	// replace the whole list, the manager's conditions with it).
	cond.LastTransitionTime = metav1.NewTime(time.Now().Truncate(time.Second))
	if cur != nil && cur.Status == cond.Status {
		cond.LastTransitionTime = cur.LastTransitionTime
	}
	u := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": bootv1.GroupVersion.String(), "kind": "BootSession",
		"metadata": map[string]any{"namespace": bs.Namespace, "name": bs.Name},
		"status": map[string]any{"conditions": []any{map[string]any{
			"type": cond.Type, "status": string(cond.Status), "reason": cond.Reason, "message": cond.Message,
			"observedGeneration": bs.Generation, "lastTransitionTime": cond.LastTransitionTime.UTC().Format(time.RFC3339)}}},
	}}
	if err := s.Status().Apply(ctx, client.ApplyConfigurationFromUnstructured(u), client.FieldOwner("stand-in-storage"), client.ForceOwnership); err != nil {
		s.setAppliedOn(bs.UID, "")
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	s.setAppliedOn(bs.UID, bs.ResourceVersion)
	return ctrl.Result{}, nil
}
