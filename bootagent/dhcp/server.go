package dhcp

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/prometheus/client_golang/prometheus"
)

// Standard ports.
const (
	ServerPort = 67
	ClientPort = 68
	ProxyPort  = 4011
)

// Observer hears about answered and unknown clients. The agent uses it to
// record boot progress, the addresses clients use and discovered machines;
// it must not block, and mac is valid only during the call (it points into
// the worker's packet buffer).
type Observer interface {
	// Answered is called for each OFFER and ACK sent. addr is the address
	// this agent handed out (yiaddr) in reservation mode, which may then be
	// bound to the MAC; it is always invalid in proxy mode, where the
	// client's ciaddr and requested address (option 50) are only its claims
	// (anyone can send them with any chaddr) and bind nothing.
	Answered(mac net.HardwareAddr, msg dhcpv4.MessageType, addr netip.Addr)
	Unknown(mac net.HardwareAddr, client Client)
}

// Server answers DHCP on one socket with a fixed number of workers: each
// worker reads a packet, builds the reply and sends it, so at most Workers
// packets are in flight and nothing grows per packet.
type Server struct {
	cfg      Config
	backend  Backend
	observer Observer
	metrics  *Metrics
	log      logr.Logger
	workers  int
	// proxyPort is true for the server on port 4011.
	proxyPort bool
	// iface names the interface for logs.
	iface string
	// ready reports whether the agent may answer (its caches synced); nil
	// is always ready.
	ready func() bool
	// clientPort is the port replies to clients go to (ClientPort; tests
	// change it with WithClientPort).
	clientPort uint16
	// portable uses the portable socket path (one datagram per call) where
	// Linux has batches: for tests.
	portable bool
}

// Option configures a Server.
type Option func(*Server)

// WithWorkers sets the number of workers (default 8).
func WithWorkers(n int) Option { return func(s *Server) { s.workers = n } }

// WithObserver sets the observer of answered and unknown clients.
func WithObserver(o Observer) Option { return func(s *Server) { s.observer = o } }

// WithMetrics sets the metrics to count into.
func WithMetrics(m *Metrics) Option { return func(s *Server) { s.metrics = m } }

// WithLogger sets the logger.
func WithLogger(l logr.Logger) Option { return func(s *Server) { s.log = l } }

// WithProxyPort marks the server as the proxyDHCP server on port 4011.
func WithProxyPort() Option { return func(s *Server) { s.proxyPort = true } }

// WithInterface names the interface the socket is bound to, for logs.
func WithInterface(name string) Option { return func(s *Server) { s.iface = name } }

// WithReady makes the server drop every request (result not-ready) while
// ready returns false: before its caches synced the agent does not know
// which machines may boot or with which token. ready is called per packet
// and must be cheap (an atomic load).
func WithReady(ready func() bool) Option { return func(s *Server) { s.ready = ready } }

// WithClientPort sends the replies meant for clients to port p instead of
// 68. It is for tests only, whose clients cannot bind port 68: the server
// still never answers a request's own source port.
func WithClientPort(p uint16) Option { return func(s *Server) { s.clientPort = p } }

// withPortableConn makes the server read and write one datagram per call, as
// on systems other than Linux, so that Linux tests run that path too.
func withPortableConn() Option { return func(s *Server) { s.portable = true } }

// NewServer validates cfg and returns a server.
func NewServer(cfg Config, backend Backend, opts ...Option) (*Server, error) {
	cfg.Defaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	s := &Server{cfg: cfg, backend: backend, workers: 8, log: logr.Discard(), clientPort: ClientPort}
	for _, o := range opts {
		o(s)
	}
	if s.metrics == nil {
		s.metrics = NewMetrics(nil)
	}
	if s.workers < 1 {
		return nil, fmt.Errorf("workers %d: want at least 1", s.workers)
	}
	return s, nil
}

// Serve answers requests on conn until ctx ends. It closes conn.
func (s *Server) Serve(ctx context.Context, conn *net.UDPConn) error {
	go func() {
		<-ctx.Done()
		_ = conn.Close()
	}()
	var wg sync.WaitGroup
	for range s.workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.work(ctx, conn)
		}()
	}
	wg.Wait()
	return nil
}

// batch is how many packets a worker reads (recvmmsg) and sends (sendmmsg)
// per system call under load, on Linux.
const batch = 32

// worker is one worker's parsed request, query and reply writer, reused
// from packet to packet (its socket is a packetConn).
type worker struct {
	req Request
	q   Query
	rep replier
	// arrived and replied are, per reply slot of the batch, its request's
	// kernel receive time (0: not known) and the reply's type.
	arrived [batch]int64
	replied [batch]dhcpv4.MessageType
	sent    dhcpv4.MessageType // the type of the reply handle last built
}

