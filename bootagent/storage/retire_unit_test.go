package storage

import (
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	bootv1 "github.com/ggnet/ggnet/api/v1alpha1"
)

// TestRetireAskedOnlyAutoSession: the RetireAnnotation counts only on an
// AutoSession session, and only such a session's target is ever bound to
// the retired initiator.
func TestRetireAskedOnlyAutoSession(t *testing.T) {
	s := &bootv1.BootSession{ObjectMeta: metav1.ObjectMeta{Namespace: "n", Name: "s",
		Annotations: map[string]string{bootv1.RetireAnnotation: "why"}}}
	s.Status.InitiatorIQN = "iqn.x:s"
	s.Status.Conditions = []metav1.Condition{{Type: bootv1.RetireCondition, Status: metav1.ConditionTrue}}
	r := &sessionReconciler{Role: &Role{book: &statusBook{}}}
	if _, asked := retireAsked(s); asked {
		t.Fatal("the annotation counted on a session without the AutoSession label")
	}
	if got := r.servedInitiator(s); got != s.Status.InitiatorIQN {
		t.Fatalf("a user's session's target is bound to %q", got)
	}
	s.Labels = map[string]string{bootv1.AutoSessionLabel: "true"}
	if why, asked := retireAsked(s); !asked || why != "why" {
		t.Fatal("the annotation did not count on an AutoSession session")
	}
	if got := r.servedInitiator(s); got != retiredInitiator(s.Status.InitiatorIQN) {
		t.Fatalf("a retired AutoSession session's target is bound to %q", got)
	}
}
