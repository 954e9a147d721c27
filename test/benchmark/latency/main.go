// Command latency measures one session's create-to-Ready and stop-to-Stopped
// on a quiet cluster, one session after another: a real kube-apiserver and
// etcd (envtest), the manager binary and the boot agent binary in its
// storage role (each its own process, as in production), a real tgtd, and a
// real image on XFS with reflink (a loop device), as the lab runs them.
//
// For each of N sessions (after a few warm-up ones): create it and wait for
// the watch event that shows Ready=True; set spec.stopped (as
// docs/architecture.md and the kubectl plugin do) and wait for the one that
// shows phase Stopped; delete it and wait until it is gone; then the next.
// Times are on the client's clock, from the call to the watch event.
//
// Where the time goes: each milestone's first watch event (finalizer,
// scheduled, credentials, StorageReady, Ready; Stopping,
// storage released, Stopped); kube-apiserver's audit log of every write
// with its writer, what it wrote and when; every request the storage agent
// sends tgtd, timed by a proxy on tgtd's management socket; the manager's
// and the agent's workqueue and reconcile histograms; the reflink clone of
// the same image on the same kind of file system, timed apart.
//
//	sudo go run ./test/benchmark/latency -n 100 -bin bin
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/rest"
	toolscache "k8s.io/client-go/tools/cache"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	bootv1 "github.com/ggnet/ggnet/api/v1alpha1"
	"github.com/ggnet/ggnet/bootagent/overlay"
	"github.com/ggnet/ggnet/internal/scheme"
	"github.com/ggnet/ggnet/internal/testbin"
	"github.com/ggnet/ggnet/internal/testenv"
	"github.com/ggnet/ggnet/internal/testfs"
	"github.com/ggnet/ggnet/internal/testtgt"
	"github.com/ggnet/ggnet/test/benchmark/sessions/kit"
)

const (
	ns       = "bench"
	nodeName = "bench-storage"
)

type options struct {
	n, warmup   int
	bin         string
	imageMiB    int64
	dataMiB     int64
	gap, hold   time.Duration
	out         string
	memLimit    string
	concurrency int
	timeout     time.Duration
}

var tt = &testbin.Program{}

func main() {
	ctrl.SetLogger(logr.Discard())
	def, err := kit.ChartManagerDefaults()
	check(err)
	var o options
	flag.IntVar(&o.n, "n", 100, "Sessions measured, one after another.")
	flag.IntVar(&o.warmup, "warmup", 3, "Sessions run first and not measured (connections, caches, tgtd).")
	flag.StringVar(&o.bin, "bin", "bin", "Directory of the manager and bootagent binaries (make build).")
	flag.Int64Var(&o.imageMiB, "image-mib", 1024, "Size of the image (raw, 64 MiB of data at its start, the rest sparse).")
	flag.Int64Var(&o.dataMiB, "data-mib", 4096, "Size of the XFS data directory.")
	flag.DurationVar(&o.hold, "hold", 0, "How long a session stays Ready before it is stopped (the manager writes a Machine's status 500 ms after its session's changes: with 0 a session is gone before that write, which the audit list then misses).")
	flag.DurationVar(&o.gap, "gap", 200*time.Millisecond, "Pause between one session's end and the next one's create.")
	flag.StringVar(&o.out, "out", "", "Directory for the logs, the audit log and the raw figures (default: a temporary one, removed).")
	flag.StringVar(&o.memLimit, "manager-gomemlimit", def.GoMemLimit, "GOMEMLIMIT of the manager (default: the chart's).")
	flag.IntVar(&o.concurrency, "max-concurrent-reconciles", def.MaxConcurrentReconciles, "The manager's --max-concurrent-reconciles (default: the chart's).")
	flag.DurationVar(&o.timeout, "timeout", 30*time.Second, "Give up on a session that takes longer than this for one step.")
	flag.Parse()
	if os.Geteuid() != 0 {
		check(fmt.Errorf("run as root: the benchmark mounts an XFS on a loop device and runs tgtd"))
	}
	defer tt.Done()
	check(run(o))
}

func check(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, "latency:", err)
		tt.Done()
		os.Exit(1)
	}
}

func freePort() int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	check(err)
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// lab is what runs: the API server, the two processes, tgtd.
type lab struct {
	dir                   string
	env                   *envtest.Environment
	cfg                   *rest.Config
	c                     client.Client
	mgr, agent            *exec.Cmd
	mgrMetrics, agMetrics string
	tgt                   *tgtProxy
	auditLog              string
	imagePath             string
}

