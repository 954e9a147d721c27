// Package httpboot serves iPXE scripts over HTTP (GET
// /boot/<token>/<mac>.ipxe) and the iPXE binaries for UEFI HTTP boot (GET
// /ipxe/<file>). A script goes only to a requester the table authorizes
// (the MAC's token, an address bound to the MAC); anyone else gets 403 and
// causes nothing but a rate-limited Event. For an AutoSession machine
// without a session the request asks for one and long-polls until it is
// Ready, within bounded slots. It imports no Kubernetes package.
package httpboot

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/ggnet/ggnet/bootagent/table"
	"github.com/ggnet/ggnet/internal/ipxe"
)

// Sessions is what the handler needs from the agent's table.
type Sessions interface {
	// Authorize decides a script request (table.Table.Authorize): a refusal
	// wraps table.ErrForbidden and carries the MAC's Machine when known.
	Authorize(mac net.HardwareAddr, token string, remote netip.Addr) (table.Grant, error)
	// Changed returns a channel closed at the MAC's next change.
	Changed(mac net.HardwareAddr) <-chan struct{}
}

// Recorder hears about served scripts, session requests and refusals; the
// agent writes them to the API server off the request path. None of its
// methods may block.
type Recorder interface {
	// ScriptServed records that a session's script was served.
	ScriptServed(sessionKey string)
	// RequestSession asks for a session for an AutoSession machine; it is
	// idempotent.
	RequestSession(m table.Machine)
	// BootFailed records that the session's iPXE could not sanboot, with
	// iPXE's error number.
	BootFailed(sessionKey, errno string)
	// Forbidden records a refused request for a known machine's MAC (the
	// agent rate-limits an Event on the Machine). reason never contains
	// the token.
	Forbidden(m table.Machine, peer netip.Addr, reason error)
}

// Config of the handler.
type Config struct {
	// BaseURL is the agent's HTTP address as clients see it, for retry URLs.
	BaseURL string
	// IPXERoot is the directory of the iPXE binaries (default /usr/lib/ipxe).
	IPXERoot string
	// Fallback says what machines without a session do: retry (wait and ask
	// again) or exit (boot from the next device).
	Fallback ipxe.Failure
	// RetryDelay is the pause of the retry fallback, in seconds (default 10).
	RetryDelay int
	// LongPoll is how long a request for an AutoSession machine waits for
	// its session to become Ready (default 60s).
	LongPoll time.Duration
	// MaxLongPolls bounds the long polls in flight in total (default 1000);
	// each MAC has at most one. A request over either bound gets the retry
	// fallback (result busy).
	MaxLongPolls int
	// Ready reports whether the agent's caches have synced; until then
	// script requests are answered 503. Nil is always ready.
	Ready func() bool
}

// IPXERootOrDefault is the iPXE directory, /usr/lib/ipxe when unset.
func (c Config) IPXERootOrDefault() string {
	if c.IPXERoot == "" {
		return "/usr/lib/ipxe"
	}
	return c.IPXERoot
}

// Handler is the HTTP boot handler.
type Handler struct {
	cfg      Config
	sessions Sessions
	recorder Recorder
	log      logr.Logger
	files    http.Handler
	requests *prometheus.CounterVec
	latency  *prometheus.HistogramVec
	polls    pollSlots
}

// New returns the handler; reg may be nil.
func New(cfg Config, sessions Sessions, recorder Recorder, log logr.Logger, reg prometheus.Registerer) (*Handler, error) {
	cfg.IPXERoot = cfg.IPXERootOrDefault()
	if cfg.Fallback == "" {
		cfg.Fallback = ipxe.FailureRetry
	}
	if cfg.RetryDelay <= 0 {
		cfg.RetryDelay = 10
	}
	if cfg.LongPoll <= 0 {
		cfg.LongPoll = 60 * time.Second
	}
	if cfg.MaxLongPolls <= 0 {
		cfg.MaxLongPolls = 1000
	}
	if !strings.HasPrefix(cfg.BaseURL, "http://") && !strings.HasPrefix(cfg.BaseURL, "https://") {
		return nil, fmt.Errorf("HTTP base URL %q: want http://host:port", cfg.BaseURL)
	}
	if cfg.Fallback != ipxe.FailureRetry && cfg.Fallback != ipxe.FailureExit {
		return nil, fmt.Errorf("fallback %q: want retry or exit", cfg.Fallback)
	}
	root, err := os.OpenRoot(cfg.IPXERoot)
	if err != nil {
		return nil, fmt.Errorf("opening the iPXE directory %s (Debian's ipxe package installs /usr/lib/ipxe): %w", cfg.IPXERoot, err)
	}
	h := &Handler{
		cfg: cfg, sessions: sessions, recorder: recorder, log: log,
		files: http.StripPrefix("/ipxe/", http.FileServerFS(root.FS())),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ggnet_http_script_requests_total",
			Help: "iPXE script requests by result.",
		}, []string{"result"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "ggnet_http_script_seconds",
			Help:    "Time to answer a script request, long polls included.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 4, 10),
		}, []string{"result"}),
		polls: pollSlots{max: cfg.MaxLongPolls, byMAC: map[[6]byte]struct{}{}},
	}
	if reg != nil {
		reg.MustRegister(h.requests, h.latency)
	}
	return h, nil
}

