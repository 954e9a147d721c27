// Command bootagent runs on GGnet nodes: the boot role answers DHCP, TFTP and
// HTTP for PXE clients; the storage role serves image replicas, writeback
// overlays and iSCSI targets. One binary, roles chosen by flags.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
)

func main() {
	var (
		bootRole, storageRole bool
		probeAddr             string
	)
	flag.BoolVar(&bootRole, "boot", false, "Run the boot role: DHCP, TFTP and HTTP iPXE services.")
	flag.BoolVar(&storageRole, "storage", false, "Run the storage role: image replicas, overlays and iSCSI targets.")
	flag.StringVar(&probeAddr, "health-probe-bind-address", ":8082", "Address of /healthz, /readyz and /metrics.")
	zapOpts := zap.Options{}
	zapOpts.BindFlags(flag.CommandLine)
	flag.Parse()
	ctrl.SetLogger(zap.New(zap.UseFlagOptions(&zapOpts)))
	log := ctrl.Log.WithName("bootagent")

	if err := run(log, probeAddr, bootRole, storageRole); err != nil {
		log.Error(err, "Boot agent stopped")
		os.Exit(1)
	}
}

func run(log logr.Logger, probeAddr string, bootRole, storageRole bool) error {
	if !bootRole && !storageRole {
		return fmt.Errorf("no role: pass --boot, --storage or both")
	}
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer cancel()

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok")) })
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok")) })
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	srv := &http.Server{Addr: probeAddr, Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		<-ctx.Done()
		shutdown, c := context.WithTimeout(context.Background(), 5*time.Second)
		defer c()
		_ = srv.Shutdown(shutdown)
	}()
	log.Info("Starting boot agent", "boot", bootRole, "storage", storageRole, "probes", probeAddr)
	if err := srv.ListenAndServe(); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
