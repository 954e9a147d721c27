package storage

import (
	"context"
	"testing"
	"time"

	"github.com/go-logr/logr"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"

	bootv1 "github.com/ggnet/ggnet/api/v1alpha1"
	"github.com/ggnet/ggnet/bootagent/images"
	"github.com/ggnet/ggnet/bootagent/replication"
	"github.com/ggnet/ggnet/internal/scheme"
)

func TestTransferRate(t *testing.T) {
	g := NewWithT(t)
	t0 := time.Date(2026, 11, 27, 19, 0, 0, 0, time.UTC)
	dl := func(done int64) images.Progress {
		return images.Progress{State: bootv1.ReplicaDownloading, Done: done, Total: 1 << 30}
	}
	var st jobState
	st.progressed(dl(0), t0)
	g.Expect(st.rate(t0)).To(BeZero(), "no time has passed")
	st.progressed(dl(50<<20), t0.Add(2*time.Second))
	g.Expect(st.rate(t0.Add(2*time.Second))).To(Equal(int64(25<<20)), "the current window while there was no full one")
	st.progressed(dl(100<<20), t0.Add(rateWindow))
	g.Expect(st.rate(t0.Add(rateWindow))).To(Equal(int64(10<<20)), "a full window: 100 MiB in 10 s")
	st.progressed(dl(300<<20), t0.Add(rateWindow+time.Second))
	g.Expect(st.rate(t0.Add(rateWindow+time.Second))).To(Equal(int64(10<<20)), "the last full window until the next one ends")
	st.progressed(dl(400<<20), t0.Add(2*rateWindow))
	g.Expect(st.rate(t0.Add(2*rateWindow))).To(Equal(int64(30<<20)), "the next window: 300 MiB in 10 s")

	st.progressed(images.Progress{State: bootv1.ReplicaConverting, Done: 0, Total: 1 << 30}, t0.Add(2*rateWindow+time.Second))
	g.Expect(st.rate(t0.Add(2*rateWindow+time.Second))).To(BeZero(), "a new state measures anew")
	g.Expect(st.progress.State).To(Equal(bootv1.ReplicaConverting))
}

func TestJobMessages(t *testing.T) {
	g := NewWithT(t)
	img := &bootv1.Image{}
	capture := jobInfo{kind: placeCapture, session: "maint"}
	g.Expect(capture.message(img, images.Progress{State: bootv1.ReplicaPending})).To(Equal("cloning the disk of BootSession maint by reflink"))
	g.Expect(capture.message(img, images.Progress{State: bootv1.ReplicaPending, Done: 1 << 30, Total: 10 << 30})).To(
		Equal("cloned the disk of BootSession maint by reflink; checksummed 1.0 GiB of 10.0 GiB"))
	repl := jobInfo{kind: placeReplication, sourceNode: "node-a"}
	g.Expect(repl.message(img, images.Progress{State: bootv1.ReplicaDownloading})).To(Equal("replicating from node node-a"))
	g.Expect(repl.message(img, images.Progress{State: bootv1.ReplicaDownloading, Done: 3 << 29, Total: 10 << 30})).To(
		Equal("replicating from node node-a: 1.5 GiB of 10.0 GiB"))
	g.Expect(jobInfo{}.message(img, images.Progress{State: bootv1.ReplicaDownloading, Done: 1 << 20, Total: 2 << 20})).To(
		Equal("downloaded 1.0 MiB of 2.0 MiB"))
}

func TestNoSource(t *testing.T) {
	img := &bootv1.Image{}
	img.Spec.Source.Writeback = &bootv1.WritebackSource{SessionRef: bootv1.LocalObjectReference{Name: "maint"}}
	session := func(node string, phase bootv1.BootSessionPhase) *bootv1.BootSession {
		s := &bootv1.BootSession{}
		s.Name, s.Status.StorageNode, s.Status.Phase = "maint", node, phase
		return s
	}
	for _, tc := range []struct {
		name          string
		s             *bootv1.BootSession
		state         bootv1.ReplicaState
		reason, words string
	}{
		{"no session", nil, bootv1.ReplicaFailed, bootv1.InvalidCaptureSourceReason, "BootSession maint does not exist"},
		{"failed", session("node-a", bootv1.SessionFailed), bootv1.ReplicaFailed, bootv1.InvalidCaptureSourceReason, "failed"},
		{"stopped nowhere", session("", bootv1.SessionStopped), bootv1.ReplicaFailed, bootv1.InvalidCaptureSourceReason, "without ever having a storage node"},
		{"not scheduled", session("", bootv1.SessionPending), bootv1.ReplicaPending, bootv1.SessionNotStoppedReason, "to run and stop"},
		{"capturing elsewhere", session("node-a", bootv1.SessionActive), bootv1.ReplicaPending, bootv1.NoSourceReplicaReason, "node node-a captures BootSession maint"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := NewWithT(t)
			w := noSource(img, tc.s)
			g.Expect(w.state).To(Equal(tc.state))
			g.Expect(w.reason).To(Equal(tc.reason))
			g.Expect(w.msg).To(ContainSubstring(tc.words))
		})
	}
}

