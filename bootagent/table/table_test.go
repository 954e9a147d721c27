package table

import (
	"errors"
	"net"
	"net/netip"
	"strings"
	"testing"

	. "github.com/onsi/gomega"

	"github.com/ggnet/ggnet/bootagent/dhcp"
	"github.com/ggnet/ggnet/internal/ipxe"
)

func mac(s string) net.HardwareAddr { m, _ := net.ParseMAC(s); return m }

const (
	hw1    = "52:54:00:00:00:01"
	token1 = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
	token2 = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
)

// machine builds a table Machine; key is namespace/name.
func machine(key, hwAddr string, opts ...func(*Machine)) Machine {
	ns, name, _ := strings.Cut(key, "/")
	m := Machine{Key: key, Namespace: ns, Name: name, Reservation: dhcp.Reservation{MAC: mac(hwAddr)}, Policy: PolicyManual}
	for _, o := range opts {
		o(&m)
	}
	return m
}

func withAddress(a string) func(*Machine) {
	return func(m *Machine) { m.Reservation.Address = net.ParseIP(a).To4() }
}
func created(unix int64) func(*Machine) { return func(m *Machine) { m.CreatedUnix = unix } }
func conflict(m *Machine)               { m.Conflict = true }
func discovered(m *Machine)             { m.Discovered = true }

// session builds a bootable session of machineKey with hwAddr.
func session(key, machineKey, hwAddr string, createdUnix int64) Session {
	ns, name, _ := strings.Cut(key, "/")
	return Session{Key: key, MAC: hwAddr, MachineKey: machineKey, Bootable: true, Live: true, CreatedUnix: createdUnix,
		Boot: ipxe.Session{Name: ns + "/" + name, Image: "win11", Portal: "10.20.0.2:3260",
			TargetIQN: "iqn.2026-11.io.ggnet:" + name, InitiatorIQN: "iqn.2026-11.io.ggnet:initiator:" + name}}
}

func secret(token string) Secret {
	return Secret{Token: token, Credentials: ipxe.Credentials{Username: "user", Password: "Passw0rdPassw0rd",
		TargetUsername: "target", TargetPassword: "Target0Target0Ta"}}
}

func TestMachines(t *testing.T) {
	g := NewWithT(t)
	tb := New()
	tb.UpsertMachine(machine("a/m1", hw1))
	_, ok := tb.LookupMAC(mac(hw1))
	g.Expect(ok).To(BeTrue())

	// A MAC change moves the machine and wakes waiters on both MACs.
	oldCh, newCh := tb.Changed(mac(hw1)), tb.Changed(mac("52:54:00:00:00:02"))
	tb.UpsertMachine(machine("a/m1", "52:54:00:00:00:02"))
	g.Expect(oldCh).To(BeClosed())
	g.Expect(newCh).To(BeClosed())
	_, ok = tb.LookupMAC(mac(hw1))
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
	hw := mac(hw1)
	tb.UpsertMachine(machine("a/discovered", hw1, discovered, created(1)))
	tb.UpsertMachine(machine("a/newer", hw1, created(30)))
	tb.UpsertMachine(machine("a/seat", hw1, created(20)))
	tb.UpsertMachine(machine("b/conflicted", hw1, created(5), conflict))
	g.Expect(tb.Discovered()).To(Equal(1))
	m, _ := tb.Machine(hw)
	g.Expect(m.Key).To(Equal("a/seat"), "a machine without conflict beats one with, a real one a discovered one, the oldest a newer one")
	tb.DeleteMachine("a/seat")
	m, _ = tb.Machine(hw)
	g.Expect(m.Key).To(Equal("a/newer"))
	tb.DeleteMachine("a/newer")
	m, _ = tb.Machine(hw)
	g.Expect(m.Key).To(Equal("a/discovered"))
	tb.DeleteMachine("a/discovered")
	m, _ = tb.Machine(hw)
	g.Expect(m.Key).To(Equal("b/conflicted"))
	g.Expect(tb.Discovered()).To(BeZero())
}

