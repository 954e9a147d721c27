package table

import (
	"net"
	"testing"

	. "github.com/onsi/gomega"

	"github.com/ggnet/ggnet/bootagent/dhcp"
)

func mac(s string) net.HardwareAddr { m, _ := net.ParseMAC(s); return m }

func TestMachines(t *testing.T) {
	g := NewWithT(t)
	tb := New()
	tb.UpsertMachine(Machine{Key: "a/m1", Reservation: dhcp.Reservation{MAC: mac("52:54:00:00:00:01")}})
	_, ok := tb.LookupMAC(mac("52:54:00:00:00:01"))
	g.Expect(ok).To(BeTrue())

	// A MAC change moves the machine and wakes waiters on both MACs.
	oldCh, newCh := tb.Changed(mac("52:54:00:00:00:01")), tb.Changed(mac("52:54:00:00:00:02"))
	tb.UpsertMachine(Machine{Key: "a/m1", Reservation: dhcp.Reservation{MAC: mac("52:54:00:00:00:02")}})
	g.Expect(oldCh).To(BeClosed())
	g.Expect(newCh).To(BeClosed())
	_, ok = tb.LookupMAC(mac("52:54:00:00:00:01"))
	g.Expect(ok).To(BeFalse())
	m, ok := tb.Machine(mac("52:54:00:00:00:02"))
	g.Expect(ok).To(BeTrue())
	g.Expect(m.Key).To(Equal("a/m1"))

	tb.DeleteMachine("a/m1")
	_, ok = tb.LookupMAC(mac("52:54:00:00:00:02"))
	g.Expect(ok).To(BeFalse())
	g.Expect(tb.byMAC).To(BeEmpty(), "nothing left behind")
	tb.DeleteMachine("a/none")
}

func TestMachinesSharingAMAC(t *testing.T) {
	g := NewWithT(t)
	tb := New()
	hw := mac("52:54:00:00:00:01")
	tb.UpsertMachine(Machine{Key: "a/discovered", Discovered: true, CreatedUnix: 1, Reservation: dhcp.Reservation{MAC: hw}})
	tb.UpsertMachine(Machine{Key: "a/newer", CreatedUnix: 30, Reservation: dhcp.Reservation{MAC: hw}})
	tb.UpsertMachine(Machine{Key: "a/seat", CreatedUnix: 20, Reservation: dhcp.Reservation{MAC: hw}})
	m, _ := tb.Machine(hw)
	g.Expect(m.Key).To(Equal("a/seat"), "a real machine beats a discovered one, the oldest beats a newer one")
	tb.DeleteMachine("a/seat")
	m, _ = tb.Machine(hw)
	g.Expect(m.Key).To(Equal("a/newer"))
	tb.DeleteMachine("a/newer")
	m, _ = tb.Machine(hw)
	g.Expect(m.Key).To(Equal("a/discovered"))
}

func TestSessions(t *testing.T) {
	g := NewWithT(t)
	tb := New()
	m := mac("52:54:00:00:00:01")
	tb.UpsertSession(Session{Key: "a/old", MAC: m.String(), Script: "old", Bootable: true, CreatedUnix: 10})
	tb.UpsertSession(Session{Key: "a/new", MAC: m.String(), Script: "new", Bootable: true, CreatedUnix: 20})
	tb.UpsertSession(Session{Key: "a/pending", MAC: m.String(), CreatedUnix: 30})
	s, ok := tb.Script(m)
	g.Expect(ok).To(BeTrue())
	g.Expect(s).To(Equal("new"), "the newest bootable session wins")
	g.Expect(tb.HasSession(m)).To(BeTrue())

	tb.UpsertSession(Session{Key: "a/new", MAC: m.String(), Script: "new", Bootable: false, CreatedUnix: 20})
	s, _ = tb.Script(m)
	g.Expect(s).To(Equal("old"), "a stopping session is not booted")

	tb.DeleteSession("a/old")
	tb.DeleteSession("a/new")
	_, ok = tb.Script(m)
	g.Expect(ok).To(BeFalse())
	tb.DeleteSession("a/pending")
	g.Expect(tb.HasSession(m)).To(BeFalse())
	machines, sessions := tb.Len()
	g.Expect(machines + sessions).To(BeZero())
}
