package storage

import (
	"context"
	"fmt"
	"os"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	bootv1 "github.com/ggnet/ggnet/api/v1alpha1"
	"github.com/ggnet/ggnet/bootagent/images"
)

// replicationPlan places the replica of a writeback Image on a node other
// than the one that captures it: a copy of a Ready replica of another
// storage node (Role.Replication), verified against that replica's sha256.
// attempt counts the failed placements before this one: each retry starts
// from the next source node. s is the session (nil: not found).
func (r *imageReconciler) replicationPlan(ctx context.Context, img *bootv1.Image, s *bootv1.BootSession, attempt int) (placement, *replicaWait, error) {
	var sources []bootv1.ImageReplica
	for _, rep := range img.Status.Replicas {
		if rep.Node != r.cfg.NodeName && rep.State == bootv1.ReplicaReady && rep.SHA256 != "" {
			sources = append(sources, rep)
		}
	}
	if len(sources) == 0 {
		if s != nil && s.Status.StorageNode != "" {
			// The capture node must be selected too: its replica is the
			// others' source.
			ok, err := r.selectsNode(ctx, img, s.Status.StorageNode)
			if err != nil {
				return placement{}, nil, err
			}
			if !ok {
				return placement{}, invalid("the Image's storageNodeSelector leaves out node %s, which holds the disk of BootSession %s: "+
					"select that node too (its capture is the other nodes' source)", s.Status.StorageNode, s.Name), nil
			}
		}
		return placement{}, noSource(img, s), nil
	}
	peer := r.replicator()
	if peer == nil {
		return placement{}, pending(bootv1.NoSourceReplicaReason, "replication is off on this storage node (the agent's --replication-address "+
			"and --replication-secret are unset): it cannot copy the replica that is Ready on node %s", sources[0].Node), nil
	}
	var silent []string
	for i := range sources {
		src := sources[(attempt+i)%len(sources)]
		var node corev1.Node
		if err := r.reader.Get(ctx, types.NamespacedName{Name: src.Node}, &node); apierrors.IsNotFound(err) {
			silent = append(silent, src.Node)
			continue
		} else if err != nil {
			return placement{}, nil, err
		}
		endpoint := node.Annotations[bootv1.ReplicationEndpointAnnotation]
		if endpoint == "" || checkEndpoint(endpoint) != nil {
			// Unset, or not an <IPv4>:<port> (whoever may patch Nodes must
			// not send the signed requests to a host name of their choice).
			silent = append(silent, src.Node)
			continue
		}
		fill := peer.Fill(endpoint, img.Namespace, img.Name, string(img.UID), src.SHA256)
		source := images.Source{Format: string(bootv1.ImageFormatRaw), SHA256: src.SHA256, Fill: fill}
		if q := img.Spec.MaxVirtualSize; q != nil {
			source.MaxVirtualSize = q.Value()
		}
		return placement{kind: placeReplication, src: source, sourceNode: src.Node}, nil, nil
	}
	return placement{}, pending(bootv1.NoSourceReplicaReason, "the storage nodes with a Ready replica (%v) announce no replication endpoint "+
		"(annotation %s): is replication off on them?", silent, bootv1.ReplicationEndpointAnnotation), nil
}

// selectsNode reports whether the Image's storageNodeSelector picks node
// (read from the API server: the cache holds this node's Node only). A node
// that does not exist is not picked.
func (r *imageReconciler) selectsNode(ctx context.Context, img *bootv1.Image, node string) (bool, error) {
	if img.Spec.StorageNodeSelector == nil {
		return true, nil
	}
	sel, err := metav1.LabelSelectorAsSelector(img.Spec.StorageNodeSelector)
	if err != nil {
		return false, nil
	}
	var n corev1.Node
	if err := r.reader.Get(ctx, types.NamespacedName{Name: node}, &n); err != nil {
		return false, client.IgnoreNotFound(err)
	}
	return sel.Matches(labels.Set(n.Labels)), nil
}

// noSource is why a node waits for a writeback Image that no other node
// holds yet, or why it never will.
func noSource(img *bootv1.Image, s *bootv1.BootSession) *replicaWait {
	name := img.Spec.Source.Writeback.SessionRef.Name
	switch {
	case s == nil:
		return invalid("BootSession %s does not exist: there is no disk to capture, and no storage node holds a Ready replica to copy", name)
	case s.Status.Phase == bootv1.SessionFailed:
		return invalid("BootSession %s failed: only a session that stopped is captured", name)
	case s.Status.StorageNode == "" && s.Status.Phase == bootv1.SessionStopped:
		return invalid("BootSession %s stopped without ever having a storage node: it has no disk to capture", name)
	case s.Status.StorageNode == "":
		return pending(bootv1.SessionNotStoppedReason, "waiting for BootSession %s to run and stop: its storage node then captures its disk, "+
			"and this node copies the capture", name)
	}
	msg := fmt.Sprintf("waiting for a Ready replica on another storage node: node %s captures BootSession %s", s.Status.StorageNode, name)
	for _, rep := range img.Status.Replicas {
		if rep.Node == s.Status.StorageNode && rep.Reason != "" {
			msg += fmt.Sprintf(" (its replica: %s, %s)", rep.State, rep.Reason)
		}
	}
	return pending(bootv1.NoSourceReplicaReason, "%s", msg)
}

// replicator copies a replica from a peer's replication endpoint.
type replicator interface {
	Fill(endpoint, namespace, name, uid, wantSHA256 string) func(ctx context.Context, dst *os.File, progress func(images.Progress)) (string, error)
}

// replicator is the role's peer replication client; nil when replication
// is off on this node.
func (r *Role) replicator() replicator {
	if r.Replication == nil {
		return nil
	}
	return r.Replication
}
