package main

import (
	"context"
	"flag"
	"fmt"
	"time"

	"github.com/go-logr/logr"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/rest"

	"github.com/ggnet/ggnet/bootagent/storage"
	"github.com/ggnet/ggnet/bootagent/target"
)

// storageFlags are the storage role's flags.
type storageFlags struct {
	nodeName, dataDir, driver, lioRoot, portal, iqnPrefix string
	reserveMiB                                            uint64
	controlPort, tgtdIOThreads                            int
	startTGTD                                             bool
	imagePathRoot, metricsListen                          string
	imageMaxVirtualSizeGiB                                int64
	imageStallTimeout                                     time.Duration
	replicationAddress, replicationSecret                 string
	replicationBandwidth                                  string
}

func (f *storageFlags) bind(fs *flag.FlagSet) {
	fs.StringVar(&f.nodeName, "node-name", "", "This node's name (from the downward API: spec.nodeName); required by the storage role, and the boot role's field manager is ggnet-bootagent-<node> with it.")
	fs.StringVar(&f.dataDir, "data-dir", "/var/lib/ggnet", "Data directory for replicas and overlays; must be XFS with reflink or btrfs.")
	fs.Uint64Var(&f.reserveMiB, "reserve-mib", 10240, "Free space in MiB kept for running sessions; new overlays are refused below it.")
	fs.StringVar(&f.driver, "target-driver", "tgt", "iSCSI target driver: tgt (tgtd) or lio (kernel, configfs).")
	fs.IntVar(&f.controlPort, "tgt-control-port", 0, "tgtd control port: its management socket is /var/run/tgtd/socket.<port>.")
	fs.BoolVar(&f.startTGTD, "start-tgtd", false, "Run and supervise tgtd from the agent.")
	fs.IntVar(&f.tgtdIOThreads, "tgtd-iothreads", 0, "With --start-tgtd: I/O threads per logical unit of the tgtd it runs (tgtd -t); 0: tgtd's default, 16.")
	fs.StringVar(&f.portal, "portal", "", "iSCSI portal <IPv4>:<port> on the storage network (tgtd --iscsi portal=, LIO np), never 0.0.0.0; announced on this node for the manager to send PCs there. Required.")
	fs.StringVar(&f.lioRoot, "lio-configfs", "/sys/kernel/config", "configfs mount for the LIO driver.")
	fs.StringVar(&f.iqnPrefix, "iqn-prefix", "iqn.2026-11.io.ggnet:", "Targets whose IQN starts with this belong to GGnet.")
	fs.StringVar(&f.imagePathRoot, "image-path-root", "",
		"The only directory path-source Images are adopted from (opened through it: no symbolic link or .. out of it, regular files only); "+
			"it must neither hold the data directory nor lie in it. Empty: path sources are refused.")
	fs.Int64Var(&f.imageMaxVirtualSizeGiB, "image-max-virtual-size-gib", 512,
		"Largest virtual size, in GiB, of an Image without spec.maxVirtualSize: larger sources (and downloads) are refused with TooLarge.")
	fs.DurationVar(&f.imageStallTimeout, "image-stall-timeout", 60*time.Second,
		"A download attempt that received nothing for this long is aborted and retried with backoff.")
	fs.StringVar(&f.replicationAddress, "replication-address", "",
		"<IPv4>:<port> on the storage network where this node serves its Ready replicas to the other storage agents (signed requests only), "+
			"announced on its Node; never 0.0.0.0. Empty: replication between storage nodes is off.")
	fs.StringVar(&f.replicationSecret, "replication-secret", "",
		"<namespace>/<name> of the Secret whose \"key\" signs replication requests (the manager makes it); required with --replication-address.")
	fs.StringVar(&f.replicationBandwidth, "replication-bandwidth", "0",
		"Cap on this node's replica transfers from peers together, in bytes/s (a quantity: 125000000, 100Mi, 1G); 0: unlimited.")
	fs.StringVar(&f.metricsListen, "storage-metrics-listen", ":8882",
		"Listen address of the storage role's /healthz, /readyz and /metrics (apart from the boot role's --metrics-listen). - turns it off.")
}

func (f *storageFlags) role(ctx context.Context, cfg *rest.Config, namespace string, log logr.Logger) (*storage.Role, error) {
	if f.portal == "" {
		return nil, fmt.Errorf("--portal: required, the storage network's <IPv4>:<port> (the chart passes $(HOST_IP):3260)")
	}
	if err := storage.CheckPortal(f.portal); err != nil {
		return nil, fmt.Errorf("--portal: %w", err)
	}
	if f.imageMaxVirtualSizeGiB < 1 {
		return nil, fmt.Errorf("--image-max-virtual-size-gib %d: want 1 or more", f.imageMaxVirtualSizeGiB)
	}
	if f.imageStallTimeout < time.Second {
		return nil, fmt.Errorf("--image-stall-timeout %s: want 1s or more", f.imageStallTimeout)
	}
	var secret types.NamespacedName
	if f.replicationSecret != "" {
		var err error
		if secret, err = storage.ParseSecretRef(f.replicationSecret); err != nil {
			return nil, fmt.Errorf("--replication-secret: %w", err)
		}
	}
	bw, err := resource.ParseQuantity(f.replicationBandwidth)
	if err != nil || bw.Sign() < 0 {
		return nil, fmt.Errorf("--replication-bandwidth %q: want 0 (unlimited) or more bytes/s, like 125000000 or 100Mi", f.replicationBandwidth)
	}
	if f.tgtdIOThreads < 0 {
		return nil, fmt.Errorf("--tgtd-iothreads %d: want 0 (tgtd's default) or more", f.tgtdIOThreads)
	}
	var d target.Driver
	switch f.driver {
	case "tgt":
		d = &target.TGT{ControlPort: f.controlPort}
		if f.startTGTD {
			go target.SuperviseTGTD(ctx, f.controlPort, f.portal, f.tgtdIOThreads, log.WithName("tgtd"))
		}
	case "lio":
		d = &target.LIO{Root: f.lioRoot, Portal: f.portal}
	default:
		return nil, fmt.Errorf("--target-driver %q: want tgt or lio", f.driver)
	}
	return storage.New(cfg, storage.Config{
		NodeName: f.nodeName, DataDir: f.dataDir, Reserve: f.reserveMiB << 20,
		IQNPrefix: f.iqnPrefix, Driver: d, Namespace: namespace, Portal: f.portal,
		ImagePathRoot: f.imagePathRoot, ImageMaxVirtualSize: f.imageMaxVirtualSizeGiB << 30,
		ImageStallTimeout: f.imageStallTimeout, MetricsListen: f.metricsListen,
		ReplicationAddress: f.replicationAddress, ReplicationSecret: secret, ReplicationBandwidth: bw.Value(),
	}, log)
}
