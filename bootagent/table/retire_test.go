package table

import (
	"net/netip"
	"testing"
	"time"

	. "github.com/onsi/gomega"
)

// retireFixture: machine a/m1 (UID u1) owns hw1, reserved 10.0.0.1; its
// AutoSession session a/s1 (token1) is being retired; the clock is set by
// hand.
func retireFixture(t *testing.T) (*Table, *time.Time, Session) {
	t.Helper()
	now := time.Unix(1_800_000_000, 0)
	tb := New(WithClock(func() time.Time { return now }))
	tb.UpsertMachine(machine("a/m1", hw1, withAddress("10.0.0.1"), func(m *Machine) { m.UID = "u1" }))
	s := session("a/s1", "a/m1", hw1, 1)
	s.AutoSession = true
	tb.UpsertSession(s)
	tb.UpsertSecret(s.Key, secret(token1))
	s.Retiring = true
	tb.UpsertSession(s)
	return tb, &now, s
}

var pc = netip.MustParseAddr("10.0.0.1")

func retiredOK(g Gomega, tb *Table) {
	gr, err := tb.Authorize(mac(hw1), token1, pc)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(gr.Retired).To(BeTrue())
	g.Expect(gr.Script).To(BeEmpty(), "a retiring session is not handed out")
}

func retiredRefused(g Gomega, tb *Table) {
	_, err := tb.Authorize(mac(hw1), token1, pc)
	g.Expect(err).To(MatchError(ErrBadToken))
}

// TestRetiredTokenHandOver: the retiring session's token works right after
// the retire, through the stop that answers it, and leads to the machine's
// next session; it stops working once the session leaves the table.
func TestRetiredTokenHandOver(t *testing.T) {
	g := NewWithT(t)
	tb, now, s := retireFixture(t)
	retiredOK(g, tb)
	r, _ := tb.LookupMAC(mac(hw1))
	g.Expect(r.Token).NotTo(Equal(token1), "DHCP hands out the nonce again")

	*now = now.Add(30 * time.Second)
	s.Retired, s.Live, s.Bootable = true, false, false // Retire=True, stopped by the manager
	tb.UpsertSession(s)
	retiredOK(g, tb)
	next := session("a/s2", "a/m1", hw1, 2)
	next.AutoSession = true
	tb.UpsertSession(next)
	tb.UpsertSecret(next.Key, secret(token2))
	gr, err := tb.Authorize(mac(hw1), token1, pc)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(gr.SessionKey).To(Equal("a/s2"), "the retired token leads to the next session")

	g.Expect(tb.handOvers).To(HaveKey(s.Key))
	tb.DeleteSession(s.Key)
	retiredRefused(g, tb)
	g.Expect(tb.handOvers).To(BeEmpty(), "nothing left behind")
}

