package storage

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/util/retry"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/source"

	bootv1 "github.com/ggnet/ggnet/api/v1alpha1"
	bootac "github.com/ggnet/ggnet/api/v1alpha1/applyconfiguration/api/v1alpha1"
	"github.com/ggnet/ggnet/bootagent/images"
)

// The image reconciler never places a replica itself: a download can take
// hours or stall, and a reconcile worker held by one would stop the node's
// replication. Each placement runs in a goroutine of its own (a replicaJob,
// one per Image), which pokes the reconciler when its state changes or it
// ends; the reconciler starts jobs, reports their progress in the Image's
// status, and stops them when the Image goes.

// progressEvery is how often the status of a running placement is updated.
const progressEvery = 10 * time.Second

// Retries of a failed placement: transient failures after a minute,
// doubling to 15; failures of the bytes themselves (images.Permanent) after
// an hour, or at once when the Image's spec changes (a raised
// maxVirtualSize).
const (
	retryFirst     = time.Minute
	retryMax       = 15 * time.Minute
	retryPermanent = time.Hour
)

type imageReconciler struct {
	*Role
	client.Client
}

func (r *imageReconciler) setup(mgr ctrl.Manager) error {
	return ctrl.NewControllerManagedBy(mgr).Named("storage-images").For(&bootv1.Image{}).
		WatchesRawSource(source.Channel(r.jobs.events, &handler.EnqueueRequestForObject{})).
		WithOptions(controller.Options{MaxConcurrentReconciles: 2}).Complete(r)
}

// replicaFinalizer is this node's finalizer on an Image: held while the node
// has a replica file.
func (r *imageReconciler) replicaFinalizer() string { return bootv1.NodeFinalizer(r.cfg.NodeName) }

