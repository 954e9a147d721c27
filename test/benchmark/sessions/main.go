// Command sessions measures the controllers at scale against a real
// kube-apiserver: N Machines and N BootSessions created at once, a stand-in
// storage agent answering at once (internal/standin: the real agent's write,
// StorageReady, without tgtd; the manager adds the storage finalizer, and the
// stand-in, like the agent, adds it only to a session that lacks it), the
// manager binary as
// its own process with the chart's defaults (charts/ggnet/values.yaml:
// --max-concurrent-reconciles and GOMEMLIMIT). It reports how long until all
// are Ready, create-to-Ready p50/p99 (client clock: create call to the
// watch event showing Ready), the API writes per session by verb and
// resource (kube-apiserver's apiserver_request_total before and after; with
// -audit also by writer, from the audit log), the CPU used by
// kube-apiserver, etcd and the manager during the storm, the manager's
// workqueue and its RSS, and, when the manager has --pprof-bind-address, its
// CPU profile through the storm; kube-apiserver's CPU profile over the same
// window, summed up by what it spends the CPU on, its watches by resource and
// the watch events it sent per session.
//
//	go run ./test/benchmark/sessions -n 1000 -manager bin/manager
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	toolscache "k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/retry"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	bootv1 "github.com/ggnet/ggnet/api/v1alpha1"
	"github.com/ggnet/ggnet/internal/scheme"
	"github.com/ggnet/ggnet/internal/standin"
	"github.com/ggnet/ggnet/internal/testbin"
	"github.com/ggnet/ggnet/internal/testenv"
	"github.com/ggnet/ggnet/test/benchmark/sessions/kit"
)

type options struct {
	n            int
	manager      string
	memLimit     string
	concurrency  int
	audit        bool
	pprofSeconds int
	apiPprof     bool
	out          string
	timeout      time.Duration
}