// TestRetiredTokenEnds: the token stops working when the session stops or
// fails other than as the retire's answer, when it is no longer retiring,
// when another Machine (or the same name made again) answers for the MAC,
// and after RetiredTokenTTL; none of it comes back.
func TestRetiredTokenEnds(t *testing.T) {
	cases := map[string]func(tb *Table, now *time.Time, s Session){
		"session deleted": func(tb *Table, _ *time.Time, s Session) { tb.DeleteSession(s.Key) },
		"session stopped without the retire's answer": func(tb *Table, _ *time.Time, s Session) {
			s.Live, s.Bootable = false, false
			tb.UpsertSession(s)
		},
		"retire withdrawn (Retire=False InUse)": func(tb *Table, _ *time.Time, s Session) {
			s.Retiring = false
			tb.UpsertSession(s)
			s.Retiring = true // asked again: the old token is not good again
			tb.UpsertSession(s)
		},
		"session moved to another MAC and back": func(tb *Table, _ *time.Time, s Session) {
			m := s
			m.MAC = "52:54:00:00:00:09"
			tb.UpsertSession(m)
			tb.UpsertSession(s)
		},
		"another Machine, older, takes the MAC": func(tb *Table, _ *time.Time, s Session) {
			tb.UpsertMachine(machine("b/m9", hw1, withAddress("10.0.0.1"), created(-1), func(m *Machine) { m.UID = "u9" }))
		},
		"the Machine is deleted and made again": func(tb *Table, _ *time.Time, s Session) {
			tb.DeleteMachine("a/m1")
			tb.UpsertMachine(machine("a/m1", hw1, withAddress("10.0.0.1"), func(m *Machine) { m.UID = "u2" }))
		},
		"the Machine moves to another MAC and back": func(tb *Table, _ *time.Time, s Session) {
			tb.UpsertMachine(machine("a/m1", "52:54:00:00:00:09", withAddress("10.0.0.1"), func(m *Machine) { m.UID = "u1" }))
			tb.UpsertMachine(machine("a/m1", hw1, withAddress("10.0.0.1"), func(m *Machine) { m.UID = "u1" }))
		},
		"the Machine is in conflict": func(tb *Table, _ *time.Time, s Session) {
			tb.UpsertMachine(machine("a/m1", hw1, conflict, func(m *Machine) { m.UID = "u1" }))
			tb.UpsertMachine(machine("a/m1", hw1, withAddress("10.0.0.1"), func(m *Machine) { m.UID = "u1" }))
		},
		"TTL passed": func(tb *Table, now *time.Time, s Session) {
			*now = now.Add(RetiredTokenTTL)
		},
		"TTL passed after the retire's answer": func(tb *Table, now *time.Time, s Session) {
			*now = now.Add(RetiredTokenTTL - time.Second)
			s.Retired, s.Live, s.Bootable = true, false, false
			tb.UpsertSession(s)
			*now = now.Add(time.Second)
			tb.UpsertSession(s)
		},
	}
	for name, end := range cases {
		t.Run(name, func(t *testing.T) {
			g := NewWithT(t)
			tb, now, s := retireFixture(t)
			retiredOK(g, tb)
			end(tb, now, s)
			retiredRefused(g, tb)
		})
	}
}

// TestRetiringOnlyAutoSession: Retiring means nothing on a session that is
// not an AutoSession one: it stays served, with its own token only.
func TestRetiringOnlyAutoSession(t *testing.T) {
	g := NewWithT(t)
	tb := New()
	tb.UpsertMachine(machine("a/m1", hw1, withAddress("10.0.0.1")))
	s := session("a/s1", "a/m1", hw1, 1)
	s.Retiring, s.Retired = true, true
	tb.UpsertSession(s)
	tb.UpsertSecret(s.Key, secret(token1))
	gr, err := tb.Authorize(mac(hw1), token1, pc)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(gr.Retired || gr.Retiring).To(BeFalse())
	g.Expect(gr.SessionKey).To(Equal("a/s1"))
	g.Expect(gr.Script).NotTo(BeEmpty())
	g.Expect(tb.handOvers).To(BeEmpty())
}

// TestRetiringWithNextSessionServed: while the machine's next session is
// served and an old one still retires (its storage agent did not answer in
// time), a request with the served session's token is not "retiring": a
// failure it reports is the served session's own, not a retire's.
func TestRetiringWithNextSessionServed(t *testing.T) {
	g := NewWithT(t)
	tb, _, _ := retireFixture(t)
	gr, err := tb.Authorize(mac(hw1), token1, pc)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(gr.Retiring).To(BeTrue(), "nothing else is served: the retire's")
	next := session("a/s2", "a/m1", hw1, 2)
	next.AutoSession = true
	tb.UpsertSession(next)
	tb.UpsertSecret(next.Key, secret(token2))
	gr, err = tb.Authorize(mac(hw1), token2, pc)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(gr.SessionKey).To(Equal("a/s2"))
	g.Expect(gr.Script).NotTo(BeEmpty())
	g.Expect(gr.Retired || gr.Retiring).To(BeFalse(), "the served session's failures are its own")
	gr, err = tb.Authorize(mac(hw1), token1, pc)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(gr.Retired).To(BeTrue(), "the old token still hands over to the served session")
}
