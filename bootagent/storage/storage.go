// Package storage is the boot agent's storage role: it reconciles the
// BootSessions scheduled on this node (overlay, iSCSI target, ACL, CHAP, the
// StorageReady condition, iSCSI login and logout) and the Images selected for
// this node (replicas). It is idempotent: after a restart of the agent or of
// the target daemon it adopts what exists, rebuilds what is missing and
// removes only what no session wants.
package storage

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/rest"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/config"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	"github.com/ggnet/ggnet/bootagent/images"
	"github.com/ggnet/ggnet/bootagent/overlay"
	"github.com/ggnet/ggnet/bootagent/replication"
	"github.com/ggnet/ggnet/bootagent/target"
	"github.com/ggnet/ggnet/internal/scheme"
)

// Config of the storage role.
type Config struct {
	// NodeName is this node's name, as sessions and replicas name it.
	NodeName string
	// DataDir holds images/ and overlays/; it must support reflinks.
	DataDir string
	// Reserve is free space kept for running sessions' writes.
	Reserve uint64
	// IQNPrefix starts the IQNs of the targets GGnet owns; targets with
	// other names are never touched.
	IQNPrefix string
	// Driver is the iSCSI target driver.
	Driver target.Driver
	// Namespace limits the watch (empty: all).
	Namespace string
	// Resync is how often targets and connections are checked (default 5s).
	Resync time.Duration
	// Portal is the iSCSI portal the target listens on, <IPv4>:<port>
	// (CheckPortal); the role announces it on this node
	// (bootv1.ISCSIPortalAnnotation). Empty: nothing is announced and the
	// manager uses the node's InternalIP.
	Portal string
	// ImagePathRoot is the only directory path-source Images are adopted
	// from: an absolute path that neither holds the data directory nor lies
	// in it (an Image could otherwise adopt a session's disk). Empty: path
	// sources are refused.
	ImagePathRoot string
	// ImageMaxVirtualSize caps an Image's virtual size in bytes unless the
	// Image sets spec.maxVirtualSize (default images.DefaultMaxVirtualSize).
	ImageMaxVirtualSize int64
	// ImageStallTimeout ends a download attempt that received nothing for
	// that long; it is retried with backoff (default 60s).
	ImageStallTimeout time.Duration
	// MetricsListen is the address of /metrics, /healthz and /readyz;
	// empty or "-": none.
	MetricsListen string
	// CapacityInterval is how often the data directory's capacity and use
	// are measured for the metrics and the Node (default 30s).
	CapacityInterval time.Duration
	// ReplicationAddress is where the role serves its Ready replicas to the
	// other storage agents, <IPv4>:<port> (not 0.0.0.0), announced on this
	// node (bootv1.ReplicationEndpointAnnotation). Empty: replication is
	// off (no server, Role.Replication nil).
	ReplicationAddress string
	// ReplicationSecret is the Secret holding the storage agents' shared
	// signing key (bootv1.ReplicationSecretKey); required with
	// ReplicationAddress.
	ReplicationSecret types.NamespacedName
	// ReplicationBandwidth caps the node's replica transfers from peers
	// together, in bytes/s (0: unlimited).
	ReplicationBandwidth int64
	// ReplicationKeyInterval is how often the replication Secret is read
	// again: a rotated key takes effect within it (default 30s).
	ReplicationKeyInterval time.Duration
	// Controller is the manager's options for all of the role's
	// controllers (zero: controller-runtime's defaults). The tests, which
	// build the role again in one process, set SkipNameValidation.
	Controller config.Controller
}

// FieldOwner is the storage agent's field manager on this node.
func (c Config) FieldOwner() string { return "ggnet-storage-" + c.NodeName }

