// Package tftp is the boot agent's read-only TFTP server. Requests go through
// an ordered list of routes, first match wins: per-machine iPXE scripts from
// memory ("boot/<token>/<mac>.ipxe", "boot/<mac>.ipxe", "<mac>.ipxe"), handed
// out only when the Scripts implementation authorizes the requester, then
// the iPXE binaries from a root directory. Names are cleaned before any
// file-system access, and files are opened through an os.Root so nothing
// outside the root is reachable, symlinks included. Transfers are bounded in
// total and per source address. A client gets the blksize it asks for (RFC
// 2348; up to the receiving interface's MTU less 28) and the windowsize
// (RFC 7440) up to MaxWindowSize, through the pin/tftp fork in
// third_party/tftp (see its PATCH.md).
package tftp

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/go-logr/logr"
	"github.com/pin/tftp/v3"
)

// Scripts authorizes and answers requests for machines' iPXE scripts. The
// boot agent implements it from its table; tests pass a map.
//
// Script is called once per script request, before any byte of the answer
// is sent, with:
//   - mac: the six-byte MAC from the name;
//   - token: the name's token ("boot/<token>/<mac>.ipxe"), already checked to
//     have a token's form ([a-z2-7]{32}); "" for "boot/<mac>.ipxe" and
//     "<mac>.ipxe";
//   - peer: the requester's IP address (IPv4 unmapped, no port; the zero
//     Addr if the transfer library did not say).
//
// It returns the script to send, credentials included, only when the request
// is allowed: the token equals the served session's token or the MAC's nonce
// (compared in constant time; "" is allowed only when tokens are not
// required) and peer is bound to the MAC. Otherwise it returns an error for
// which errors.Is reports one of:
//   - ErrForbidden: the token or the peer does not match, or the MAC is
//     unknown. Check this before looking for a script, so that the answer
//     does not tell a stranger which MACs have sessions. The server answers
//     TFTP error 2 (access violation) and counts result "forbidden".
//   - ErrNotReady: the agent's caches have not synced; result "not-ready".
//   - ErrNoScripts: an allowed requester whose MAC has no bootable session;
//     result "not-found".
//
// Any other error is answered "script lookup failed" and counted "error".
// The error's text is logged (verbosity 1), never sent to the client, and
// must not contain the token or the script. Script must be safe for
// concurrent use and must not block (no API call); a refused request must
// have no side effect beyond the implementer's own rate-limited Event. The
// server never logs the script or the token.
type Scripts interface {
	Script(mac net.HardwareAddr, token string, peer netip.Addr) (script string, err error)
}

// Errors a request can be refused with; their text is what the client sees.
// ErrForbidden, ErrNotReady and ErrNoScripts are also what a Scripts
// implementation returns (or wraps).
var (
	ErrBadName       = errors.New("bad file name")
	ErrNotFound      = errors.New("file not found")
	ErrWrite         = errors.New("writes are refused: this server is read-only")
	ErrTooBusy       = errors.New("too many transfers")
	ErrTooBusySource = errors.New("too many transfers from this address")
	ErrForbidden     = errors.New("forbidden")
	ErrNotReady      = errors.New("boot agent not ready, try again")
	ErrNoScripts     = errors.New("no script for this machine")

	errScriptLookup = errors.New("script lookup failed")
)

// Defaults of the options.
const (
	DefaultMaxTransfers = 2000
	DefaultMaxPerSource = 8
)

// MaxWindowSize is the largest windowsize (RFC 7440) the server grants: a
// client asking for more gets this many blocks per ACK. EDK2's PXE client
// asks for 4 (PcdPxeTftpWindowSize); iPXE does not ask.
const MaxWindowSize = 16

// Server serves scripts and files over TFTP.
type Server struct {
	root         *os.Root
	scripts      Scripts
	log          logr.Logger
	metrics      *Metrics
	maxTransfers int
	maxPerSource int
	limit        *limiter
	timeout      time.Duration
	srv          *tftp.Server
	// conn is the listening socket, set by Serve before the first request;
	// refusals with an error code of their own are sent from it.
	conn net.PacketConn
}

// Option configures a Server.
type Option func(*Server)

// WithLogger sets the logger.
func WithLogger(l logr.Logger) Option { return func(s *Server) { s.log = l } }

// WithMetrics sets the metrics.
func WithMetrics(m *Metrics) Option { return func(s *Server) { s.metrics = m } }

// WithMaxTransfers bounds concurrent transfers in total (default
// DefaultMaxTransfers, at least 1).
func WithMaxTransfers(n int) Option { return func(s *Server) { s.maxTransfers = n } }

// WithMaxPerSource bounds concurrent transfers per source IP address
// (default DefaultMaxPerSource, at least 1). A request over it is answered
// "too many transfers from this address".
func WithMaxPerSource(n int) Option { return func(s *Server) { s.maxPerSource = n } }

// New opens rootDir read-only and returns a server.
func New(rootDir string, scripts Scripts, opts ...Option) (*Server, error) {
	s := &Server{
		scripts:      scripts,
		log:          logr.Discard(),
		maxTransfers: DefaultMaxTransfers,
		maxPerSource: DefaultMaxPerSource,
		timeout:      2 * time.Second,
	}
	for _, o := range opts {
		o(s)
	}
	if s.maxTransfers < 1 || s.maxPerSource < 1 {
		return nil, fmt.Errorf("TFTP transfer limits must be at least 1, got %d in total and %d per source", s.maxTransfers, s.maxPerSource)
	}
	if scripts == nil {
		return nil, errors.New("a TFTP server needs a Scripts implementation")
	}
	root, err := os.OpenRoot(rootDir)
	if err != nil {
		return nil, fmt.Errorf("opening the TFTP root %s (Debian's ipxe package installs /usr/lib/ipxe): %w", rootDir, err)
	}
	s.root = root
	if s.metrics == nil {
		s.metrics = NewMetrics(nil)
	}
	s.limit = newLimiter(s.maxTransfers, s.maxPerSource)
	s.srv = tftp.NewServer(s.read, s.write)
	s.srv.SetTimeout(s.timeout)
	s.srv.SetRetries(5)
	s.srv.SetWindowSize(MaxWindowSize)
	return s, nil
}

