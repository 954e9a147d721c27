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
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/selection"
	"k8s.io/client-go/rest"
	toolscache "k8s.io/client-go/tools/cache"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"

	bootv1 "github.com/ggnet/ggnet/api/v1alpha1"
	"github.com/ggnet/ggnet/bootagent/dhcp"
	"github.com/ggnet/ggnet/bootagent/httpboot"
	"github.com/ggnet/ggnet/bootagent/ra"
	"github.com/ggnet/ggnet/bootagent/table"
	"github.com/ggnet/ggnet/bootagent/tftp"
	"github.com/ggnet/ggnet/bootagent/wol"
	"github.com/ggnet/ggnet/internal/scheme"
)

// BootConfig configures the boot role.
type BootConfig struct {
	// Interfaces to answer DHCP on (and whose neighbour table
	// BindNeighbors reads); empty means the one interface that holds
	// DHCP.ServerIP, never every interface (the pod network).
	Interfaces []string
	// DHCPListen is the DHCP address (default ":67").
	DHCPListen string
	// ProxyListen is the proxyDHCP address used in proxy mode (default ":4011").
	ProxyListen string
	DHCP        dhcp.Config
	DHCPWorkers int
	// TFTPListen is the TFTP address (default <server-ip>:69); "-" turns
	// TFTP off.
	TFTPListen string
	// TFTPMaxPerSource bounds TFTP transfers per source address (default 8).
	TFTPMaxPerSource int
	// HTTPListen is the address of scripts and iPXE binaries (default
	// <server-ip>:8880).
	HTTPListen string
	HTTP       httpboot.Config
	// HTTPMaxConns caps the boot HTTP server's open connections (default 512).
	HTTPMaxConns int
	// HTTPMaxConnsPerSource caps the open connections of one remote IP
	// address on the boot HTTP server and on the metrics listener (default
	// 16), so that one host cannot hold every connection.
	HTTPMaxConnsPerSource int
	// MetricsListen is the address of /healthz, /readyz and /metrics
	// (default ":8881"); "-" turns it off.
	MetricsListen string
	// ScriptTokenOptional lets script requests without a token through (an
	// external DHCP server that cannot hand out tokens); the requester's
	// address must still be bound to the MAC.
	ScriptTokenOptional bool
	// BindNeighbors also binds a requester's address to the MAC the
	// Interfaces' neighbour table (ARP) maps it to. It is weaker than a
	// reserved address: anyone on the boot LAN can forge ARP. In proxy mode
	// without it the token alone authorizes a script request (the agent
	// hands out no address to bind).
	BindNeighbors bool
	// Neighbors is the neighbour table BindNeighbors reads; nil reads
	// /proc/net/arp for Interfaces.
	Neighbors table.Neighbors
	// DHCPClientPort is where DHCP replies to clients go; 0 is 68. For
	// tests only, whose clients cannot bind port 68.
	DHCPClientPort uint16
	// Discovery records unknown PXE clients as Machines in DiscoveryNamespace,
	// at most DiscoveryMax (default 1000) in total and a few per second.
	Discovery          bool
	DiscoveryNamespace string
	DiscoveryMax       int
	// IPv6RA answers IPv6 router solicitations of known Machines on
	// Interfaces so that iPXE's IPv6 autoconfiguration ends at once (package
	// ra); auto stays quiet while a real router is heard. Empty is off.
	IPv6RA ra.Mode
}

// Config configures the agent.
type Config struct {
	// Namespace limits the informers to one namespace; empty watches all.
	Namespace string
	// NodeName is this agent's node: its field manager is
	// ggnet-bootagent-<node>, so that two agents on one boot LAN never
	// remove each other's fields (an apply drops what its manager applied
	// before and leaves out). Empty: FieldOwner alone.
	NodeName string
	Boot     BootConfig
}

// wolFieldOwner is the field manager of the agent's Waker on node.
func wolFieldOwner(node string) string {
	if node == "" {
		return wol.FieldOwner
	}
	return truncateOwner(wol.FieldOwner + "-" + node)
}