func main() {
	ctrl.SetLogger(logr.Discard())
	def, err := kit.ChartManagerDefaults()
	if err != nil {
		fmt.Fprintln(os.Stderr, "sessions:", err)
		os.Exit(1)
	}
	var o options
	flag.IntVar(&o.n, "n", 1000, "Machines and BootSessions.")
	flag.StringVar(&o.manager, "manager", "bin/manager", "Manager binary.")
	flag.StringVar(&o.memLimit, "manager-gomemlimit", def.GoMemLimit, "GOMEMLIMIT of the manager process (default: the chart's manager.goMemLimit; empty: none).")
	flag.IntVar(&o.concurrency, "max-concurrent-reconciles", def.MaxConcurrentReconciles, "The manager's --max-concurrent-reconciles (default: the chart's).")
	flag.BoolVar(&o.audit, "audit", false, "Also write kube-apiserver's audit log of writes and count the writes per session by writer (costs the API server some CPU).")
	flag.IntVar(&o.pprofSeconds, "pprof-seconds", 20, "Length of the CPU profiles from the first create: the manager's (when it has --pprof-bind-address) and kube-apiserver's; 0: none.")
	flag.BoolVar(&o.apiPprof, "apiserver-pprof", true, "Also take kube-apiserver's CPU profile over the same -pprof-seconds and print where its CPU goes.")
	flag.StringVar(&o.out, "out", "", "Directory for the profiles, the manager's log and the audit log (default: a temporary one, removed).")
	flag.DurationVar(&o.timeout, "timeout", 10*time.Minute, "Give up when not all sessions are Ready after this long.")
	flag.Parse()
	if err := run(o); err != nil {
		fmt.Fprintln(os.Stderr, "sessions:", err)
		os.Exit(1)
	}
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// hasFlag reports whether a binary's -h lists a flag.
func hasFlag(bin, name string) bool {
	out, _ := exec.Command(bin, "-h").CombinedOutput()
	return strings.Contains(string(out), "-"+name)
}

func run(o options) error {
	n := o.n
	dir := o.out
	if dir == "" {
		d, err := os.MkdirTemp("", "sessions")
		if err != nil {
			return err
		}
		defer os.RemoveAll(d)
		dir = d
	} else if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	var auditLog string
	env, cfg, err := testenv.Start(func(e *envtest.Environment) {
		e.ControlPlaneStopTimeout = time.Second
		e.ControlPlaneStartTimeout = 3 * time.Minute // a busy machine
		if o.audit {
			auditLog, _ = kit.Audit(e, dir, false)
		}
	})
	if err != nil {
		return err
	}
	defer func() { _ = env.Stop() }()
	cfg.QPS, cfg.Burst = 1000, 2000
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	c, err := client.New(cfg, client.Options{Scheme: scheme.New()})
	if err != nil {
		return err
	}
	hc, err := rest.HTTPClientFor(cfg)
	if err != nil {
		return err
	}
	apiMetrics := strings.TrimRight(cfg.Host, "/") + "/metrics"

	// The manager, as in production: its own process.
	user, err := env.AddUser(envtest.User{Name: "ggnet-manager", Groups: []string{"system:masters"}}, nil)
	if err != nil {
		return err
	}
	kc, _ := user.KubeConfig()
	kubeconfig := filepath.Join(dir, "kubeconfig")
	if err := os.WriteFile(kubeconfig, kc, 0o600); err != nil {
		return err
	}
	probe, err := freePort()
	if err != nil {
		return err
	}
	mport, err := freePort()
	if err != nil {
		return err
	}
	args := []string{"--kubeconfig", kubeconfig, "--leader-elect=false",
		fmt.Sprintf("--metrics-bind-address=127.0.0.1:%d", mport), fmt.Sprintf("--health-probe-bind-address=127.0.0.1:%d", probe),
		fmt.Sprintf("--max-concurrent-reconciles=%d", o.concurrency)}
	pprofURL := ""
	if hasFlag(o.manager, "pprof-bind-address") {
		pp, err := freePort()
		if err != nil {
			return err
		}
		args = append(args, fmt.Sprintf("--pprof-bind-address=127.0.0.1:%d", pp))
		pprofURL = fmt.Sprintf("http://127.0.0.1:%d/debug/pprof", pp)
	}
	mgrCmd := exec.CommandContext(ctx, o.manager, args...)
	mgrCmd.Env = os.Environ()
	if o.memLimit != "" {
		mgrCmd.Env = append(mgrCmd.Env, "GOMEMLIMIT="+o.memLimit)
	}
	logf, err := os.Create(filepath.Join(dir, "manager.log"))
	if err != nil {
		return err
	}
	defer logf.Close()
	mgrCmd.Stdout, mgrCmd.Stderr = logf, logf
	if err := mgrCmd.Start(); err != nil {
		return err
	}
	defer func() { cancel(); _ = mgrCmd.Wait() }()
	if _, err := testbin.WaitHTTP(fmt.Sprintf("http://127.0.0.1:%d/readyz", probe), 60*time.Second); err != nil {
		return err
	}
	mgrMetrics := fmt.Sprintf("http://127.0.0.1:%d/metrics", mport)
	fmt.Printf("manager %s: --max-concurrent-reconciles=%d GOMEMLIMIT=%q (the chart's defaults unless set); pprof: %v\n",
		o.manager, o.concurrency, o.memLimit, pprofURL != "")

	// The stand-in storage agent, in this process, with the real agent's
	// concurrency (4 session reconciles).
	// Its own user, so that the audit log tells its writes apart.
	saUser, err := env.AddUser(envtest.User{Name: "ggnet-storage-standin", Groups: []string{"system:masters"}}, nil)
	if err != nil {
		return err
	}
	saCfg := saUser.Config()
	saCfg.QPS, saCfg.Burst = 1000, 2000
	sa, err := ctrl.NewManager(saCfg, ctrl.Options{Scheme: scheme.New(), Metrics: metricsserver.Options{BindAddress: "0"}})
	if err != nil {
		return err
	}
	if err := (&standin.Storage{Client: sa.GetClient(), Reader: sa.GetAPIReader(), Workers: 4}).SetupWithManager(sa); err != nil {
		return err
	}
	go func() { _ = sa.Start(ctx) }()

	// The cluster: one storage node with the image.
	ns := "bench"
	if err := c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}); err != nil {
		return err
	}
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "storage-1", Labels: map[string]string{bootv1.StorageNodeLabel: "true"}}}
	if err := c.Create(ctx, node); err != nil {
		return err
	}
	node.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: "10.20.0.5"}}
	if err := c.Status().Update(ctx, node); err != nil {
		return err
	}
	img := &bootv1.Image{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "win11"}, Spec: bootv1.ImageSpec{
		Source: bootv1.ImageSource{Path: &bootv1.PathSource{Path: "/srv/win11.raw"}}}}
	if err := c.Create(ctx, img); err != nil {
		return err
	}
	if err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		if err := c.Get(ctx, client.ObjectKeyFromObject(img), img); err != nil {
			return err
		}
		img.Status.Replicas = []bootv1.ImageReplica{{Node: "storage-1", State: bootv1.ReplicaReady, SizeBytes: 10 << 30}}
		return c.Status().Update(ctx, img)
	}); err != nil {
		return err
	}
	t0 := time.Now()
	if err := testbin.Parallel(n, 32, func(k int) error {
		return c.Create(ctx, &bootv1.Machine{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: fmt.Sprintf("seat-%05d", k)},
			Spec: bootv1.MachineSpec{MAC: fmt.Sprintf("00:0c:01:%02x:%02x:%02x", k>>16&0xff, k>>8&0xff, k&0xff),
				IPv4: &bootv1.IPv4Reservation{Address: fmt.Sprintf("10.%d.%d.%d", 100+k/62500, k/250%250, k%250+2), PrefixLength: 8}}})
	}); err != nil {
		return err
	}
	fmt.Printf("created %d Machines in %s\n", n, time.Since(t0).Round(time.Millisecond))

	// Watch for Ready with a cache of our own.
	wc, err := cache.New(cfg, cache.Options{Scheme: scheme.New(), DefaultTransform: cache.TransformStripManagedFields()})
	if err != nil {
		return err
	}
	inf, err := wc.GetInformer(ctx, &bootv1.BootSession{})
	if err != nil {
		return err
	}
	var (
		mu      sync.Mutex
		created = map[string]time.Time{}
		ready   = map[string]time.Duration{}
		allDone = make(chan struct{})
	)
	onEvent := func(o any) {
		s, ok := o.(*bootv1.BootSession)
		if !ok || !meta.IsStatusConditionTrue(s.Status.Conditions, bootv1.ReadyCondition) {
			return
		}
		now := time.Now()
		mu.Lock()
		defer mu.Unlock()
		if _, seen := ready[s.Name]; seen {
			return
		}
		if t, ok := created[s.Name]; ok {
			ready[s.Name] = now.Sub(t)
		} else {
			ready[s.Name] = -1
		}
		if len(ready) == n {
			close(allDone)
		}
	}
	if _, err := inf.AddEventHandler(toolscache.ResourceEventHandlerFuncs{AddFunc: onEvent, UpdateFunc: func(_, o any) { onEvent(o) }}); err != nil {
		return err
	}
	go func() { _ = wc.Start(ctx) }()
	wc.WaitForCacheSync(ctx)

	// The Machines' own writes (finalizers, status) are done before the
	// storm; the counts below are the sessions' alone.
	if err := quiesce(hc, apiMetrics, 2*time.Second, 2*time.Minute+time.Duration(n)*30*time.Millisecond); err != nil {
		return err
	}
	apiBefore, err := kit.Scrape(hc, apiMetrics)
	if err != nil {
		return fmt.Errorf("kube-apiserver /metrics: %w", err)
	}
	mgrBefore, err := kit.Scrape(http.DefaultClient, mgrMetrics)
	if err != nil {
		return fmt.Errorf("manager /metrics: %w", err)
	}
	procs := []string{"kube-apiserver", "etcd", "manager", "benchmark (stand-in agent, watcher, clients)"}
	pids := []int{first(kit.ChildrenNamed("kube-apiserver")), first(kit.ChildrenNamed("etcd")), mgrCmd.Process.Pid, os.Getpid()}
	cpu := kit.NewCPU(procs, pids)
	fmt.Printf("load average before the storm (the machine is shared): %s\n", kit.LoadAvg())

	var profWG sync.WaitGroup
	start := time.Now()
	cpu.Start(500 * time.Millisecond)
	if pprofURL != "" && o.pprofSeconds > 0 {
		profWG.Add(1)
		go func() {
			defer profWG.Done()
			if err := fetchWith(http.DefaultClient, fmt.Sprintf("%s/profile?seconds=%d", pprofURL, o.pprofSeconds), filepath.Join(dir, "manager-cpu.pprof")); err != nil {
				fmt.Println("manager CPU profile:", err)
			}
		}()
	}
	apiProfile := ""
	if o.apiPprof && o.pprofSeconds > 0 {
		apiProfile = filepath.Join(dir, "kube-apiserver-cpu.pprof")
		profWG.Add(1)
		go func() {
			defer profWG.Done()
			if err := apiserverProfile(hc, cfg.Host, o.pprofSeconds, apiProfile); err != nil {
				fmt.Println("kube-apiserver CPU profile:", err)
				apiProfile = ""
			}
		}()
	}
	if err := testbin.Parallel(n, 64, func(k int) error {
		name := fmt.Sprintf("seat-%05d-s", k)
		mu.Lock()
		created[name] = time.Now()
		mu.Unlock()
		return c.Create(ctx, &bootv1.BootSession{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}, Spec: bootv1.BootSessionSpec{
			MachineRef: bootv1.LocalObjectReference{Name: fmt.Sprintf("seat-%05d", k)}, ImageRef: bootv1.LocalObjectReference{Name: "win11"}}})
	}); err != nil {
		return err
	}
	fmt.Printf("created %d BootSessions in %s\n", n, time.Since(start).Round(time.Millisecond))
	select {
	case <-allDone:
	case <-time.After(o.timeout):
		mu.Lock()
		fmt.Printf("only %d of %d Ready after %s\n", len(ready), n, o.timeout)
		mu.Unlock()
		return fmt.Errorf("not all Ready")
	}
	total := time.Since(start)
	use := cpu.Stop()
	mu.Lock()
	lat := make([]time.Duration, 0, n)
	for _, d := range ready {
		lat = append(lat, d)
	}
	mu.Unlock()
	p := kit.NewPercentiles(lat)
	fmt.Printf("all %d Ready %s after the first create; create-to-Ready %s\n", n, total.Round(time.Millisecond), p)
	fmt.Printf("\nCPU from the first create to the last Ready (%s; %d cores on this machine):\n", total.Round(time.Millisecond), numCPU())
	rows := [][]string{{"process", "CPU s", "mean cores", "peak cores (0.5 s)"}}
	for _, u := range use {
		rows = append(rows, []string{u.Name, fmt.Sprintf("%.1f", u.CPU.Seconds()), fmt.Sprintf("%.2f", u.Cores), fmt.Sprintf("%.2f", u.Peak)})
	}
	kit.Table(os.Stdout, rows)

	mgrAfter, err := kit.Scrape(http.DefaultClient, mgrMetrics)
	if err != nil {
		return fmt.Errorf("manager /metrics: %w", err)
	}
	q := map[string]string{"name": "bootsession"}
	fmt.Printf("\nmanager, BootSession controller, through the storm:\n")
	fmt.Printf("  reconciles: %.0f (%.2f per session); errors %.0f, requeues %.0f\n",
		kit.CounterDelta(mgrBefore, mgrAfter, "controller_runtime_reconcile_total", map[string]string{"controller": "bootsession"}),
		kit.CounterDelta(mgrBefore, mgrAfter, "controller_runtime_reconcile_total", map[string]string{"controller": "bootsession"})/float64(n),
		kit.CounterDelta(mgrBefore, mgrAfter, "controller_runtime_reconcile_total", map[string]string{"controller": "bootsession", "result": "error"}),
		kit.CounterDelta(mgrBefore, mgrAfter, "controller_runtime_reconcile_total", map[string]string{"controller": "bootsession", "result": "requeue"}))
	fmt.Printf("  time in queue:  %s\n", kit.HistDelta(mgrBefore, mgrAfter, "workqueue_queue_duration_seconds", q))
	fmt.Printf("  reconcile time: %s\n", kit.HistDelta(mgrBefore, mgrAfter, "controller_runtime_reconcile_time_seconds", map[string]string{"controller": "bootsession"}))
	for _, verb := range []string{"POST", "PUT", "PATCH"} {
		h := kit.HistDelta(mgrBefore, mgrAfter, "rest_client_request_duration_seconds", map[string]string{"verb": verb})
		if h.Count > 0 {
			fmt.Printf("  API %-5s as the manager sees it: %s\n", verb, h)
		}
	}

	// The trailing writes (the Machines' status) end soon after the last
	// Ready.
	if err := quiesce(hc, apiMetrics, 2*time.Second, 2*time.Minute+time.Duration(n)*30*time.Millisecond); err != nil {
		return err
	}
	apiAfter, err := kit.Scrape(hc, apiMetrics)
	if err != nil {
		return err
	}
	writes := kit.APIWrites(apiBefore, apiAfter)
	conflicts := kit.APIConflicts(apiBefore, apiAfter)
	var sum float64
	fmt.Printf("\nAPI writes per session (kube-apiserver's apiserver_request_total, every response code; 409 conflicts beside):\n")
	rows = [][]string{{"writes/session", "conflicts/session", "verb resource"}}
	for _, k := range kit.SortedKeys(writes) {
		v := writes[k]
		if k == (kit.WriteKey{Verb: "create", Resource: "bootsessions"}) {
			v -= float64(n) // the benchmark's own creates
			if v == 0 {
				continue
			}
		}
		sum += v
		rows = append(rows, []string{fmt.Sprintf("%.2f", v/float64(n)), fmt.Sprintf("%.2f", conflicts[k]/float64(n)), k.String()})
	}
	rows = append(rows, []string{fmt.Sprintf("%.2f", sum/float64(n)), "", "total (besides the benchmark's own create of each session)"})
	kit.Table(os.Stdout, rows)
	printWatchers(apiBefore, apiAfter, n)
	if auditLog != "" {
		if err := byWriter(auditLog, start, n); err != nil {
			return err
		}
	}

	profWG.Wait()
	if pprofURL != "" && o.pprofSeconds > 0 {
		fmt.Printf("\nmanager CPU profile, %d s from the first create (%s):\n", o.pprofSeconds, filepath.Join(dir, "manager-cpu.pprof"))
		top, _ := exec.Command("go", "tool", "pprof", "-top", "-nodecount=25", o.manager, filepath.Join(dir, "manager-cpu.pprof")).CombinedOutput()
		fmt.Println(indent(string(top)))
	}
	if apiProfile != "" {
		printAPIServerProfile(apiProfile, env.ControlPlane.APIServer.Path, o.pprofSeconds, n, total)
	}
	time.Sleep(3 * time.Second)
	fmt.Printf("manager RSS with %d Machines and %d sessions: %s (peak %s)\n", n, n, testbin.RSS(mgrCmd.Process.Pid), hwm(mgrCmd.Process.Pid))
	if pprofURL != "" {
		if err := fetchWith(http.DefaultClient, pprofURL+"/heap", filepath.Join(dir, "manager-heap.pprof")); err == nil {
			top, _ := exec.Command("go", "tool", "pprof", "-top", "-sample_index=inuse_space", "-nodecount=15", o.manager, filepath.Join(dir, "manager-heap.pprof")).CombinedOutput()
			fmt.Printf("manager heap in use at the end:\n%s\n", indent(string(top)))
		}
	}
	return nil
}