// Role is the running storage role.
type Role struct {
	cfg Config
	log logr.Logger
	mgr manager.Manager
	// reader reads straight from the API server (finalizer updates).
	reader   client.Reader
	overlays *overlay.Store
	images   *images.Store
	// gcMu keeps garbage collection from running during a session's
	// reconcile: a reconcile holds it shared, collection exclusively, so a
	// target made a moment ago is never taken for garbage.
	gcMu sync.RWMutex
	// persist is the persistent disks' state (persist.go).
	persist *persistState
	// jobs place replicas, each in its own goroutine (replicas.go).
	jobs *replicaJobs
	// metrics are the role's own gauges (capacity.go).
	metrics *storageMetrics
	// metricsAddr is where /metrics, /healthz and /readyz listen (nil: off).
	metricsAddr net.Addr
	// synced is set once the caches synced (/readyz).
	synced atomic.Bool
	// book is what the API server holds of the agent's fields of each
	// session (session_status.go).
	book *statusBook
	// node is what the agent applies on its Node's metadata (portal.go).
	node nodeMeta
	// Replication places replicas from peer storage agents (nil: off,
	// replication.go); replicationAddr is where this node serves its own.
	Replication     *replication.Client
	replicationAddr net.Addr
}

// New checks the data directory (reflink or refuse) and builds the role.
func New(restCfg *rest.Config, cfg Config, log logr.Logger) (*Role, error) {
	if cfg.NodeName == "" {
		return nil, fmt.Errorf("the storage role needs this node's name (--node-name, from the downward API)")
	}
	if cfg.Portal != "" {
		if err := CheckPortal(cfg.Portal); err != nil {
			return nil, err
		}
	}
	start := time.Now()
	if cfg.Resync == 0 {
		cfg.Resync = 5 * time.Second
	}
	if cfg.ImageMaxVirtualSize == 0 {
		cfg.ImageMaxVirtualSize = images.DefaultMaxVirtualSize
	}
	if cfg.ImageStallTimeout == 0 {
		cfg.ImageStallTimeout = images.DefaultStallTimeout
	}
	if cfg.ReplicationKeyInterval == 0 {
		cfg.ReplicationKeyInterval = 30 * time.Second
	}
	if cfg.CapacityInterval == 0 {
		cfg.CapacityInterval = 30 * time.Second
	}
	ov, err := overlay.Open(cfg.DataDir, cfg.Reserve)
	if err != nil {
		return nil, err
	}
	if err := checkImagePathRoot(cfg.ImagePathRoot, cfg.DataDir); err != nil {
		return nil, err
	}
	img := images.New(cfg.DataDir, log.WithName("images"))
	img.PathRoot, img.Reserve, img.MaxVirtualSize = cfg.ImagePathRoot, cfg.Reserve, cfg.ImageMaxVirtualSize
	img.StallTimeout, img.Client = cfg.ImageStallTimeout, images.NewHTTPClient(cfg.ImageStallTimeout)
	log.Info("Placing image replicas", "pathRoot", cfg.ImagePathRoot, "maxVirtualSize", cfg.ImageMaxVirtualSize,
		"stallTimeout", cfg.ImageStallTimeout.String(), "sandbox", img.Qemu.Sandbox())
	if err := sweepLitter(start, cfg.Namespace, ov, img, log); err != nil {
		return nil, err
	}
	opts := ctrl.Options{
		Scheme:                 scheme.New(),
		Metrics:                metricsserver.Options{BindAddress: "0"},
		HealthProbeBindAddress: "0",
		Controller:             cfg.Controller,
		Cache: cache.Options{
			DefaultTransform: cache.TransformStripManagedFields(),
			ByObject: map[client.Object]cache.ByObject{
				// Only this node's Node object.
				&corev1.Node{}: {Field: fieldsOneName(cfg.NodeName)},
				// Only the session Secrets: the agent holds no other
				// Secret in memory.
				&corev1.Secret{}: {Label: sessionSecrets()},
			},
		},
	}
	if cfg.Namespace != "" {
		opts.Cache.DefaultNamespaces = map[string]cache.Config{cfg.Namespace: {}}
	}
	mgr, err := ctrl.NewManager(restCfg, opts)
	if err != nil {
		return nil, err
	}
	r := &Role{cfg: cfg, log: log, mgr: mgr, reader: mgr.GetAPIReader(), overlays: ov, images: img, jobs: newReplicaJobs(log),
		book: newStatusBook()}
	r.metrics = newStorageMetrics(r)
	if err := r.setupMetricsServer(mgr); err != nil {
		return nil, err
	}
	if err := r.setupReplication(mgr); err != nil {
		return nil, err
	}
	if err := (&sessionReconciler{Role: r, Client: mgr.GetClient()}).setup(mgr); err != nil {
		return nil, err
	}
	if err := (&imageReconciler{Role: r, Client: mgr.GetClient()}).setup(mgr); err != nil {
		return nil, err
	}
	if err := r.setupPersist(mgr); err != nil {
		return nil, err
	}
	if err := mgr.Add(r.periodic("Collecting garbage", r.cfg.Resync, true, r.collectOnce)); err != nil {
		return nil, err
	}
	if err := mgr.Add(r.periodic("Reporting the storage capacity", r.cfg.CapacityInterval, false, r.reportCapacityOnce)); err != nil {
		return nil, err
	}
	// The node's liveness for the manager (lease.go).
	if err := mgr.Add(r.holdLease(mgr.GetClient())); err != nil {
		return nil, err
	}
	if cfg.Portal != "" {
		if err := mgr.Add(manager.RunnableFunc(r.announcePortal)); err != nil {
			return nil, err
		}
	}
	return r, nil
}

