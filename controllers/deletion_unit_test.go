package controllers

import (
	"strings"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	bootv1 "github.com/ggnet/ggnet/api/v1alpha1"
)

func TestBlocksDeletion(t *testing.T) {
	now := metav1.Now()
	session := func(mutate func(*bootv1.BootSession)) *bootv1.BootSession {
		s := &bootv1.BootSession{}
		mutate(s)
		return s
	}
	ready := func(reason string) func(*bootv1.BootSession) {
		return func(s *bootv1.BootSession) {
			setCondition(&s.Status.Conditions, 1, bootv1.ReadyCondition, reason == bootv1.SucceededReason, reason, "")
		}
	}
	scheduled := func(s *bootv1.BootSession) { s.Status.StorageNode = "storage-1" }
	both := func(fs ...func(*bootv1.BootSession)) func(*bootv1.BootSession) {
		return func(s *bootv1.BootSession) {
			for _, f := range fs {
				f(s)
			}
		}
	}
	for name, tc := range map[string]struct {
		s    *bootv1.BootSession
		want bool
	}{
		"running":                       {session(both(scheduled, ready(bootv1.SucceededReason))), true},
		"scheduled, waiting for disk":   {session(both(scheduled, ready(bootv1.WaitingForStorageReason))), true},
		"scheduled, stopping":           {session(both(scheduled, func(s *bootv1.BootSession) { s.Spec.Stopped = true; s.Status.Phase = bootv1.SessionStopping })), true},
		"scheduled, being deleted":      {session(both(scheduled, func(s *bootv1.BootSession) { s.DeletionTimestamp = &now })), true},
		"scheduled, says MachineDel...": {session(both(scheduled, ready(bootv1.MachineDeletingReason))), true},
		"stopped":                       {session(both(scheduled, func(s *bootv1.BootSession) { s.Status.Phase = bootv1.SessionStopped })), false},
		"failed":                        {session(both(scheduled, func(s *bootv1.BootSession) { s.Status.Phase = bootv1.SessionFailed })), false},
		"new, not reconciled yet":       {session(func(*bootv1.BootSession) {}), true},
		"waiting for another reason":    {session(ready(bootv1.NoStorageNodeReason)), true},
		"saw the Machine's deletion":    {session(ready(bootv1.MachineDeletingReason)), false},
		"saw the Image's deletion":      {session(ready(bootv1.ImageDeletingReason)), false},
		"unscheduled, stopped":          {session(func(s *bootv1.BootSession) { s.Spec.Stopped = true }), false},
		"unscheduled, being deleted":    {session(func(s *bootv1.BootSession) { s.DeletionTimestamp = &now }), false},
	} {
		t.Run(name, func(t *testing.T) {
			NewWithT(t).Expect(blocksDeletion(tc.s)).To(Equal(tc.want))
		})
	}
}

func TestInUseMessage(t *testing.T) {
	g := NewWithT(t)
	g.Expect(inUseMessage([]string{"a"}, "this image")).To(Equal("deletion waits for 1 unfinished session(s) that use this image: a"))
	g.Expect(inUseMessage(strings.Split("a b c d e f g", " "), "this machine")).
		To(Equal("deletion waits for 7 unfinished session(s) that use this machine: a, b, c, d, e and 2 more"))
}

func TestGoneNodes(t *testing.T) {
	g := NewWithT(t)
	gn := newGoneNodes()
	t0 := time.Date(2026, 11, 27, 10, 0, 0, 0, time.UTC)
	g.Expect(gn.missing("node/a", t0)).To(Equal(t0))
	g.Expect(gn.missing("node/a", t0.Add(time.Minute))).To(Equal(t0), "the first sighting counts")
	g.Expect(gn.announce("node/a", "uid-1")).To(BeTrue())
	g.Expect(gn.announce("node/a", "uid-1")).To(BeFalse(), "told once")
	g.Expect(gn.announce("node/b", "uid-1")).To(BeFalse(), "not missing")
	gn.present("node/a")
	g.Expect(gn.missing("node/a", t0.Add(2*time.Minute))).To(Equal(t0.Add(2*time.Minute)), "a node back and gone again starts a new grace")
	g.Expect(gn.announce("node/a", "uid-1")).To(BeTrue(), "and is told again")
}

func TestNodeKey(t *testing.T) {
	g := NewWithT(t)
	g.Expect(nodeKey("storage-1")).To(Equal("storage-1"))
	long := strings.Repeat("n", 50)
	g.Expect(nodeKey(long + "-a")).To(Equal(long))
	g.Expect(nodeKey(long+"-b")).To(Equal(nodeKey(long+"-a")), "two long names share one node finalizer")
	g.Expect(bootv1.NodeFinalizerPrefix + nodeKey(long+"-a")).To(Equal(bootv1.NodeFinalizer(long + "-a")))
}
