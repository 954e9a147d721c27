package dhcp

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"syscall"
	"time"

	"github.com/go-logr/logr"
	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/net/ipv4"
	"golang.org/x/sys/unix"
)

// Standard ports.
const (
	ServerPort = 67
	ClientPort = 68
	ProxyPort  = 4011
)

// Observer hears about answered and unknown clients. The agent uses it to
// record boot progress and discovered machines; it must not block.
type Observer interface {
	Answered(mac net.HardwareAddr, msg dhcpv4.MessageType)
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

// NewServer validates cfg and returns a server.
func NewServer(cfg Config, backend Backend, opts ...Option) (*Server, error) {
	cfg.Defaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	s := &Server{cfg: cfg, backend: backend, workers: 8, log: logr.Discard()}
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

// Listen opens a UDP socket for DHCP on addr (":67", "127.0.0.1:0"), bound
// to iface when it is not empty so that replies leave by the interface the
// request came in on, with SO_BROADCAST for broadcast replies.
func Listen(iface, addr string) (*net.UDPConn, error) {
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			if serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); serr != nil {
				return
			}
			if serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_BROADCAST, 1); serr != nil {
				return
			}
			// A deep receive buffer absorbs boot storms (hundreds of PCs
			// powered on at once).
			_ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF, 4<<20)
			if iface != "" {
				serr = unix.BindToDevice(int(fd), iface)
			}
		})
		if err != nil {
			return err
		}
		return serr
	}}
	pc, err := lc.ListenPacket(context.Background(), "udp4", addr)
	if err != nil {
		return nil, fmt.Errorf("listening for DHCP on %s (interface %q): %w", addr, iface, err)
	}
	return pc.(*net.UDPConn), nil
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
// per system call under load.
const batch = 32

func (s *Server) work(ctx context.Context, conn *net.UDPConn) {
	pc := ipv4.NewPacketConn(conn)
	in := make([]ipv4.Message, batch)
	for i := range in {
		in[i].Buffers = [][]byte{make([]byte, 1500)}
	}
	out := make([]ipv4.Message, 0, batch)
	for {
		n, err := pc.ReadBatch(in, 0)
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			s.log.Error(err, "Reading DHCP packets")
			continue
		}
		out = out[:0]
		for i := range n {
			peer, _ := in[i].Addr.(*net.UDPAddr)
			if reply, dst := s.handle(in[i].Buffers[0][:in[i].N], peer); reply != nil {
				out = append(out, ipv4.Message{Buffers: [][]byte{reply}, Addr: dst})
			}
		}
		for len(out) > 0 {
			sent, err := pc.WriteBatch(out, 0)
			if err != nil {
				s.metrics.packet("reply", ResultSendFailed)
				s.log.V(1).Info("Sending DHCP replies failed", "error", err.Error())
				sent = max(sent, 1) // skip the reply that failed
			}
			out = out[sent:]
		}
	}
}

// handle builds the answer to one packet and where it goes, or nil; it never
// panics on input.
func (s *Server) handle(pkt []byte, peer *net.UDPAddr) ([]byte, *net.UDPAddr) {
	start := time.Now()
	req, err := dhcpv4.FromBytes(pkt)
	if err != nil {
		s.metrics.packet("unknown", ResultMalformed)
		s.log.V(2).Info("Dropping malformed DHCP packet", "peer", peer, "interface", s.iface, "error", err.Error())
		return nil, nil
	}
	msgType := req.MessageType()
	resp, result := Reply(req, s.backend, &s.cfg, s.proxyPort)
	// Per-packet logs are verbose only; building their keys costs more than
	// answering the packet.
	log := logr.Discard()
	if s.log.V(1).Enabled() {
		log = s.log.WithValues("mac", req.ClientHWAddr.String(), "xid", req.TransactionID.String(), "interface", s.iface)
	}
	if resp == nil {
		s.metrics.packet(msgType.String(), result)
		if result == ResultUnknownMAC && s.observer != nil {
			if c := ReadClient(req); c.Booting() {
				s.observer.Unknown(req.ClientHWAddr, c)
			}
		}
		log.V(2).Info("Not answering DHCP request", "type", msgType.String(), "result", string(result))
		return nil, nil
	}
	dst := replyAddr(req, resp, peer, s.proxyPort)
	s.metrics.packet(msgType.String(), result)
	s.metrics.latency.Observe(time.Since(start).Seconds())
	if s.observer != nil && result != ResultNak {
		s.observer.Answered(req.ClientHWAddr, resp.MessageType())
	}
	log.V(1).Info("Answering DHCP request", "type", msgType.String(), "reply", resp.MessageType().String(), "to", dst.String())
	return resp.ToBytes(), dst
}

// replyAddr picks where a reply goes (RFC 2131 4.1): a relay's giaddr, a
// client's ciaddr, the source of a unicast request from a non-standard port
// (a relay or test client on an ephemeral port), or broadcast.
func replyAddr(req, resp *dhcpv4.DHCPv4, peer *net.UDPAddr, proxyPort bool) *net.UDPAddr {
	fromOddPort := peer != nil && peer.Port != ClientPort && peer.Port != ServerPort && !peer.IP.IsUnspecified()
	switch {
	case fromOddPort:
		return peer
	case !req.GatewayIPAddr.IsUnspecified() && req.GatewayIPAddr != nil:
		return &net.UDPAddr{IP: req.GatewayIPAddr, Port: ServerPort}
	case proxyPort && peer != nil && !peer.IP.IsUnspecified():
		// PXE clients on 4011 have an address and wait on their source port.
		return peer
	case resp.MessageType() == dhcpv4.MessageTypeNak:
		return &net.UDPAddr{IP: net.IPv4bcast, Port: ClientPort}
	case !req.ClientIPAddr.IsUnspecified() && req.ClientIPAddr != nil:
		return &net.UDPAddr{IP: req.ClientIPAddr, Port: ClientPort}
	default:
		return &net.UDPAddr{IP: net.IPv4bcast, Port: ClientPort}
	}
}

// Metrics of the DHCP server.
type Metrics struct {
	packets *prometheus.CounterVec
	latency prometheus.Histogram
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
			Buckets: []float64{25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 10e-3},
		}),
	}
	if reg != nil {
		reg.MustRegister(m.packets, m.latency)
	}
	return m
}

func (m *Metrics) packet(msgType string, r Result) {
	m.packets.WithLabelValues(msgType, string(r)).Inc()
}
