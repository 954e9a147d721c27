package dhcp

import (
	"net"
	"testing"

	"github.com/insomniacslk/dhcp/dhcpv4"
)

// BenchmarkPacket measures one request's work without the socket: parse,
// look up, build the reply. "library" is the same through insomniacslk/dhcp's
// DHCPv4 type (the reference implementation), for comparison.
func BenchmarkPacket(b *testing.B) {
	cfg := config(ModeReservation)
	be := backend()
	for name, pkt := range map[string][]byte{
		"discover": discover(macKnown, ipxeClient()...).ToBytes(),
		"request":  request(macKnown, net.IPv4(10, 20, 0, 131), cfg.ServerIP, ipxeClient()...).ToBytes(),
	} {
		b.Run(name, func(b *testing.B) {
			var (
				req Request
				rep replier
			)
			b.ReportAllocs()
			for b.Loop() {
				if err := req.Parse(pkt); err != nil {
					b.Fatal(err)
				}
				if resp, _ := wireReply(&req, &rep, be, cfg, false); resp == nil {
					b.Fatal("no reply")
				}
			}
		})
		b.Run(name+"/library", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				req, err := dhcpv4.FromBytes(pkt)
				if err != nil {
					b.Fatal(err)
				}
				resp, _ := referenceReply(req, be, cfg, false)
				_ = resp.ToBytes()
			}
		})
	}
}
