package storage

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	ctrlmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"

	"github.com/ggnet/ggnet/bootagent/httpboot"
)

// setupMetricsServer listens on cfg.MetricsListen (now, so that a taken
// port fails the start) and serves, while the role runs:
//
//	/metrics  the role's gauges and controller-runtime's registry (its
//	          controllers, workqueues, client, Go runtime and process)
//	/healthz  200 while the process serves
//	/readyz   200 once the role's caches synced
//
// With the boot role in the same process each role has its own listener
// (the boot role's --metrics-listen, and this one).
func (r *Role) setupMetricsServer(mgr ctrl.Manager) error {
	addr := r.cfg.MetricsListen
	if addr == "" || addr == "-" {
		return nil
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("--storage-metrics-listen %s: %w", addr, err)
	}
	r.metricsAddr = ln.Addr()
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok")) })
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !r.synced.Load() {
			http.Error(w, "informer caches not synced", http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ok"))
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(prometheus.Gatherers{ctrlmetrics.Registry, r.metrics.registry}, promhttp.HandlerOpts{}))
	shutdown := 5 * time.Second
	srv := &manager.Server{Name: "storage-metrics", Listener: httpboot.LimitListener(ln, 64, 16), ShutdownTimeout: &shutdown,
		Server: &http.Server{Handler: mux, ReadHeaderTimeout: httpboot.ReadHeaderTimeout, ReadTimeout: httpboot.ReadTimeout,
			WriteTimeout: httpboot.WriteTimeout, IdleTimeout: httpboot.IdleTimeout, MaxHeaderBytes: httpboot.MaxHeaderBytes}}
	if err := mgr.Add(srv); err != nil {
		return err
	}
	r.log.Info("Serving metrics and probes", "addr", ln.Addr().String())
	return mgr.Add(manager.RunnableFunc(func(ctx context.Context) error {
		if mgr.GetCache().WaitForCacheSync(ctx) {
			r.synced.Store(true)
		}
		return nil
	}))
}
