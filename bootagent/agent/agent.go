// Package agent wires the boot agent's protocol servers to the API server:
// informers on Machines and BootSessions feed the MAC table the DHCP, TFTP
// and HTTP servers read, and a recorder writes boot progress back off the
// request path.
package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"k8s.io/client-go/rest"
	toolscache "k8s.io/client-go/tools/cache"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"

	bootv1 "github.com/ggnet/ggnet/api/v1alpha1"
	"github.com/ggnet/ggnet/bootagent/dhcp"
	"github.com/ggnet/ggnet/bootagent/httpboot"
	"github.com/ggnet/ggnet/bootagent/table"
	"github.com/ggnet/ggnet/bootagent/tftp"
	"github.com/ggnet/ggnet/internal/scheme"
)

// BootConfig configures the boot role.
type BootConfig struct {
	// Interfaces to answer DHCP on; empty binds DHCPListen without an
	// interface (tests, single-NIC nodes).
	Interfaces []string
	// DHCPListen is the DHCP address (default ":67").
	DHCPListen string
	// ProxyListen is the proxyDHCP address used in proxy mode (default ":4011").
	ProxyListen string
	DHCP        dhcp.Config
	DHCPWorkers int
	// TFTPListen is the TFTP address (default ":69"); "-" turns TFTP off.
	TFTPListen string
	// HTTPListen is the address of scripts, iPXE binaries, probes and metrics
	// (default ":8880").
	HTTPListen string
	HTTP       httpboot.Config
	// Discovery records unknown PXE clients as Machines in DiscoveryNamespace.
	Discovery          bool
	DiscoveryNamespace string
}

// Config configures the agent.
type Config struct {
	// Namespace limits the informers to one namespace; empty watches all.
	Namespace string
	Boot      BootConfig
}

// Agent is the running boot agent.
type Agent struct {
	cfg      Config
	log      logr.Logger
	cache    cache.Cache
	client   client.Client
	table    *table.Table
	recorder *recorder
	registry *prometheus.Registry
	synced   atomic.Bool

	// Bound addresses, filled once Run has opened its sockets (for tests).
	mu    sync.Mutex
	addrs map[string]net.Addr
	ready chan struct{}
}

// New builds the agent from a REST config.
func New(restCfg *rest.Config, cfg Config, log logr.Logger) (*Agent, error) {
	b := &cfg.Boot
	if b.DHCPListen == "" {
		b.DHCPListen = ":67"
	}
	if b.ProxyListen == "" {
		b.ProxyListen = ":4011"
	}
	if b.TFTPListen == "" {
		b.TFTPListen = ":69"
	}
	if b.HTTPListen == "" {
		b.HTTPListen = ":8880"
	}
	if b.DHCPWorkers == 0 {
		b.DHCPWorkers = 8
	}
	b.DHCP.HTTPBase = b.HTTP.BaseURL
	b.DHCP.Defaults()
	if err := b.DHCP.Validate(); err != nil {
		return nil, err
	}
	if b.Discovery && b.DiscoveryNamespace == "" {
		return nil, errors.New("discovery needs a namespace for discovered Machines")
	}
	opts := cache.Options{Scheme: scheme.New(), DefaultTransform: cache.TransformStripManagedFields()}
	if cfg.Namespace != "" {
		opts.DefaultNamespaces = map[string]cache.Config{cfg.Namespace: {}}
	}
	c, err := cache.New(restCfg, opts)
	if err != nil {
		return nil, fmt.Errorf("creating the informer cache: %w", err)
	}
	cl, err := client.New(restCfg, client.Options{Scheme: opts.Scheme, Cache: &client.CacheOptions{Reader: c}})
	if err != nil {
		return nil, fmt.Errorf("creating the API client: %w", err)
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(prometheus.NewGoCollector(), prometheus.NewProcessCollector(prometheus.ProcessCollectorOpts{}))
	tbl := table.New()
	rec := newRecorder(cl, tbl, log.WithName("recorder"), reg)
	rec.discovery, rec.discoveryNamespace = b.Discovery, b.DiscoveryNamespace
	return &Agent{cfg: cfg, log: log, cache: c, client: cl, table: tbl, recorder: rec, registry: reg,
		addrs: map[string]net.Addr{}, ready: make(chan struct{})}, nil
}

// Table returns the agent's MAC table.
func (a *Agent) Table() *table.Table { return a.table }

// Addr returns a bound address by name (dhcp, proxy, tftp, http) once Run
// has opened it.
func (a *Agent) Addr(ctx context.Context, name string) (net.Addr, error) {
	select {
	case <-a.ready:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.addrs[name], nil
}

func (a *Agent) setAddr(name string, addr net.Addr) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.addrs[name] = addr
}

// watch feeds the table from the informers.
func (a *Agent) watch(ctx context.Context) error {
	mi, err := a.cache.GetInformer(ctx, &bootv1.Machine{})
	if err != nil {
		return err
	}
	_, err = mi.AddEventHandler(toolscache.ResourceEventHandlerFuncs{
		AddFunc:    func(o any) { a.upsertMachine(o) },
		UpdateFunc: func(_, o any) { a.upsertMachine(o) },
		DeleteFunc: func(o any) {
			if m, ok := unwrap[*bootv1.Machine](o); ok {
				a.table.DeleteMachine(m.Namespace + "/" + m.Name)
			}
		},
	})
	if err != nil {
		return err
	}
	si, err := a.cache.GetInformer(ctx, &bootv1.BootSession{})
	if err != nil {
		return err
	}
	_, err = si.AddEventHandler(toolscache.ResourceEventHandlerFuncs{
		AddFunc:    func(o any) { a.upsertSession(o) },
		UpdateFunc: func(_, o any) { a.upsertSession(o) },
		DeleteFunc: func(o any) {
			if s, ok := unwrap[*bootv1.BootSession](o); ok {
				a.table.DeleteSession(s.Namespace + "/" + s.Name)
			}
		},
	})
	return err
}

func unwrap[T any](o any) (T, bool) {
	if d, ok := o.(toolscache.DeletedFinalStateUnknown); ok {
		o = d.Obj
	}
	t, ok := o.(T)
	return t, ok
}

func (a *Agent) upsertMachine(o any) {
	m, ok := unwrap[*bootv1.Machine](o)
	if !ok {
		return
	}
	e, ok := machineEntry(m)
	if !ok {
		a.table.DeleteMachine(m.Namespace + "/" + m.Name)
		return
	}
	a.table.UpsertMachine(e)
}

func (a *Agent) upsertSession(o any) {
	if s, ok := unwrap[*bootv1.BootSession](o); ok {
		a.table.UpsertSession(sessionEntry(s))
	}
}

// Run starts the informers and the boot role's servers and blocks until ctx
// ends or a server fails.
func (a *Agent) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if err := a.watch(ctx); err != nil {
		return fmt.Errorf("watching Machines and BootSessions: %w", err)
	}
	errs := make(chan error, 16)
	var wg sync.WaitGroup
	spawn := func(name string, f func() error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := f(); err != nil && ctx.Err() == nil {
				errs <- fmt.Errorf("%s: %w", name, err)
			}
		}()
	}
	spawn("informer cache", func() error { return a.cache.Start(ctx) })
	spawn("recorder", func() error { a.recorder.run(ctx, 4); return nil })

	if err := a.startBootRole(ctx, spawn); err != nil {
		cancel()
		wg.Wait()
		return err
	}
	close(a.ready)
	spawn("cache sync", func() error {
		if !a.cache.WaitForCacheSync(ctx) {
			return errors.New("informer caches did not sync")
		}
		a.synced.Store(true)
		m, s := a.table.Len()
		a.log.Info("Caches synced", "machines", m, "sessions", s)
		return nil
	})

	var err error
	select {
	case <-ctx.Done():
	case err = <-errs:
		cancel()
	}
	wg.Wait()
	return err
}

