package controllers

import (
	"strings"
	"testing"

	. "github.com/onsi/gomega"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	bootv1 "github.com/ggnet/ggnet/api/v1alpha1"
)

// cond is a condition as the tables write it.
type cond struct {
	status metav1.ConditionStatus
	reason string
}

func condOf(conds []metav1.Condition, typ string) cond {
	if c := meta.FindStatusCondition(conds, typ); c != nil {
		return cond{c.Status, c.Reason}
	}
	return cond{}
}

func TestSetCondition(t *testing.T) {
	for name, tc := range map[string]struct {
		before      []metav1.Condition
		ok          bool
		reason, msg string
		changed     bool
	}{
		"first":             {nil, false, "A", "m", true},
		"same":              {[]metav1.Condition{{Type: "Ready", Status: metav1.ConditionFalse, Reason: "A", Message: "m"}}, false, "A", "m", false},
		"message only":      {[]metav1.Condition{{Type: "Ready", Status: metav1.ConditionFalse, Reason: "A", Message: "m"}}, false, "A", "other", false},
		"new reason":        {[]metav1.Condition{{Type: "Ready", Status: metav1.ConditionFalse, Reason: "A"}}, false, "B", "m", true},
		"new status":        {[]metav1.Condition{{Type: "Ready", Status: metav1.ConditionFalse, Reason: "A"}}, true, "A", "m", true},
		"other type beside": {[]metav1.Condition{{Type: "Scheduled", Status: metav1.ConditionTrue, Reason: "A"}}, true, "A", "m", true},
	} {
		t.Run(name, func(t *testing.T) {
			g := NewWithT(t)
			conds := append([]metav1.Condition(nil), tc.before...)
			g.Expect(setCondition(&conds, 7, "Ready", tc.ok, tc.reason, tc.msg)).To(Equal(tc.changed))
			c := meta.FindStatusCondition(conds, "Ready")
			g.Expect(c.Reason).To(Equal(tc.reason))
			g.Expect(c.Message).To(Equal(tc.msg))
			g.Expect(c.ObservedGeneration).To(BeEquivalentTo(7))
			want := metav1.ConditionFalse
			if tc.ok {
				want = metav1.ConditionTrue
			}
			g.Expect(c.Status).To(Equal(want))
			added := 0
			if meta.FindStatusCondition(tc.before, "Ready") == nil {
				added = 1
			}
			g.Expect(conds).To(HaveLen(len(tc.before)+added), "one condition per type")
		})
	}
}

func TestSessionConditions(t *testing.T) {
	now := metav1.Now()
	for name, tc := range map[string]struct {
		set       func(*bootv1.BootSession) bool
		before    func(*bootv1.BootSession)
		phase     bootv1.BootSessionPhase
		ready     cond
		scheduled cond
		changed   bool
	}{
		"waiting": {
			set: func(s *bootv1.BootSession) bool {
				return setSessionWaiting(s, bootv1.SessionPending, bootv1.MachineBusyReason, "m")
			},
			phase: bootv1.SessionPending, ready: cond{metav1.ConditionFalse, bootv1.MachineBusyReason}, changed: true,
		},
		"waiting again, same reason": {
			before: func(s *bootv1.BootSession) {
				setSessionWaiting(s, bootv1.SessionPending, bootv1.MachineBusyReason, "old")
			},
			set: func(s *bootv1.BootSession) bool {
				return setSessionWaiting(s, bootv1.SessionPending, bootv1.MachineBusyReason, "new")
			},
			phase: bootv1.SessionPending, ready: cond{metav1.ConditionFalse, bootv1.MachineBusyReason}, changed: false,
		},
		"failed": {
			set: func(s *bootv1.BootSession) bool {
				return setSessionWaiting(s, bootv1.SessionFailed, bootv1.StorageFailedReason, "m")
			},
			phase: bootv1.SessionFailed, ready: cond{metav1.ConditionFalse, bootv1.StorageFailedReason}, changed: true,
		},
		"ready": {
			before: func(s *bootv1.BootSession) {
				setSessionWaiting(s, bootv1.SessionProvisioning, bootv1.WaitingForStorageReason, "m")
			},
			set:   func(s *bootv1.BootSession) bool { return setSessionReady(s, "m") },
			phase: bootv1.SessionReady, ready: cond{metav1.ConditionTrue, bootv1.SucceededReason}, changed: true,
		},
		"ready, script served: Booting": {
			before: func(s *bootv1.BootSession) { s.Status.Timeline.ScriptServed = &now; setSessionReady(s, "m") },
			set:    func(s *bootv1.BootSession) bool { return setSessionReady(s, "m2") },
			phase:  bootv1.SessionBooting, ready: cond{metav1.ConditionTrue, bootv1.SucceededReason}, changed: false,
		},
		"ready, logged in: Active": {
			before: func(s *bootv1.BootSession) { s.Status.Timeline.ISCSILogin = &now },
			set:    func(s *bootv1.BootSession) bool { return setSessionReady(s, "m") },
			phase:  bootv1.SessionActive, ready: cond{metav1.ConditionTrue, bootv1.SucceededReason}, changed: true,
		},
		"scheduled": {
			set:       func(s *bootv1.BootSession) bool { return setSessionScheduled(s, "storage-1", now) },
			scheduled: cond{metav1.ConditionTrue, bootv1.SucceededReason}, changed: true,
		},
		"unschedulable": {
			set: func(s *bootv1.BootSession) bool {
				return setSessionUnschedulable(s, bootv1.NoStorageNodeReason, "no node")
			},
			phase: bootv1.SessionPending, ready: cond{metav1.ConditionFalse, bootv1.NoStorageNodeReason},
			scheduled: cond{metav1.ConditionFalse, bootv1.NoStorageNodeReason}, changed: true,
		},
	} {
		t.Run(name, func(t *testing.T) {
			g := NewWithT(t)
			s := &bootv1.BootSession{}
			s.Generation = 3
			if tc.before != nil {
				tc.before(s)
			}
			g.Expect(tc.set(s)).To(Equal(tc.changed))
			g.Expect(s.Status.Phase).To(Equal(tc.phase))
			g.Expect(condOf(s.Status.Conditions, bootv1.ReadyCondition)).To(Equal(tc.ready))
			g.Expect(condOf(s.Status.Conditions, bootv1.ScheduledCondition)).To(Equal(tc.scheduled))
			if tc.scheduled.status == metav1.ConditionTrue {
				g.Expect(s.Status.StorageNode).To(Equal("storage-1"))
				g.Expect(s.Status.Timeline.Scheduled).To(Equal(&now))
			}
		})
	}
}

