package storage

import (
	"context"
	"os"
	"strings"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/manager"

	bootv1 "github.com/ggnet/ggnet/api/v1alpha1"
)

// The storage role's liveness: it holds the coordination.k8s.io Lease
// bootv1.StorageLeaseName(node) (spec.holderIdentity the node's name,
// spec.leaseDurationSeconds bootv1.StorageLeaseDurationSeconds) and renews
// spec.renewTime every bootv1.StorageLeaseRenewSeconds. The manager takes a
// node whose Lease it no longer sees renewed for the duration as
// unreachable (StorageReachable=False on its sessions, no new session
// there). The Lease is made when missing; errors are logged and retried,
// never fatal: a role that cannot renew its Lease still serves its targets.
// The Lease lives in the namespace the role watches or, watching all, in
// the agent's own (its pod's); it is read straight from the API server, so
// the role holds no informer of Leases.

// leaseRetry is the pause after a failed renewal, shorter than the renewal
// period so that one lost request does not come near the duration.
const leaseRetry = 2 * time.Second

// serviceAccountNamespace is where a pod's namespace is mounted.
const serviceAccountNamespace = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"

// leaseNamespace is where the role's Lease lives: the watched namespace,
// else the pod's, else the replication Secret's, else "default".
func (c Config) leaseNamespace() string {
	if c.Namespace != "" {
		return c.Namespace
	}
	if b, err := os.ReadFile(serviceAccountNamespace); err == nil && strings.TrimSpace(string(b)) != "" {
		return strings.TrimSpace(string(b))
	}
	if c.ReplicationSecret.Namespace != "" {
		return c.ReplicationSecret.Namespace
	}
	return "default"
}

// leaseHolder renews the role's Lease.
type leaseHolder struct {
	c      client.Client
	reader client.Reader
	key    types.NamespacedName
	node   string
	// lease is the Lease as last written (nil: read it again).
	lease *coordinationv1.Lease
}

// holdLease is the Runnable that renews the Lease until the role stops.
func (r *Role) holdLease(c client.Client) manager.Runnable {
	h := &leaseHolder{c: c, reader: r.reader, node: r.cfg.NodeName,
		key: types.NamespacedName{Namespace: r.cfg.leaseNamespace(), Name: bootv1.StorageLeaseName(r.cfg.NodeName)}}
	return manager.RunnableFunc(func(ctx context.Context) error {
		log := r.log.WithValues("Lease", h.key.String())
		log.Info("Holding the storage node's Lease", "renew", bootv1.StorageLeaseRenewSeconds, "duration", bootv1.StorageLeaseDurationSeconds)
		failing := false
		for {
			wait := bootv1.StorageLeaseRenewSeconds * time.Second
			if err := h.renew(ctx); err != nil {
				if ctx.Err() != nil {
					return nil
				}
				if !failing {
					log.Error(err, "Unable to renew the storage node's Lease, retrying")
				}
				failing, wait = true, leaseRetry
			} else if failing {
				log.Info("Renewed the storage node's Lease again")
				failing = false
			}
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(wait):
			}
		}
	})
}

// renew sets the Lease's renewTime to now, making the Lease when missing.
// A conflict or a Lease gone since the last write reads it again once.
func (h *leaseHolder) renew(ctx context.Context) error {
	for attempt := 0; ; attempt++ {
		err := h.renewOnce(ctx)
		if err == nil || attempt > 0 || !(apierrors.IsConflict(err) || apierrors.IsNotFound(err) || apierrors.IsAlreadyExists(err)) {
			return err
		}
	}
}

func (h *leaseHolder) renewOnce(ctx context.Context) error {
	now := metav1.NewMicroTime(time.Now())
	if h.lease == nil {
		l := &coordinationv1.Lease{}
		err := h.reader.Get(ctx, h.key, l)
		if apierrors.IsNotFound(err) {
			l = &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Namespace: h.key.Namespace, Name: h.key.Name}}
			h.fill(l, now)
			if err := h.c.Create(ctx, l); err != nil {
				return err
			}
			h.lease = l
			return nil
		} else if err != nil {
			return err
		}
		h.lease = l
	}
	l := h.lease.DeepCopy()
	h.fill(l, now)
	if err := h.c.Update(ctx, l); err != nil {
		h.lease = nil
		return err
	}
	h.lease = l
	return nil
}

// fill sets what the role holds in the Lease's spec.
func (h *leaseHolder) fill(l *coordinationv1.Lease, now metav1.MicroTime) {
	if l.Spec.HolderIdentity == nil || *l.Spec.HolderIdentity != h.node {
		node := h.node
		l.Spec.HolderIdentity = &node
		l.Spec.AcquireTime = &now
	}
	if l.Labels[bootv1.StorageLeaseLabel] != "true" {
		if l.Labels == nil {
			l.Labels = map[string]string{}
		}
		l.Labels[bootv1.StorageLeaseLabel] = "true"
	}
	d := int32(bootv1.StorageLeaseDurationSeconds)
	l.Spec.LeaseDurationSeconds = &d
	l.Spec.RenewTime = &now
}