func (a *Agent) startBootRole(ctx context.Context, spawn func(string, func() error)) error {
	b := a.cfg.Boot
	dm := dhcp.NewMetrics(a.registry)
	ifaces := b.Interfaces
	if len(ifaces) == 0 {
		ifaces = []string{""}
	}
	type listener struct{ addr, name string }
	listeners := []listener{{b.DHCPListen, "dhcp"}}
	if b.DHCP.Mode == dhcp.ModeProxy {
		listeners = append(listeners, listener{b.ProxyListen, "proxy"})
	}
	for _, iface := range ifaces {
		for _, l := range listeners {
			conn, err := dhcp.Listen(iface, l.addr)
			if err != nil {
				return err
			}
			opts := []dhcp.Option{dhcp.WithMetrics(dm), dhcp.WithObserver(a.recorder), dhcp.WithWorkers(b.DHCPWorkers),
				dhcp.WithInterface(iface), dhcp.WithLogger(a.log.WithName("dhcp"))}
			if l.name == "proxy" {
				opts = append(opts, dhcp.WithProxyPort())
			}
			srv, err := dhcp.NewServer(b.DHCP, a.table, opts...)
			if err != nil {
				_ = conn.Close()
				return err
			}
			a.setAddr(l.name, conn.LocalAddr())
			a.log.Info("Serving DHCP", "mode", b.DHCP.Mode, "addr", conn.LocalAddr().String(), "interface", iface)
			spawn("dhcp", func() error { return srv.Serve(ctx, conn) })
		}
	}

	if b.TFTPListen != "-" {
		ts, err := tftp.New(b.HTTP.IPXERootOrDefault(), a.table, tftp.WithMetrics(tftp.NewMetrics(a.registry)), tftp.WithLogger(a.log.WithName("tftp")))
		if err != nil {
			return err
		}
		conn, err := net.ListenPacket("udp4", b.TFTPListen)
		if err != nil {
			return fmt.Errorf("listening for TFTP on %s: %w", b.TFTPListen, err)
		}
		a.setAddr("tftp", conn.LocalAddr())
		a.log.Info("Serving TFTP", "addr", conn.LocalAddr().String(), "root", b.HTTP.IPXERootOrDefault())
		spawn("tftp", func() error { return ts.Serve(ctx, conn) })
	}

	h, err := httpboot.New(b.HTTP, a.table, a.recorder, a.log.WithName("http"), a.registry)
	if err != nil {
		return err
	}
	mux := http.NewServeMux()
	h.Register(mux)
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok")) })
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !a.synced.Load() {
			http.Error(w, "informer caches not synced", http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ok"))
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(a.registry, promhttp.HandlerOpts{}))
	ln, err := net.Listen("tcp", b.HTTPListen)
	if err != nil {
		return fmt.Errorf("listening for HTTP on %s: %w", b.HTTPListen, err)
	}
	a.setAddr("http", ln.Addr())
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	a.log.Info("Serving HTTP", "addr", ln.Addr().String())
	spawn("http", func() error {
		go func() { <-ctx.Done(); _ = srv.Close() }()
		if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			return err
		}
		return nil
	})
	return nil
}
