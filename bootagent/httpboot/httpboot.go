// Package httpboot serves iPXE scripts over HTTP (GET /boot/<mac>.ipxe) and
// the iPXE binaries for UEFI HTTP boot (GET /ipxe/<file>). For an AutoSession
// machine without a session the request asks for one and long-polls until it
// is Ready. It imports no Kubernetes package.
package httpboot

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/ggnet/ggnet/bootagent/table"
	"github.com/ggnet/ggnet/internal/ipxe"
)

// Sessions is what the handler needs from the agent.
type Sessions interface {
	Machine(mac net.HardwareAddr) (table.Machine, bool)
	Session(mac net.HardwareAddr) (table.Session, bool)
	HasSession(mac net.HardwareAddr) bool
	Changed(mac net.HardwareAddr) <-chan struct{}
}

// Recorder hears about served scripts and session requests; the agent
// writes them to the API server off the request path.
type Recorder interface {
	// ScriptServed records that a session's script was served.
	ScriptServed(sessionKey string)
	// RequestSession asks for a session for an AutoSession machine; it is
	// idempotent and must not block.
	RequestSession(m table.Machine)
	// BootFailed records that the session's iPXE could not sanboot, with
	// iPXE's error number.
	BootFailed(sessionKey, errno string)
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
	}
	if reg != nil {
		reg.MustRegister(h.requests, h.latency)
	}
	return h, nil
}

// Register adds the handler's routes to mux.
func (h *Handler) Register(mux *http.ServeMux) {
	mux.HandleFunc("GET /boot/{file}", h.serveScript)
	mux.Handle("GET /ipxe/", h.files)
}

// Results of script requests.
const (
	ResultSession    = "session"
	ResultAutoReady  = "auto-session"
	ResultNoSession  = "no-session"
	ResultUnknown    = "unknown-mac"
	ResultLocalBoot  = "local-boot"
	ResultBadRequest = "bad-request"
	ResultTimeout    = "timeout"
	ResultBootFailed = "boot-failed"
)

func (h *Handler) serveScript(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	var result, body string
	var status int
	if failed, ok := r.URL.Query()["failed"]; ok {
		result, status, body = h.failed(r.PathValue("file"), failed[0])
	} else {
		result, status, body = h.script(r.Context(), r.PathValue("file"))
	}
	h.requests.WithLabelValues(result).Inc()
	h.latency.WithLabelValues(result).Observe(time.Since(start).Seconds())
	h.log.V(1).Info("Served iPXE script", "file", r.PathValue("file"), "peer", r.RemoteAddr, "result", result)
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_, _ = w.Write([]byte(body))
}

// script decides what a request gets: the session's script, a long poll for
// an AutoSession machine, or a fallback.
func (h *Handler) script(ctx context.Context, file string) (result string, status int, body string) {
	base, ok := strings.CutSuffix(file, ".ipxe")
	mac, err := net.ParseMAC(strings.ReplaceAll(base, "-", ":"))
	if !ok || err != nil || len(mac) != 6 {
		return ResultBadRequest, http.StatusBadRequest, "want /boot/<mac>.ipxe, like /boot/52:54:00:12:34:56.ipxe\n"
	}
	if s, ok := h.sessions.Session(mac); ok {
		h.recorder.ScriptServed(s.Key)
		return ResultSession, http.StatusOK, s.Script
	}
	m, known := h.sessions.Machine(mac)
	switch {
	case !known:
		return ResultUnknown, http.StatusOK, h.fallback(mac, fmt.Sprintf("%s is not a known machine", mac), ipxe.FailureExit)
	case m.Policy == table.PolicyLocalBoot:
		return ResultLocalBoot, http.StatusOK, h.fallback(mac, fmt.Sprintf("%s boots from its local disk", m.Name), ipxe.FailureExit)
	case m.Policy != table.PolicyAutoSession || !m.HasImage:
		return ResultNoSession, http.StatusOK, h.fallback(mac, fmt.Sprintf("no boot session for %s", m.Name), h.cfg.Fallback)
	}

	// AutoSession: ask for a session once, then wait until it is Ready.
	ctx, cancel := context.WithTimeout(ctx, h.cfg.LongPoll)
	defer cancel()
	for {
		changed := h.sessions.Changed(mac)
		if s, ok := h.sessions.Session(mac); ok {
			h.recorder.ScriptServed(s.Key)
			return ResultAutoReady, http.StatusOK, s.Script
		}
		if !h.sessions.HasSession(mac) {
			h.recorder.RequestSession(m)
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return ResultTimeout, http.StatusOK, h.fallback(mac, fmt.Sprintf("the session of %s is not ready yet", m.Name), ipxe.FailureRetry)
		}
	}
}

// failed records a sanboot failure the script reported and sends the machine
// to its next boot device instead of into a loop.
func (h *Handler) failed(file, errno string) (string, int, string) {
	base, _ := strings.CutSuffix(file, ".ipxe")
	mac, err := net.ParseMAC(strings.ReplaceAll(base, "-", ":"))
	if err != nil || len(mac) != 6 || !isErrno(errno) {
		return ResultBadRequest, http.StatusBadRequest, "want /boot/<mac>.ipxe?failed=0x<errno>\n"
	}
	if s, ok := h.sessions.Session(mac); ok {
		h.recorder.BootFailed(s.Key, errno)
	}
	return ResultBootFailed, http.StatusOK, h.fallback(mac, "the boot failed (iPXE error "+errno+"); see the BootSession", ipxe.FailureExit)
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

func (h *Handler) fallback(mac net.HardwareAddr, reason string, on ipxe.Failure) string {
	url := strings.TrimRight(h.cfg.BaseURL, "/") + "/boot/" + mac.String() + ".ipxe"
	s, err := ipxe.Fallback(reason, on, h.cfg.RetryDelay, url)
	if err != nil {
		// Reasons are built from validated names; this is a bug, not input.
		h.log.Error(err, "Rendering fallback script")
		s, _ = ipxe.Fallback("no boot script", ipxe.FailureExit, 0, "")
	}
	return s
}
