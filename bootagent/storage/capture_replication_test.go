package storage

import (
	"context"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	bootv1 "github.com/ggnet/ggnet/api/v1alpha1"
	"github.com/ggnet/ggnet/bootagent/target"
	"github.com/ggnet/ggnet/internal/testfs"
)

// secondNode is the second storage node's name in the replication spec.
const secondNode = "storage-2"

// secondNodeLabel is on the second node's Node only.
const secondNodeLabel = "test.ggnet.io/second"

// runSecondRole starts a second storage role, for node storage-2 on a data
// directory of its own, watching only namespace ns (the suite's other specs
// are the first node's), replicating with the key of the Secret ref at
// bandwidth bytes/s. Its Node is made, and deleted after the spec.
func runSecondRole(ns string, ref types.NamespacedName, bandwidth int64) *Role {
	ctx := context.Background()
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: secondNode, Labels: map[string]string{secondNodeLabel: "true"}}}
	Expect(k8sClient.Create(ctx, node)).To(Succeed())
	DeferCleanup(func() { Expect(client.IgnoreNotFound(k8sClient.Delete(context.Background(), node))).To(Succeed()) })
	r, err := New(restCfg, Config{NodeName: secondNode, DataDir: testfs.XFS(GinkgoT(), 1<<30), IQNPrefix: "iqn.2026-11.io.ggnet.two:",
		Driver: &target.TGT{ControlPort: tgtd.ControlPort}, Resync: time.Second, Namespace: ns,
		ReplicationAddress: "127.0.0.1:0", ReplicationSecret: ref, ReplicationKeyInterval: 200 * time.Millisecond,
		ReplicationBandwidth: bandwidth, Controller: rebuilt}, log.WithName("storage-2"))
	Expect(err).NotTo(HaveOccurred())
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer GinkgoRecover()
		defer close(done)
		Expect(r.Run(runCtx)).To(Succeed())
	}()
	DeferCleanup(func() {
		cancel()
		Eventually(done, 20*time.Second).Should(BeClosed())
	})
	return r
}

// replicaOn polls node's entry of an Image's status.
func (l *lab) replicaOn(node, name string) func() bootv1.ImageReplica {
	return func() bootv1.ImageReplica {
		img := &bootv1.Image{}
		if err := k8sClient.Get(l.ctx, client.ObjectKey{Namespace: l.ns, Name: name}, img); err != nil {
			return bootv1.ImageReplica{}
		}
		for _, r := range img.Status.Replicas {
			if r.Node == node {
				return r
			}
		}
		return bootv1.ImageReplica{}
	}
}

var _ = Describe("Replication of a captured Image", func() {
	It("waits on the second node for a Ready replica, then copies it from the capturing node, reporting the transfer", func() {
		l := newLab()
		ref := types.NamespacedName{Namespace: l.ns, Name: "ggnet-replication"}
		Expect(k8sClient.Create(l.ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ref.Namespace, Name: ref.Name},
			Data: map[string][]byte{bootv1.ReplicationSecretKey: newKey()}})).To(Succeed())
		first := runReplicatingRole(ref)
		role = first
		l.imageWith("win11", "GOLDEN")
		l.machineWith("seat-1")
		s := l.session("maint", "seat-1", "win11", bootv1.WritebackPersist)
		Expect(s.Status.StorageNode).To(Equal(nodeName))
		disk := s.Status.OverlayPath
		writeAt(disk, "MAINTENANCE WRITE", 4096)
		writeRandom(disk, 4<<20, 24<<20)

		By("the second node waits while the first has no Ready replica")
		// 2 MiB/s: the 32 MiB take about 16 s, over a status update (every
		// progressEvery) with the rate.
		// 1 MiB/s: the 24 MiB take ~24 s, so that the reconciles every
		// progressEvery (10 s) see the transfer running with a rate, even
		// late under load (at 2 MiB/s a reconcile late by 2 s saw it Ready).
		second := runSecondRole(l.ns, ref, 1<<20)
		img := l.captureImage("win11-v2", "maint")
		Eventually(l.replicaOn(secondNode, "win11-v2"), eventually).Should(And(HaveField("State", bootv1.ReplicaPending),
			HaveField("Reason", bootv1.NoSourceReplicaReason), HaveField("Message", ContainSubstring("node "+nodeName+" captures BootSession maint"))))
		Eventually(l.replicaOn(nodeName, "win11-v2"), eventually).Should(HaveField("Reason", bootv1.SessionNotStoppedReason))

		By("stopping the session: the first node captures, the second copies the capture")
		l.stop(s)
		want := fileSHA256(disk)
		Eventually(l.replicaOn(nodeName, "win11-v2"), eventually).Should(And(HaveField("State", bootv1.ReplicaReady), HaveField("SHA256", want)))
		Eventually(l.replicaOn(secondNode, "win11-v2"), eventually).Should(And(HaveField("State", bootv1.ReplicaDownloading),
			HaveField("SourceNode", nodeName), HaveField("BytesTotal", BeNumerically(">=", 24<<20)),
			HaveField("BytesPerSecond", BeNumerically(">", 0)), HaveField("Message", ContainSubstring("replicating from node "+nodeName))))
		Eventually(l.replicaOn(secondNode, "win11-v2"), eventually).Should(And(HaveField("State", bootv1.ReplicaReady),
			HaveField("SHA256", want), HaveField("SizeBytes", int64(32<<20)),
			HaveField("SourceNode", ""), HaveField("BytesDone", BeZero()), HaveField("BytesPerSecond", BeZero())))
		Expect(k8sClient.Get(l.ctx, client.ObjectKeyFromObject(img), img)).To(Succeed())
		copied := second.images.Path(l.ns, "win11-v2", string(img.UID))
		Expect(fileSHA256(copied)).To(Equal(want))
		Expect(readAt(copied, 4096, 17)).To(Equal("MAINTENANCE WRITE"))
		Eventually(func() int32 {
			_ = k8sClient.Get(l.ctx, client.ObjectKeyFromObject(img), img)
			return img.Status.ReadyReplicas
		}, eventually).Should(Equal(int32(2)))

		By("an Image whose selector leaves out the node with the disk is refused on the others")
		l.captureImage("second-only", "maint", func(i *bootv1.Image) {
			i.Spec.StorageNodeSelector = &metav1.LabelSelector{MatchLabels: map[string]string{secondNodeLabel: "true"}}
		})
		Eventually(l.replicaOn(secondNode, "second-only"), eventually).Should(And(HaveField("State", bootv1.ReplicaFailed),
			HaveField("Reason", bootv1.InvalidCaptureSourceReason), HaveField("Message", ContainSubstring("leaves out node "+nodeName))))
	})
})
