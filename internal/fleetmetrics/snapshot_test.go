package fleetmetrics

import (
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	bootv1 "github.com/ggnet/ggnet/api/v1alpha1"
)

var t0 = time.Date(2026, 11, 27, 8, 0, 0, 0, time.UTC)

func at(sec int) *metav1.Time {
	t := metav1.NewTime(t0.Add(time.Duration(sec) * time.Second))
	return &t
}

func session(ns, name, image, node string, phase bootv1.BootSessionPhase, f ...func(*bootv1.BootSession)) bootv1.BootSession {
	s := bootv1.BootSession{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, CreationTimestamp: *at(0)},
		Spec:       bootv1.BootSessionSpec{ImageRef: bootv1.LocalObjectReference{Name: image}},
		Status:     bootv1.BootSessionStatus{Phase: phase, StorageNode: node},
	}
	for _, g := range f {
		g(&s)
	}
	return s
}

func cond(t string, st metav1.ConditionStatus) metav1.Condition {
	return metav1.Condition{Type: t, Status: st, Reason: "R", LastTransitionTime: *at(0)}
}

func TestPhaseSince(t *testing.T) {
	for _, tc := range []struct {
		name string
		s    bootv1.BootSession
		want int
	}{
		{"no phase yet: since creation", session("a", "s", "img", "", ""), 0},
		{"provisioning since scheduled", session("a", "s", "img", "n", bootv1.SessionProvisioning, func(s *bootv1.BootSession) { s.Status.Timeline.Scheduled = at(3) }), 3},
		{"ready since ready", session("a", "s", "img", "n", bootv1.SessionReady, func(s *bootv1.BootSession) {
			s.Status.Timeline.Scheduled, s.Status.Timeline.Ready = at(3), at(9)
		}), 9},
		{"booting since the script", session("a", "s", "img", "n", bootv1.SessionBooting, func(s *bootv1.BootSession) {
			s.Status.Timeline.Ready, s.Status.Timeline.ScriptServed = at(9), at(20)
		}), 20},
		{"booting without the script stamp: since ready", session("a", "s", "img", "n", bootv1.SessionBooting, func(s *bootv1.BootSession) {
			s.Status.Timeline.Ready = at(9)
		}), 9},
		{"active since the login", session("a", "s", "img", "n", bootv1.SessionActive, func(s *bootv1.BootSession) {
			s.Status.Timeline.ScriptServed, s.Status.Timeline.ISCSILogin = at(20), at(31)
		}), 31},
		{"stopping since stopping", session("a", "s", "img", "n", bootv1.SessionStopping, func(s *bootv1.BootSession) { s.Status.Timeline.Stopping = at(50) }), 50},
		{"stopping by deletion", session("a", "s", "img", "n", bootv1.SessionStopping, func(s *bootv1.BootSession) { s.DeletionTimestamp = at(60) }), 60},
	} {
		if got := phaseSince(&tc.s); !got.Equal(at(tc.want).Time) {
			t.Errorf("%s: %v, want +%ds", tc.name, got, tc.want)
		}
	}
}

func TestMachineState(t *testing.T) {
	ready := []metav1.Condition{cond(bootv1.ReadyCondition, metav1.ConditionTrue)}
	phases := map[string]bootv1.BootSessionPhase{"a/s1": bootv1.SessionActive}
	for _, tc := range []struct {
		name string
		m    bootv1.Machine
		want string
	}{
		{"idle", bootv1.Machine{Status: bootv1.MachineStatus{Conditions: ready}}, MachineIdle},
		{"not ready", bootv1.Machine{}, MachineNotReady},
		{"local boot", bootv1.Machine{Spec: bootv1.MachineSpec{BootPolicy: bootv1.BootPolicyLocalBoot}, Status: bootv1.MachineStatus{Conditions: ready}}, MachineLocalBoot},
		{"discovered", bootv1.Machine{ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{bootv1.DiscoveredLabel: "true"}}}, MachineDiscovered},
		{"conflict wins over a session", bootv1.Machine{ObjectMeta: metav1.ObjectMeta{Namespace: "a"},
			Status: bootv1.MachineStatus{ActiveSession: "s1", Conditions: []metav1.Condition{cond(bootv1.ConflictCondition, metav1.ConditionTrue)}}}, MachineConflict},
		{"the active session's phase", bootv1.Machine{ObjectMeta: metav1.ObjectMeta{Namespace: "a"}, Status: bootv1.MachineStatus{ActiveSession: "s1", Conditions: ready}}, "Active"},
		{"an active session not in the cache yet", bootv1.Machine{ObjectMeta: metav1.ObjectMeta{Namespace: "b"}, Status: bootv1.MachineStatus{ActiveSession: "s1"}}, "Pending"},
	} {
		if got := machineState(&tc.m, phases); got != tc.want {
			t.Errorf("%s: %s, want %s", tc.name, got, tc.want)
		}
	}
}

