package controllers

import (
	"context"
	"flag"

	ctrl "sigs.k8s.io/controller-runtime"
)

// Options configures the reconcilers; cmd/manager binds them to flags.
type Options struct {
	// MaxConcurrentReconciles per controller.
	MaxConcurrentReconciles int
	// IQNPrefix starts every target and initiator IQN.
	IQNPrefix string
	// ISCSIPort of the storage nodes' portals.
	ISCSIPort int
}

// BindFlags registers the options as command-line flags.
func (o *Options) BindFlags(fs *flag.FlagSet) {
	fs.IntVar(&o.MaxConcurrentReconciles, "max-concurrent-reconciles", 4, "Reconciles run at once per controller.")
	fs.StringVar(&o.IQNPrefix, "iqn-prefix", "iqn.2026-11.io.ggnet", "Prefix of the target and initiator IQNs GGnet makes.")
	fs.IntVar(&o.ISCSIPort, "iscsi-port", 3260, "iSCSI port of the storage nodes.")
}

// Setup registers the field indexes and every GGnet reconciler with the
// manager.
func Setup(ctx context.Context, mgr ctrl.Manager, o Options) error {
	if err := SetupIndexes(ctx, mgr); err != nil {
		return err
	}
	if err := (&BootSessionReconciler{Client: mgr.GetClient(), Recorder: mgr.GetEventRecorderFor("bootsession-controller"),
		IQNPrefix: o.IQNPrefix, ISCSIPort: o.ISCSIPort, Options: o}).SetupWithManager(mgr); err != nil {
		return err
	}
	if err := (&MachineReconciler{Client: mgr.GetClient(), Recorder: mgr.GetEventRecorderFor("machine-controller"), Options: o}).SetupWithManager(mgr); err != nil {
		return err
	}
	return (&ImageReconciler{Client: mgr.GetClient(), Recorder: mgr.GetEventRecorderFor("image-controller")}).SetupWithManager(mgr)
}
