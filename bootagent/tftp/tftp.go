// Package tftp is the boot agent's read-only TFTP server. Requests go through
// an ordered list of routes, first match wins: per-machine iPXE scripts from
// memory (<mac>.ipxe), then the iPXE binaries from a root directory. Names are
// cleaned before any file-system access, and files are opened through an
// os.Root so nothing outside the root is reachable, symlinks included.
package tftp

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
	"github.com/pin/tftp/v3"
	"github.com/prometheus/client_golang/prometheus"
)

// Scripts returns a machine's current iPXE script. The agent implements it
// from its informer cache; tests pass a map.
type Scripts interface {
	Script(mac net.HardwareAddr) (string, bool)
}

// Errors a request can be refused with.
var (
	ErrBadName   = errors.New("bad file name")
	ErrNotFound  = errors.New("file not found")
	ErrWrite     = errors.New("writes are refused: this server is read-only")
	ErrTooBusy   = errors.New("too many transfers")
	ErrNoScripts = errors.New("no script for this machine")
)

// Route kinds, used as the metrics' file label for scripts so that per-MAC
// names do not make a label per machine.
const (
	RouteScript = "script"
	RouteFile   = "file"
)

// Resolved is where a request name leads.
type Resolved struct {
	Kind string
	// MAC is set for scripts.
	MAC net.HardwareAddr
	// Path is the cleaned path inside the root for files.
	Path string
}

// Resolve maps a requested name to a route. It is pure: no file-system access.
// A leading "/" is refused (it would mean an absolute path on other servers),
// as are "..", backslashes, NUL and control characters.
func Resolve(name string) (Resolved, error) {
	if name == "" || len(name) > 255 {
		return Resolved{}, ErrBadName
	}
	for _, c := range name {
		if c < 0x21 || c == 0x7f || c == '\\' {
			return Resolved{}, ErrBadName
		}
	}
	if strings.HasPrefix(name, "/") {
		return Resolved{}, ErrBadName
	}
	for _, part := range strings.Split(name, "/") {
		if part == "" || part == "." || part == ".." {
			return Resolved{}, ErrBadName
		}
	}
	if base, ok := strings.CutSuffix(name, ".ipxe"); ok && !strings.Contains(base, "/") {
		mac, err := net.ParseMAC(strings.ReplaceAll(base, "-", ":"))
		if err == nil && len(mac) == 6 {
			return Resolved{Kind: RouteScript, MAC: mac}, nil
		}
	}
	return Resolved{Kind: RouteFile, Path: name}, nil
}

// Server serves scripts and files over TFTP.
type Server struct {
	root         *os.Root
	scripts      Scripts
	log          logr.Logger
	metrics      *Metrics
	maxTransfers int64
	active       atomic.Int64
	timeout      time.Duration
	srv          *tftp.Server
}

// Option configures a Server.
type Option func(*Server)

// WithLogger sets the logger.
func WithLogger(l logr.Logger) Option { return func(s *Server) { s.log = l } }

// WithMetrics sets the metrics.
func WithMetrics(m *Metrics) Option { return func(s *Server) { s.metrics = m } }

// WithMaxTransfers bounds concurrent transfers (default 2000).
func WithMaxTransfers(n int) Option { return func(s *Server) { s.maxTransfers = int64(n) } }

// New opens rootDir read-only and returns a server.
func New(rootDir string, scripts Scripts, opts ...Option) (*Server, error) {
	root, err := os.OpenRoot(rootDir)
	if err != nil {
		return nil, fmt.Errorf("opening the TFTP root %s (Debian's ipxe package installs /usr/lib/ipxe): %w", rootDir, err)
	}
	s := &Server{root: root, scripts: scripts, log: logr.Discard(), maxTransfers: 2000, timeout: 2 * time.Second}
	for _, o := range opts {
		o(s)
	}
	if s.metrics == nil {
		s.metrics = NewMetrics(nil)
	}
	s.srv = tftp.NewServer(s.read, s.write)
	s.srv.SetTimeout(s.timeout)
	s.srv.SetRetries(5)
	return s, nil
}

// Serve serves on conn until ctx ends.
func (s *Server) Serve(ctx context.Context, conn net.PacketConn) error {
	go func() {
		<-ctx.Done()
		s.srv.Shutdown()
		_ = conn.Close()
	}()
	err := s.srv.Serve(conn)
	_ = s.root.Close()
	if ctx.Err() != nil {
		return nil
	}
	return err
}

func (s *Server) write(filename string, _ io.WriterTo) error {
	s.metrics.transfers.WithLabelValues("write", "refused").Inc()
	s.log.V(1).Info("Refusing TFTP write", "filename", filename)
	return ErrWrite
}

func (s *Server) read(filename string, rf io.ReaderFrom) error {
	log := s.log.WithValues("filename", filename)
	if ot, ok := rf.(tftp.OutgoingTransfer); ok {
		addr := ot.RemoteAddr()
		log = log.WithValues("peer", addr.String())
	}
	if s.active.Add(1) > s.maxTransfers {
		s.active.Add(-1)
		s.metrics.transfers.WithLabelValues("busy", "refused").Inc()
		return ErrTooBusy
	}
	defer s.active.Add(-1)

	start := time.Now()
	label, n, err := s.send(filename, rf)
	result := "ok"
	if err != nil {
		result = "error"
		log.V(1).Info("TFTP transfer failed", "error", err.Error())
	} else {
		log.V(2).Info("Sent file over TFTP", "bytes", n, "duration", time.Since(start).String())
	}
	s.metrics.transfers.WithLabelValues(label, result).Inc()
	s.metrics.bytes.WithLabelValues(label).Add(float64(n))
	return err
}

func (s *Server) send(filename string, rf io.ReaderFrom) (string, int64, error) {
	r, err := Resolve(filename)
	if err != nil {
		return "invalid", 0, fmt.Errorf("%w: %q", err, filename)
	}
	if r.Kind == RouteScript {
		script, ok := s.scripts.Script(r.MAC)
		if !ok {
			return RouteScript, 0, ErrNoScripts
		}
		if ot, ok := rf.(tftp.OutgoingTransfer); ok {
			ot.SetSize(int64(len(script)))
		}
		n, err := rf.ReadFrom(strings.NewReader(script))
		return RouteScript, n, err
	}
	f, err := s.root.Open(r.Path)
	if err != nil {
		return "missing", 0, ErrNotFound
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil || !st.Mode().IsRegular() {
		return "missing", 0, ErrNotFound
	}
	// os.File is a Seeker, so the library answers tsize itself.
	n, err := rf.ReadFrom(f)
	return r.Path, n, err
}

// Metrics of the TFTP server.
type Metrics struct {
	transfers *prometheus.CounterVec
	bytes     *prometheus.CounterVec
}

// NewMetrics registers the TFTP metrics with reg (nil: not registered).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		transfers: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ggnet_tftp_transfers_total",
			Help: "TFTP transfers by file (\"script\" for per-machine scripts) and result.",
		}, []string{"file", "result"}),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ggnet_tftp_sent_bytes_total",
			Help: "Bytes sent over TFTP by file.",
		}, []string{"file"}),
	}
	if reg != nil {
		reg.MustRegister(m.transfers, m.bytes)
	}
	return m
}
