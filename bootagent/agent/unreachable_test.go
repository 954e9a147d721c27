package agent

import (
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	bootv1 "github.com/ggnet/ggnet/api/v1alpha1"
)

// TestSessionEntryStorageUnreachable: the table learns StorageReachable=False
// (the manager's: the storage node's Lease expired); True or no condition
// serves the session as before.
func TestSessionEntryStorageUnreachable(t *testing.T) {
	for status, want := range map[metav1.ConditionStatus]bool{metav1.ConditionFalse: true, metav1.ConditionTrue: false, "": false} {
		s := &bootv1.BootSession{ObjectMeta: metav1.ObjectMeta{Namespace: "cafe", Name: "s1"}}
		s.Status.Phase = bootv1.SessionReady
		s.Status.Target = &bootv1.ISCSITarget{Portal: "10.0.0.1:3260", IQN: "iqn.2026-11.io.ggnet:cafe:s1"}
		if status != "" {
			s.Status.Conditions = []metav1.Condition{{Type: bootv1.StorageReachableCondition, Status: status, Reason: bootv1.StorageNodeUnreachableReason}}
		}
		e := sessionEntry(s)
		if e.StorageUnreachable != want || !e.Bootable {
			t.Errorf("StorageReachable=%q: StorageUnreachable %v, Bootable %v; want %v, true", status, e.StorageUnreachable, e.Bootable, want)
		}
	}
}
