package dhcp

import (
	"bytes"
	"net"
	"testing"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/iana"
)

// FuzzReply feeds any bytes to the server's parser and reply writer and
// checks them against the library: a packet parses exactly when
// dhcpv4.FromBytes parses it, it reads as the same Query (so Decide, and
// where the reply goes, replyAddr, are given the same), and the reply the
// server writes for the decision is the one the library writes for it,
// byte for byte.
func FuzzReply(f *testing.F) {
	f.Add(discover(macKnown, biosPXE()...).ToBytes(), false)
	f.Add(request(macKnown, net.IPv4(10, 20, 0, 131), net.IPv4(10, 20, 0, 2), ipxeClient()...).ToBytes(), false)
	f.Add(discover(macUnknown, uefiHTTP()...).ToBytes(), true)
	relayed := discover(macKnown, append(uefiPXE(iana.EFI_X86_64), dhcpv4.WithGatewayIP(net.IPv4(10, 30, 0, 1)),
		dhcpv4.WithOption(dhcpv4.OptGeneric(dhcpv4.OptionRelayAgentInformation, []byte{1, 3, 'p', 'o', 'e'})),
		dhcpv4.WithOption(dhcpv4.OptClientIdentifier([]byte{1, 0x52, 0x54, 0, 0x12, 0x34, 0x31})))...)
	f.Add(relayed.ToBytes(), false)
	f.Add(request(macKnown, net.IPv4(10, 20, 0, 99), nil).ToBytes(), false)
	b := backend()
	reservation, proxy := config(ModeReservation), config(ModeProxy)
	var (
		req Request
		rep replier
	)
	f.Fuzz(func(t *testing.T, pkt []byte, proxyMode bool) {
		ref, refErr := dhcpv4.FromBytes(pkt)
		err := req.Parse(pkt)
		if (err == nil) != (refErr == nil) {
			t.Fatalf("Parse says %v, the library %v", err, refErr)
		}
		if err != nil {
			return
		}
		proxyPort := len(pkt)%2 == 0
		if got, want := req.Query(proxyPort), referenceQuery(ref, proxyPort); !sameQuery(got, want) {
			t.Fatalf("query %+v, the library reads %+v", got, want)
		}
		cfg := reservation
		if proxyMode {
			cfg = proxy
		}
		resp, d := wireReply(&req, &rep, b, cfg, proxyPort)
		want := referenceEncode(ref, &d, cfg)
		if (resp == nil) != (want == nil) {
			t.Fatalf("reply %v, the reference's %v (decision %+v)", resp != nil, want != nil, d)
		}
		if resp == nil {
			return
		}
		if wantBytes := want.ToBytes(); !bytes.Equal(resp, wantBytes) {
			t.Fatalf("reply differs from the reference's:\n got %x\nwant %x", resp, wantBytes)
		}
	})
}