func run(o options) error {
	ctx := context.Background()
	l, err := start(ctx, o)
	if err != nil {
		return err
	}
	total := o.warmup + o.n
	t0 := time.Now()
	if err := testbin.Parallel(total, 8, func(k int) error {
		return l.c.Create(ctx, &bootv1.Machine{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: fmt.Sprintf("pc-%03d", k)},
			Spec: bootv1.MachineSpec{MAC: fmt.Sprintf("00:0c:02:00:%02x:%02x", k>>8&0xff, k&0xff),
				IPv4: &bootv1.IPv4Reservation{Address: fmt.Sprintf("10.30.%d.%d", k/250, k%250+2), PrefixLength: 16}}})
	}); err != nil {
		return err
	}
	fmt.Printf("created %d Machines in %s\n", total, time.Since(t0).Round(time.Millisecond))

	w, err := newWatcher(ctx, l.cfg)
	if err != nil {
		return err
	}
	hc, err := rest.HTTPClientFor(l.cfg)
	if err != nil {
		return err
	}
	apiMetrics := strings.TrimRight(l.cfg.Host, "/") + "/metrics"
	if err := quiesce(hc, apiMetrics); err != nil {
		return err
	}

	// The warm-up sessions, then the measured ones.
	var runs []*sessionRun
	var before [3]kit.Metrics
	var cpu *kit.CPU
	var measureStart time.Time
	for k := range total {
		if k == o.warmup {
			if err := quiesce(hc, apiMetrics); err != nil {
				return err
			}
			for i, u := range []string{apiMetrics, l.mgrMetrics, l.agMetrics} {
				h := http.DefaultClient
				if i == 0 {
					h = hc
				}
				if before[i], err = kit.Scrape(h, u); err != nil {
					return err
				}
			}
			cpu = kit.NewCPU([]string{"kube-apiserver", "etcd", "manager", "storage agent", "tgtd", "benchmark"},
				[]int{first(kit.ChildrenNamed("kube-apiserver")), first(kit.ChildrenNamed("etcd")), l.mgr.Process.Pid, l.agent.Process.Pid,
					first(kit.ChildrenNamed("tgtd")), os.Getpid()})
			fmt.Printf("load average before the measured sessions (the machine is shared): %s\n", kit.LoadAvg())
			measureStart = time.Now()
			cpu.Start(time.Second)
		}
		r, err := oneSession(ctx, l, w, k, o.timeout, o.hold)
		if err != nil {
			return fmt.Errorf("session %d: %w (logs in %s)", k, err, l.dir)
		}
		if k >= o.warmup {
			runs = append(runs, r)
		}
		time.Sleep(o.gap)
	}
	measured := time.Since(measureStart)
	use := cpu.Stop()
	var after [3]kit.Metrics
	for i, u := range []string{apiMetrics, l.mgrMetrics, l.agMetrics} {
		h := http.DefaultClient
		if i == 0 {
			h = hc
		}
		if after[i], err = kit.Scrape(h, u); err != nil {
			return err
		}
	}
	fmt.Printf("load average after: %s\n\n", kit.LoadAvg())

	report(o, l, w, runs)
	fmt.Printf("\nCPU over the %d measured sessions (%s):\n", o.n, measured.Round(time.Millisecond))
	rows := [][]string{{"process", "CPU s", "per session", "mean cores"}}
	for _, u := range use {
		rows = append(rows, []string{u.Name, fmt.Sprintf("%.2f", u.CPU.Seconds()), kit.Round(u.CPU / time.Duration(o.n)).String(), fmt.Sprintf("%.3f", u.Cores)})
	}
	kit.Table(os.Stdout, rows)
	queues(before, after, o.n)
	apiWrites(before[0], after[0], o.n)
	if err := auditReport(l.auditLog, runs); err != nil {
		return err
	}
	tgtReport(l.tgt, runs)
	return cloneTimes(l.imagePath, o)
}