// Register adds the handler's routes to mux: scripts at
// /boot/<token>/<mac>.ipxe and /boot/<mac>.ipxe (the second is refused
// unless tokens are optional), iPXE binaries at /ipxe/<file>.
func (h *Handler) Register(mux *http.ServeMux) {
	mux.HandleFunc("GET /boot/{token}/{file}", h.serveScript)
	mux.HandleFunc("GET /boot/{file}", h.serveScript)
	mux.Handle("GET /ipxe/", h.files)
}

// Results of script requests: the values of the metrics' result label.
const (
	ResultSession    = "session"
	ResultAutoReady  = "auto-session"
	ResultNoSession  = "no-session"
	ResultConflict   = "conflict"
	ResultLocalBoot  = "local-boot"
	ResultBadRequest = "bad-request"
	ResultTimeout    = "timeout"
	ResultBusy       = "busy"
	ResultBootFailed = "boot-failed"
	// ResultRetired: a failure report of a retired session, answered with
	// the retry fallback.
	ResultRetired   = "retired"
	ResultForbidden = "forbidden"
	ResultNotReady  = "not-ready"
	ResultError     = "error"
)

// ResultStorageUnreachable: the session's storage node is unreachable
// (StorageReachable=False); the PC got the retry fallback.
const ResultStorageUnreachable = "storage-unreachable"

// request is one script request as the handler reads it.
type request struct {
	mac   net.HardwareAddr
	token string
	peer  netip.Addr
}

func (h *Handler) serveScript(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	var (
		result, body string
		status       int
	)
	peer := remoteAddr(r)
	mac, _, err := ipxe.ParseScriptPath(ipxe.ScriptDir + r.PathValue("file"))
	failed, isReport := r.URL.Query()["failed"]
	switch {
	case h.cfg.Ready != nil && !h.cfg.Ready():
		result, status, body = ResultNotReady, http.StatusServiceUnavailable, "boot agent not ready, try again\n"
	case err != nil:
		result, status, body = ResultBadRequest, http.StatusBadRequest, "want /boot/<token>/<mac>.ipxe, like /boot/<token>/52:54:00:12:34:56.ipxe\n"
	case isReport && !isErrno(failed[0]):
		result, status, body = ResultBadRequest, http.StatusBadRequest, "want /boot/<token>/<mac>.ipxe?failed=0x<errno>\n"
	default:
		req := request{mac: mac, token: r.PathValue("token"), peer: peer}
		if isReport {
			result, status, body = h.failed(req, failed[0])
		} else {
			result, status, body = h.script(r.Context(), w, req)
		}
	}
	h.requests.WithLabelValues(result).Inc()
	h.latency.WithLabelValues(result).Observe(time.Since(start).Seconds())
	// Only the parsed MAC is logged, never the path or its file value: the
	// path carries the token, and so does a file value unescaped from
	// <token>%2F<mac>.ipxe.
	logMAC := "invalid"
	if err == nil {
		logMAC = mac.String()
	}
	h.log.V(1).Info("Answered iPXE script request", "mac", logMAC, "peer", r.RemoteAddr, "result", result)
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	if status != http.StatusOK {
		// A refused requester does not keep a connection slot idle.
		w.Header().Set("Connection", "close")
	}
	w.WriteHeader(status)
	_, _ = w.Write([]byte(body))
}

func remoteAddr(r *http.Request) netip.Addr {
	ap, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil {
		return netip.Addr{}
	}
	return ap.Addr().Unmap()
}

// authorize asks the table and turns a refusal into its answer: 403, the
// Event for a known machine, nothing else.
func (h *Handler) authorize(req request) (g table.Grant, result string, status int, body string, ok bool) {
	g, err := h.sessions.Authorize(req.mac, req.token, req.peer)
	switch {
	case errors.Is(err, table.ErrForbidden):
		if g.Machine.Key != "" {
			h.recorder.Forbidden(g.Machine, req.peer, err)
		}
		h.log.V(1).Info("Refusing iPXE script request", "mac", req.mac.String(), "peer", req.peer.String(), "reason", err.Error())
		return g, ResultForbidden, http.StatusForbidden, "forbidden\n", false
	case err != nil:
		h.log.Error(err, "Rendering a session's script", "mac", req.mac.String(), "Machine", g.Machine.Key)
		return g, ResultError, http.StatusInternalServerError, "the boot script cannot be rendered; see the boot agent's log\n", false
	}
	return g, "", 0, "", true
}

