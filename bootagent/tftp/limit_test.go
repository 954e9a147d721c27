package tftp

import (
	"net/netip"
	"testing"

	. "github.com/onsi/gomega"
)

func TestLimiter(t *testing.T) {
	g := NewWithT(t)
	a, b, c := netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.2"), netip.MustParseAddr("10.0.0.3")
	l := newLimiter(3, 2)
	g.Expect(l.acquire(a)).To(Succeed())
	g.Expect(l.acquire(a)).To(Succeed())
	g.Expect(l.acquire(a)).To(MatchError(ErrTooBusySource))
	g.Expect(l.acquire(b)).To(Succeed())
	g.Expect(l.acquire(c)).To(MatchError(ErrTooBusy), "the global cap comes first")
	l.release(a)
	g.Expect(l.acquire(c)).To(Succeed())
	for _, x := range []netip.Addr{a, b, c} {
		l.release(x)
	}
	g.Expect(l.total).To(BeZero())
	g.Expect(l.perSource).To(BeEmpty(), "no entry kept for idle sources")
}
