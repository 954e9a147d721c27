package storage

import (
	"testing"

	. "github.com/onsi/gomega"
)

// TestGarbageScope: an agent limited to one namespace collects only that
// namespace's targets and overlays; another GGnet's running disks on the
// same node are not its to judge.
func TestGarbageScope(t *testing.T) {
	g := NewWithT(t)
	for _, prefix := range []string{"iqn.2026-11.io.ggnet:", "iqn.2026-11.io.ggnet"} {
		g.Expect(ownedIQNPrefix(prefix, "")).To(Equal(prefix))
		p := ownedIQNPrefix(prefix, "cafe")
		g.Expect(p).To(Equal("iqn.2026-11.io.ggnet:cafe:"))
		g.Expect("iqn.2026-11.io.ggnet:cafe:s1").To(HavePrefix(p))
		g.Expect("iqn.2026-11.io.ggnet:cafe-2:s1").NotTo(HavePrefix(p))
		g.Expect("iqn.2026-11.io.ggnet:other:cafe:s1").NotTo(HavePrefix(p))
	}
	g.Expect(ownsOverlay("other/s1-uid.raw", "")).To(BeTrue())
	g.Expect(ownsOverlay("cafe/s1-uid.raw", "cafe")).To(BeTrue())
	g.Expect(ownsOverlay("cafe-2/s1-uid.raw", "cafe")).To(BeFalse())
	g.Expect(ownsOverlay("s1-uid.raw", "cafe")).To(BeFalse())
}

// TestGarbageNeverPersistent: the collector skips every file that may be a
// persistent disk, of the UID-keyed layout (anything under
// <namespace>/persist/) or of the old one (persist-*.raw), and nothing else.
func TestGarbageNeverPersistent(t *testing.T) {
	for _, tc := range []struct {
		rel  string
		want bool
	}{
		{"cafe/persist/5f0c3a4e-1b2c-4d5e-8f90-0123456789ab-6a1b2c3d-4e5f-4a6b-8c7d-0123456789ab-g0.raw", true},
		{"cafe/persist/copied-by-hand.raw", true},
		{"cafe/persist-seat-1-win11.raw", true},
		{"cafe/s1-5f0c3a4e-1b2c-4d5e-8f90-0123456789ab.raw", false},
		// A Discard session named persist-... is no old-layout disk: its
		// overlay ends in the session's UID and is collected like others.
		{"cafe/persist-x-5f0c3a4e-1b2c-4d5e-8f90-0123456789ab.raw", false},
		// A namespace named persist holds Discard overlays.
		{"persist/s1-5f0c3a4e-1b2c-4d5e-8f90-0123456789ab.raw", false},
	} {
		t.Run(tc.rel, func(t *testing.T) { NewWithT(t).Expect(persistent(tc.rel)).To(Equal(tc.want)) })
	}
}
