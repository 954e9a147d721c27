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