// byWriter counts the audit log's writes from start on by writer, verb and
// resource, per session.
func byWriter(path string, start time.Time, n int) error {
	evs, err := kit.ReadAudit(path)
	if err != nil {
		return err
	}
	count := map[string]float64{}
	for _, e := range evs {
		if e.Received.Before(start) {
			continue
		}
		count[fmt.Sprintf("%s (%s)  %s", e.User, kit.Agent(e.UserAgent), e.What())]++
	}
	keys := make([]string, 0, len(count))
	for k := range count {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return count[keys[i]] > count[keys[j]] })
	fmt.Printf("\nAPI writes per session by writer (audit log, from the first create):\n")
	rows := [][]string{{"writes/session", "writer (user agent)  verb resource"}}
	for _, k := range keys {
		rows = append(rows, []string{fmt.Sprintf("%.2f", count[k]/float64(n)), k})
	}
	kit.Table(os.Stdout, rows)
	return nil
}

// quiesce waits until kube-apiserver served no write for quiet (its own
// lease renewals aside); after timeout it says what is still written and
// goes on.
func quiesce(hc *http.Client, url string, quiet, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	prev, err := kit.Scrape(hc, url)
	if err != nil {
		return err
	}
	for {
		time.Sleep(quiet)
		cur, err := kit.Scrape(hc, url)
		if err != nil {
			return err
		}
		w := kit.APIWrites(prev, cur)
		delete(w, kit.WriteKey{Verb: "update", Resource: "leases"})
		if len(w) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			fmt.Printf("warning: the API server still serves writes %s later (in the last %s: %v); going on\n", timeout, quiet, w)
			return nil
		}
		prev = cur
	}
}

// fetchWith GETs url with hc into the file path.
func fetchWith(hc *http.Client, url, path string) error {
	resp, err := hc.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = io.Copy(f, resp.Body)
	return err
}

func first(pids []int) int {
	if len(pids) == 0 {
		return -1
	}
	return pids[0]
}

func hwm(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return "?"
	}
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "VmHWM:") {
			return strings.TrimSpace(strings.TrimPrefix(l, "VmHWM:"))
		}
	}
	return "?"
}

func indent(s string) string {
	return "  " + strings.ReplaceAll(strings.TrimRight(s, "\n"), "\n", "\n  ")
}

func numCPU() int { return runtime.NumCPU() }