func TestRetryAfter(t *testing.T) {
	g := NewWithT(t)
	g.Expect(retryAfter(&images.Error{Reason: bootv1.PersistentDiskInUseReason}, 3)).To(Equal(progressEvery), "a disk taken meanwhile: waited for again soon")
	g.Expect(retryAfter(&images.Error{Reason: images.ReasonChecksumMismatch}, 1)).To(Equal(retryPermanent))
	g.Expect(retryAfter(&images.Error{Reason: bootv1.InvalidCaptureSourceReason}, 1)).To(Equal(retryFirst))
	g.Expect(retryAfter(&images.Error{Reason: images.ReasonUnreachable}, 10)).To(Equal(retryMax))
}

// Once another node holds a Ready replica of a captured Image, the node with
// the session's disk copies that replica like any other node instead of
// cloning the disk again: the Machine may have written to the disk since,
// and the Image would hold one content here and another there.
func TestCaptureNodeCopiesAReadyReplica(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	s := &bootv1.BootSession{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "maint"},
		Spec: bootv1.BootSessionSpec{MachineRef: bootv1.LocalObjectReference{Name: "seat-1"}, ImageRef: bootv1.LocalObjectReference{Name: "win11"},
			Writeback: bootv1.WritebackPersist}}
	s.Status.Phase, s.Status.StorageNode = bootv1.SessionStopped, "node-a"
	peer := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-b",
		Annotations: map[string]string{bootv1.ReplicationEndpointAnnotation: "10.0.0.2:3262"}}}
	c := fake.NewClientBuilder().WithScheme(scheme.New()).WithObjects(s, peer).Build()
	r := &imageReconciler{Role: &Role{cfg: Config{NodeName: "node-a"}, reader: c,
		Replication: replication.NewClient(&replication.Key{}, 0, logr.Discard())}, Client: c}
	img := &bootv1.Image{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "win11-v2", UID: "0b7e5f5e-0000-4000-8000-000000000001"}}
	img.Spec.Source.Writeback = &bootv1.WritebackSource{SessionRef: bootv1.LocalObjectReference{Name: "maint"}}
	img.Status.Replicas = []bootv1.ImageReplica{
		{Node: "node-a", State: bootv1.ReplicaReady, SHA256: "aaaa"}, // stale: the file went
		{Node: "node-b", State: bootv1.ReplicaReady, SHA256: "aaaa"},
	}
	pl, wait, err := r.writebackPlan(ctx, img, 0)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(wait).To(BeNil())
	g.Expect(pl.kind).To(Equal(placeReplication))
	g.Expect(pl.sourceNode).To(Equal("node-b"))
	g.Expect(pl.src.SHA256).To(Equal("aaaa"))

	// No other node holds one: a capture made again must find the content
	// the Image had.
	g.Expect(readyElsewhere(img, "node-b")).To(BeTrue())
	g.Expect(readyElsewhere(&bootv1.Image{Status: bootv1.ImageStatus{Replicas: img.Status.Replicas[:1]}}, "node-a")).To(BeFalse())
	g.Expect(capturedSHA256(img)).To(Equal("aaaa"))
	g.Expect(capturedSHA256(&bootv1.Image{Status: bootv1.ImageStatus{SHA256: "bbbb"}})).To(Equal("bbbb"))
	g.Expect(capturedSHA256(&bootv1.Image{Status: bootv1.ImageStatus{Replicas: []bootv1.ImageReplica{
		{Node: "node-a", State: bootv1.ReplicaPending}}}})).To(BeEmpty(), "never captured")
}
