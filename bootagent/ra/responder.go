package ra

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"
)

// Metrics are the responder's counters.
type Metrics struct {
	solicitations *prometheus.CounterVec
	dropped       *prometheus.CounterVec
	heard         *prometheus.CounterVec
	sendErrors    prometheus.Counter
	readErrors    prometheus.Counter
	routerPresent *prometheus.GaugeVec
}

// NewMetrics registers the responder's metrics with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		solicitations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ggnet_ra_solicitations_total",
			Help: "IPv6 router solicitations heard on the boot interfaces, by what was done (answered, unknown_mac, no_mac, not_link_local, router_present, probing, not_ready, mac_rate_limited, rate_limited).",
		}, []string{"result"}),
		dropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ggnet_ra_dropped_total",
			Help: "Router solicitations and advertisements dropped unread: malformed, or with a hop limit other than 255 (not from the link).",
		}, []string{"reason"}),
		heard: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ggnet_ra_advertisements_heard_total",
			Help: "Router advertisements heard from others: router (configures something: the responder goes quiet in auto mode) or other (configures nothing).",
		}, []string{"kind"}),
		sendErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ggnet_ra_send_errors_total",
			Help: "Router advertisements or probes that could not be sent.",
		}),
		readErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ggnet_ra_read_errors_total",
			Help: "Failed reads of the raw ICMPv6 sockets (retried every 100 ms; logged once per run of errors).",
		}),
		routerPresent: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "ggnet_ra_router_present",
			Help: "1 while auto mode is quiet on the interface because a real IPv6 router was heard within the hold-off.",
		}, []string{"interface"}),
	}
	for _, r := range []Result{Answered, UnknownMAC, NoMAC, NotLinkLocal, RouterPresent, Probing, NotReady, MACRateLimited, RateLimited} {
		m.solicitations.WithLabelValues(string(r))
	}
	for _, r := range []string{"malformed", "hop_limit"} {
		m.dropped.WithLabelValues(r)
	}
	reg.MustRegister(m.solicitations, m.dropped, m.heard, m.sendErrors, m.readErrors, m.routerPresent)
	return m
}

// Config configures a Responder.
type Config struct {
	Policy     *Policy
	Interfaces []string
	// ProbeInterval is how often auto mode solicits routers (default
	// DefaultProbeInterval).
	ProbeInterval time.Duration
	// Rate bounds the answers per second, all interfaces and MACs together
	// (default 200, burst as many): a flood of forged solicitations costs a
	// few small packets.
	Rate rate.Limit
	// MACSpacing is the least time between two answers to one MAC (default
	// DefaultMACSpacing): solicitations forged with a known Machine's MAC
	// cannot use up Rate and starve the other Machines.
	MACSpacing time.Duration
	Log        logr.Logger
	Metrics    *Metrics
}

// DefaultMACSpacing is the default Config.MACSpacing: iPXE solicits at
// least 250 ms apart, so a real PC is never held back.
const DefaultMACSpacing = 200 * time.Millisecond

// Responder answers router solicitations on the boot interfaces.
type Responder struct {
	cfg   Config
	limit *rate.Limiter
	socks []*sock

	mu sync.Mutex
	// answered is when each MAC was last answered. Only known Machines'
	// MACs reach it, and entries older than MACSpacing are pruned, so it
	// holds at most the Machines answered lately.
	answered map[[6]byte]time.Time
	pruned   time.Time
}

type sock struct {
	iface string
	mac   net.HardwareAddr
	conn  *net.IPConn
}

// newResponder fills cfg's defaults, the one place they are applied, and
// makes a Responder with no sockets yet.
func newResponder(cfg Config) *Responder {
	if cfg.ProbeInterval <= 0 {
		cfg.ProbeInterval = DefaultProbeInterval
	}
	if cfg.Rate <= 0 {
		cfg.Rate = 200
	}
	if cfg.MACSpacing <= 0 {
		cfg.MACSpacing = DefaultMACSpacing
	}
	if cfg.Metrics == nil {
		cfg.Metrics = NewMetrics(prometheus.NewRegistry())
	}
	return &Responder{cfg: cfg, limit: rate.NewLimiter(cfg.Rate, int(cfg.Rate))}
}

// Listen opens a raw ICMPv6 socket on each interface (CAP_NET_RAW).
func Listen(cfg Config) (*Responder, error) {
	if cfg.Policy == nil {
		return nil, errors.New("ra: no policy")
	}
	r := newResponder(cfg)
	for _, iface := range cfg.Interfaces {
		conn, ifi, err := listen(iface)
		if err != nil {
			r.Close()
			return nil, err
		}
		r.socks = append(r.socks, &sock{iface: iface, mac: ifi.HardwareAddr, conn: conn})
	}
	return r, nil
}

// Close closes the sockets.
func (r *Responder) Close() {
	for _, s := range r.socks {
		_ = s.conn.Close()
	}
}

// Serve answers until ctx ends, then closes the sockets.
func (r *Responder) Serve(ctx context.Context) error {
	var wg sync.WaitGroup
	for _, s := range r.socks {
		wg.Add(1)
		go func() { defer wg.Done(); r.read(ctx, s) }()
		if r.cfg.Policy.Mode == ModeAuto {
			wg.Add(1)
			go func() { defer wg.Done(); r.probe(ctx, s) }()
		}
	}
	<-ctx.Done()
	r.Close()
	wg.Wait()
	return nil
}