func TestMachineConditions(t *testing.T) {
	withIP := func(gw string) *bootv1.Machine {
		return &bootv1.Machine{Spec: bootv1.MachineSpec{MAC: "52:54:00:12:34:56",
			IPv4: &bootv1.IPv4Reservation{Address: "10.20.0.31", PrefixLength: 24, Gateway: gw}}}
	}
	following := func(family, image string, pin *bootv1.LocalObjectReference) *bootv1.Machine {
		m := withIP("10.20.0.1")
		m.Spec.ImageFamily, m.Spec.ImageRef, m.Status.Image = family, pin, image
		return m
	}
	for name, tc := range map[string]struct {
		m       *bootv1.Machine
		set     func(*bootv1.Machine) bool
		ready   cond
		msg     string
		changed bool
	}{
		"served": {withIP("10.20.0.1"), func(m *bootv1.Machine) bool { return setMachineReady(m, "", "") },
			cond{metav1.ConditionTrue, bootv1.SucceededReason}, "the reservation is served", true},
		"no address": {&bootv1.Machine{}, func(m *bootv1.Machine) bool { return setMachineReady(m, "", "") },
			cond{metav1.ConditionTrue, bootv1.SucceededReason}, "the reservation is served", true},
		"gateway outside": {withIP("10.21.0.1"), func(m *bootv1.Machine) bool { return setMachineReady(m, "", "") },
			cond{metav1.ConditionFalse, bootv1.InvalidReservationReason}, "gateway 10.21.0.1 is outside 10.20.0.31/24", true},
		"conflict wins over the gateway": {withIP("10.21.0.1"), func(m *bootv1.Machine) bool {
			return setMachineReady(m, bootv1.DuplicateMACReason, "conflicts with X")
		}, cond{metav1.ConditionFalse, bootv1.DuplicateMACReason}, "conflicts with X", true},
		"family without a Ready version": {following("games", "", nil), func(m *bootv1.Machine) bool { return setMachineReady(m, "", "") },
			cond{metav1.ConditionFalse, bootv1.NoReadyImageInFamilyReason}, "image family games has no Ready version yet", true},
		"family resolved": {following("games", "games-v3", nil), func(m *bootv1.Machine) bool { return setMachineReady(m, "", "") },
			cond{metav1.ConditionTrue, bootv1.SucceededReason}, "the reservation is served", true},
		"a pin wins over the family": {following("games", "", &bootv1.LocalObjectReference{Name: "games-v1"}), func(m *bootv1.Machine) bool {
			return setMachineReady(m, "", "")
		}, cond{metav1.ConditionTrue, bootv1.SucceededReason}, "the reservation is served", true},
		"conflict wins over the family": {following("games", "", nil), func(m *bootv1.Machine) bool {
			return setMachineReady(m, bootv1.DuplicateMACReason, "conflicts with X")
		}, cond{metav1.ConditionFalse, bootv1.DuplicateMACReason}, "conflicts with X", true},
		"in use": {withIP(""), func(m *bootv1.Machine) bool { return setMachineInUse(m, "deletion waits") },
			cond{metav1.ConditionFalse, bootv1.InUseReason}, "deletion waits", true},
	} {
		t.Run(name, func(t *testing.T) {
			g := NewWithT(t)
			m := tc.m.DeepCopy()
			g.Expect(tc.set(m)).To(Equal(tc.changed))
			g.Expect(condOf(m.Status.Conditions, bootv1.ReadyCondition)).To(Equal(tc.ready))
			g.Expect(meta.FindStatusCondition(m.Status.Conditions, bootv1.ReadyCondition).Message).To(Equal(tc.msg))
			g.Expect(tc.set(m)).To(BeFalse(), "setting it again is no news")
		})
	}
}

