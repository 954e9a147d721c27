package v1alpha1_test

import (
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/util/validation"

	bootv1 "github.com/ggnet/ggnet/api/v1alpha1"
)

// TestStorageLeaseName: a short node name is kept whole; a 253-character
// one (the longest a Node may have) is cut to a valid name that differs
// from a neighbour's with the same beginning and is the same every time.
func TestStorageLeaseName(t *testing.T) {
	if got := bootv1.StorageLeaseName("node-1"); got != "ggnet-storage-node-1" {
		t.Errorf("StorageLeaseName(node-1) = %q", got)
	}
	long := strings.Repeat("a.", 126) + "b" // 253 characters
	other := strings.Repeat("a.", 126) + "c"
	a, b := bootv1.StorageLeaseName(long), bootv1.StorageLeaseName(other)
	for _, n := range []string{a, b} {
		if errs := validation.IsDNS1123Subdomain(n); len(errs) > 0 {
			t.Errorf("StorageLeaseName(long) = %q: %v", n, errs)
		}
	}
	if a == b || a != bootv1.StorageLeaseName(long) {
		t.Errorf("long names: %q and %q (want distinct and stable)", a, b)
	}
}