func TestSessions(t *testing.T) {
	g := NewWithT(t)
	tb := New()
	m := mac(hw1)
	tb.UpsertMachine(machine("a/m", hw1))
	tb.UpsertSession(session("a/old", "a/m", hw1, 10))
	tb.UpsertSecret("a/old", secret(token1))
	tb.UpsertSession(session("a/new", "a/m", hw1, 20))
	tb.UpsertSession(Session{Key: "a/pending", MAC: hw1, MachineKey: "a/m", Live: true, CreatedUnix: 30})
	s, _ := tb.Session(m)
	g.Expect(s.Key).To(Equal("a/old"), "a session whose Secret is not synced is not served")
	tb.UpsertSecret("a/new", secret(token2))
	s, _ = tb.Session(m)
	g.Expect(s.Key).To(Equal("a/new"), "the newest bootable session wins")

	stopped := session("a/new", "a/m", hw1, 20)
	stopped.Bootable = false
	tb.UpsertSession(stopped)
	s, _ = tb.Session(m)
	g.Expect(s.Key).To(Equal("a/old"), "a stopping session is not booted")

	tb.DeleteSecret("a/old")
	_, ok := tb.Session(m)
	g.Expect(ok).To(BeFalse(), "a deleted Secret takes its session out")

	tb.DeleteSession("a/old")
	tb.DeleteSession("a/new")
	tb.DeleteSession("a/pending")
	tb.DeleteMachine("a/m")
	machines, sessions := tb.Len()
	g.Expect(machines + sessions).To(BeZero())
	g.Expect(tb.byMAC).To(BeEmpty())
}

func TestOwnerOnly(t *testing.T) {
	for name, tc := range map[string]struct {
		machines []Machine
		sessions []Session
		served   string
	}{
		"the owner's session": {
			machines: []Machine{machine("a/seat", hw1)},
			sessions: []Session{session("a/s", "a/seat", hw1, 1)},
			served:   "a/s",
		},
		"a Conflict machine's session is never served": {
			machines: []Machine{machine("a/seat", hw1, conflict)},
			sessions: []Session{session("a/s", "a/seat", hw1, 1)},
		},
		"a non-owner's session in another namespace is not served": {
			machines: []Machine{machine("a/seat", hw1, created(1)), machine("b/intruder", hw1, created(2))},
			sessions: []Session{session("b/s", "b/intruder", hw1, 5)},
		},
		"the owner's session beside a non-owner's newer one": {
			machines: []Machine{machine("a/seat", hw1, created(1)), machine("b/intruder", hw1, created(2))},
			sessions: []Session{session("a/s", "a/seat", hw1, 1), session("b/s", "b/intruder", hw1, 5)},
			served:   "a/s",
		},
		"a discovered machine owns nothing": {
			machines: []Machine{machine("a/discovered", hw1, discovered)},
			sessions: []Session{session("a/s", "a/discovered", hw1, 1)},
		},
		"a session without its Machine is not served": {
			sessions: []Session{session("a/s", "a/seat", hw1, 1)},
		},
	} {
		t.Run(name, func(t *testing.T) {
			g := NewWithT(t)
			tb := New()
			for _, m := range tc.machines {
				tb.UpsertMachine(m)
			}
			for _, s := range tc.sessions {
				tb.UpsertSession(s)
				tb.UpsertSecret(s.Key, secret(token1))
			}
			s, ok := tb.Session(mac(hw1))
			g.Expect(s.Key).To(Equal(tc.served))
			g.Expect(ok).To(Equal(tc.served != ""))
			r, known := tb.LookupMAC(mac(hw1))
			g.Expect(known).To(Equal(len(tc.machines) > 0))
			if tc.served != "" {
				g.Expect(r.Token).To(Equal(token1), "DHCP hands out the served session's token")
			} else if known {
				g.Expect(r.Token).NotTo(Equal(token1), "no session token for a MAC without a served session")
				g.Expect(ipxe.ValidToken(r.Token)).To(BeTrue(), "the nonce has a token's form")
			}
		})
	}
}

