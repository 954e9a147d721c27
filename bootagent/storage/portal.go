package storage

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"sigs.k8s.io/controller-runtime/pkg/client"

	bootv1 "github.com/ggnet/ggnet/api/v1alpha1"
)

// CheckPortal accepts an iSCSI portal that names one IPv4 address and a
// port: the target listens there, and PCs are sent there. 0.0.0.0 is
// refused: the target would listen on every address of the node (the boot
// LAN, the cluster network) and PCs cannot be sent to it.
func CheckPortal(portal string) error {
	host, p, err := net.SplitHostPort(portal)
	if err != nil {
		return fmt.Errorf("portal %q: want <IPv4 address>:<port>: %w", portal, err)
	}
	ip := net.ParseIP(host)
	if ip == nil || ip.To4() == nil || strings.Contains(host, ":") {
		return fmt.Errorf("portal %q: %q is not an IPv4 address", portal, host)
	}
	if ip.IsUnspecified() {
		return fmt.Errorf("portal %q: name the storage network's address, not 0.0.0.0 (the target would listen on every address of the node)", portal)
	}
	if n, err := strconv.Atoi(p); err != nil || n < 1 || n > 65535 {
		return fmt.Errorf("portal %q: port %q is not 1 to 65535", portal, p)
	}
	return nil
}

// announcePortal sets this node's bootv1.ISCSIPortalAnnotation to the
// portal, for the manager to send PCs there. It retries until it succeeds or
// ctx ends: sessions on this node are given the node's InternalIP until then.
func (r *Role) announcePortal(ctx context.Context) error {
	patch, err := json.Marshal(map[string]any{"metadata": map[string]any{
		"annotations": map[string]string{bootv1.ISCSIPortalAnnotation: r.cfg.Portal}}})
	if err != nil {
		return err
	}
	log := r.log.WithValues("Node", r.cfg.NodeName, "portal", r.cfg.Portal)
	log.Info("Announcing the iSCSI portal")
	backoff := wait.Backoff{Duration: time.Second, Factor: 2, Steps: 1 << 30, Cap: 30 * time.Second}
	err = wait.ExponentialBackoffWithContext(ctx, backoff, func(ctx context.Context) (bool, error) {
		node := &corev1.Node{}
		node.Name = r.cfg.NodeName
		if err := r.mgr.GetClient().Patch(ctx, node, client.RawPatch(types.MergePatchType, patch), client.FieldOwner(r.cfg.FieldOwner())); err != nil {
			log.Error(err, "Unable to announce the iSCSI portal, retrying")
			return false, nil
		}
		return true, nil
	})
	if err != nil && ctx.Err() != nil {
		return nil
	}
	return err
}