// start brings up the API server, tgtd (behind the timing proxy), the
// manager and the storage agent, the storage Node and the Image.
func start(ctx context.Context, o options) (*lab, error) {
	l := &lab{}
	if o.out != "" {
		check(os.MkdirAll(o.out, 0o755))
		l.dir = o.out
	} else {
		l.dir = tt.TempDir()
	}
	env, cfg, err := testenv.Start(func(e *envtest.Environment) {
		e.ControlPlaneStopTimeout = 2 * time.Second
		e.ControlPlaneStartTimeout = 3 * time.Minute // a busy machine
		var aerr error
		l.auditLog, aerr = kit.Audit(e, l.dir, true)
		check(aerr)
	})
	if err != nil {
		return nil, err
	}
	tt.Cleanup(func() { _ = env.Stop() })
	l.env, l.cfg = env, cfg
	if l.c, err = client.New(cfg, client.Options{Scheme: scheme.New()}); err != nil {
		return nil, err
	}
	kubeconfig := func(user string) string {
		u, err := env.AddUser(envtest.User{Name: user, Groups: []string{"system:masters"}}, nil)
		check(err)
		kc, err := u.KubeConfig()
		check(err)
		p := filepath.Join(l.dir, user+".kubeconfig")
		check(os.WriteFile(p, kc, 0o600))
		return p
	}

	data := testfs.XFS(tt, o.dataMiB<<20)
	imageRoot := filepath.Join(tt.TempDir(), "images")
	check(os.MkdirAll(imageRoot, 0o755))
	l.imagePath = filepath.Join(imageRoot, "os.raw")
	check(writeImage(l.imagePath, o.imageMiB<<20))

	tgtd := testtgt.Start(tt)
	proxyDir := filepath.Join(l.dir, "tgt")
	check(os.MkdirAll(proxyDir, 0o700))
	if l.tgt, err = newTGTProxy(filepath.Join(proxyDir, "socket."+strconv.Itoa(tgtd.ControlPort)), testtgt.SocketPath(tgtd.ControlPort)); err != nil {
		return nil, err
	}
	tt.Cleanup(l.tgt.Close)

	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: nodeName, Labels: map[string]string{bootv1.StorageNodeLabel: "true"}}}
	if err := l.c.Create(ctx, node); err != nil {
		return nil, err
	}
	node.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: "127.0.0.1"}}
	if err := l.c.Status().Update(ctx, node); err != nil {
		return nil, err
	}
	if err := l.c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}); err != nil {
		return nil, err
	}

	probe, mport := freePort(), freePort()
	l.mgr = exec.Command(filepath.Join(o.bin, "manager"), "--kubeconfig", kubeconfig("ggnet-manager"), "--leader-elect=false",
		fmt.Sprintf("--metrics-bind-address=127.0.0.1:%d", mport), fmt.Sprintf("--health-probe-bind-address=127.0.0.1:%d", probe),
		fmt.Sprintf("--max-concurrent-reconciles=%d", o.concurrency))
	l.mgr.Env = os.Environ()
	if o.memLimit != "" {
		l.mgr.Env = append(l.mgr.Env, "GOMEMLIMIT="+o.memLimit)
	}
	if err := startLogged(l.mgr, filepath.Join(l.dir, "manager.log")); err != nil {
		return nil, err
	}
	l.mgrMetrics = fmt.Sprintf("http://127.0.0.1:%d/metrics", mport)
	if _, err := testbin.WaitHTTP(fmt.Sprintf("http://127.0.0.1:%d/readyz", probe), 60*time.Second); err != nil {
		return nil, fmt.Errorf("manager: %w", err)
	}

	aport := freePort()
	l.agent = exec.Command(filepath.Join(o.bin, "bootagent"), "--storage", "--kubeconfig", kubeconfig("ggnet-storage"),
		"--node-name", nodeName, "--data-dir", data, "--reserve-mib", "16",
		"--tgt-control-port", strconv.Itoa(tgtd.ControlPort), "--portal", tgtd.Portal,
		"--image-path-root", imageRoot, fmt.Sprintf("--storage-metrics-listen=127.0.0.1:%d", aport))
	// The agent speaks to tgtd through the proxy: $TGT_IPC_SOCKET is the
	// socket path's prefix.
	l.agent.Env = append(os.Environ(), "TGT_IPC_SOCKET="+filepath.Join(proxyDir, "socket"))
	if err := startLogged(l.agent, filepath.Join(l.dir, "bootagent.log")); err != nil {
		return nil, err
	}
	l.agMetrics = fmt.Sprintf("http://127.0.0.1:%d/metrics", aport)
	if _, err := testbin.WaitHTTP(fmt.Sprintf("http://127.0.0.1:%d/readyz", aport), 60*time.Second); err != nil {
		return nil, fmt.Errorf("storage agent: %w", err)
	}

	img := &bootv1.Image{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "os"},
		Spec: bootv1.ImageSpec{Source: bootv1.ImageSource{Path: &bootv1.PathSource{Path: l.imagePath}}, Format: bootv1.ImageFormatRaw}}
	if err := l.c.Create(ctx, img); err != nil {
		return nil, err
	}
	deadline := time.Now().Add(2 * time.Minute)
	for {
		if err := l.c.Get(ctx, client.ObjectKeyFromObject(img), img); err != nil {
			return nil, err
		}
		if img.Status.ReadyReplicas > 0 {
			break
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("the Image is not Ready on %s after 2 minutes; see %s", nodeName, l.dir)
		}
		time.Sleep(200 * time.Millisecond)
	}
	fmt.Printf("manager %s (--max-concurrent-reconciles=%d, GOMEMLIMIT=%q), storage agent %s, tgtd on %s, image %d MiB on XFS (reflink)\n",
		l.mgr.Path, o.concurrency, o.memLimit, l.agent.Path, tgtd.Portal, o.imageMiB)
	return l, nil
}

