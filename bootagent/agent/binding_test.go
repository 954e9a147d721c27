package agent

import (
	"net"
	"net/netip"
	"testing"

	. "github.com/onsi/gomega"

	"github.com/ggnet/ggnet/bootagent/dhcp"
	"github.com/ggnet/ggnet/bootagent/table"
)

// TestTableOptions: a requester whose ARP entry maps it to a machine's MAC
// is bound only with BindNeighbors; proxy mode without it lets the token
// alone through; no token and no binding at all is refused at start.
func TestTableOptions(t *testing.T) {
	hw, _ := net.ParseMAC("52:54:00:12:34:31")
	arp := netip.MustParseAddr("192.168.1.77")
	for name, tc := range map[string]struct {
		mode          dhcp.Mode
		bind          bool
		tokenOptional bool
		startErr      bool
		right, wrong  error // Authorize from arp with the nonce / with no token
	}{
		"reservation, default: ARP binds nothing":   {mode: dhcp.ModeReservation, right: table.ErrUnbound, wrong: table.ErrBadToken},
		"reservation, --bind-neighbors":             {mode: dhcp.ModeReservation, bind: true, wrong: table.ErrBadToken},
		"proxy, --bind-neighbors":                   {mode: dhcp.ModeProxy, bind: true, wrong: table.ErrBadToken},
		"proxy, no binding: the token alone":        {mode: dhcp.ModeProxy, wrong: table.ErrBadToken},
		"proxy, no binding, no token: refused":      {mode: dhcp.ModeProxy, tokenOptional: true, startErr: true},
		"reservation, no token: the address checks": {mode: dhcp.ModeReservation, tokenOptional: true, right: table.ErrUnbound, wrong: table.ErrUnbound},
	} {
		t.Run(name, func(t *testing.T) {
			g := NewWithT(t)
			n := &table.NeighborMap{}
			n.Set(arp, hw)
			b := &BootConfig{DHCP: dhcp.Config{Mode: tc.mode}, BindNeighbors: tc.bind, Neighbors: n, ScriptTokenOptional: tc.tokenOptional}
			opts, err := tableOptions(b)
			if tc.startErr {
				g.Expect(err).To(HaveOccurred())
				return
			}
			g.Expect(err).NotTo(HaveOccurred())
			tbl := table.New(opts...)
			tbl.UpsertMachine(table.Machine{Key: "a/seat", Namespace: "a", Name: "seat", Reservation: dhcp.Reservation{MAC: hw}, Policy: table.PolicyManual})
			r, ok := tbl.LookupMAC(hw)
			g.Expect(ok).To(BeTrue())
			check := func(token string, want error) {
				_, err := tbl.Authorize(hw, token, arp)
				if want == nil {
					g.Expect(err).NotTo(HaveOccurred())
				} else {
					g.Expect(err).To(MatchError(want))
				}
			}
			check(r.Token, tc.right)
			check("", tc.wrong)
		})
	}
}

func TestInterfaceOf(t *testing.T) {
	g := NewWithT(t)
	g.Expect(InterfaceOf(net.IPv4(127, 0, 0, 1))).To(Equal("lo"))
	_, err := InterfaceOf(net.IPv4(198, 51, 100, 254))
	g.Expect(err).To(MatchError(ContainSubstring("no network interface holds the server IP 198.51.100.254")))
	_, err = InterfaceOf(nil)
	g.Expect(err).To(HaveOccurred())
}
