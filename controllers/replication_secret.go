package controllers

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/manager"

	bootv1 "github.com/ggnet/ggnet/api/v1alpha1"
)

// replicationKeyLength is the size of the storage agents' shared signing
// key, in bytes.
const replicationKeyLength = 32

// EnsureReplicationSecret makes the replication Secret (the storage agents'
// shared signing key, bootv1.ReplicationSecretKey: 32 random bytes) when it
// is missing, and adds the key to a Secret of that name that lacks it. A
// Secret with a key is left alone: the agents already sign with it. It
// reports whether it wrote; the key itself is never logged or returned.
func EnsureReplicationSecret(ctx context.Context, c client.Client, namespace, name string) (bool, error) {
	key := make([]byte, replicationKeyLength)
	if _, err := rand.Read(key); err != nil {
		return false, err
	}
	sec := &corev1.Secret{}
	err := c.Get(ctx, client.ObjectKey{Namespace: namespace, Name: name}, sec)
	switch {
	case apierrors.IsNotFound(err):
		sec = &corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name,
				Labels: map[string]string{"app.kubernetes.io/component": "replication", "app.kubernetes.io/managed-by": "ggnet-manager"}},
			Type: corev1.SecretTypeOpaque,
			Data: map[string][]byte{bootv1.ReplicationSecretKey: key},
		}
		err := c.Create(ctx, sec)
		if apierrors.IsAlreadyExists(err) {
			// Another manager replica made it first.
			return EnsureReplicationSecret(ctx, c, namespace, name)
		}
		return err == nil, redact(err)
	case err != nil:
		return false, redact(err)
	case len(sec.Data[bootv1.ReplicationSecretKey]) > 0:
		return false, nil
	}
	patch := client.MergeFromWithOptions(sec.DeepCopy(), client.MergeFromWithOptimisticLock{})
	if sec.Data == nil {
		sec.Data = map[string][]byte{}
	}
	sec.Data[bootv1.ReplicationSecretKey] = key
	return true, redact(c.Patch(ctx, sec, patch))
}

// The replication Secret lives in the manager's own namespace; the chart
// gives the manager a Role there for it.
// +kubebuilder:rbac:groups="",resources=secrets,verbs=get;create;patch

// ReplicationSecret is a manager Runnable that makes the replication Secret
// at start (EnsureReplicationSecret) on every manager replica, leader or
// not, retrying until it succeeds.
type ReplicationSecret struct {
	Client          client.Client
	Namespace, Name string
}

var _ manager.LeaderElectionRunnable = ReplicationSecret{}

// NeedLeaderElection is false: the storage agents need the Secret whoever
// leads.
func (ReplicationSecret) NeedLeaderElection() bool { return false }

// Start makes the Secret, retrying with backoff (at most a minute apart).
func (r ReplicationSecret) Start(ctx context.Context) error {
	if r.Namespace == "" || r.Name == "" {
		return errors.New("the replication Secret needs a namespace and a name")
	}
	log := logf.FromContext(ctx).WithValues("Secret", r.Namespace+"/"+r.Name)
	backoff := wait.Backoff{Duration: time.Second, Factor: 2, Steps: 100, Cap: time.Minute}
	for {
		wrote, err := EnsureReplicationSecret(ctx, r.Client, r.Namespace, r.Name)
		if err == nil {
			if wrote {
				log.Info("Made the replication Secret's signing key")
			}
			return nil
		}
		log.Error(err, "Unable to make the replication Secret; retrying")
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(backoff.Step()):
		}
	}
}

// AddReplicationSecret registers ReplicationSecret with the manager.
func AddReplicationSecret(mgr ctrl.Manager, namespace, name string) error {
	if namespace == "" {
		return fmt.Errorf("--replication-secret=%s: the manager's namespace is unknown (set --leader-election-namespace or run in a pod)", name)
	}
	return mgr.Add(ReplicationSecret{Client: mgr.GetClient(), Namespace: namespace, Name: name})
}