func startLogged(cmd *exec.Cmd, path string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		return err
	}
	tt.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait(); f.Close() })
	return nil
}

// writeImage makes a raw image of size bytes: 64 MiB of data (several
// extents, as a real image has), the rest a hole.
func writeImage(path string, size int64) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	buf := make([]byte, 1<<20)
	for i := range buf {
		buf[i] = byte(i*7 + i>>9)
	}
	for i := int64(0); i < 64 && i<<20 < size; i++ {
		if _, err := f.WriteAt(buf, i<<21); err != nil { // every other MiB
			return err
		}
	}
	return f.Truncate(size)
}

// Milestones of a session, in order, as the watch shows them.
// The storage finalizer is no step of its own: the manager adds it with its
// own in its first metadata write.
var createSteps = []string{"created", "finalizer", "scheduled", "credentials", "storageReady", "ready"}
var stopSteps = []string{"stopping", "released", "stopped"}

var stepWhat = map[string]string{
	"created":      "the watch shows the new session (client's create call to its ADDED event)",
	"finalizer":    "manager: finalizers boot.ggnet.io/session and boot.ggnet.io/storage, labels (one merge patch)",
	"scheduled":    "manager: status.storageNode, Scheduled (status patch)",
	"credentials":  "manager: Secret made; status.target, chapSecretRef, initiatorIQN (0: the same status patch as scheduled)",
	"storageReady": "storage agent: overlay + target made; StorageReady=True (apply)",
	"ready":        "manager: Ready=True, script, timeline.ready (status patch)",
	"stopping":     "manager: phase Stopping (status patch)",
	"released":     "storage agent: target and overlay removed; finalizer dropped (JSON patch)",
	"stopped":      "manager: phase Stopped (status patch)",
}

// watcher records when each milestone of each session is first seen.
type watcher struct {
	mu    sync.Mutex
	seen  map[string]map[string]time.Time
	wake  map[string]chan struct{}
	gone  map[string]time.Time
	added map[string]time.Time
}

func newWatcher(ctx context.Context, cfg *rest.Config) (*watcher, error) {
	w := &watcher{seen: map[string]map[string]time.Time{}, wake: map[string]chan struct{}{}, gone: map[string]time.Time{}, added: map[string]time.Time{}}
	c, err := cache.New(cfg, cache.Options{Scheme: scheme.New()})
	if err != nil {
		return nil, err
	}
	inf, err := c.GetInformer(ctx, &bootv1.BootSession{})
	if err != nil {
		return nil, err
	}
	if _, err := inf.AddEventHandler(toolscache.ResourceEventHandlerFuncs{
		AddFunc:    func(o any) { w.observe(o, false) },
		UpdateFunc: func(_, o any) { w.observe(o, false) },
		DeleteFunc: func(o any) {
			if d, ok := o.(toolscache.DeletedFinalStateUnknown); ok {
				o = d.Obj
			}
			w.observe(o, true)
		},
	}); err != nil {
		return nil, err
	}
	go func() { _ = c.Start(ctx) }()
	c.WaitForCacheSync(ctx)
	return w, nil
}