// Agent is the running boot agent.
type Agent struct {
	cfg      Config
	log      logr.Logger
	cache    cache.Cache
	client   client.Client
	table    *table.Table
	recorder *recorder
	waker    *wol.Waker
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
	host := ""
	if ip := b.DHCP.ServerIP.To4(); ip != nil {
		host = ip.String()
	}
	defaults := []struct {
		field *string
		value string
	}{
		{&b.DHCPListen, ":67"}, {&b.ProxyListen, ":4011"}, {&b.TFTPListen, net.JoinHostPort(host, "69")},
		{&b.HTTPListen, net.JoinHostPort(host, "8880")}, {&b.MetricsListen, ":8881"},
	}
	for _, d := range defaults {
		if *d.field == "" {
			*d.field = d.value
		}
	}
	for _, n := range []struct {
		field *int
		value int
	}{{&b.DHCPWorkers, 8}, {&b.TFTPMaxPerSource, 8}, {&b.HTTPMaxConns, httpboot.DefaultMaxConns},
		{&b.HTTPMaxConnsPerSource, httpboot.DefaultMaxConnsPerSource},
		{&b.HTTP.MaxLongPolls, 1000}, {&b.DiscoveryMax, 1000}} {
		if *n.field <= 0 {
			*n.field = n.value
		}
	}
	if b.HTTP.LongPoll <= 0 {
		b.HTTP.LongPoll = 60 * time.Second
	}
	b.DHCP.HTTPBase = b.HTTP.BaseURL
	b.DHCP.Defaults()
	if err := b.DHCP.Validate(); err != nil {
		return nil, err
	}
	if len(b.Interfaces) == 0 {
		iface, err := InterfaceOf(b.DHCP.ServerIP)
		if err != nil {
			return nil, err
		}
		b.Interfaces = []string{iface}
	}
	if b.Discovery && b.DiscoveryNamespace == "" {
		return nil, errors.New("discovery needs a namespace for discovered Machines")
	}
	copts := cacheOptions(cfg.Namespace)
	c, err := cache.New(restCfg, copts)
	if err != nil {
		return nil, fmt.Errorf("creating the informer cache: %w", err)
	}
	cl, err := client.New(restCfg, client.Options{Scheme: copts.Scheme, Cache: &client.CacheOptions{Reader: c}})
	if err != nil {
		return nil, fmt.Errorf("creating the API client: %w", err)
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	topts, err := tableOptions(b)
	if err != nil {
		return nil, err
	}
	tbl := table.New(topts...)
	rec := newRecorder(cl, tbl, log.WithName("recorder"), reg)
	rec.owner = fieldOwner(cfg.NodeName)
	rec.discovery, rec.discoveryNamespace, rec.discoveryMax = b.Discovery, b.DiscoveryNamespace, b.DiscoveryMax
	// Wake-on-LAN: the SecureOn Secrets are read uncached (the cache holds
	// only session Secrets).
	direct, err := client.New(restCfg, client.Options{Scheme: copts.Scheme})
	if err != nil {
		return nil, fmt.Errorf("creating the API client: %w", err)
	}
	// The Waker lists only the sessions that want waking (its index), not
	// every session each second on the core that answers DHCP.
	if err := wol.IndexWants(context.Background(), c); err != nil {
		return nil, fmt.Errorf("indexing BootSessions for wake-on-LAN: %w", err)
	}
	waker := &wol.Waker{Reader: c, Secrets: direct, Writer: cl, Log: log.WithName("wol"), Indexed: true,
		Packets: wol.NewPacketsCounter(reg), Config: wol.Config{Interfaces: b.Interfaces, FieldOwner: wolFieldOwner(cfg.NodeName)}}
	a := &Agent{cfg: cfg, log: log, cache: c, client: cl, table: tbl, recorder: rec, registry: reg, waker: waker,
		addrs: map[string]net.Addr{}, ready: make(chan struct{})}
	a.cfg.Boot.HTTP.Ready = a.synced.Load
	return a, nil
}

// cacheOptions is the informer cache of the boot role: Machines and
// BootSessions, and only the Secrets labelled boot.ggnet.io/session (the
// label selector is the informer's, so no other Secret reaches the agent).
func cacheOptions(namespace string) cache.Options {
	opts := cache.Options{Scheme: scheme.New(), DefaultTransform: cache.TransformStripManagedFields()}
	if namespace != "" {
		opts.DefaultNamespaces = map[string]cache.Config{namespace: {}}
	}
	req, err := labels.NewRequirement(bootv1.SessionSecretLabel, selection.Exists, nil)
	if err != nil {
		panic(err) // a constant label key
	}
	opts.ByObject = map[client.Object]cache.ByObject{&corev1.Secret{}: {Label: labels.NewSelector().Add(*req)}}
	return opts
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

// watch feeds the table from the informers and returns their handlers'
// registrations, synced once the handlers have seen the initial lists.
func (a *Agent) watch(ctx context.Context) ([]toolscache.ResourceEventHandlerRegistration, error) {
	var regs []toolscache.ResourceEventHandlerRegistration
	add := func(obj client.Object, upsert func(any), del func(any)) error {
		inf, err := a.cache.GetInformer(ctx, obj)
		if err != nil {
			return err
		}
		reg, err := inf.AddEventHandler(toolscache.ResourceEventHandlerFuncs{
			AddFunc:    upsert,
			UpdateFunc: func(_, o any) { upsert(o) },
			DeleteFunc: del,
		})
		regs = append(regs, reg)
		return err
	}
	err := errors.Join(
		add(&bootv1.Machine{}, a.upsertMachine, func(o any) {
			if m, ok := unwrap[*bootv1.Machine](o); ok {
				a.table.DeleteMachine(m.Namespace + "/" + m.Name)
			}
		}),
		add(&bootv1.BootSession{}, a.upsertSession, func(o any) {
			if s, ok := unwrap[*bootv1.BootSession](o); ok {
				a.table.DeleteSession(s.Namespace + "/" + s.Name)
				a.recorder.forget(s.Namespace + "/" + s.Name)
			}
		}),
		add(&corev1.Secret{}, a.upsertSecret, func(o any) {
			if s, ok := unwrap[*corev1.Secret](o); ok {
				if key, _, ok := secretEntry(s); ok {
					a.table.DeleteSecret(key)
				}
			}
		}),
	)
	return regs, err
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

// upsertSecret keeps a session Secret's credentials and token in the table,
// in memory only; they are never logged.
func (a *Agent) upsertSecret(o any) {
	s, ok := unwrap[*corev1.Secret](o)
	if !ok {
		return
	}
	if key, sec, ok := secretEntry(s); ok {
		a.table.UpsertSecret(key, sec)
	}
}

// Run starts the informers and the boot role's servers and blocks until ctx
// ends or a server fails.
func (a *Agent) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	regs, err := a.watch(ctx)
	if err != nil {
		return fmt.Errorf("watching Machines, BootSessions and session Secrets: %w", err)
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
	spawn("wake-on-LAN", func() error { return a.waker.Run(ctx) })

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
		for _, r := range regs {
			if !toolscache.WaitForCacheSync(ctx.Done(), r.HasSynced) {
				return errors.New("informer handlers did not sync")
			}
		}
		a.synced.Store(true)
		m, s := a.table.Len()
		a.log.Info("Caches synced", "machines", m, "sessions", s)
		return nil
	})

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
				dhcp.WithInterface(iface), dhcp.WithLogger(a.log.WithName("dhcp")), dhcp.WithReady(a.synced.Load)}
			if b.DHCPClientPort != 0 {
				opts = append(opts, dhcp.WithClientPort(b.DHCPClientPort))
			}
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

	if err := a.startRA(ctx, spawn); err != nil {
		return err
	}

	if b.TFTPListen != "-" {
		ts, err := tftp.New(b.HTTP.IPXERootOrDefault(), tftpScripts{a}, tftp.WithMetrics(tftp.NewMetrics(a.registry)),
			tftp.WithMaxPerSource(b.TFTPMaxPerSource), tftp.WithLogger(a.log.WithName("tftp")))
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
	if err := a.serveHTTP(ctx, spawn, "http", b.HTTPListen, httpboot.NewServer(mux), b.HTTPMaxConns); err != nil {
		return err
	}

	if b.MetricsListen == "-" {
		return nil
	}
	probes := http.NewServeMux()
	probes.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok")) })
	probes.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !a.synced.Load() {
			http.Error(w, "informer caches not synced", http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ok"))
	})
	probes.Handle("GET /metrics", promhttp.HandlerFor(a.registry, promhttp.HandlerOpts{}))
	return a.serveHTTP(ctx, spawn, "metrics", b.MetricsListen,
		&http.Server{Handler: probes, ReadHeaderTimeout: httpboot.ReadHeaderTimeout, ReadTimeout: httpboot.ReadTimeout,
			WriteTimeout: httpboot.WriteTimeout, IdleTimeout: httpboot.IdleTimeout, MaxHeaderBytes: httpboot.MaxHeaderBytes}, 64)
}

// startRA starts the router advertisement responder on the boot
// interfaces. Without CAP_NET_RAW auto mode logs why and boots go on with
// iPXE's IPv6 wait; on fails the agent.
func (a *Agent) startRA(ctx context.Context, spawn func(string, func() error)) error {
	b := a.cfg.Boot
	if b.IPv6RA == "" || b.IPv6RA == ra.ModeOff {
		return nil
	}
	r, err := ra.Listen(ra.Config{
		Policy:     &ra.Policy{Mode: b.IPv6RA, Known: a.table.HasConfiguredMachine, Ready: a.synced.Load},
		Interfaces: b.Interfaces, Log: a.log.WithName("ra"), Metrics: ra.NewMetrics(a.registry),
	})
	if err != nil {
		if b.IPv6RA == ra.ModeAuto {
			a.log.Error(err, "Not answering IPv6 router solicitations: iPXE will wait about 16 s for an IPv6 router at each boot (--ipv6-ra=auto)")
			return nil
		}
		return fmt.Errorf("--ipv6-ra=%s: %w", b.IPv6RA, err)
	}
	a.log.Info("Answering IPv6 router solicitations of known Machines", "mode", b.IPv6RA, "interfaces", b.Interfaces)
	spawn("ra", func() error { return r.Serve(ctx) })
	return nil
}

// serveHTTP listens on addr with at most maxConns connections, and
// HTTPMaxConnsPerSource from one address, and serves srv until ctx ends.
func (a *Agent) serveHTTP(ctx context.Context, spawn func(string, func() error), name, addr string, srv *http.Server, maxConns int) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("listening for %s on %s: %w", name, addr, err)
	}
	a.setAddr(name, ln.Addr())
	a.log.Info("Serving HTTP", "name", name, "addr", ln.Addr().String(), "maxConns", maxConns, "maxConnsPerSource", a.cfg.Boot.HTTPMaxConnsPerSource)
	spawn(name, func() error {
		go func() { <-ctx.Done(); _ = srv.Close() }()
		if err := srv.Serve(httpboot.LimitListener(ln, maxConns, a.cfg.Boot.HTTPMaxConnsPerSource)); !errors.Is(err, http.ErrServerClosed) {
			return err
		}
		return nil
	})
	return nil
}

// tftpScripts is the agent's tftp.Scripts: the table's Authorize, nothing
// before the caches synced, a rate-limited Event for a refused known MAC.
type tftpScripts struct{ a *Agent }

// Script implements tftp.Scripts.
func (s tftpScripts) Script(mac net.HardwareAddr, token string, peer netip.Addr) (string, error) {
	if !s.a.synced.Load() {
		return "", tftp.ErrNotReady
	}
	g, err := s.a.table.Authorize(mac, token, peer)
	switch {
	case errors.Is(err, table.ErrForbidden):
		if g.Machine.Key != "" {
			s.a.recorder.Forbidden(g.Machine, peer, err)
		}
		return "", fmt.Errorf("%w: %w", tftp.ErrForbidden, err)
	case err != nil:
		return "", err
	case g.Script == "":
		return "", tftp.ErrNoScripts
	}
	s.a.recorder.ScriptServed(g.SessionKey)
	return g.Script, nil
}
