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
	if err := mgr.GetFieldIndexer().IndexField(context.Background(), &bootv1.Image{}, imageSessionField, imageSession); err != nil {
		return err
	}
	b := ctrl.NewControllerManagedBy(mgr).Named("storage-images").For(&bootv1.Image{}).
		WatchesRawSource(source.Channel(r.jobs.events, &handler.EnqueueRequestForObject{}))
	return r.watchSessions(b).WithOptions(controller.Options{MaxConcurrentReconciles: 2}).Complete(r)
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
			if st.progress.State == "" {
				// Started, no progress reported yet: the API refuses an
				// empty state.
				st.progress.State = bootv1.ReplicaPending
			}
			return ctrl.Result{RequeueAfter: progressEvery}, r.reportRow(ctx, img, replicaRow{state: st.progress.State, reason: bootv1.ProgressingReason,
				msg: j.info.message(img, st.progress), transfer: j.transfer(st)})
		}
		if st.generation == img.Generation {
			failures = st.failures
		}
	}
	pl, wait, err := r.plan(ctx, img, failures)
	if err != nil {
		return ctrl.Result{}, err
	}
	if wait != nil {
		// Woken by the Image, its session, or this requeue (a disk in use,
		// a source node's endpoint).
		return ctrl.Result{RequeueAfter: progressEvery}, r.report(ctx, img, wait.state, images.Result{}, wait.reason, wait.msg)
	}
	if j != nil {
		if st := j.state(); st.err != nil && st.generation == img.Generation {
			if wait := time.Until(st.retryAt); wait > 0 {
				reason, msg := describe(st.err)
				return ctrl.Result{RequeueAfter: wait}, r.report(ctx, img, bootv1.ReplicaFailed, images.Result{}, reason, msg)
			}
		}
	}
	log := r.log.WithValues("Image", req.String())
	info := jobInfo{kind: pl.kind, session: pl.session, sourceNode: pl.sourceNode}
	src := pl.src
	r.jobs.start(req.NamespacedName, img.UID, img.Generation, failures, info, log, func(ctx context.Context, progress func(images.Progress)) error {
		_, err := r.images.Ensure(ctx, img.Namespace, img.Name, string(img.UID), src, progress)
		return err
	})
	first := images.Progress{State: bootv1.ReplicaDownloading}
	if src.URL == "" && pl.kind != placeReplication {
		first.State = bootv1.ReplicaPending
	}
	return ctrl.Result{RequeueAfter: progressEvery}, r.reportRow(ctx, img, replicaRow{state: first.State, reason: bootv1.ProgressingReason,
		msg: info.message(img, first), transfer: transfer{sourceNode: pl.sourceNode}})
}