// Reconcile places or removes this node's replica of an Image.
func (r *imageReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	img := &bootv1.Image{}
	if err := r.Get(ctx, req.NamespacedName, img); err != nil {
		if client.IgnoreNotFound(err) == nil {
			r.jobs.stop(req.NamespacedName)
		}
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	selected, err := r.selects(ctx, img)
	if err != nil {
		return ctrl.Result{}, err
	}
	if img.DeletionTimestamp != nil || !selected {
		// A replica not yet placed is of no use to anyone any more.
		r.jobs.stop(req.NamespacedName)
		// The manager's finalizer keeps the Image while sessions use it; ours
		// goes once the file is gone.
		if img.DeletionTimestamp != nil && controllerutil.ContainsFinalizer(img, bootv1.ImageFinalizer) {
			return ctrl.Result{}, nil
		}
		if err := r.images.Remove(img.Namespace, img.Name, string(img.UID)); err != nil {
			return ctrl.Result{}, err
		}
		return ctrl.Result{}, r.finalizer(ctx, img, false)
	}
	if err := r.finalizer(ctx, img, true); err != nil {
		return ctrl.Result{}, err
	}
	src, ok := replicaSource(img)
	if !ok {
		return ctrl.Result{}, r.report(ctx, img, bootv1.ReplicaFailed, images.Result{}, images.ReasonUnsupportedFormat, "writeback sources are not supported by this agent yet")
	}
	if res, ok := r.images.Existing(img.Namespace, img.Name, string(img.UID)); ok {
		r.jobs.forget(req.NamespacedName, img.UID)
		return ctrl.Result{}, r.report(ctx, img, bootv1.ReplicaReady, res, bootv1.SucceededReason, "")
	}
	j := r.jobs.get(req.NamespacedName)
	if j != nil && j.uid != img.UID {
		r.jobs.stop(req.NamespacedName) // an older Image of the same name
		j = nil
	}
	failures := 0
	if j != nil {
		st := j.state()
		if !st.finished {
			return ctrl.Result{RequeueAfter: progressEvery}, r.report(ctx, img, st.progress.State, images.Result{}, bootv1.ProgressingReason, progressMessage(img, st.progress))
		}
		if st.err != nil && st.generation == img.Generation {
			if wait := time.Until(st.retryAt); wait > 0 {
				reason, msg := describe(st.err)
				return ctrl.Result{RequeueAfter: wait}, r.report(ctx, img, bootv1.ReplicaFailed, images.Result{}, reason, msg)
			}
			failures = st.failures
		}
	}
	log := r.log.WithValues("Image", req.String())
	r.jobs.start(req.NamespacedName, img.UID, img.Generation, failures, log, func(ctx context.Context, progress func(images.Progress)) error {
		_, err := r.images.Ensure(ctx, img.Namespace, img.Name, string(img.UID), src, progress)
		return err
	})
	first := images.Progress{State: bootv1.ReplicaDownloading}
	if src.URL == "" {
		first.State = bootv1.ReplicaPending
	}
	return ctrl.Result{RequeueAfter: progressEvery}, r.report(ctx, img, first.State, images.Result{}, bootv1.ProgressingReason, progressMessage(img, first))
}

// replicaSource is what the images store places for an Image; false for a
// source this agent does not place.
func replicaSource(img *bootv1.Image) (images.Source, bool) {
	src := images.Source{Format: string(img.Spec.Format)}
	if q := img.Spec.MaxVirtualSize; q != nil {
		src.MaxVirtualSize = q.Value()
	}
	switch s := img.Spec.Source; {
	case s.HTTP != nil:
		src.URL, src.SHA256 = s.HTTP.URL, s.HTTP.SHA256
	case s.Path != nil:
		src.Path, src.SHA256 = s.Path.Path, s.Path.SHA256
	default:
		return src, false
	}
	return src, true
}

// describe is the reason and message of a failed placement.
func describe(err error) (string, string) {
	var ie *images.Error
	if errors.As(err, &ie) {
		return ie.Reason, ie.Err.Error()
	}
	return bootv1.StorageErrorReason, "the node's data directory failed: " + err.Error()
}

// progressMessage says what a placement is doing.
func progressMessage(img *bootv1.Image, p images.Progress) string {
	switch {
	case p.State == bootv1.ReplicaConverting:
		return fmt.Sprintf("converting %s to raw (virtual size %s)", img.Spec.Format, size(p.Total))
	case p.State == bootv1.ReplicaPending && p.Done == 0:
		return "placing the replica"
	case p.State == bootv1.ReplicaPending:
		return fmt.Sprintf("copied %s of %s", size(p.Done), size(p.Total))
	case p.Done == 0:
		return "downloading"
	case p.Total > 0:
		return fmt.Sprintf("downloaded %s of %s", size(p.Done), size(p.Total))
	default:
		return "downloaded " + size(p.Done)
	}
}

func size(n int64) string {
	if n >= 1<<30 {
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	}
	return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
}

// selects reports whether the Image's storage node selector picks this node.
func (r *imageReconciler) selects(ctx context.Context, img *bootv1.Image) (bool, error) {
	if img.Spec.StorageNodeSelector == nil {
		return true, nil
	}
	sel, err := metav1.LabelSelectorAsSelector(img.Spec.StorageNodeSelector)
	if err != nil {
		return false, nil
	}
	var node corev1.Node
	if err := r.Get(ctx, types.NamespacedName{Name: r.cfg.NodeName}, &node); err != nil {
		return false, client.IgnoreNotFound(err)
	}
	return sel.Matches(labels.Set(node.Labels)), nil
}

// report applies this node's entry of status.replicas, unless it says so
// already; the transition time moves only with the state.
func (r *imageReconciler) report(ctx context.Context, img *bootv1.Image, state bootv1.ReplicaState, res images.Result, reason, msg string) error {
	msg = strings.TrimSpace(msg)
	if len(msg) > 1000 {
		msg = msg[:1000]
	}
	ltt := metav1.Now()
	for _, cur := range img.Status.Replicas {
		if cur.Node != r.cfg.NodeName || cur.State != state {
			continue
		}
		if cur.Reason == reason && cur.Message == msg && cur.Path == res.Path && cur.SizeBytes == res.SizeBytes && cur.SHA256 == res.SHA256 {
			return nil
		}
		if cur.LastTransitionTime != nil {
			ltt = *cur.LastTransitionTime
		}
	}
	entry := bootac.ImageReplica().WithNode(r.cfg.NodeName).WithState(state).WithLastTransitionTime(ltt)
	for _, f := range []struct {
		v    string
		with func(string) *bootac.ImageReplicaApplyConfiguration
	}{{res.Path, entry.WithPath}, {res.SHA256, entry.WithSHA256}, {reason, entry.WithReason}, {msg, entry.WithMessage}} {
		if f.v != "" {
			f.with(f.v)
		}
	}
	if res.SizeBytes > 0 {
		entry.WithSizeBytes(res.SizeBytes)
	}
	return client.IgnoreNotFound(r.applyStatus(ctx, bootac.Image(img.Name, img.Namespace).WithStatus(bootac.ImageStatus().WithReplicas(entry))))
}

func (r *imageReconciler) finalizer(ctx context.Context, img *bootv1.Image, add bool) error {
	if controllerutil.ContainsFinalizer(img, r.replicaFinalizer()) == add {
		return nil
	}
	return client.IgnoreNotFound(retry.RetryOnConflict(retry.DefaultRetry, func() error {
		cur := &bootv1.Image{}
		if err := r.reader.Get(ctx, client.ObjectKeyFromObject(img), cur); err != nil {
			return err
		}
		changed := controllerutil.RemoveFinalizer(cur, r.replicaFinalizer())
		if add {
			changed = controllerutil.AddFinalizer(cur, r.replicaFinalizer())
		}
		if !changed {
			return nil
		}
		if err := r.Update(ctx, cur); err != nil {
			return fmt.Errorf("updating the replica finalizer: %w", err)
		}
		return nil
	}))
}

// replicaJobs are the placements under way, one per Image.
type replicaJobs struct {
	log logr.Logger
	// ctx ends with the role: every job's context derives from it.
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	// events pokes the reconciler for an Image whose job moved on.
	events chan event.GenericEvent

	mu      sync.Mutex
	byImage map[types.NamespacedName]*replicaJob
}

func newReplicaJobs(log logr.Logger) *replicaJobs {
	ctx, cancel := context.WithCancel(context.Background())
	return &replicaJobs{log: log, ctx: ctx, cancel: cancel, events: make(chan event.GenericEvent, 256),
		byImage: map[types.NamespacedName]*replicaJob{}}
}

// replicaJob is one placement.
type replicaJob struct {
	uid        types.UID
	generation int64
	cancel     context.CancelFunc
	done       chan struct{}

	mu sync.Mutex
	st jobState
}

// jobState is a job's state as the reconciler reads it.
type jobState struct {
	generation int64
	progress   images.Progress
	finished   bool
	// err is why it failed (nil: placed, or canceled).
	err error
	// failures counts the failed placements in a row for this generation,
	// this one included; retryAt is when to try again.
	failures int
	retryAt  time.Time
}

func (j *replicaJob) state() jobState {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.st
}

func (js *replicaJobs) get(key types.NamespacedName) *replicaJob {
	js.mu.Lock()
	defer js.mu.Unlock()
	return js.byImage[key]
}

// running counts the placements under way.
func (js *replicaJobs) running() int {
	js.mu.Lock()
	defer js.mu.Unlock()
	n := 0
	for _, j := range js.byImage {
		if !j.state().finished {
			n++
		}
	}
	return n
}

// start runs place in a new job for the Image key; failures are the failed
// placements before it.
func (js *replicaJobs) start(key types.NamespacedName, uid types.UID, generation int64, failures int, log logr.Logger,
	place func(context.Context, func(images.Progress)) error) {
	js.mu.Lock()
	defer js.mu.Unlock()
	if js.ctx.Err() != nil {
		return // the role is stopping
	}
	ctx, cancel := context.WithCancel(js.ctx)
	j := &replicaJob{uid: uid, generation: generation, cancel: cancel, done: make(chan struct{}),
		st: jobState{generation: generation, failures: failures}}
	js.byImage[key] = j
	js.wg.Add(1)
	log.Info("Placing the replica")
	go func() {
		defer js.wg.Done()
		defer close(j.done)
		defer cancel()
		err := place(ctx, func(p images.Progress) {
			j.mu.Lock()
			moved := p.State != j.st.progress.State
			j.st.progress = p
			j.mu.Unlock()
			if moved {
				js.poke(key)
			}
		})
		j.mu.Lock()
		j.st.finished = true
		switch {
		case ctx.Err() != nil:
			// Stopped: the Image went, or the role.
		case err != nil:
			j.st.err = err
			j.st.failures++
			j.st.retryAt = time.Now().Add(retryAfter(err, j.st.failures))
			reason, msg := describe(err)
			log.Info("Replica failed", "reason", reason, "error", msg, "retryAt", j.st.retryAt.Format(time.RFC3339))
		default:
			log.Info("Replica placed")
		}
		j.mu.Unlock()
		if ctx.Err() == nil {
			js.poke(key)
		}
	}()
}

// retryAfter is the pause before the next placement after failures in a
// row.
func retryAfter(err error, failures int) time.Duration {
	var ie *images.Error
	if errors.As(err, &ie) && images.Permanent(ie.Reason) {
		return retryPermanent
	}
	d := retryFirst
	for i := 1; i < failures && d < retryMax; i++ {
		d *= 2
	}
	return min(d, retryMax)
}

// poke asks for a reconcile of the Image; when the queue is full the
// periodic requeue catches up.
func (js *replicaJobs) poke(key types.NamespacedName) {
	obj := &bootv1.Image{ObjectMeta: metav1.ObjectMeta{Namespace: key.Namespace, Name: key.Name}}
	select {
	case js.events <- event.GenericEvent{Object: obj}:
	default:
	}
}

// stop cancels the Image's job and waits for it (its temporary files are
// gone when it returns).
func (js *replicaJobs) stop(key types.NamespacedName) {
	js.mu.Lock()
	j := js.byImage[key]
	delete(js.byImage, key)
	js.mu.Unlock()
	if j != nil {
		j.cancel()
		<-j.done
	}
}

// forget drops the finished job of a placed replica.
func (js *replicaJobs) forget(key types.NamespacedName, uid types.UID) {
	js.mu.Lock()
	defer js.mu.Unlock()
	if j := js.byImage[key]; j != nil && j.uid == uid && j.state().finished {
		delete(js.byImage, key)
	}
}

// stopAll cancels every job and waits for them.
func (js *replicaJobs) stopAll() {
	js.mu.Lock()
	js.cancel()
	js.mu.Unlock()
	js.wg.Wait()
}
