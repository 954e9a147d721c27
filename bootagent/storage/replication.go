package storage

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/manager"

	bootv1 "github.com/ggnet/ggnet/api/v1alpha1"
	"github.com/ggnet/ggnet/bootagent/httpboot"
	"github.com/ggnet/ggnet/bootagent/replication"
)

// Bounds of the replication server: connections at once, and from one
// peer (a peer runs at most images.MaxTransfers transfers at once).
const (
	replicationMaxConns          = 64
	replicationMaxConnsPerSource = 16
)

// ParseSecretRef parses <namespace>/<name>.
func ParseSecretRef(s string) (types.NamespacedName, error) {
	ns, name, ok := strings.Cut(s, "/")
	if !ok || ns == "" || name == "" || strings.Contains(name, "/") {
		return types.NamespacedName{}, fmt.Errorf("%q: want <namespace>/<name>", s)
	}
	return types.NamespacedName{Namespace: ns, Name: name}, nil
}

// setupReplication, with cfg.ReplicationAddress set, listens there (now, so
// that a taken port fails the start), serves this node's Ready replicas to
// the other storage agents while the role runs, announces the address on
// the Node (bootv1.ReplicationEndpointAnnotation), keeps the shared key read
// from the replication Secret, and makes r.Replication, which places
// replicas from peers. Without an address it does nothing and
// r.Replication stays nil.
func (r *Role) setupReplication(mgr ctrl.Manager) error {
	addr := r.cfg.ReplicationAddress
	if addr == "" {
		return nil
	}
	if err := checkEndpoint(addr); err != nil {
		return fmt.Errorf("--replication-address: %w", err)
	}
	if r.cfg.ReplicationSecret.Name == "" {
		return errors.New("--replication-secret: required with --replication-address, the <namespace>/<name> of the Secret holding the storage agents' shared key")
	}
	if r.cfg.ReplicationBandwidth < 0 {
		return fmt.Errorf("--replication-bandwidth %d: want 0 (unlimited) or more bytes/s", r.cfg.ReplicationBandwidth)
	}
	log := r.log.WithName("replication")
	key := &replication.Key{}
	c := replication.NewClient(key, r.cfg.ReplicationBandwidth, log)
	c.Reserve, c.StallTimeout = r.cfg.Reserve, r.cfg.ImageStallTimeout
	ln, err := net.Listen("tcp4", addr)
	if err != nil {
		return fmt.Errorf("--replication-address %s: %w", addr, err)
	}
	r.Replication, r.replicationAddr = c, ln.Addr()
	shutdown := 5 * time.Second
	srv := &manager.Server{Name: "storage-replication", Listener: httpboot.LimitListener(ln, replicationMaxConns, replicationMaxConnsPerSource),
		ShutdownTimeout: &shutdown,
		// No write timeout: a range takes as long as the peer's bandwidth
		// limit makes it; the handler moves a write deadline on with
		// every piece it sends.
		Server: &http.Server{Handler: &replication.Server{Store: r.images, Key: key, Namespace: r.cfg.Namespace, Log: log},
			ReadHeaderTimeout: httpboot.ReadHeaderTimeout, ReadTimeout: httpboot.ReadTimeout,
			IdleTimeout: 2 * time.Minute, MaxHeaderBytes: httpboot.MaxHeaderBytes}}
	if err := mgr.Add(srv); err != nil {
		return err
	}
	log.Info("Serving replicas to the other storage agents", "addr", ln.Addr().String(),
		"secret", r.cfg.ReplicationSecret.String(), "bandwidth", r.cfg.ReplicationBandwidth)
	keys := &keyReader{r: r, key: key, ref: r.cfg.ReplicationSecret}
	if err := mgr.Add(r.periodic("Reading the replication key", r.cfg.ReplicationKeyInterval, false, keys.read)); err != nil {
		return err
	}
	return mgr.Add(manager.RunnableFunc(r.announceReplication))
}

// ReplicationAddr is the address the replication server listens on (nil:
// off).
func (r *Role) ReplicationAddr() net.Addr { return r.replicationAddr }

// checkEndpoint accepts <IPv4>:<port>, not 0.0.0.0: it is announced to
// the peers, who connect to it. Port 0 takes a free port (announced as
// bound).
func checkEndpoint(addr string) error {
	return checkIPv4Port(addr, 0, "the peers are sent to it")
}

// keyReader keeps the key from the replication Secret. The Secret is read
// with a plain GET (no watch, nothing cached but the key): the agent may
// read this one Secret in the release's namespace and no other there.
type keyReader struct {
	r   *Role
	key *replication.Key
	ref types.NamespacedName
	// state is what was last logged: "", "ok", "missing", "bad".
	state string
	last  []byte
}

func (k *keyReader) read(ctx context.Context) error {
	var s corev1.Secret
	err := k.r.reader.Get(ctx, k.ref, &s)
	switch {
	case apierrors.IsNotFound(err):
		k.set("missing", nil, "The replication Secret does not exist: replicas are neither served nor fetched until the manager makes it")
		return nil
	case err != nil:
		return fmt.Errorf("reading the replication Secret %s: %w", k.ref, err)
	}
	b := s.Data[bootv1.ReplicationSecretKey]
	if len(b) < replication.MinKeyLen {
		k.set("bad", nil, fmt.Sprintf("The replication Secret's %q is missing or shorter than %d bytes: replicas are neither served nor fetched",
			bootv1.ReplicationSecretKey, replication.MinKeyLen))
		return nil
	}
	if k.state == "ok" && string(b) == string(k.last) {
		return nil
	}
	k.set("ok", b, "Using the replication key")
	return nil
}

// set installs b (nil: none) and logs msg when the state changes; the log
// line never holds the key.
func (k *keyReader) set(state string, b []byte, msg string) {
	k.key.Set(b)
	changed := state != k.state || state == "ok"
	k.state, k.last = state, append([]byte(nil), b...)
	if changed {
		k.r.log.WithName("replication").Info(msg, "secret", k.ref.String())
	}
}

// announceReplication sets this node's
// bootv1.ReplicationEndpointAnnotation to the address the replication
// server listens on; it retries until it succeeds or ctx ends.
func (r *Role) announceReplication(ctx context.Context) error {
	endpoint := r.replicationAddr.String()
	log := r.log.WithValues("Node", r.cfg.NodeName, "endpoint", endpoint)
	log.Info("Announcing the replication endpoint")
	backoff := wait.Backoff{Duration: time.Second, Factor: 2, Steps: 1 << 30, Cap: 30 * time.Second}
	err := wait.ExponentialBackoffWithContext(ctx, backoff, func(ctx context.Context) (bool, error) {
		r.node.mu.Lock()
		defer r.node.mu.Unlock()
		r.node.replication = endpoint
		if err := r.applyNodeMeta(ctx, r.node.portal, r.node.storage); err != nil {
			log.Error(err, "Unable to announce the replication endpoint, retrying")
			return false, nil
		}
		return true, nil
	})
	if err != nil && ctx.Err() != nil {
		return nil
	}
	return err
}