// plan is how this node places the Image's replica, or why it waits or
// cannot; failures counts the failed placements before this one.
func (r *imageReconciler) plan(ctx context.Context, img *bootv1.Image, failures int) (placement, *replicaWait, error) {
	if img.Spec.Source.Writeback != nil {
		return r.writebackPlan(ctx, img, failures)
	}
	src, ok := replicaSource(img)
	if !ok {
		return placement{}, &replicaWait{state: bootv1.ReplicaFailed, reason: images.ReasonUnsupportedFormat, msg: "the Image has no source this agent knows"}, nil
	}
	return placement{kind: placeSource, src: src}, nil, nil
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

// jobInfo is what a job places, for its messages and status.
type jobInfo struct {
	kind                placementKind
	session, sourceNode string
}

// message says what a placement is doing.
func (i jobInfo) message(img *bootv1.Image, p images.Progress) string {
	switch i.kind {
	case placeCapture:
		if p.Total == 0 {
			return "cloning the disk of BootSession " + i.session + " by reflink"
		}
		return fmt.Sprintf("cloned the disk of BootSession %s by reflink; checksummed %s of %s", i.session, size(p.Done), size(p.Total))
	case placeReplication:
		if p.Total == 0 {
			return "replicating from node " + i.sourceNode
		}
		return fmt.Sprintf("replicating from node %s: %s of %s", i.sourceNode, size(p.Done), size(p.Total))
	}
	return progressMessage(img, p)
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

// report applies this node's entry of status.replicas (no transfer under
// way), unless it says so already.
func (r *imageReconciler) report(ctx context.Context, img *bootv1.Image, state bootv1.ReplicaState, res images.Result, reason, msg string) error {
	return r.reportRow(ctx, img, replicaRow{state: state, res: res, reason: reason, msg: msg})
}

// replicaRow is this node's entry of an Image's status.replicas.
type replicaRow struct {
	state       bootv1.ReplicaState
	res         images.Result
	reason, msg string
	transfer    transfer
}

// transfer is the progress of a running placement (zero: none).
type transfer struct {
	done, total, perSecond int64
	sourceNode             string
}

// reportRow applies this node's entry of status.replicas, unless it says
// so already; the transition time moves only with the state. The transfer
// fields are this node's too: a row without them clears them.
func (r *imageReconciler) reportRow(ctx context.Context, img *bootv1.Image, row replicaRow) error {
	state, res, reason, tr := row.state, row.res, row.reason, row.transfer
	msg := strings.TrimSpace(row.msg)
	if len(msg) > 1000 {
		msg = msg[:1000]
	}
	ltt := metav1.Now()
	for _, cur := range img.Status.Replicas {
		if cur.Node != r.cfg.NodeName || cur.State != state {
			continue
		}
		if cur.Reason == reason && cur.Message == msg && cur.Path == res.Path && cur.SizeBytes == res.SizeBytes && cur.SHA256 == res.SHA256 &&
			cur.BytesDone == tr.done && cur.BytesTotal == tr.total && cur.BytesPerSecond == tr.perSecond && cur.SourceNode == tr.sourceNode {
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
	}{{res.Path, entry.WithPath}, {res.SHA256, entry.WithSHA256}, {reason, entry.WithReason}, {msg, entry.WithMessage}, {tr.sourceNode, entry.WithSourceNode}} {
		if f.v != "" {
			f.with(f.v)
		}
	}
	for _, f := range []struct {
		v    int64
		with func(int64) *bootac.ImageReplicaApplyConfiguration
	}{{res.SizeBytes, entry.WithSizeBytes}, {tr.done, entry.WithBytesDone}, {tr.total, entry.WithBytesTotal}, {tr.perSecond, entry.WithBytesPerSecond}} {
		if f.v > 0 {
			f.with(f.v)
		}
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
	info       jobInfo
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
	// The rate: bytes per second over the last full window (rateWindow),
	// and where the current window started.
	perSecond int64
	winStart  time.Time
	winDone   int64
}

// rateWindow is the window the rate of a transfer is measured over.
const rateWindow = progressEvery

// progressed records p at now, measuring the rate.
func (st *jobState) progressed(p images.Progress, now time.Time) {
	if p.State != st.progress.State || p.Done < st.winDone || st.winStart.IsZero() {
		st.perSecond, st.winStart, st.winDone = 0, now, p.Done
	} else if el := now.Sub(st.winStart); el >= rateWindow {
		st.perSecond = int64(float64(p.Done-st.winDone) / el.Seconds())
		st.winStart, st.winDone = now, p.Done
	}
	st.progress = p
}

// rate is the transfer's bytes per second at now: over the last full
// window, or over the current one while there was none.
func (st jobState) rate(now time.Time) int64 {
	if st.perSecond > 0 || st.winStart.IsZero() {
		return st.perSecond
	}
	if el := now.Sub(st.winStart); el >= time.Second {
		return int64(float64(st.progress.Done-st.winDone) / el.Seconds())
	}
	return 0
}

// transfer is the status of the job's running transfer.
func (j *replicaJob) transfer(st jobState) transfer {
	return transfer{done: st.progress.Done, total: st.progress.Total, perSecond: st.rate(time.Now()), sourceNode: j.info.sourceNode}
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
func (js *replicaJobs) start(key types.NamespacedName, uid types.UID, generation int64, failures int, info jobInfo, log logr.Logger,
	place func(context.Context, func(images.Progress)) error) {
	js.mu.Lock()
	defer js.mu.Unlock()
	if js.ctx.Err() != nil {
		return // the role is stopping
	}
	ctx, cancel := context.WithCancel(js.ctx)
	j := &replicaJob{uid: uid, generation: generation, info: info, cancel: cancel, done: make(chan struct{}),
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
			j.st.progressed(p, time.Now())
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
	if errors.As(err, &ie) && ie.Reason == bootv1.PersistentDiskInUseReason {
		// A capture that found its disk taken after the reconcile saw it
		// free: the next reconcile waits for it (Pending) again.
		return progressEvery
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
