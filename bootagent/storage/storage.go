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
	"sync"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/rest"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	"github.com/ggnet/ggnet/bootagent/images"
	"github.com/ggnet/ggnet/bootagent/overlay"
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
}

// skipNameValidation lets the role be built again in one process (its
// restart tests); its controllers' names are still one per role.
var skipNameValidation = true

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
	if cfg.Resync == 0 {
		cfg.Resync = 5 * time.Second
	}
	ov, err := overlay.Open(cfg.DataDir, cfg.Reserve)
	if err != nil {
		return nil, err
	}
	opts := ctrl.Options{
		Scheme:                 scheme.New(),
		Metrics:                metricsserver.Options{BindAddress: "0"},
		HealthProbeBindAddress: "0",
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
	r := &Role{cfg: cfg, log: log, mgr: mgr, reader: mgr.GetAPIReader(), overlays: ov, images: images.New(cfg.DataDir, log.WithName("images"))}
	if err := (&sessionReconciler{Role: r, Client: mgr.GetClient()}).setup(mgr); err != nil {
		return nil, err
	}
	if err := (&imageReconciler{Role: r, Client: mgr.GetClient()}).setup(mgr); err != nil {
		return nil, err
	}
	if err := r.setupPersist(mgr); err != nil {
		return nil, err
	}
	if err := mgr.Add(manager.RunnableFunc(r.collectGarbage)); err != nil {
		return nil, err
	}
	if cfg.Portal != "" {
		if err := mgr.Add(manager.RunnableFunc(r.announcePortal)); err != nil {
			return nil, err
		}
	}
	return r, nil
}

// Run runs the role until ctx ends.
func (r *Role) Run(ctx context.Context) error { return r.mgr.Start(ctx) }