func (w *watcher) observe(o any, deleted bool) {
	s, ok := o.(*bootv1.BootSession)
	if !ok {
		return
	}
	now := time.Now()
	w.mu.Lock()
	defer w.mu.Unlock()
	m := w.seen[s.Name]
	if m == nil {
		m = map[string]time.Time{}
		w.seen[s.Name] = m
	}
	mark := func(step string, ok bool) {
		if _, seen := m[step]; ok && !seen {
			m[step] = now
		}
	}
	mark("created", true)
	mark("finalizer", controllerutil.ContainsFinalizer(s, bootv1.SessionFinalizer))
	mark("scheduled", s.Status.StorageNode != "")
	mark("credentials", s.Status.Target != nil && s.Status.CHAPSecretRef != nil)
	mark("storageReady", meta.IsStatusConditionTrue(s.Status.Conditions, bootv1.StorageReadyCondition))
	mark("ready", meta.IsStatusConditionTrue(s.Status.Conditions, bootv1.ReadyCondition))
	mark("stopping", s.Status.Phase == bootv1.SessionStopping)
	mark("released", s.Spec.Stopped && !controllerutil.ContainsFinalizer(s, bootv1.StorageFinalizer))
	mark("stopped", s.Status.Phase == bootv1.SessionStopped)
	mark("gone", deleted)
	if ch := w.wake[s.Name]; ch != nil {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}

// wait waits until step of session name was seen, and returns when.
func (w *watcher) wait(name, step string, timeout time.Duration) (time.Time, error) {
	w.mu.Lock()
	ch := w.wake[name]
	if ch == nil {
		ch = make(chan struct{}, 1)
		w.wake[name] = ch
	}
	w.mu.Unlock()
	deadline := time.After(timeout)
	for {
		w.mu.Lock()
		t, ok := w.seen[name][step]
		w.mu.Unlock()
		if ok {
			return t, nil
		}
		select {
		case <-ch:
		case <-time.After(50 * time.Millisecond):
		case <-deadline:
			w.mu.Lock()
			var got []string
			for s := range w.seen[name] {
				got = append(got, s)
			}
			w.mu.Unlock()
			sort.Strings(got)
			return time.Time{}, fmt.Errorf("no %s within %s (seen: %s)", step, timeout, strings.Join(got, ", "))
		}
	}
}

// sessionRun is one session's times (client clock).
type sessionRun struct {
	name, machine  string
	create, ready  time.Time
	stop, stopped  time.Time
	deleteAt, gone time.Time
	steps          map[string]time.Time
}

func oneSession(ctx context.Context, l *lab, w *watcher, k int, timeout, hold time.Duration) (*sessionRun, error) {
	r := &sessionRun{name: fmt.Sprintf("s-%03d", k), machine: fmt.Sprintf("pc-%03d", k)}
	s := &bootv1.BootSession{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: r.name}, Spec: bootv1.BootSessionSpec{
		MachineRef: bootv1.LocalObjectReference{Name: r.machine}, ImageRef: bootv1.LocalObjectReference{Name: "os"}}}
	r.create = time.Now()
	if err := l.c.Create(ctx, s); err != nil {
		return nil, err
	}
	var err error
	if r.ready, err = w.wait(r.name, "ready", timeout); err != nil {
		return nil, err
	}
	time.Sleep(hold)
	r.stop = time.Now()
	if err := l.c.Patch(ctx, s, client.RawPatch(types.MergePatchType, []byte(`{"spec":{"stopped":true}}`))); err != nil {
		return nil, err
	}
	if r.stopped, err = w.wait(r.name, "stopped", timeout); err != nil {
		return nil, err
	}
	r.deleteAt = time.Now()
	if err := l.c.Delete(ctx, s); err != nil {
		return nil, err
	}
	if r.gone, err = w.wait(r.name, "gone", timeout); err != nil {
		return nil, err
	}
	w.mu.Lock()
	r.steps = w.seen[r.name]
	w.mu.Unlock()
	return r, nil
}

func report(o options, l *lab, w *watcher, runs []*sessionRun) {
	var cr, st, del []time.Duration
	for _, r := range runs {
		cr = append(cr, r.ready.Sub(r.create))
		st = append(st, r.stopped.Sub(r.stop))
		del = append(del, r.gone.Sub(r.deleteAt))
	}
	fmt.Printf("%d sessions one after another (after %d warm-up), client clock, call to watch event:\n", len(runs), o.warmup)
	rows := [][]string{{"", "p50", "p99", "max", "target"}}
	line := func(name string, d []time.Duration, target string) {
		p := kit.NewPercentiles(d)
		rows = append(rows, []string{name, kit.Round(p.At(0.5)).String(), kit.Round(p.At(0.99)).String(), kit.Round(p[len(p)-1]).String(), target})
	}
	line("create → Ready", cr, "p99 < 200ms")
	line("stop → Stopped", st, "p99 < 500ms")
	line("delete → gone (after Stopped)", del, "")
	kit.Table(os.Stdout, rows)

	fmt.Printf("\nwhere the time goes, step by step (time from the previous step's watch event to this one's):\n")
	phase := func(title string, start func(*sessionRun) time.Time, steps []string) {
		rows := [][]string{{title, "p50", "p99", "max", "what"}}
		for i, step := range steps {
			var d []time.Duration
			for _, r := range runs {
				prev := start(r)
				if i > 0 {
					prev = r.steps[steps[i-1]]
				}
				if t, ok := r.steps[step]; ok && !prev.IsZero() {
					d = append(d, t.Sub(prev))
				}
			}
			if len(d) == 0 {
				continue
			}
			p := kit.NewPercentiles(d)
			rows = append(rows, []string{step, kit.Round(p.At(0.5)).String(), kit.Round(p.At(0.99)).String(), kit.Round(p[len(p)-1]).String(), stepWhat[step]})
		}
		kit.Table(os.Stdout, rows)
	}
	phase("create", func(r *sessionRun) time.Time { return r.create }, createSteps)
	fmt.Println()
	phase("stop", func(r *sessionRun) time.Time { return r.stop }, stopSteps)
	if o.out != "" {
		b, _ := json.MarshalIndent(runs, "", " ")
		_ = os.WriteFile(filepath.Join(l.dir, "runs.json"), b, 0o644)
	}
}

