// Command manager runs the GGnet controllers: Machine, Image and BootSession.
package main

import (
	"context"
	"flag"
	"os"
	"strings"

	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	"github.com/ggnet/ggnet/controllers"
	"github.com/ggnet/ggnet/internal/fleetmetrics"
	"github.com/ggnet/ggnet/internal/scheme"
)

func main() {
	var (
		metricsAddr, probeAddr string
		pprofAddr              string
		leaderElect            bool
		leaderElectNamespace   string
		namespace              string
		replicationSecret      string
		opts                   controllers.Options
	)
	flag.StringVar(&metricsAddr, "metrics-bind-address", ":8080", "Address of the /metrics endpoint; 0 turns it off.")
	flag.StringVar(&probeAddr, "health-probe-bind-address", ":8081", "Address of /healthz and /readyz.")
	flag.StringVar(&pprofAddr, "pprof-bind-address", "0", "Address of the Go profiler's /debug/pprof/ endpoints (for benchmarks); 0 turns it off.")
	flag.BoolVar(&leaderElect, "leader-elect", true, "Elect a leader so that only one manager replica reconciles.")
	flag.StringVar(&leaderElectNamespace, "leader-election-namespace", "", "Namespace of the leader election Lease (default: the pod's).")
	flag.StringVar(&namespace, "namespace", "", "Watch and manage only this namespace (default: all); the chart's watchNamespaces sets it and gives the manager a Role there.")
	flag.StringVar(&replicationSecret, "replication-secret", "",
		"Name of the Secret, in the manager's namespace (--leader-election-namespace, default the pod's), holding the storage agents' replication signing key; "+
			"the manager makes it with a random key when it is missing. Empty: none.")
	opts.BindFlags(flag.CommandLine)
	zapOpts := zap.Options{}
	zapOpts.BindFlags(flag.CommandLine)
	flag.Parse()
	ctrl.SetLogger(zap.New(zap.UseFlagOptions(&zapOpts)))
	log := ctrl.Log.WithName("setup")

	mgr, err := ctrl.NewManager(ctrl.GetConfigOrDie(), ctrl.Options{
		Scheme:                  scheme.New(),
		Cache:                   controllers.CacheOptions(namespace),
		Client:                  controllers.ClientOptions(),
		Metrics:                 metricsserver.Options{BindAddress: metricsAddr},
		HealthProbeBindAddress:  probeAddr,
		PprofBindAddress:        pprofAddr,
		LeaderElection:          leaderElect,
		LeaderElectionID:        "manager.boot.ggnet.io",
		LeaderElectionNamespace: leaderElectNamespace,
	})
	if err != nil {
		log.Error(err, "Unable to create the manager")
		os.Exit(1)
	}
	if err := mgr.AddHealthzCheck("healthz", healthz.Ping); err != nil {
		log.Error(err, "Unable to add the health check")
		os.Exit(1)
	}
	if err := mgr.AddReadyzCheck("readyz", healthz.Ping); err != nil {
		log.Error(err, "Unable to add the ready check")
		os.Exit(1)
	}
	if err := controllers.Setup(context.Background(), mgr, opts); err != nil {
		log.Error(err, "Unable to set up the controllers")
		os.Exit(1)
	}
	if replicationSecret != "" {
		if err := controllers.AddReplicationSecret(mgr, managerNamespace(leaderElectNamespace), replicationSecret); err != nil {
			log.Error(err, "Unable to set up the replication Secret")
			os.Exit(1)
		}
	}
	// The fleet gauges, boot counter and histograms (docs/monitoring.md).
	if err := fleetmetrics.Register(mgr); err != nil {
		log.Error(err, "Unable to register the fleet metrics")
		os.Exit(1)
	}

	log.Info("Starting manager")
	if err := mgr.Start(ctrl.SetupSignalHandler()); err != nil {
		log.Error(err, "Manager stopped")
		os.Exit(1)
	}
}

// serviceAccountNamespace is where a pod's namespace is mounted.
const serviceAccountNamespace = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"

// managerNamespace is the manager's own namespace, as leader election finds
// it: --leader-election-namespace, else the pod's; "" when neither is known.
func managerNamespace(flagValue string) string {
	if flagValue != "" {
		return flagValue
	}
	b, err := os.ReadFile(serviceAccountNamespace)
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}