// probe solicits routers on s now and every ProbeInterval, and keeps the
// router_present gauge and its log lines in step with the hold-off.
func (r *Responder) probe(ctx context.Context, s *sock) {
	p, log := r.cfg.Policy, r.cfg.Log.WithValues("interface", s.iface)
	present := false
	check := time.NewTicker(10 * time.Second)
	defer check.Stop()
	next := time.Now()
	for {
		now := time.Now()
		if !now.Before(next) {
			if _, err := s.conn.WriteToIP(Solicit(s.mac), &net.IPAddr{IP: allRouters, Zone: s.iface}); err != nil && ctx.Err() == nil {
				r.cfg.Metrics.sendErrors.Inc()
				log.V(1).Info("Cannot solicit IPv6 routers", "error", err.Error())
			}
			p.Probed(s.iface, now)
			next = now.Add(r.cfg.ProbeInterval)
		}
		if rp := p.RouterPresent(s.iface, now); rp != present {
			present = rp
			v := 0.0
			if rp {
				v = 1
				log.Info("An IPv6 router is on the boot LAN: not answering router solicitations (--ipv6-ra=auto)")
			} else {
				log.Info("No IPv6 router heard on the boot LAN: answering router solicitations of known Machines again")
			}
			r.cfg.Metrics.routerPresent.WithLabelValues(s.iface).Set(v)
		}
		select {
		case <-ctx.Done():
			return
		case <-check.C:
		case <-time.After(time.Until(next)):
		}
	}
}

func (r *Responder) read(ctx context.Context, s *sock) {
	log := r.cfg.Log.WithValues("interface", s.iface)
	buf, oob := make([]byte, 1500), make([]byte, oobSize)
	failing := 0 // reads failed in a row
	for {
		n, oobn, _, addr, err := s.conn.ReadMsgIP(buf, oob)
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			r.cfg.Metrics.readErrors.Inc()
			if failing == 0 {
				// Once per run of errors: a lasting one would log ten
				// lines a second forever.
				log.Error(err, "Reading ICMPv6 (retrying every 100 ms, logged once until a read succeeds)")
			}
			failing++
			select {
			case <-ctx.Done():
				return
			case <-time.After(100 * time.Millisecond):
			}
			continue
		}
		if failing > 0 {
			log.Info("Reading ICMPv6 again", "failedReads", failing)
			failing = 0
		}
		r.handle(s, buf[:n], hopLimit(oob[:oobn]), addr, time.Now())
	}
}

// handle acts on one packet: a solicitation may be answered, a real
// router's advertisement quiets auto mode. Never panics on any input.
func (r *Responder) handle(s *sock, b []byte, hops int, addr *net.IPAddr, now time.Time) {
	m, p := r.cfg.Metrics, r.cfg.Policy
	if len(b) == 0 {
		m.dropped.WithLabelValues("malformed").Inc()
		return
	}
	if hops != HopLimit {
		m.dropped.WithLabelValues("hop_limit").Inc()
		return
	}
	var src netip.Addr
	if addr != nil {
		src, _ = netip.AddrFromSlice(addr.IP)
	}
	switch b[0] {
	case TypeRouterAdvertisement:
		a, err := ParseAdvertisement(b)
		if err != nil {
			m.dropped.WithLabelValues("malformed").Inc()
			return
		}
		if !a.Router() {
			m.heard.WithLabelValues("other").Inc()
			return
		}
		m.heard.WithLabelValues("router").Inc()
		if !p.RouterPresent(s.iface, now) {
			r.cfg.Log.V(1).Info("IPv6 router advertisement", "interface", s.iface, "router", src.String(),
				"lifetime", a.Lifetime, "managed", a.Managed, "other", a.Other, "prefixes", a.Prefixes)
		}
		p.HeardRouter(s.iface, now)
	case TypeRouterSolicitation:
		sol, err := ParseSolicitation(b)
		if err != nil {
			m.dropped.WithLabelValues("malformed").Inc()
			return
		}
		res := p.Decide(s.iface, src, sol, now)
		if res == Answered {
			res = r.allow(sol.MAC, now)
		}
		m.solicitations.WithLabelValues(string(res)).Inc()
		if res != Answered {
			return
		}
		if _, err := s.conn.WriteToIP(Advertise(s.mac), &net.IPAddr{IP: src.AsSlice(), Zone: s.iface}); err != nil {
			m.sendErrors.Inc()
			r.cfg.Log.V(1).Info("Cannot answer a router solicitation", "interface", s.iface, "mac", sol.MAC.String(), "error", err.Error())
			return
		}
		r.cfg.Log.V(1).Info("Answered a router solicitation", "interface", s.iface, "mac", sol.MAC.String())
	default:
		m.dropped.WithLabelValues("malformed").Inc()
	}
}

// allow applies the per-MAC spacing, then the rate of all MACs together, to
// an answer to mac at now, and records it when allowed. A MAC over its
// spacing does not take from the shared rate.
func (r *Responder) allow(mac net.HardwareAddr, now time.Time) Result {
	var k [6]byte
	copy(k[:], mac)
	spacing := r.cfg.MACSpacing
	r.mu.Lock()
	defer r.mu.Unlock()
	if last, ok := r.answered[k]; ok && now.Sub(last) < spacing && !now.Before(last) {
		return MACRateLimited
	}
	if r.limit != nil && !r.limit.AllowN(now, 1) {
		return RateLimited
	}
	if r.answered == nil {
		r.answered = map[[6]byte]time.Time{}
	}
	if now.Sub(r.pruned) >= 10*spacing {
		for m, t := range r.answered {
			if now.Sub(t) >= spacing {
				delete(r.answered, m)
			}
		}
		r.pruned = now
	}
	r.answered[k] = now
	return Answered
}