// MarshalJSON writes a run's times relative to its create, in ms.
func (r *sessionRun) MarshalJSON() ([]byte, error) {
	ms := func(t time.Time) float64 { return float64(t.Sub(r.create).Microseconds()) / 1000 }
	steps := map[string]float64{}
	for k, t := range r.steps {
		steps[k] = ms(t)
	}
	return json.Marshal(map[string]any{"name": r.name, "ready": ms(r.ready), "stop": ms(r.stop), "stopped": ms(r.stopped),
		"delete": ms(r.deleteAt), "gone": ms(r.gone), "steps": steps})
}

// queues prints the manager's and the agent's workqueue and reconcile
// histograms over the measured sessions.
func queues(before, after [3]kit.Metrics, n int) {
	fmt.Printf("\ncontrollers over the measured sessions (Prometheus histograms; p50/p99 interpolated in their buckets):\n")
	for _, c := range []struct {
		who, name string
		i         int
	}{{"manager", "bootsession", 1}, {"manager", "machine", 1}, {"storage agent", "storage-sessions", 2}} {
		b, a := before[c.i], after[c.i]
		rec := kit.CounterDelta(b, a, "controller_runtime_reconcile_total", map[string]string{"controller": c.name})
		fmt.Printf("  %s, %s: %.0f reconciles (%.1f per session, %.0f errors, %.0f requeues)\n", c.who, c.name, rec, rec/float64(n),
			kit.CounterDelta(b, a, "controller_runtime_reconcile_total", map[string]string{"controller": c.name, "result": "error"}),
			kit.CounterDelta(b, a, "controller_runtime_reconcile_total", map[string]string{"controller": c.name, "result": "requeue"}))
		fmt.Printf("    waiting in the queue: %s\n", kit.HistDelta(b, a, "workqueue_queue_duration_seconds", map[string]string{"name": c.name}))
		fmt.Printf("    reconcile:            %s\n", kit.HistDelta(b, a, "controller_runtime_reconcile_time_seconds", map[string]string{"controller": c.name}))
	}
	for _, c := range []struct {
		who string
		i   int
	}{{"manager", 1}, {"storage agent", 2}} {
		for _, verb := range []string{"GET", "POST", "PUT", "PATCH"} {
			h := kit.HistDelta(before[c.i], after[c.i], "rest_client_request_duration_seconds", map[string]string{"verb": verb})
			if h.Count > 0 {
				fmt.Printf("  %s's API %s requests: %s\n", c.who, verb, h)
			}
		}
	}
}

func apiWrites(before, after kit.Metrics, n int) {
	writes := kit.APIWrites(before, after)
	fmt.Printf("\nAPI writes per session (kube-apiserver's apiserver_request_total over the measured sessions):\n")
	rows := [][]string{{"per session", "verb resource"}}
	var sum float64
	for _, k := range kit.SortedKeys(writes) {
		sum += writes[k]
		rows = append(rows, []string{fmt.Sprintf("%.2f", writes[k]/float64(n)), k.String()})
	}
	rows = append(rows, []string{fmt.Sprintf("%.2f", sum/float64(n)), "total, the benchmark's own create, stop patch and delete included (3)"})
	kit.Table(os.Stdout, rows)
}