func TestReservationToken(t *testing.T) {
	g := NewWithT(t)
	tb := New()
	hw := mac(hw1)
	tb.UpsertMachine(machine("a/seat", hw1, withAddress("10.20.0.131")))
	r, _ := tb.LookupMAC(hw)
	nonce := r.Token
	g.Expect(ipxe.ValidToken(nonce)).To(BeTrue())
	tb.UpsertMachine(machine("a/seat", hw1, withAddress("10.20.0.131"), func(m *Machine) { m.Reservation.Hostname = "seat" }))
	r, _ = tb.LookupMAC(hw)
	g.Expect(r.Token).To(Equal(nonce), "the nonce stays while the machine is in the table")

	tb.UpsertSession(session("a/s", "a/seat", hw1, 1))
	r, _ = tb.LookupMAC(hw)
	g.Expect(r.Token).To(Equal(nonce), "no session token before its Secret synced")
	tb.UpsertSecret("a/s", secret(token1))
	r, _ = tb.LookupMAC(hw)
	g.Expect(r.Token).To(Equal(token1))
	tb.UpsertSecret("a/s", secret("not-a-token"))
	r, _ = tb.LookupMAC(hw)
	g.Expect(r.Token).To(Equal(nonce), "a Secret with a malformed token does not serve")

	other := New()
	other.UpsertMachine(machine("a/seat", hw1))
	r2, _ := other.LookupMAC(hw)
	g.Expect(r2.Token).NotTo(Equal(nonce), "nonces are random")

	g.Expect(testing.AllocsPerRun(100, func() { _, _ = tb.LookupMAC(hw) })).To(BeZero(), "the DHCP path allocates nothing")
	g.Expect(testing.AllocsPerRun(100, func() { tb.SawAddress(hw, netip.MustParseAddr("10.9.9.9")) })).To(BeZero())
}