func (s *Server) work(ctx context.Context, conn *net.UDPConn) {
	var bc packetConn
	if s.portable {
		bc = newPortableConn(conn)
	} else {
		c, err := newBatchConn(conn, batch)
		if err != nil {
			s.log.Error(err, "Using the DHCP socket")
			return
		}
		bc = c
	}
	w := &worker{}
	for {
		n, err := bc.read()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			s.log.Error(err, "Reading DHCP packets")
			continue
		}
		out := 0
		for i := range n {
			pkt, peer, whole := bc.packet(i)
			if !whole {
				s.metrics.packet(dhcpv4.MessageTypeNone, ResultMalformed)
				continue
			}
			if reply, dst := s.handle(w, pkt, peer, bc.outBuf(out)); reply != nil {
				bc.queue(out, reply, dst)
				w.arrived[out], w.replied[out] = bc.arrived(i), w.sent
				out++
			}
		}
		if out == 0 {
			continue
		}
		failed, err := bc.write(out)
		s.metrics.responded(w.arrived[:out], w.replied[:out], time.Now().UnixNano())
		if failed > 0 {
			for range failed {
				s.metrics.packet(dhcpv4.MessageTypeNone, ResultSendFailed)
			}
			if err != nil && !errors.Is(err, net.ErrClosed) {
				s.log.V(1).Info("Sending DHCP replies failed", "failed", failed, "error", err.Error())
			}
		}
	}
}

// handle builds the answer to one packet in buf and where it goes, or nil;
// it never panics on input and allocates nothing on the way to an OFFER or
// ACK.
func (s *Server) handle(w *worker, pkt []byte, peer netip.AddrPort, buf []byte) ([]byte, netip.AddrPort) {
	start := time.Now()
	req := &w.req
	if err := req.Parse(pkt); err != nil {
		s.metrics.packet(dhcpv4.MessageTypeNone, ResultMalformed)
		if s.log.V(2).Enabled() {
			s.log.V(2).Info("Dropping malformed DHCP packet", "peer", peer.String(), "interface", s.iface, "error", err.Error())
		}
		return nil, netip.AddrPort{}
	}
	msgType := req.MessageType()
	if s.ready != nil && !s.ready() {
		s.metrics.packet(msgType, ResultNotReady)
		return nil, netip.AddrPort{}
	}
	q := &w.q
	*q = req.Query(s.proxyPort)
	d := Decide(q, s.backend, &s.cfg)
	s.metrics.packet(msgType, d.Result)
	if d.Type == dhcpv4.MessageTypeNone {
		if d.Result == ResultUnknownMAC && s.observer != nil && q.Client.Booting() {
			s.observer.Unknown(q.MAC, q.Client)
		}
		if s.log.V(2).Enabled() {
			s.log.V(2).Info("Not answering DHCP request", "mac", q.MAC.String(), "type", msgType.String(), "result", string(d.Result), "interface", s.iface)
		}
		return nil, netip.AddrPort{}
	}
	w.rep.w.b = buf
	resp := w.rep.encode(req, &d, &s.cfg)
	w.sent = d.Type
	dst := replyAddr(q, d.Type, peer, s.proxyPort, s.clientPort)
	s.metrics.latency.Observe(time.Since(start).Seconds())
	if s.observer != nil && d.Result != ResultNak {
		s.observer.Answered(q.MAC, d.Type, clientAddr(&d))
	}
	// Per-packet logs are verbose only; building their values costs more
	// than answering the packet.
	if s.log.V(1).Enabled() {
		s.log.V(1).Info("Answering DHCP request", "mac", q.MAC.String(), "xid", fmt.Sprintf("%x", req.Xid), "interface", s.iface,
			"type", msgType.String(), "reply", d.Type.String(), "to", dst.String())
	}
	return resp, dst
}

// clientAddr is the address this exchange binds to the client (see
// Observer.Answered): the reply's yiaddr, which only reservation mode sets.
func clientAddr(d *Decision) netip.Addr {
	if d.YourIP != zero4 {
		return netip.AddrFrom4(d.YourIP)
	}
	return netip.Addr{}
}

var zero4 [4]byte