// script decides what an allowed request gets: the session's script, a
// long poll for an AutoSession machine, or a fallback. Only the long poll
// extends w's write deadline (the server's WriteTimeout is short).
func (h *Handler) script(ctx context.Context, w http.ResponseWriter, req request) (result string, status int, body string) {
	g, result, status, body, ok := h.authorize(req)
	if !ok {
		return result, status, body
	}
	if g.Script != "" {
		h.recorder.ScriptServed(g.SessionKey)
		return ResultSession, http.StatusOK, g.Script
	}
	m := g.Machine
	if g.StorageUnreachable {
		// Not the script: the PC would spend the grace logging in to a
		// dead portal. It asks again until the node is back or the session
		// failed and another one is Ready.
		return ResultStorageUnreachable, http.StatusOK, h.fallback(req,
			fmt.Sprintf("the storage node of the session of %s is unreachable; %s asks again", m.Name, m.Name), ipxe.FailureRetry)
	}
	switch {
	case m.Policy == table.PolicyLocalBoot:
		return ResultLocalBoot, http.StatusOK, h.fallback(req, fmt.Sprintf("%s boots from its local disk", m.Name), ipxe.FailureExit)
	case !g.Owner:
		return ResultConflict, http.StatusOK, h.fallback(req, fmt.Sprintf("%s shares its MAC or address with another Machine; see its Conflict condition", m.Name), ipxe.FailureExit)
	case m.Policy != table.PolicyAutoSession || !m.HasImage:
		return ResultNoSession, http.StatusOK, h.fallback(req, fmt.Sprintf("no boot session for %s", m.Name), h.cfg.Fallback)
	}

	// AutoSession: ask for a session once, then wait until it is Ready,
	// holding one of the bounded long-poll slots.
	key := [6]byte(req.mac)
	if !h.polls.acquire(key) {
		return ResultBusy, http.StatusOK, h.fallback(req, fmt.Sprintf("the boot agent is busy; %s asks again", m.Name), ipxe.FailureRetry)
	}
	defer h.polls.release(key)
	// Unsupported only by test recorders, which have no deadline.
	_ = http.NewResponseController(w).SetWriteDeadline(time.Now().Add(h.cfg.LongPoll + WriteTimeout))
	ctx, cancel := context.WithTimeout(ctx, h.cfg.LongPoll)
	defer cancel()
	for {
		changed := h.sessions.Changed(req.mac)
		g, result, status, body, ok := h.authorize(req)
		if !ok {
			return result, status, body
		}
		if g.Script != "" {
			h.recorder.ScriptServed(g.SessionKey)
			return ResultAutoReady, http.StatusOK, g.Script
		}
		if !g.Live {
			h.recorder.RequestSession(g.Machine)
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return ResultTimeout, http.StatusOK, h.fallback(req, fmt.Sprintf("the session of %s is not ready yet", m.Name), ipxe.FailureRetry)
		}
	}
}

// failed records a sanboot failure the script reported and sends the machine
// to its next boot device instead of into a loop. A failure of a session
// being retired (the report carries its token, or the machine has a
// retiring session not yet stopped) is no failure: its target refuses new
// logins on purpose, so the PC gets the retry fallback, which fetches its
// machine's script again (the next session, once prepared; the long poll
// waits for it) — nothing is recorded.
func (h *Handler) failed(req request, errno string) (string, int, string) {
	g, result, status, body, ok := h.authorize(req)
	if !ok {
		return result, status, body
	}
	if g.Retired || g.Retiring {
		return ResultRetired, http.StatusOK, h.fallback(req, "the session was retired (iPXE error "+errno+"); fetching the next session of the machine", ipxe.FailureRetry)
	}
	if g.SessionKey != "" {
		h.recorder.BootFailed(g.SessionKey, errno)
	}
	return ResultBootFailed, http.StatusOK, h.fallback(req, "the boot failed (iPXE error "+errno+"); see the BootSession", ipxe.FailureExit)
}

func isErrno(s string) bool {
	hex, ok := strings.CutPrefix(s, "0x")
	if !ok || len(hex) == 0 || len(hex) > 8 {
		return false
	}
	for _, c := range hex {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

// fallback renders a fallback script whose retry fetches the same URL,
// token included (the body goes only to an allowed requester).
func (h *Handler) fallback(req request, reason string, on ipxe.Failure) string {
	url := ipxe.ScriptURL(h.cfg.BaseURL, req.mac, req.token)
	s, err := ipxe.Fallback(reason, on, h.cfg.RetryDelay, url)
	if err != nil {
		// Reasons are built from validated names; this is a bug, not input.
		h.log.Error(err, "Rendering fallback script")
		s, _ = ipxe.Fallback("no boot script", ipxe.FailureExit, 0, "")
	}
	return s
}

// pollSlots bounds long polls: one per MAC, max in total.
type pollSlots struct {
	mu    sync.Mutex
	max   int
	byMAC map[[6]byte]struct{}
}

func (p *pollSlots) acquire(mac [6]byte) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, busy := p.byMAC[mac]; busy || len(p.byMAC) >= p.max {
		return false
	}
	p.byMAC[mac] = struct{}{}
	return true
}

func (p *pollSlots) release(mac [6]byte) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.byMAC, mac)
}