func TestAuthorize(t *testing.T) {
	hw := mac(hw1)
	reserved := netip.MustParseAddr("10.20.0.131")
	stranger := netip.MustParseAddr("10.20.0.66")
	seen := netip.MustParseAddr("192.168.1.50")
	neighbour := netip.MustParseAddr("192.168.1.77")
	setup := func(opts ...Option) (*Table, string) {
		n := &NeighborMap{}
		n.Set(neighbour, hw)
		n.Set(stranger, mac("52:54:00:00:00:99"))
		tb := New(append([]Option{WithNeighbors(n)}, opts...)...)
		tb.UpsertMachine(machine("a/seat", hw1, withAddress(reserved.String())))
		r, _ := tb.LookupMAC(hw)
		return tb, r.Token
	}
	withSession := func(tb *Table) {
		tb.UpsertSession(session("a/s", "a/seat", hw1, 1))
		tb.UpsertSecret("a/s", secret(token1))
	}
	for name, tc := range map[string]struct {
		opts    []Option
		session bool
		mac     string
		token   func(nonce string) string
		remote  netip.Addr
		err     error
		served  bool
	}{
		"session token from the reserved address": {session: true, token: session1, remote: reserved, served: true},
		"nonce accepted for the session too":      {session: true, token: nonceOf, remote: reserved, served: true},
		"wrong token":                             {session: true, token: func(string) string { return token2 }, remote: reserved, err: ErrBadToken},
		"missing token":                           {session: true, token: func(string) string { return "" }, remote: reserved, err: ErrBadToken},
		"right token, wrong address":              {session: true, token: session1, remote: stranger, err: ErrUnbound},
		"right token, no address":                 {session: true, token: session1, err: ErrUnbound},
		"address seen in DHCP":                    {session: true, token: session1, remote: seen, served: true},
		"address from the neighbour table":        {session: true, token: session1, remote: neighbour, served: true},
		"IPv4-mapped IPv6 address":                {session: true, token: session1, remote: netip.AddrFrom16(reserved.As16()), served: true},
		"unknown MAC":                             {token: nonceOf, mac: "52:54:00:00:00:99", remote: reserved, err: ErrUnknownMAC},
		"no session: allowed, nothing to serve":   {token: nonceOf, remote: reserved},
		"optional token: none given":              {opts: []Option{WithoutRequiredToken()}, session: true, token: func(string) string { return "" }, remote: reserved, served: true},
		"optional token: a wrong one is refused":  {opts: []Option{WithoutRequiredToken()}, session: true, token: func(string) string { return token2 }, remote: reserved, err: ErrBadToken},
		"optional token: address still checked":   {opts: []Option{WithoutRequiredToken()}, session: true, token: func(string) string { return "" }, remote: stranger, err: ErrUnbound},
		"optional binding: the token alone":       {opts: []Option{WithoutRequiredBinding()}, session: true, token: session1, remote: stranger, served: true},
		"optional binding: a wrong token refused": {opts: []Option{WithoutRequiredBinding()}, session: true, token: func(string) string { return token2 }, remote: stranger, err: ErrBadToken},
		"optional binding, optional token: no token still needs the address": {opts: []Option{WithoutRequiredBinding(), WithoutRequiredToken()}, session: true,
			token: func(string) string { return "" }, remote: stranger, err: ErrUnbound},
	} {
		t.Run(name, func(t *testing.T) {
			g := NewWithT(t)
			tb, nonce := setup(tc.opts...)
			if tc.session {
				withSession(tb)
			}
			tb.SawAddress(hw, seen)
			m := hw
			if tc.mac != "" {
				m = mac(tc.mac)
			}
			grant, err := tb.Authorize(m, tc.token(nonce), tc.remote)
			if tc.err != nil {
				g.Expect(err).To(MatchError(tc.err))
				g.Expect(errors.Is(err, ErrForbidden)).To(BeTrue())
				g.Expect(grant.Script).To(BeEmpty())
				g.Expect(err.Error()).NotTo(ContainSubstring(token1))
				return
			}
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(grant.Machine.Key).To(Equal("a/seat"))
			g.Expect(grant.Owner).To(BeTrue())
			if !tc.served {
				g.Expect(grant.Script).To(BeEmpty())
				return
			}
			g.Expect(grant.SessionKey).To(Equal("a/s"))
			g.Expect(grant.Script).To(ContainSubstring("set username user\nset password Passw0rdPassw0rd\n"))
			g.Expect(grant.Script).To(ContainSubstring("set reverse-username target\nset reverse-password Target0Target0Ta\n"))
			g.Expect(ipxe.Validate(grant.Script)).To(Succeed())
		})
	}
}

func session1(string) string      { return token1 }
func nonceOf(nonce string) string { return nonce }

func TestAuthorizeConflictAndNonOwner(t *testing.T) {
	g := NewWithT(t)
	hw := mac(hw1)
	addr := netip.MustParseAddr("10.20.0.131")
	n := &NeighborMap{}
	n.Set(addr, hw)
	tb := New(WithNeighbors(n))
	tb.UpsertMachine(machine("a/seat", hw1, conflict))
	tb.UpsertSession(session("a/s", "a/seat", hw1, 1))
	tb.UpsertSecret("a/s", secret(token1))
	r, _ := tb.LookupMAC(hw)
	_, err := tb.Authorize(hw, token1, addr)
	g.Expect(err).To(MatchError(ErrBadToken), "a Conflict machine's session token is not accepted")
	grant, err := tb.Authorize(hw, r.Token, addr)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(grant.Owner).To(BeFalse())
	g.Expect(grant.Script).To(BeEmpty(), "a Conflict machine's session is never served")

	tb.UpsertMachine(machine("a/seat", hw1, created(10)))
	tb.UpsertMachine(machine("b/owner", hw1, created(1)))
	grant, err = tb.Authorize(hw, token1, addr)
	g.Expect(err).To(MatchError(ErrBadToken), "a non-owner's session token is not accepted")
	r, _ = tb.LookupMAC(hw)
	grant, err = tb.Authorize(hw, r.Token, addr)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(grant.Machine.Key).To(Equal("b/owner"))
	g.Expect(grant.Script).To(BeEmpty(), "the owner has no session; the other namespace's is not served")
	g.Expect(grant.Live).To(BeFalse(), "the other Machine's session does not count as the owner's")
}