func TestSnapshot(t *testing.T) {
	sessions := []bootv1.BootSession{
		session("cafe", "s1", "win11", "st-1", bootv1.SessionActive, func(s *bootv1.BootSession) { s.Status.Timeline.ISCSILogin = at(10) }),
		session("cafe", "s2", "win11", "st-1", bootv1.SessionActive, func(s *bootv1.BootSession) { s.Status.Timeline.ISCSILogin = at(40) }),
		session("cafe", "s3", "win11", "st-2", bootv1.SessionBooting, func(s *bootv1.BootSession) { s.Status.Timeline.ScriptServed = at(70) }),
		session("cafe", "s4", "linux", "", ""),
		session("cafe", "s5", "linux", "st-2", bootv1.SessionFailed),
		session("other", "s1", "win11", "st-1", bootv1.SessionReady, func(s *bootv1.BootSession) { s.Status.Timeline.Ready = at(5) }),
	}
	ready := []metav1.Condition{cond(bootv1.ReadyCondition, metav1.ConditionTrue)}
	machines := []bootv1.Machine{
		{ObjectMeta: metav1.ObjectMeta{Namespace: "cafe", Name: "pc1"}, Status: bootv1.MachineStatus{ActiveSession: "s1", Conditions: ready}},
		{ObjectMeta: metav1.ObjectMeta{Namespace: "cafe", Name: "pc2"}, Status: bootv1.MachineStatus{ActiveSession: "s2", Conditions: ready}},
		{ObjectMeta: metav1.ObjectMeta{Namespace: "cafe", Name: "pc3"}, Status: bootv1.MachineStatus{Conditions: ready}},
		{ObjectMeta: metav1.ObjectMeta{Namespace: "other", Name: "pc1"}, Status: bootv1.MachineStatus{ActiveSession: "s1", Conditions: ready}},
	}
	images := []bootv1.Image{{ObjectMeta: metav1.ObjectMeta{Namespace: "cafe", Name: "win11"}, Status: bootv1.ImageStatus{Replicas: []bootv1.ImageReplica{
		{Node: "st-1", State: bootv1.ReplicaReady}, {Node: "st-2", State: bootv1.ReplicaReady}, {Node: "st-3", State: bootv1.ReplicaFailed},
	}}}}
	nodes := []corev1.Node{
		{ObjectMeta: metav1.ObjectMeta{Name: "st-1", Annotations: map[string]string{bootv1.StorageAnnotation: `{"capacityBytes":1000,"freeBytes":300,"reserveBytes":100,"replicaBytes":500,"overlayBytes":200,"overlays":2,"updated":"2026-11-27T08:00:00Z"}`}}},
		{ObjectMeta: metav1.ObjectMeta{Name: "st-bad", Annotations: map[string]string{bootv1.StorageAnnotation: `{"capacityBytes":`}}},
		{ObjectMeta: metav1.ObjectMeta{Name: "worker"}},
	}
	d := snapshot(sessions, machines, images, nodes, t0.Add(100*time.Second))

	wantSessions := map[sessionKey]float64{
		{"cafe", "Active", "st-1", "win11"}:  2,
		{"cafe", "Booting", "st-2", "win11"}: 1,
		{"cafe", "Pending", "", "linux"}:     1,
		{"cafe", "Failed", "st-2", "linux"}:  1,
		{"other", "Ready", "st-1", "win11"}:  1,
	}
	if !equalMaps(d.sessions, wantSessions) {
		t.Errorf("sessions %v, want %v", d.sessions, wantSessions)
	}
	wantLongest := map[phaseKey]float64{
		{"cafe", "Active"}: 90, {"cafe", "Booting"}: 30, {"cafe", "Pending"}: 100, {"other", "Ready"}: 95,
	}
	if !equalMaps(d.phaseLongest, wantLongest) {
		t.Errorf("longest %v, want %v (no Failed: it is final)", d.phaseLongest, wantLongest)
	}
	wantMachines := map[machineKey]float64{{"cafe", "Active"}: 2, {"cafe", MachineIdle}: 1, {"other", "Ready"}: 1}
	if !equalMaps(d.machines, wantMachines) {
		t.Errorf("machines %v, want %v", d.machines, wantMachines)
	}
	wantReplicas := map[replicaKey]float64{{"cafe", "win11", "Ready"}: 2, {"cafe", "win11", "Failed"}: 1}
	if !equalMaps(d.replicas, wantReplicas) {
		t.Errorf("replicas %v, want %v", d.replicas, wantReplicas)
	}
	if len(d.storage) != 1 || d.storage["st-1"].FreeBytes != 300 || d.storage["st-1"].Overlays != 2 || d.storageErrors != 1 {
		t.Errorf("storage %v (%d errors), want st-1 only with free 300 and 2 overlays, and 1 error", d.storage, d.storageErrors)
	}
}