// Run runs the role until ctx ends; it then stops the replica placements
// under way (their temporary files go) and waits for them.
func (r *Role) Run(ctx context.Context) error {
	defer r.jobs.stopAll()
	return r.mgr.Start(ctx)
}

// MetricsAddr is the address /metrics, /healthz and /readyz listen on (nil:
// off).
func (r *Role) MetricsAddr() net.Addr { return r.metricsAddr }

// checkImagePathRoot accepts an empty root (path sources off) or an
// absolute directory that neither holds the data directory nor lies in it.
func checkImagePathRoot(root, dataDir string) error {
	if root == "" {
		return nil
	}
	if !filepath.IsAbs(root) {
		return fmt.Errorf("--image-path-root %s: want an absolute path", root)
	}
	st, err := os.Stat(root)
	if err != nil {
		return fmt.Errorf("--image-path-root: %w", err)
	}
	if !st.IsDir() {
		return fmt.Errorf("--image-path-root %s: not a directory", root)
	}
	r, err := filepath.EvalSymlinks(root)
	if err != nil {
		return fmt.Errorf("--image-path-root: %w", err)
	}
	d, err := filepath.EvalSymlinks(dataDir)
	if err != nil {
		return fmt.Errorf("the data directory: %w", err)
	}
	if within(r, d) || within(d, r) {
		return fmt.Errorf("--image-path-root %s and the data directory %s must not hold one another: "+
			"an Image could adopt another session's disk or a replica", root, dataDir)
	}
	return nil
}

// within reports whether path is dir or lies under it.
func within(path, dir string) bool {
	rel, err := filepath.Rel(dir, path)
	return err == nil && rel != ".." && !strings.HasPrefix(rel, ".."+string(filepath.Separator))
}

// sweepLitter removes the temporary files a crash left in the data
// directory (only names the overlay and images packages make, only files
// older than this start): one agent per node owns the data directory, or
// one per namespace when the agents watch one namespace each.
func sweepLitter(start time.Time, namespace string, ov *overlay.Store, img *images.Store, log logr.Logger) error {
	a, err := ov.Sweep(start, namespace)
	if err != nil {
		return fmt.Errorf("sweeping the overlays' temporary files: %w", err)
	}
	b, err := img.Sweep(start, namespace)
	if err != nil {
		return fmt.Errorf("sweeping the images' temporary files: %w", err)
	}
	for _, f := range append(a, b...) {
		log.Info("Removed a temporary file left by a crash", "file", f)
	}
	return nil
}
