package controllers

import (
	"github.com/prometheus/client_golang/prometheus"
	"sigs.k8s.io/controller-runtime/pkg/metrics"
)

var sessionReadySeconds = prometheus.NewHistogram(prometheus.HistogramOpts{
	Name:    "ggnet_session_create_to_ready_seconds",
	Help:    "Time from a BootSession's creation to Ready.",
	Buckets: prometheus.ExponentialBuckets(0.05, 2, 12),
})

func init() {
	metrics.Registry.MustRegister(sessionReadySeconds)
}