// auditReport lists, from the audit log, every write of a session's life in
// the order they happen, with who wrote what and when (median over the
// sessions, from the create call's arrival or the stop patch's).
func auditReport(path string, runs []*sessionRun) error {
	evs, err := kit.ReadAudit(path)
	if err != nil {
		return err
	}
	byName := map[string]*sessionRun{}
	for _, r := range runs {
		byName[r.name] = r
	}
	// Which session an event concerns.
	owner := func(e kit.AuditEvent) *sessionRun {
		switch e.Resource {
		case "bootsessions":
			return byName[e.Name]
		case "secrets":
			return byName[strings.TrimSuffix(e.Name, "-chap")]
		case "events":
			n, _, _ := strings.Cut(e.Name, ".")
			if r := byName[n]; r != nil {
				return r
			}
		}
		return nil
	}
	machineOf := map[string]*sessionRun{}
	for _, r := range runs {
		machineOf[r.machine] = r
	}
	type key struct{ phase, who, what, fields string }
	type agg struct {
		at, took []time.Duration
		order    float64
	}
	stats := map[key]*agg{}
	perSession := map[string]map[string]int{}
	base := map[*sessionRun][2]time.Time{}
	for _, e := range evs {
		r := owner(e)
		if r == nil && e.Resource == "machines" {
			r = machineOf[e.Name]
		}
		if r == nil {
			continue
		}
		b := base[r]
		if e.User == "admin" && e.Resource == "bootsessions" {
			switch e.Verb {
			case "create":
				b[0] = e.Received
			case "patch":
				b[1] = e.Received
			}
			base[r] = b
		}
	}
	for _, e := range evs {
		r := owner(e)
		if r == nil && e.Resource == "machines" {
			r = machineOf[e.Name]
		}
		if r == nil || e.User == "admin" {
			continue
		}
		b := base[r]
		ph, t0 := "create", b[0]
		if !b[1].IsZero() && !e.Received.Before(b[1]) {
			ph, t0 = "stop", b[1]
		}
		if !r.deleteAt.IsZero() && e.Received.After(r.deleteAt) {
			ph = "delete"
		}
		if t0.IsZero() || e.Received.Before(b[0]) {
			continue // the Machine's own writes before the session
		}
		k := key{ph, e.User, e.What(), fields(e)}
		a := stats[k]
		if a == nil {
			a = &agg{}
			stats[k] = a
		}
		a.at = append(a.at, e.Done.Sub(t0))
		a.took = append(a.took, e.Done.Sub(e.Received))
		if perSession[ph] == nil {
			perSession[ph] = map[string]int{}
		}
		perSession[ph][e.User+" "+e.What()]++
	}
	keys := make([]key, 0, len(stats))
	for k, a := range stats {
		a.order = float64(kit.NewPercentiles(a.at).At(0.5))
		keys = append(keys, k)
	}
	order := map[string]int{"create": 0, "stop": 1, "delete": 2}
	sort.Slice(keys, func(i, j int) bool {
		if keys[i].phase != keys[j].phase {
			return order[keys[i].phase] < order[keys[j].phase]
		}
		return stats[keys[i]].order < stats[keys[j]].order
	})
	fmt.Printf("\nevery write of a session's life (kube-apiserver audit log), in order: answered at (p50/p99 after the create's or stop's arrival), how long the API server took (p50), writes per session:\n")
	rows := [][]string{{"phase", "at p50", "at p99", "API p50", "per session", "writer", "write", "what it carries"}}
	for _, k := range keys {
		a := stats[k]
		at := kit.NewPercentiles(a.at)
		rows = append(rows, []string{k.phase, kit.Round(at.At(0.5)).String(), kit.Round(at.At(0.99)).String(),
			kit.Round(kit.NewPercentiles(a.took).At(0.5)).String(), fmt.Sprintf("%.2f", float64(len(a.at))/float64(len(runs))), k.who, k.what, k.fields})
	}
	kit.Table(os.Stdout, rows)
	for _, ph := range []string{"create", "stop", "delete"} {
		total := 0
		for _, v := range perSession[ph] {
			total += v
		}
		fmt.Printf("  %s: %.2f writes per session besides the benchmark's own\n", ph, float64(total)/float64(len(runs)))
	}
	return nil
}

// fields summarizes what a write carries: for GGnet's resources the fields
// of its body (condition types and statuses, the phase, finalizers), for
// others nothing (their bodies are not logged: Secrets).
func fields(e kit.AuditEvent) string {
	if len(e.Body) == 0 {
		return ""
	}
	var body map[string]any
	if json.Unmarshal(e.Body, &body) != nil {
		return ""
	}
	var out []string
	if e.Verb == "update" {
		if md, ok := body["metadata"].(map[string]any); ok {
			var f []string
			for _, x := range asList(md["finalizers"]) {
				f = append(f, fmt.Sprint(x))
			}
			return "finalizers [" + strings.Join(f, " ") + "]"
		}
		return "whole object"
	}
	if md, ok := body["metadata"].(map[string]any); ok {
		for k := range md {
			if k != "resourceVersion" && k != "name" && k != "namespace" {
				out = append(out, "metadata."+k)
			}
		}
	}
	if st, ok := body["status"].(map[string]any); ok {
		for k, v := range st {
			switch k {
			case "conditions":
				var cs []string
				for _, c := range asList(v) {
					if m, ok := c.(map[string]any); ok {
						cs = append(cs, fmt.Sprintf("%v=%v/%v", m["type"], m["status"], m["reason"]))
					}
				}
				out = append(out, "conditions["+strings.Join(cs, " ")+"]")
			case "phase":
				out = append(out, fmt.Sprintf("phase=%v", v))
			case "timeline":
				var ks []string
				if m, ok := v.(map[string]any); ok {
					for tk := range m {
						ks = append(ks, tk)
					}
				}
				sort.Strings(ks)
				out = append(out, "timeline{"+strings.Join(ks, ",")+"}")
			case "lastBoot":
				var ks []string
				if m, ok := v.(map[string]any); ok {
					for tk := range m {
						ks = append(ks, tk)
					}
				}
				sort.Strings(ks)
				out = append(out, "lastBoot{"+strings.Join(ks, ",")+"}")
			default:
				out = append(out, k)
			}
		}
	}
	sort.Strings(out)
	return strings.Join(out, " ")
}

