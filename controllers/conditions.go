package controllers

import (
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Every condition the manager writes is set by a small pure function of the
// object (bootsession_conditions.go, machine_conditions.go,
// image_conditions.go), tested by tables. A setter reports whether the
// condition's status or reason changed: that is when the controller records
// an Event, whose reason is the condition's.

// setCondition sets condition typ on conds and reports whether its status or
// reason changed (a message-only change is written but is no news).
func setCondition(conds *[]metav1.Condition, gen int64, typ string, ok bool, reason, msg string) (changed bool) {
	status := metav1.ConditionFalse
	if ok {
		status = metav1.ConditionTrue
	}
	prev := meta.FindStatusCondition(*conds, typ)
	changed = prev == nil || prev.Status != status || prev.Reason != reason
	meta.SetStatusCondition(conds, metav1.Condition{Type: typ, Status: status, Reason: reason, Message: msg, ObservedGeneration: gen})
	return changed
}

// conditionOf is condition typ's reason and message, or "".
func conditionOf(conds []metav1.Condition, typ string) (reason, msg string) {
	if c := meta.FindStatusCondition(conds, typ); c != nil {
		return c.Reason, c.Message
	}
	return "", ""
}
