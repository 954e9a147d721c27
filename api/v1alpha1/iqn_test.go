package v1alpha1_test

import (
	"testing"

	bootv1 "github.com/ggnet/ggnet/api/v1alpha1"
)

// TestTargetIQN: the manager (prefix without ':') and the storage agent
// (prefix with ':') name a session's target the same.
func TestTargetIQN(t *testing.T) {
	for _, prefix := range []string{"iqn.2026-11.io.ggnet", "iqn.2026-11.io.ggnet:"} {
		if got, want := bootv1.TargetIQN(prefix, "cafe", "seat-1"), "iqn.2026-11.io.ggnet:cafe:seat-1"; got != want {
			t.Errorf("TargetIQN(%q) = %q, want %q", prefix, got, want)
		}
	}
}