func asList(v any) []any {
	l, _ := v.([]any)
	return l
}

// tgtReport prints the storage agent's requests to tgtd in each session's
// create and stop (the login watcher's samples, target show, included).
func tgtReport(p *tgtProxy, runs []*sessionRun) {
	type agg struct {
		n    int
		took []time.Duration
	}
	for _, ph := range []string{"create", "stop"} {
		byOp := map[string]*agg{}
		var perSession []time.Duration
		for _, r := range runs {
			from, to := r.create, r.ready
			if ph == "stop" {
				from, to = r.stop, r.stopped
			}
			var sum time.Duration
			for _, c := range p.calls(from, to) {
				a := byOp[c.What]
				if a == nil {
					a = &agg{}
					byOp[c.What] = a
				}
				a.n++
				a.took = append(a.took, c.Took)
				sum += c.Took
			}
			perSession = append(perSession, sum)
		}
		fmt.Printf("\nstorage agent → tgtd (management socket, timed by a proxy) during %s; per session in all: %s\n", ph, kit.NewPercentiles(perSession))
		ops := make([]string, 0, len(byOp))
		for k := range byOp {
			ops = append(ops, k)
		}
		slices.Sort(ops)
		rows := [][]string{{"request", "per session", "p50", "p99", "max"}}
		for _, op := range ops {
			a := byOp[op]
			pc := kit.NewPercentiles(a.took)
			rows = append(rows, []string{op, fmt.Sprintf("%.2f", float64(a.n)/float64(len(runs))), kit.Round(pc.At(0.5)).String(),
				kit.Round(pc.At(0.99)).String(), kit.Round(pc[len(pc)-1]).String()})
		}
		kit.Table(os.Stdout, rows)
	}
}

// cloneTimes times the reflink clone of the same image (and its removal),
// what the storage agent does for each Discard session, on an XFS of its
// own (the agent owns its data directory).
func cloneTimes(image string, o options) error {
	data := testfs.XFS(tt, (o.imageMiB+512)<<20)
	store, err := overlay.Open(data, 0)
	if err != nil {
		return err
	}
	replica := filepath.Join(data, "replica.raw")
	if out, err := exec.Command("cp", "--reflink=never", "--sparse=always", image, replica).CombinedOutput(); err != nil {
		return fmt.Errorf("cp: %v %s", err, out)
	}
	var mk, rm []time.Duration
	for i := range o.n {
		p := store.Path(ns, fmt.Sprintf("s-%03d", i))
		t := time.Now()
		if _, err := store.Ensure(p, replica); err != nil {
			return err
		}
		mk = append(mk, time.Since(t))
		t = time.Now()
		if err := store.Remove(p); err != nil {
			return err
		}
		rm = append(rm, time.Since(t))
	}
	fmt.Printf("\noverlay (reflink clone of the %d MiB image, overlay.Store as the agent uses it), %d times: make %s; remove %s\n",
		o.imageMiB, o.n, kit.NewPercentiles(mk), kit.NewPercentiles(rm))
	return nil
}

// quiesce waits until kube-apiserver served no write for 2 s (its own
// lease renewals aside); after 2 minutes it says what is still written and
// goes on.
func quiesce(hc *http.Client, url string) error {
	prev, err := kit.Scrape(hc, url)
	if err != nil {
		return err
	}
	for i := 0; ; i++ {
		time.Sleep(2 * time.Second)
		cur, err := kit.Scrape(hc, url)
		if err != nil {
			return err
		}
		w := kit.APIWrites(prev, cur)
		delete(w, kit.WriteKey{Verb: "update", Resource: "leases"})
		if len(w) == 0 {
			return nil
		}
		if i == 60 {
			fmt.Printf("warning: the API server still serves writes 2 minutes later (in the last 2 s: %v); going on\n", w)
			return nil
		}
		prev = cur
	}
}

func first(pids []int) int {
	if len(pids) == 0 {
		return -1
	}
	return pids[0]
}
