// Command sessions measures the controllers at scale against a real
// kube-apiserver: N Machines and N BootSessions created at once, a stand-in
// storage agent answering at once, the manager binary as its own process.
// It reports how long until all are Ready, create-to-Ready p50/p99 (client
// clock: create call to the watch event showing Ready) and the manager's RSS.
//
//	go run ./test/benchmark/sessions -n 1000 -manager bin/manager
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
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
)

func main() {
	ctrl.SetLogger(logr.Discard())
	n := flag.Int("n", 1000, "Machines and BootSessions.")
	manager := flag.String("manager", "bin/manager", "Manager binary.")
	memLimit := flag.String("manager-gomemlimit", "", "GOMEMLIMIT for the manager process (as a Deployment would set from its memory limit).")
	flag.Parse()
	if err := run(*n, *manager, *memLimit); err != nil {
		fmt.Fprintln(os.Stderr, "sessions:", err)
		os.Exit(1)
	}
}

func run(n int, managerBin, memLimit string) error {
	env, cfg, err := testenv.Start(func(e *envtest.Environment) { e.ControlPlaneStopTimeout = time.Second })
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

	// The manager, as in production: its own process.
	user, err := env.AddUser(envtest.User{Name: "ggnet-manager", Groups: []string{"system:masters"}}, nil)
	if err != nil {
		return err
	}
	kc, _ := user.KubeConfig()
	dir, _ := os.MkdirTemp("", "sessions")
	defer os.RemoveAll(dir)
	kubeconfig := filepath.Join(dir, "kubeconfig")
	if err := os.WriteFile(kubeconfig, kc, 0o600); err != nil {
		return err
	}
	mgrCmd := exec.CommandContext(ctx, managerBin, "--kubeconfig", kubeconfig, "--leader-elect=false",
		"--metrics-bind-address=0", "--health-probe-bind-address=127.0.0.1:18081", "--max-concurrent-reconciles=8")
	if memLimit != "" {
		mgrCmd.Env = append(os.Environ(), "GOMEMLIMIT="+memLimit)
	}
	logf, _ := os.Create(filepath.Join(dir, "manager.log"))
	mgrCmd.Stdout, mgrCmd.Stderr = logf, logf
	if err := mgrCmd.Start(); err != nil {
		return err
	}
	defer func() { cancel(); _ = mgrCmd.Wait() }()
	if _, err := testbin.WaitHTTP("http://127.0.0.1:18081/readyz", 60*time.Second); err != nil {
		return err
	}

	// The stand-in storage agent, in this process.
	sa, err := ctrl.NewManager(cfg, ctrl.Options{Scheme: scheme.New(), Metrics: metricsserver.Options{BindAddress: "0"}})
	if err != nil {
		return err
	}
	if err := (&standin.Storage{Client: sa.GetClient(), Workers: 8}).SetupWithManager(sa); err != nil {
		return err
	}
	go func() { _ = sa.Start(ctx) }()

	// The cluster: one storage node with the image.
	ns := "bench"
	if err := c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}); err != nil {
		return err
	}
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "storage-1"}}
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
	if err := testbin.Parallel(n, 32, func(k int) error {
		return c.Create(ctx, &bootv1.Machine{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: fmt.Sprintf("seat-%05d", k)},
			Spec: bootv1.MachineSpec{MAC: fmt.Sprintf("00:0c:01:%02x:%02x:%02x", k>>16&0xff, k>>8&0xff, k&0xff),
				IPv4: &bootv1.IPv4Reservation{Address: fmt.Sprintf("10.%d.%d.%d", 100+k/62500, k/250%250, k%250+2), PrefixLength: 8}}})
	}); err != nil {
		return err
	}

	// Watch for Ready with a cache of our own.
	wc, err := cache.New(cfg, cache.Options{Scheme: scheme.New()})
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

	start := time.Now()
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
	case <-time.After(5 * time.Minute):
		mu.Lock()
		fmt.Printf("only %d of %d Ready after 5 minutes\n", len(ready), n)
		mu.Unlock()
		return fmt.Errorf("not all Ready")
	}
	total := time.Since(start)
	mu.Lock()
	lat := make([]time.Duration, 0, n)
	for _, d := range ready {
		lat = append(lat, d)
	}
	mu.Unlock()
	slices.Sort(lat)
	pct := func(p float64) time.Duration {
		return lat[min(len(lat)-1, int(float64(len(lat))*p))].Round(time.Millisecond)
	}
	fmt.Printf("all %d Ready %s after the first create; create-to-Ready p50 %s, p99 %s, max %s\n",
		n, total.Round(time.Millisecond), pct(0.50), pct(0.99), lat[len(lat)-1].Round(time.Millisecond))
	time.Sleep(3 * time.Second)
	fmt.Printf("manager RSS with %d Machines and %d sessions: %s\n", n, n, testbin.RSS(mgrCmd.Process.Pid))
	return nil
}
