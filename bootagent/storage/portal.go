package storage

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	corev1ac "k8s.io/client-go/applyconfigurations/core/v1"

	bootv1 "github.com/ggnet/ggnet/api/v1alpha1"
)

// CheckPortal accepts an iSCSI portal that names one IPv4 address and a
// port: the target listens there, and PCs are sent there. 0.0.0.0 is
// refused: the target would listen on every address of the node (the boot
// LAN, the cluster network) and PCs cannot be sent to it.
func CheckPortal(portal string) error {
	if err := checkIPv4Port(portal, 1, "the target would listen on every address of the node"); err != nil {
		return fmt.Errorf("portal %w", err)
	}
	return nil
}

// checkIPv4Port accepts <IPv4>:<port> with a port from minPort to 65535,
// not 0.0.0.0 (why says what that would do); its errors start with the
// address, quoted.
func checkIPv4Port(addr string, minPort int, why string) error {
	host, p, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("%q: want <IPv4 address>:<port>: %w", addr, err)
	}
	ip := net.ParseIP(host)
	if ip == nil || ip.To4() == nil || strings.Contains(host, ":") {
		return fmt.Errorf("%q: %q is not an IPv4 address", addr, host)
	}
	if ip.IsUnspecified() {
		return fmt.Errorf("%q: name the storage network's address, not 0.0.0.0 (%s)", addr, why)
	}
	if n, err := strconv.Atoi(p); err != nil || n < minPort || n > 65535 {
		return fmt.Errorf("%q: port %q is not %d to 65535", addr, p, minPort)
	}
	return nil
}

// nodeMeta is what the agent applies on its Node's metadata, all in every
// apply (apply.go): the portal annotation once announced, the storage
// annotation once measured (capacity.go), and the replication endpoint
// (replication.go).
type nodeMeta struct {
	mu          sync.Mutex
	portal      string
	storage     bootv1.NodeStorage // zero Updated: none yet
	replication string
}

// applyNodeMeta applies the Node's annotations, portal and storage ("" or a
// zero Updated: left out), and the replication endpoint if any. The caller
// holds r.node.mu. A Node that does not exist is not made (an apply would
// make one): errNoNode.
func (r *Role) applyNodeMeta(ctx context.Context, portal string, storage bootv1.NodeStorage) error {
	node := &corev1.Node{}
	if err := r.reader.Get(ctx, types.NamespacedName{Name: r.cfg.NodeName}, node); err != nil {
		if apierrors.IsNotFound(err) {
			return errNoNode
		}
		return err
	}
	ann := map[string]string{}
	if portal != "" {
		ann[bootv1.ISCSIPortalAnnotation] = portal
	}
	if r.node.replication != "" {
		ann[bootv1.ReplicationEndpointAnnotation] = r.node.replication
	}
	if !storage.Updated.IsZero() {
		b, err := json.Marshal(storage)
		if err != nil {
			return err
		}
		ann[bootv1.StorageAnnotation] = string(b)
	}
	return r.apply(ctx, corev1ac.Node(r.cfg.NodeName).WithAnnotations(ann), r.nodeFieldOwner())
}

var errNoNode = errors.New("the Node does not exist")

// announcePortal sets this node's bootv1.ISCSIPortalAnnotation to the
// portal, for the manager to send PCs there. It retries until it succeeds or
// ctx ends: sessions on this node are given the node's InternalIP until then.
func (r *Role) announcePortal(ctx context.Context) error {
	log := r.log.WithValues("Node", r.cfg.NodeName, "portal", r.cfg.Portal)
	log.Info("Announcing the iSCSI portal")
	backoff := wait.Backoff{Duration: time.Second, Factor: 2, Steps: 1 << 30, Cap: 30 * time.Second}
	err := wait.ExponentialBackoffWithContext(ctx, backoff, func(ctx context.Context) (bool, error) {
		r.node.mu.Lock()
		defer r.node.mu.Unlock()
		if err := r.applyNodeMeta(ctx, r.cfg.Portal, r.node.storage); err != nil {
			log.Error(err, "Unable to announce the iSCSI portal, retrying")
			return false, nil
		}
		r.node.portal = r.cfg.Portal
		return true, nil
	})
	if err != nil && ctx.Err() != nil {
		return nil
	}
	return err
}
