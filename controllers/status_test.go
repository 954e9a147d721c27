package controllers

import (
	"testing"

	. "github.com/onsi/gomega"

	bootv1 "github.com/ggnet/ggnet/api/v1alpha1"
)

func TestScheduleNode(t *testing.T) {
	ready := func(n string) bootv1.ImageReplica { return bootv1.ImageReplica{Node: n, State: bootv1.ReplicaReady} }
	all := func(string) bool { return true }
	for name, tc := range map[string]struct {
		replicas []bootv1.ImageReplica
		pin      string
		load     map[string]int
		exists   func(string) bool
		want     string
	}{
		"fewest sessions":        {[]bootv1.ImageReplica{ready("a"), ready("b")}, "", map[string]int{"a": 3, "b": 1}, all, "b"},
		"tie by name":            {[]bootv1.ImageReplica{ready("b"), ready("a")}, "", nil, all, "a"},
		"only Ready replicas":    {[]bootv1.ImageReplica{{Node: "a", State: bootv1.ReplicaDownloading}, ready("b")}, "", map[string]int{"b": 9}, all, "b"},
		"pin wins":               {[]bootv1.ImageReplica{ready("a"), ready("b")}, "b", map[string]int{"b": 9}, all, "b"},
		"pin without replica":    {[]bootv1.ImageReplica{ready("a")}, "b", nil, all, ""},
		"no replica":             {nil, "", nil, all, ""},
		"node gone":              {[]bootv1.ImageReplica{ready("a"), ready("b")}, "", map[string]int{"b": 5}, func(n string) bool { return n != "a" }, "b"},
		"failed replica skipped": {[]bootv1.ImageReplica{{Node: "a", State: bootv1.ReplicaFailed}}, "", nil, all, ""},
	} {
		t.Run(name, func(t *testing.T) {
			NewWithT(t).Expect(scheduleNode(tc.replicas, tc.pin, tc.load, tc.exists)).To(Equal(tc.want))
		})
	}
}

func TestSummarizeImage(t *testing.T) {
	for name, tc := range map[string]struct {
		states []bootv1.ReplicaState
		phase  bootv1.ImagePhase
		ready  int32
		reason string
	}{
		"none":        {nil, bootv1.ImagePending, 0, bootv1.NoReadyReplicaReason},
		"downloading": {[]bootv1.ReplicaState{bootv1.ReplicaDownloading}, bootv1.ImageReplicating, 0, bootv1.NoReadyReplicaReason},
		"one ready":   {[]bootv1.ReplicaState{bootv1.ReplicaFailed, bootv1.ReplicaReady}, bootv1.ImageReady, 1, bootv1.SucceededReason},
		"all failed":  {[]bootv1.ReplicaState{bootv1.ReplicaFailed, bootv1.ReplicaFailed}, bootv1.ImageFailed, 0, bootv1.ReplicaFailedReason},
	} {
		t.Run(name, func(t *testing.T) {
			g := NewWithT(t)
			img := &bootv1.Image{}
			for i, s := range tc.states {
				img.Status.Replicas = append(img.Status.Replicas, bootv1.ImageReplica{Node: string(rune('a' + i)), State: s, SizeBytes: 42})
			}
			summarizeImage(img)
			g.Expect(img.Status.Phase).To(Equal(tc.phase))
			g.Expect(img.Status.ReadyReplicas).To(Equal(tc.ready))
			g.Expect(img.Status.Conditions[0].Reason).To(Equal(tc.reason))
		})
	}
}

func TestGatewayInSubnet(t *testing.T) {
	g := NewWithT(t)
	g.Expect(gatewayInSubnet(&bootv1.IPv4Reservation{Address: "10.20.0.31", PrefixLength: 24, Gateway: "10.20.0.1"})).To(BeTrue())
	g.Expect(gatewayInSubnet(&bootv1.IPv4Reservation{Address: "10.20.0.31", PrefixLength: 24, Gateway: "10.20.1.1"})).To(BeFalse())
	g.Expect(gatewayInSubnet(&bootv1.IPv4Reservation{Address: "10.20.0.31", PrefixLength: 8, Gateway: "10.99.1.1"})).To(BeTrue())
	g.Expect(gatewayInSubnet(&bootv1.IPv4Reservation{Address: "10.20.0.31", PrefixLength: 24})).To(BeTrue())
}
