package storage

import (
	"testing"
	"time"

	. "github.com/onsi/gomega"

	bootv1 "github.com/ggnet/ggnet/api/v1alpha1"
	"github.com/ggnet/ggnet/bootagent/images"
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