// replyAddr picks where a reply goes (RFC 2131 4.1): a relay's giaddr at
// port 67; else the client at clientPort (68): on the proxy port at the
// request's source address (a PXE client there has an address), else at its
// ciaddr, else broadcast (always for a NAK). It never answers the request's
// own source port: the reply carries the MAC's script token, and anyone can
// send a request with any chaddr from any port.
func replyAddr(req *Query, respType dhcpv4.MessageType, peer netip.AddrPort, proxyPort bool, clientPort uint16) netip.AddrPort {
	fromPeer := peer.IsValid() && !peer.Addr().IsUnspecified()
	switch {
	case req.GIAddr != zero4:
		return netip.AddrPortFrom(netip.AddrFrom4(req.GIAddr), ServerPort)
	case proxyPort && fromPeer:
		return netip.AddrPortFrom(peer.Addr().Unmap(), clientPort)
	case respType == dhcpv4.MessageTypeNak:
		return netip.AddrPortFrom(broadcast4, clientPort)
	case req.CIAddr != zero4:
		return netip.AddrPortFrom(netip.AddrFrom4(req.CIAddr), clientPort)
	default:
		return netip.AddrPortFrom(broadcast4, clientPort)
	}
}

var broadcast4 = netip.AddrFrom4([4]byte{255, 255, 255, 255})

// Metrics of the DHCP server.
type Metrics struct {
	packets *prometheus.CounterVec
	latency prometheus.Histogram
	// response is ggnet_dhcp_response_seconds by reply type; responses
	// caches its observers (OFFER, ACK, NAK, the rest).
	response  *prometheus.HistogramVec
	responses [4]prometheus.Observer
	// counters caches the packet counters by message type and result, so a
	// packet costs no label lookup.
	counters [numTypeLabels][numResults]atomic.Pointer[prometheus.Counter]
}

// NewMetrics registers the DHCP metrics with reg (nil: not registered).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		packets: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ggnet_dhcp_packets_total",
			Help: "DHCP requests by message type and what was done with them.",
		}, []string{"type", "result"}),
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "ggnet_dhcp_reply_seconds",
			Help:    "Time from reading a DHCP request to its reply being ready to send.",
			Buckets: []float64{5e-6, 10e-6, 25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 10e-3},
		}),
	}
	m.response = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "ggnet_dhcp_response_seconds",
		Help: "Time from a DHCP request's arrival at the socket (its kernel receive timestamp) to its reply handed to the kernel: " +
			"the wait for a worker to read it, the answer, and the send.",
		Buckets: []float64{10e-6, 20e-6, 30e-6, 50e-6, 75e-6, 100e-6, 150e-6, 200e-6, 300e-6, 500e-6, 750e-6,
			1e-3, 1.5e-3, 2e-3, 3e-3, 5e-3, 10e-3, 25e-3, 100e-3},
	}, []string{"reply"})
	for i, t := range []string{"OFFER", "ACK", "NAK", "other"} {
		m.responses[i] = m.response.WithLabelValues(t)
	}
	if reg != nil {
		reg.MustRegister(m.packets, m.latency, m.response)
	}
	return m
}

// responded observes, for each reply just sent at now (Unix nanoseconds),
// the time since its request arrived; a request without a receive time
// (the portable socket path) is not observed.
func (m *Metrics) responded(arrived []int64, replied []dhcpv4.MessageType, now int64) {
	for i, at := range arrived {
		if at == 0 || at > now {
			continue
		}
		o := m.responses[3]
		switch replied[i] {
		case dhcpv4.MessageTypeOffer:
			o = m.responses[0]
		case dhcpv4.MessageTypeAck:
			o = m.responses[1]
		case dhcpv4.MessageTypeNak:
			o = m.responses[2]
		}
		o.Observe(float64(now-at) / 1e9)
	}
}

// results lists every Result; its index is the counter's.
var results = [...]Result{ResultOffer, ResultAck, ResultNak, ResultUnknownMAC, ResultNoAddress, ResultNotPXE,
	ResultOtherServer, ResultIgnoredType, ResultMalformed, ResultSendFailed, ResultNotBootReply, ResultNotReady}

const numResults = len(results)

// numTypeLabels: message types 1 to 18 (RFC 2132, 4388, 6926, 7724) by
// name, 0 as "unknown" (none or unreadable), anything else as "other", so
// that a flood of odd types cannot grow the metric without bound.
const numTypeLabels = 20

func typeLabel(t dhcpv4.MessageType) (int, string) {
	switch {
	case t == dhcpv4.MessageTypeNone:
		return 0, "unknown"
	case t <= 18:
		return int(t), t.String()
	default:
		return numTypeLabels - 1, "other"
	}
}

func (m *Metrics) packet(t dhcpv4.MessageType, r Result) {
	ri := slices.Index(results[:], r)
	ti, label := typeLabel(t)
	slot := &m.counters[ti][ri]
	c := slot.Load()
	if c == nil {
		counter := m.packets.WithLabelValues(label, string(r))
		slot.Store(&counter)
		c = &counter
	}
	(*c).Inc()
}
