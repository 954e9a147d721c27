package controllers

import (
	"flag"

	ctrl "sigs.k8s.io/controller-runtime"
)

// Options configures the reconcilers; cmd/manager binds them to flags.
type Options struct {
	// MaxConcurrentReconciles per controller.
	MaxConcurrentReconciles int
}

// BindFlags registers the options as command-line flags.
func (o *Options) BindFlags(fs *flag.FlagSet) {
	fs.IntVar(&o.MaxConcurrentReconciles, "max-concurrent-reconciles", 4, "Reconciles run at once per controller.")
}

// Setup registers every GGnet reconciler with the manager.
func Setup(mgr ctrl.Manager, o Options) error {
	return nil
}