func equalMaps[K comparable](a, b map[K]float64) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

func TestTransition(t *testing.T) {
	base := func(f ...func(*bootv1.BootSession)) *bootv1.BootSession {
		s := session("cafe", "s", "win11", "st-1", bootv1.SessionReady, func(s *bootv1.BootSession) { s.Status.Timeline.Ready = at(4) })
		for _, g := range f {
			g(&s)
		}
		return &s
	}
	login := func(s *bootv1.BootSession) {
		s.Status.Phase, s.Status.Timeline.DHCP, s.Status.Timeline.ISCSILogin = bootv1.SessionActive, at(10), at(17)
	}
	bootFailed := func(s *bootv1.BootSession) {
		s.Status.Conditions = append(s.Status.Conditions, cond(bootv1.BootFailedCondition, metav1.ConditionTrue))
	}
	for _, tc := range []struct {
		name     string
		old, cur *bootv1.BootSession
		want     change
	}{
		{"resync: nothing", base(), base(), change{}},
		{"becomes Ready", base(func(s *bootv1.BootSession) { s.Status.Phase, s.Status.Timeline.Ready = bootv1.SessionProvisioning, nil }), base(), change{hasReady: true, createToReady: 4}},
		{"logs in: booted, DHCP to login", base(), base(login), change{result: ResultBooted, hasLogin: true, dhcpToLogin: 7}},
		{"logs in with no DHCP stamp: booted, no time", base(), base(func(s *bootv1.BootSession) { s.Status.Timeline.ISCSILogin = at(17) }), change{result: ResultBooted}},
		{"a DHCP stamp after the login is not timed", base(), base(login, func(s *bootv1.BootSession) { s.Status.Timeline.DHCP = at(30) }), change{result: ResultBooted}},
		{"a later update of a booted session: nothing", base(login), base(login, func(s *bootv1.BootSession) { s.Status.Phase = bootv1.SessionStopping }), change{}},
		{"sanboot fails", base(), base(bootFailed), change{result: ResultBootFailed}},
		{"logs in after a failed sanboot: not counted again", base(bootFailed), base(bootFailed, login), change{hasLogin: true, dhcpToLogin: 7}},
		{"fails", base(), base(func(s *bootv1.BootSession) { s.Status.Phase = bootv1.SessionFailed }), change{result: ResultFailed}},
		{"stopped before booting", base(), base(func(s *bootv1.BootSession) { s.Spec.Stopped = true }), change{result: ResultCancelled}},
		{"deleted before booting", base(), base(func(s *bootv1.BootSession) { s.DeletionTimestamp = at(9) }), change{result: ResultCancelled}},
		{"a failed session stopped: nothing", base(func(s *bootv1.BootSession) { s.Status.Phase = bootv1.SessionFailed }),
			base(func(s *bootv1.BootSession) { s.Status.Phase = bootv1.SessionStopped }), change{}},
	} {
		if got := transition(tc.old, tc.cur); got != tc.want {
			t.Errorf("%s: %+v, want %+v", tc.name, got, tc.want)
		}
	}
}