func TestParseARP(t *testing.T) {
	g := NewWithT(t)
	data := []byte(`IP address       HW type     Flags       HW address            Mask     Device
10.20.0.131      0x1         0x2         52:54:00:12:34:31     *        br-boot
10.20.0.132      0x1         0x0         52:54:00:12:34:32     *        br-boot
10.30.0.5        0x1         0x2         52:54:00:12:34:33     *        eth0
`)
	m, ok := parseARP(data, netip.MustParseAddr("10.20.0.131"), []string{"br-boot"})
	g.Expect(ok).To(BeTrue())
	g.Expect(m.String()).To(Equal("52:54:00:12:34:31"))
	_, ok = parseARP(data, netip.MustParseAddr("10.20.0.132"), nil)
	g.Expect(ok).To(BeFalse(), "an incomplete entry does not count")
	_, ok = parseARP(data, netip.MustParseAddr("10.30.0.5"), []string{"br-boot"})
	g.Expect(ok).To(BeFalse(), "another interface's entry does not count")
	_, ok = parseARP(data, netip.MustParseAddr("10.30.0.5"), nil)
	g.Expect(ok).To(BeTrue())
	_, ok = ProcNeighbors{Path: "/nonexistent"}.Lookup(netip.MustParseAddr("10.20.0.131"))
	g.Expect(ok).To(BeFalse())
}

// TestHasConfiguredMachine: a MAC only discovered Machines have is known to
// HasMachine (the recorder's "already recorded") but not to
// HasConfiguredMachine (the IPv6 router advertisement responder's "a
// Machine the cluster was told about"); adopting it, or a real Machine
// beside it, conflicted or not, makes it configured.
func TestHasConfiguredMachine(t *testing.T) {
	g := NewWithT(t)
	tb := New()
	hw, other := mac(hw1), mac("52:54:00:00:00:02")
	g.Expect(tb.HasMachine(hw)).To(BeFalse())
	g.Expect(tb.HasConfiguredMachine(hw)).To(BeFalse())
	g.Expect(tb.HasConfiguredMachine(nil)).To(BeFalse())
	g.Expect(tb.HasConfiguredMachine(net.HardwareAddr{1, 2, 3})).To(BeFalse())

	tb.UpsertMachine(machine("a/discovered", hw1, discovered, created(1)))
	tb.UpsertMachine(machine("a/discovered2", hw1, discovered, created(2)))
	g.Expect(tb.HasMachine(hw)).To(BeTrue())
	g.Expect(tb.HasConfiguredMachine(hw)).To(BeFalse(), "discovered only")

	// A conflicted real Machine beside it: the discovered one answers for
	// the MAC (better), yet the MAC is configured.
	tb.UpsertMachine(machine("b/conflicted", hw1, created(5), conflict))
	m, _ := tb.Machine(hw)
	g.Expect(m.Key).To(Equal("a/discovered"))
	g.Expect(tb.HasConfiguredMachine(hw)).To(BeTrue())
	tb.DeleteMachine("b/conflicted")
	g.Expect(tb.HasConfiguredMachine(hw)).To(BeFalse())

	// Adopted: the label is gone.
	tb.UpsertMachine(machine("a/discovered", hw1, created(1)))
	g.Expect(tb.HasConfiguredMachine(hw)).To(BeTrue())
	g.Expect(tb.HasConfiguredMachine(other)).To(BeFalse())

	// Moved to another MAC.
	tb.UpsertMachine(machine("a/discovered", "52:54:00:00:00:02", created(1)))
	g.Expect(tb.HasConfiguredMachine(hw)).To(BeFalse())
	g.Expect(tb.HasMachine(hw)).To(BeTrue(), "a/discovered2 is still there")
	g.Expect(tb.HasConfiguredMachine(other)).To(BeTrue())
	tb.DeleteMachine("a/discovered")
	g.Expect(tb.HasConfiguredMachine(other)).To(BeFalse())
}