func TestImageConditions(t *testing.T) {
	g := NewWithT(t)
	img := &bootv1.Image{}
	img.Status.Replicas = []bootv1.ImageReplica{{Node: "a", State: bootv1.ReplicaReady}}
	summarizeImage(img)
	g.Expect(condOf(img.Status.Conditions, bootv1.ReadyCondition)).To(Equal(cond{metav1.ConditionTrue, bootv1.SucceededReason}))
	g.Expect(setImageInUse(img, "deletion waits")).To(BeTrue())
	g.Expect(condOf(img.Status.Conditions, bootv1.ReadyCondition)).To(Equal(cond{metav1.ConditionFalse, bootv1.InUseReason}))
	g.Expect(setImageInUse(img, "deletion waits for 2")).To(BeFalse(), "a new message is no news")
}

func TestSessionMetadata(t *testing.T) {
	long := strings.Repeat("m", 64)
	both := []string{bootv1.SessionFinalizer, bootv1.StorageFinalizer}
	only := []string{bootv1.SessionFinalizer}
	for name, tc := range map[string]struct {
		s          *bootv1.BootSession
		labels     map[string]string
		finalizers []string
		changed    bool
	}{
		"new": {fixtureSession("m", "i", ""), map[string]string{bootv1.MachineLabel: "m", bootv1.ImageLabel: "i"}, both, true},
		"scheduled": {fixtureSession("m", "i", "node-1"),
			map[string]string{bootv1.MachineLabel: "m", bootv1.ImageLabel: "i", bootv1.StorageNodeOfSessionLabel: "node-1"}, both, true},
		"done": {func() *bootv1.BootSession { s := fixtureSession("m", "i", "node-1"); sessionMetadata(s); return s }(),
			map[string]string{bootv1.MachineLabel: "m", bootv1.ImageLabel: "i", bootv1.StorageNodeOfSessionLabel: "node-1"}, both, false},
		"a wrong label is corrected": {func() *bootv1.BootSession {
			s := fixtureSession("m", "i", "")
			sessionMetadata(s)
			s.Labels[bootv1.MachineLabel] = "other"
			return s
		}(), map[string]string{bootv1.MachineLabel: "m", bootv1.ImageLabel: "i"}, both, true},
		"a name too long for a label is left out": {fixtureSession(long, "i", ""), map[string]string{bootv1.ImageLabel: "i"}, both, true},
		"the storage agent released it: never added again": {func() *bootv1.BootSession {
			s := fixtureSession("m", "i", "node-1")
			sessionMetadata(s)
			s.Finalizers = only
			return s
		}(), map[string]string{bootv1.MachineLabel: "m", bootv1.ImageLabel: "i", bootv1.StorageNodeOfSessionLabel: "node-1"}, only, false},
		"stopped before it was scheduled: the manager drops it": {func() *bootv1.BootSession {
			s := fixtureSession("m", "i", "")
			sessionMetadata(s)
			s.Spec.Stopped = true
			return s
		}(), map[string]string{bootv1.MachineLabel: "m", bootv1.ImageLabel: "i"}, only, true},
		"stopped once scheduled: the storage agent's to drop": {func() *bootv1.BootSession {
			s := fixtureSession("m", "i", "node-1")
			sessionMetadata(s)
			s.Spec.Stopped = true
			return s
		}(), map[string]string{bootv1.MachineLabel: "m", bootv1.ImageLabel: "i", bootv1.StorageNodeOfSessionLabel: "node-1"}, both, false},
		"created stopped: never gets it": {func() *bootv1.BootSession {
			s := fixtureSession("m", "i", "")
			s.Spec.Stopped = true
			return s
		}(), map[string]string{bootv1.MachineLabel: "m", bootv1.ImageLabel: "i"}, only, true},
	} {
		t.Run(name, func(t *testing.T) {
			g := NewWithT(t)
			g.Expect(sessionMetadata(tc.s)).To(Equal(tc.changed))
			g.Expect(tc.s.Labels).To(Equal(tc.labels))
			g.Expect(tc.s.Finalizers).To(Equal(tc.finalizers))
		})
	}
}

func fixtureSession(machine, image, node string) *bootv1.BootSession {
	s := &bootv1.BootSession{Spec: bootv1.BootSessionSpec{MachineRef: bootv1.LocalObjectReference{Name: machine},
		ImageRef: bootv1.LocalObjectReference{Name: image}}}
	s.Status.StorageNode = node
	return s
}
