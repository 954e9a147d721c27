package controllers

import (
	"testing"
	"time"

	. "github.com/onsi/gomega"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	bootv1 "github.com/ggnet/ggnet/api/v1alpha1"
)

func TestSetConflictCondition(t *testing.T) {
	t0 := time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)
	machine := func(ns, name string, age int, discovered bool) *bootv1.Machine {
		m := &bootv1.Machine{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, CreationTimestamp: metav1.NewTime(t0.Add(-time.Duration(age) * time.Minute))}}
		if discovered {
			m.Labels = map[string]string{bootv1.DiscoveredLabel: "true"}
		}
		return m
	}
	mac := func(o *bootv1.Machine) claim { return claim{o, "MAC 52:54:00:12:34:56", bootv1.DuplicateMACReason} }
	ip := func(o *bootv1.Machine) claim { return claim{o, "address 10.20.0.31", bootv1.DuplicateIPReason} }
	me := machine("cafe", "seat-1", 5, false)
	for name, tc := range map[string]struct {
		m      *bootv1.Machine
		claims []claim
		status metav1.ConditionStatus
		reason string
		msg    string
	}{
		"unique": {me, nil, metav1.ConditionFalse, bootv1.NoConflictReason, "the MAC and the address are unique"},
		"older in another namespace": {me, []claim{mac(machine("bar", "pc-7", 10, false))}, metav1.ConditionTrue, bootv1.DuplicateMACReason,
			"conflicts with MAC 52:54:00:12:34:56 of Machine bar/pc-7, which claimed it first"},
		"newer keeps nothing": {me, []claim{mac(machine("bar", "pc-7", 1, false)), ip(machine("bar", "pc-7", 1, false))}, metav1.ConditionFalse, bootv1.NoConflictReason,
			"this Machine keeps its MAC and address; the newer Machines bar/pc-7 that claim them have Conflict=True"},
		"same age: by namespace/name": {me, []claim{ip(machine("bar", "seat-1", 5, false))}, metav1.ConditionTrue, bootv1.DuplicateIPReason,
			"conflicts with address 10.20.0.31 of Machine bar/seat-1"},
		"MAC reason wins": {me, []claim{ip(machine("a", "x", 9, false)), mac(machine("b", "y", 9, false))}, metav1.ConditionTrue, bootv1.DuplicateMACReason,
			"conflicts with MAC 52:54:00:12:34:56 of Machine b/y, address 10.20.0.31 of Machine a/x, which claimed it first"},
		"an older discovered placeholder does not win": {me, []claim{mac(machine("disc", "d", 60, true))}, metav1.ConditionFalse, bootv1.NoConflictReason, "newer Machines disc/d"},
		"a placeholder loses to a newer real Machine":  {machine("disc", "d", 60, true), []claim{mac(me)}, metav1.ConditionTrue, bootv1.DuplicateMACReason, "of Machine cafe/seat-1"},
	} {
		t.Run(name, func(t *testing.T) {
			g := NewWithT(t)
			m := tc.m.DeepCopy()
			msg := setConflictCondition(m, tc.claims)
			c := meta.FindStatusCondition(m.Status.Conditions, bootv1.ConflictCondition)
			g.Expect(c).NotTo(BeNil())
			g.Expect(c.Status).To(Equal(tc.status))
			g.Expect(c.Reason).To(Equal(tc.reason))
			g.Expect(c.Message).To(ContainSubstring(tc.msg))
			if tc.status == metav1.ConditionTrue {
				g.Expect(msg).To(Equal(c.Message))
			} else {
				g.Expect(msg).To(BeEmpty())
			}
		})
	}
}