// Serve serves on conn until ctx ends.
func (s *Server) Serve(ctx context.Context, conn net.PacketConn) error {
	s.conn = conn
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
	s.metrics.transfers.WithLabelValues("write", ResultRefused).Inc()
	r, err := Resolve(filename)
	s.log.V(1).Info("Refusing TFTP write", "filename", logName(filename, r, err))
	return ErrWrite
}

func (s *Server) read(filename string, rf io.ReaderFrom) error {
	var peer *net.UDPAddr
	var src netip.Addr
	if ot, ok := rf.(tftp.OutgoingTransfer); ok {
		a := ot.RemoteAddr()
		peer = &a
		src, _ = netip.AddrFromSlice(a.IP)
		src = src.Unmap()
	}
	r, rerr := Resolve(filename)
	log := s.log.WithValues("filename", logName(filename, r, rerr), "peer", peer.String())

	if err := s.limit.acquire(src); err != nil {
		result := ResultRefused
		if errors.Is(err, ErrTooBusySource) {
			result = ResultSourceCap
		}
		s.metrics.transfers.WithLabelValues("busy", result).Inc()
		log.V(1).Info("Refusing TFTP transfer over a limit", "error", err.Error())
		return err
	}
	defer s.limit.release(src)

	start := time.Now()
	o := s.send(r, rerr, rf, peer, src)
	if o.err != nil {
		kv := []any{"result", o.result, "error", o.err.Error()}
		if o.reason != nil {
			kv = append(kv, "reason", o.reason.Error())
		}
		log.V(1).Info("TFTP transfer failed", kv...)
	} else {
		log.V(2).Info("Sent file over TFTP", "bytes", o.n, "duration", time.Since(start).String())
	}
	s.metrics.transfers.WithLabelValues(o.label, o.result).Inc()
	s.metrics.bytes.WithLabelValues(o.label).Add(float64(o.n))
	return o.err
}

// outcome is how a request ended.
type outcome struct {
	label, result string // the metrics' file label and result
	n             int64  // bytes sent
	err           error  // what the client is answered
	reason        error  // for the log only: a Scripts error, which the client never sees
}

// send answers a resolved request.
func (s *Server) send(r Resolved, rerr error, rf io.ReaderFrom, peer *net.UDPAddr, src netip.Addr) outcome {
	if rerr != nil {
		return outcome{label: "invalid", result: ResultError, err: rerr}
	}
	if r.Kind == RouteScript {
		script, err := s.scripts.Script(r.MAC, r.Token, src)
		if err != nil {
			return s.refuseScript(err, peer)
		}
		if ot, ok := rf.(tftp.OutgoingTransfer); ok {
			ot.SetSize(int64(len(script)))
		}
		n, err := rf.ReadFrom(strings.NewReader(script))
		return outcome{label: RouteScript, result: resultOf(err), n: n, err: err}
	}
	f, err := s.root.Open(r.Path)
	if err != nil {
		return outcome{label: "missing", result: ResultError, err: ErrNotFound}
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil || !st.Mode().IsRegular() {
		return outcome{label: "missing", result: ResultError, err: ErrNotFound}
	}
	// os.File is a Seeker, so the library answers tsize itself.
	n, err := rf.ReadFrom(f)
	return outcome{label: r.Path, result: resultOf(err), n: n, err: err}
}

// refuseScript maps a Scripts error to the answer; the implementer's text
// goes to the log only.
func (s *Server) refuseScript(reason error, peer *net.UDPAddr) outcome {
	o := outcome{label: RouteScript, reason: reason}
	switch {
	case errors.Is(reason, ErrForbidden):
		s.sendError(peer, errAccessViolation, ErrForbidden.Error())
		o.result, o.err = ResultForbidden, ErrForbidden
	case errors.Is(reason, ErrNotReady):
		o.result, o.err = ResultNotReady, ErrNotReady
	case errors.Is(reason, ErrNoScripts):
		o.result, o.err = ResultNoScript, ErrNoScripts
	default:
		o.result, o.err = ResultError, errScriptLookup
	}
	return o
}

func resultOf(err error) string {
	if err != nil {
		return ResultError
	}
	return ResultOK
}

// errAccessViolation is TFTP error code 2 (RFC 1350).
const errAccessViolation = 2

// sendError sends a TFTP ERROR packet with code to peer from the listening
// socket. pin/tftp answers every failed request with code 1 (file not
// found) from the transfer's own socket and has no way to choose the code,
// so a refusal that needs another code is sent here first; the library's
// code-1 packet with the same message follows. Clients (iPXE, pin/tftp)
// take the first reply and close the transfer, so the second lands on a
// closed port.
func (s *Server) sendError(peer *net.UDPAddr, code uint16, msg string) {
	if peer == nil || s.conn == nil {
		return
	}
	p := make([]byte, 0, 5+len(msg))
	p = binary.BigEndian.AppendUint16(p, 5) // ERROR
	p = binary.BigEndian.AppendUint16(p, code)
	p = append(append(p, msg...), 0)
	if _, err := s.conn.WriteTo(p, peer); err != nil {
		s.log.V(1).Info("Sending a TFTP error failed", "peer", peer.String(), "error", err.Error())
	}
}
