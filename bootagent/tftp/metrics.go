package tftp

import "github.com/prometheus/client_golang/prometheus"

// Values of the transfers counter's result label. The file label is the
// file's path for files, RouteScript for scripts, "invalid" for refused
// names, "missing" for absent files, "busy" for requests over a limit and
// "write" for writes: never a MAC or a token.
const (
	ResultOK        = "ok"
	ResultError     = "error"
	ResultRefused   = "refused"      // a write, or over the global cap
	ResultSourceCap = "source-limit" // over the per-source cap
	ResultForbidden = "forbidden"    // Scripts returned ErrForbidden
	ResultNotReady  = "not-ready"    // Scripts returned ErrNotReady
	ResultNoScript  = "not-found"    // Scripts returned ErrNoScripts
)

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
			Help: "TFTP transfers by file (\"script\" for per-machine scripts, \"busy\" over a limit) and result.",
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
