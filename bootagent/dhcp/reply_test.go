package dhcp

import (
	"bytes"
	"net"
	"net/netip"
	"testing"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/iana"
	. "github.com/onsi/gomega"
)

// mapBackend is the test Backend: a map from the MAC's six bytes to a
// reservation.
type mapBackend map[string]Reservation

func (m mapBackend) LookupMAC(mac net.HardwareAddr) (Reservation, bool) {
	r, ok := m[string(mac)]
	return r, ok
}

var (
	macKnown   = net.HardwareAddr{0x52, 0x54, 0x00, 0x12, 0x34, 0x31}
	macUnknown = net.HardwareAddr{0x52, 0x54, 0x00, 0x99, 0x99, 0x99}
	macLocal   = net.HardwareAddr{0x52, 0x54, 0x00, 0x12, 0x34, 0x32}
	macNoAddr  = net.HardwareAddr{0x52, 0x54, 0x00, 0x12, 0x34, 0x33}
)

// tokenKnown is macKnown's script token.
const tokenKnown = "abcdefghijklmnopqrstuvwxyz234567"

func backend() mapBackend {
	return mapBackend{
		string(macKnown): {
			MAC: macKnown, Address: net.IPv4(10, 20, 0, 131).To4(), Mask: net.CIDRMask(24, 32),
			Gateway: net.IPv4(10, 20, 0, 1).To4(), DNS: []net.IP{net.IPv4(10, 20, 0, 1).To4()}, Hostname: "seat-031",
			Token: tokenKnown,
		},
		string(macLocal):  {MAC: macLocal, Address: net.IPv4(10, 20, 0, 132).To4(), Mask: net.CIDRMask(24, 32), LocalBoot: true},
		string(macNoAddr): {MAC: macNoAddr},
	}
}

// answer runs req through the server's own parser, Decide and reply writer
// and returns the reply as the library reads it. It fails the test unless
// the library reads the request as the same Query and writes the same
// decision as the same bytes (reference_test.go).
func answer(t testing.TB, req *dhcpv4.DHCPv4, b Backend, cfg *Config, proxyPort bool) (*dhcpv4.DHCPv4, Result) {
	t.Helper()
	pkt := req.ToBytes()
	var (
		wreq Request
		rep  replier
	)
	if err := wreq.Parse(pkt); err != nil {
		t.Fatalf("parsing the request: %v", err)
	}
	ref, err := dhcpv4.FromBytes(pkt)
	if err != nil {
		t.Fatalf("the library cannot parse the request: %v", err)
	}
	if got, want := wreq.Query(proxyPort), referenceQuery(ref, proxyPort); !sameQuery(got, want) {
		t.Fatalf("query %+v, the library reads %+v", got, want)
	}
	got, d := wireReply(&wreq, &rep, b, cfg, proxyPort)
	want := referenceEncode(ref, &d, cfg)
	if want == nil || got == nil {
		if want != nil || got != nil {
			t.Fatalf("reply %v, the reference's %v", got != nil, want != nil)
		}
		return nil, d.Result
	}
	if wantBytes := want.ToBytes(); !bytes.Equal(got, wantBytes) {
		t.Fatalf("reply differs from the reference's:\n got %x\nwant %x", got, wantBytes)
	}
	resp, err := dhcpv4.FromBytes(got)
	if err != nil {
		t.Fatalf("reply does not parse: %v", err)
	}
	if resp.MessageType() != d.Type {
		t.Fatalf("decided %s, the packet says %s", d.Type, resp.MessageType())
	}
	return resp, d.Result
}

// wireReply is what the server does with a parsed request: its query,
// Decide, and the reply written into rep's buffer (nil when none is sent).
func wireReply(req *Request, rep *replier, b Backend, cfg *Config, proxyPort bool) ([]byte, Decision) {
	q := req.Query(proxyPort)
	d := Decide(&q, b, cfg)
	return rep.encode(req, &d, cfg), d
}

func config(mode Mode) *Config {
	c := &Config{Mode: mode, ServerIP: net.IPv4(10, 20, 0, 2).To4(), HTTPBase: "http://10.20.0.2:8880"}
	c.Defaults()
	if err := c.Validate(); err != nil {
		panic(err)
	}
	return c
}

// PXE client identities, as real firmware sends them.
func biosPXE() []dhcpv4.Modifier {
	return []dhcpv4.Modifier{
		dhcpv4.WithOption(dhcpv4.OptClassIdentifier("PXEClient:Arch:00000:UNDI:002001")),
		dhcpv4.WithOption(dhcpv4.OptClientArch(iana.INTEL_X86PC)),
	}
}

func uefiPXE(arch iana.Arch) []dhcpv4.Modifier {
	return []dhcpv4.Modifier{
		dhcpv4.WithOption(dhcpv4.OptClassIdentifier("PXEClient:Arch:00007:UNDI:003016")),
		dhcpv4.WithOption(dhcpv4.OptClientArch(arch)),
	}
}

func uefiHTTP() []dhcpv4.Modifier {
	return []dhcpv4.Modifier{
		dhcpv4.WithOption(dhcpv4.OptClassIdentifier("HTTPClient:Arch:00016:UNDI:003001")),
		dhcpv4.WithOption(dhcpv4.OptClientArch(iana.EFI_X86_64_HTTP)),
	}
}

func ipxeClient() []dhcpv4.Modifier {
	return append(biosPXE(), dhcpv4.WithOption(dhcpv4.OptUserClass("iPXE")))
}

func discover(mac net.HardwareAddr, mods ...dhcpv4.Modifier) *dhcpv4.DHCPv4 {
	d, err := dhcpv4.NewDiscovery(mac, mods...)
	if err != nil {
		panic(err)
	}
	return d
}

func request(mac net.HardwareAddr, ip net.IP, server net.IP, mods ...dhcpv4.Modifier) *dhcpv4.DHCPv4 {
	mods = append(mods, dhcpv4.WithMessageType(dhcpv4.MessageTypeRequest),
		dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(ip)))
	if server != nil {
		mods = append(mods, dhcpv4.WithOption(dhcpv4.OptServerIdentifier(server)))
	}
	return discover(mac, mods...)
}

func TestReservationBootFiles(t *testing.T) {
	for name, tc := range map[string]struct {
		mods     []dhcpv4.Modifier
		cfg      func(*Config)
		file     string
		siaddr   bool
		class    string
		override Firmware
	}{
		"BIOS PXE":              {mods: biosPXE(), file: "undionly.kpxe", siaddr: true, class: "PXEClient"},
		"UEFI x86-64 PXE (7)":   {mods: uefiPXE(iana.EFI_BC), file: "snponly.efi", siaddr: true, class: "PXEClient"},
		"UEFI x86-64 PXE (9)":   {mods: uefiPXE(iana.EFI_X86_64), file: "snponly.efi", siaddr: true, class: "PXEClient"},
		"UEFI PXE, ipxe.efi":    {mods: uefiPXE(iana.EFI_X86_64), cfg: func(c *Config) { c.UEFIFile = "ipxe.efi" }, file: "ipxe.efi", siaddr: true, class: "PXEClient"},
		"UEFI HTTP boot":        {mods: uefiHTTP(), file: "http://10.20.0.2:8880/ipxe/snponly.efi", class: "HTTPClient"},
		"iPXE":                  {mods: ipxeClient(), file: "http://10.20.0.2:8880/boot/" + tokenKnown + "/52:54:00:12:34:31.ipxe", class: ""},
		"BIOS forced on UEFI":   {mods: uefiPXE(iana.EFI_X86_64), override: FirmwareBIOS, file: "undionly.kpxe", siaddr: true, class: "PXEClient"},
		"UEFI forced, no arch":  {mods: []dhcpv4.Modifier{dhcpv4.WithOption(dhcpv4.OptClassIdentifier("PXEClient"))}, override: FirmwareUEFI, file: "snponly.efi", siaddr: true, class: "PXEClient"},
		"PXE without option 93": {mods: []dhcpv4.Modifier{dhcpv4.WithOption(dhcpv4.OptClassIdentifier("PXEClient"))}, file: "undionly.kpxe", siaddr: true, class: "PXEClient"},
	} {
		t.Run(name, func(t *testing.T) {
			g := NewWithT(t)
			cfg := config(ModeReservation)
			if tc.cfg != nil {
				tc.cfg(cfg)
			}
			b := backend()
			r := b[string(macKnown)]
			r.Firmware = tc.override
			b[string(macKnown)] = r

			for _, step := range []struct {
				req  *dhcpv4.DHCPv4
				want dhcpv4.MessageType
			}{
				{discover(macKnown, tc.mods...), dhcpv4.MessageTypeOffer},
				{request(macKnown, net.IPv4(10, 20, 0, 131), cfg.ServerIP, tc.mods...), dhcpv4.MessageTypeAck},
			} {
				resp, _ := answer(t, step.req, b, cfg, false)
				g.Expect(resp).NotTo(BeNil())
				g.Expect(resp.MessageType()).To(Equal(step.want))
				g.Expect(resp.TransactionID).To(Equal(step.req.TransactionID))
				g.Expect(resp.YourIPAddr.String()).To(Equal("10.20.0.131"))
				g.Expect(resp.SubnetMask().String()).To(Equal("ffffff00"))
				g.Expect(resp.Router()).To(HaveLen(1))
				g.Expect(resp.Router()[0].String()).To(Equal("10.20.0.1"))
				g.Expect(resp.DNS()).To(HaveLen(1))
				g.Expect(resp.DNS()[0].String()).To(Equal("10.20.0.1"))
				g.Expect(resp.HostName()).To(Equal("seat-031"))
				g.Expect(resp.ServerIdentifier().String()).To(Equal("10.20.0.2"))
				g.Expect(resp.IPAddressLeaseTime(0).Hours()).To(Equal(12.0))
				g.Expect(resp.BootFileName).To(Equal(tc.file))
				g.Expect(resp.BootFileNameOption()).To(Equal(tc.file))
				g.Expect(resp.ClassIdentifier()).To(Equal(tc.class))
				// A firmware PXE client gets "load the file in the reply"
				// (EDK2 asks a boot server on 4011 otherwise); iPXE gets
				// no-pxedhcp (or it waits for ProxyDHCP offers).
				if tc.class == "PXEClient" {
					g.Expect(resp.GetOneOption(dhcpv4.OptionVendorSpecificInformation)).To(Equal([]byte{6, 1, 8, 255}))
				} else {
					g.Expect(resp.Options.Has(dhcpv4.OptionVendorSpecificInformation)).To(BeFalse())
				}
				if name == "iPXE" {
					g.Expect(resp.GetOneOption(dhcpv4.GenericOptionCode(175))).To(Equal([]byte{176, 1, 1}))
				} else {
					g.Expect(resp.Options.Has(dhcpv4.GenericOptionCode(175))).To(BeFalse())
				}
				if tc.siaddr {
					g.Expect(resp.ServerIPAddr.String()).To(Equal("10.20.0.2"))
					g.Expect(resp.TFTPServerName()).To(Equal("10.20.0.2"))
				} else {
					g.Expect(resp.TFTPServerName()).To(BeEmpty())
				}
			}
		})
	}
}

func TestReservationRefusals(t *testing.T) {
	cfg := config(ModeReservation)
	other := net.IPv4(10, 20, 0, 250)
	for name, tc := range map[string]struct {
		req    *dhcpv4.DHCPv4
		result Result
		check  func(g Gomega, resp *dhcpv4.DHCPv4)
	}{
		"unknown MAC is ignored":     {req: discover(macUnknown, biosPXE()...), result: ResultUnknownMAC},
		"machine without an address": {req: discover(macNoAddr, biosPXE()...), result: ResultNoAddress},
		"request for another address": {req: request(macKnown, net.IPv4(10, 20, 0, 99), cfg.ServerIP), result: ResultNak, check: func(g Gomega, r *dhcpv4.DHCPv4) {
			g.Expect(r.MessageType()).To(Equal(dhcpv4.MessageTypeNak))
			g.Expect(r.Message()).To(ContainSubstring("not reserved"))
			g.Expect(r.YourIPAddr.IsUnspecified()).To(BeTrue())
		}},
		"request to another server": {req: request(macKnown, net.IPv4(10, 20, 0, 131), other), result: ResultOtherServer},
		"release is not answered":   {req: discover(macKnown, dhcpv4.WithMessageType(dhcpv4.MessageTypeRelease)), result: ResultIgnoredType},
		"a reply is not a request":  {req: discover(macKnown, dhcpv4.WithReply(discover(macKnown))), result: ResultNotBootReply},
		"non-PXE client gets an address and no boot file": {req: discover(macKnown), result: ResultOffer, check: func(g Gomega, r *dhcpv4.DHCPv4) {
			g.Expect(r.YourIPAddr.String()).To(Equal("10.20.0.131"))
			g.Expect(r.BootFileName).To(BeEmpty())
			g.Expect(r.BootFileNameOption()).To(BeEmpty())
		}},
		"LocalBoot machine gets no boot file": {req: discover(macLocal, biosPXE()...), result: ResultOffer, check: func(g Gomega, r *dhcpv4.DHCPv4) {
			g.Expect(r.YourIPAddr.String()).To(Equal("10.20.0.132"))
			g.Expect(r.BootFileName).To(BeEmpty())
		}},
		"INFORM gets options without an address": {req: discover(macKnown, dhcpv4.WithMessageType(dhcpv4.MessageTypeInform), dhcpv4.WithClientIP(net.IPv4(10, 20, 0, 131))), result: ResultAck, check: func(g Gomega, r *dhcpv4.DHCPv4) {
			g.Expect(r.YourIPAddr.IsUnspecified()).To(BeTrue())
			g.Expect(r.GetOneOption(dhcpv4.OptionIPAddressLeaseTime)).To(BeNil())
		}},
	} {
		t.Run(name, func(t *testing.T) {
			g := NewWithT(t)
			resp, result := answer(t, tc.req, backend(), cfg, false)
			g.Expect(result).To(Equal(tc.result))
			if tc.check == nil {
				g.Expect(resp).To(BeNil())
				return
			}
			g.Expect(resp).NotTo(BeNil())
			tc.check(g, resp)
		})
	}
}

func TestProxy(t *testing.T) {
	cfg := config(ModeProxy)
	t.Run("DISCOVER on 67 gets boot information and no address", func(t *testing.T) {
		g := NewWithT(t)
		resp, result := answer(t, discover(macKnown, biosPXE()...), backend(), cfg, false)
		g.Expect(result).To(Equal(ResultOffer))
		g.Expect(resp.MessageType()).To(Equal(dhcpv4.MessageTypeOffer))
		g.Expect(resp.YourIPAddr.IsUnspecified()).To(BeTrue())
		g.Expect(resp.GetOneOption(dhcpv4.OptionIPAddressLeaseTime)).To(BeNil())
		g.Expect(resp.GetOneOption(dhcpv4.OptionSubnetMask)).To(BeNil())
		g.Expect(resp.BootFileName).To(Equal("undionly.kpxe"))
		g.Expect(resp.ClassIdentifier()).To(Equal("PXEClient"))
		g.Expect(resp.GetOneOption(dhcpv4.OptionVendorSpecificInformation)).To(Equal([]byte{6, 1, 8, 255}))
		g.Expect(resp.ServerIPAddr.String()).To(Equal("10.20.0.2"))
	})
	t.Run("REQUEST on 4011 gets an ACK", func(t *testing.T) {
		g := NewWithT(t)
		req := request(macKnown, nil, nil, uefiPXE(iana.EFI_X86_64)...)
		req.ClientIPAddr = net.IPv4(192, 168, 1, 50)
		resp, result := answer(t, req, backend(), cfg, true)
		g.Expect(result).To(Equal(ResultAck))
		g.Expect(resp.BootFileName).To(Equal("snponly.efi"))
	})
	t.Run("iPXE behind the café router gets its script", func(t *testing.T) {
		g := NewWithT(t)
		resp, _ := answer(t, discover(macKnown, ipxeClient()...), backend(), cfg, false)
		g.Expect(resp.BootFileName).To(Equal("http://10.20.0.2:8880/boot/" + tokenKnown + "/52:54:00:12:34:31.ipxe"))
	})
	t.Run("a machine without a reservation still boots", func(t *testing.T) {
		g := NewWithT(t)
		resp, result := answer(t, discover(macNoAddr, biosPXE()...), backend(), cfg, false)
		g.Expect(result).To(Equal(ResultOffer))
		g.Expect(resp.BootFileName).To(Equal("undionly.kpxe"))
	})
	for name, tc := range map[string]struct {
		req    *dhcpv4.DHCPv4
		result Result
	}{
		"non-PXE client":   {discover(macKnown), ResultNotPXE},
		"unknown MAC":      {discover(macUnknown, biosPXE()...), ResultUnknownMAC},
		"LocalBoot":        {discover(macLocal, biosPXE()...), ResultNotPXE},
		"DISCOVER on 4011": {discover(macKnown, biosPXE()...), ResultIgnoredType},
	} {
		t.Run(name, func(t *testing.T) {
			g := NewWithT(t)
			resp, result := answer(t, tc.req, backend(), cfg, name == "DISCOVER on 4011")
			g.Expect(resp).To(BeNil())
			g.Expect(result).To(Equal(tc.result))
		})
	}
}

func TestReplyAddr(t *testing.T) {
	parse := func(t *testing.T, d *dhcpv4.DHCPv4) *Query {
		var r Request
		NewWithT(t).Expect(r.Parse(d.ToBytes())).To(Succeed())
		q := r.Query(false)
		return &q
	}
	plain := discover(macKnown)
	relayed := discover(macKnown, dhcpv4.WithGatewayIP(net.IPv4(10, 30, 0, 1)))
	renew := discover(macKnown, dhcpv4.WithClientIP(net.IPv4(10, 20, 0, 131)))
	ack, nak := dhcpv4.MessageTypeAck, dhcpv4.MessageTypeNak
	for name, tc := range map[string]struct {
		req        *dhcpv4.DHCPv4
		typ        dhcpv4.MessageType
		peer       string
		proxyPort  bool
		clientPort uint16
		want       string
	}{
		"relay: giaddr at 67":                  {relayed, ack, "10.30.0.1:67", false, ClientPort, "10.30.0.1:67"},
		"relay from an odd port: giaddr":       {relayed, ack, "10.9.8.7:40000", false, ClientPort, "10.30.0.1:67"},
		"no address: broadcast":                {plain, ack, "0.0.0.0:68", false, ClientPort, "255.255.255.255:68"},
		"no peer: broadcast":                   {plain, ack, "", false, ClientPort, "255.255.255.255:68"},
		"ciaddr: unicast at 68":                {renew, ack, "10.20.0.131:68", false, ClientPort, "10.20.0.131:68"},
		"NAK: broadcast":                       {renew, nak, "10.20.0.131:68", false, ClientPort, "255.255.255.255:68"},
		"proxy port: the source address at 68": {renew, ack, "192.168.1.50:4011", true, ClientPort, "192.168.1.50:68"},
		"odd source port: not answered there":  {plain, ack, "127.0.0.1:40000", false, ClientPort, "255.255.255.255:68"},
		"odd source port with ciaddr":          {renew, ack, "127.0.0.1:40000", false, ClientPort, "10.20.0.131:68"},
		"odd source port on the proxy port":    {renew, ack, "127.0.0.1:40000", true, ClientPort, "127.0.0.1:68"},
		"test client port":                     {plain, ack, "127.0.0.1:40000", false, 41000, "255.255.255.255:41000"},
	} {
		t.Run(name, func(t *testing.T) {
			var peer netip.AddrPort
			if tc.peer != "" {
				peer = netip.MustParseAddrPort(tc.peer)
			}
			got := replyAddr(parse(t, tc.req), tc.typ, peer, tc.proxyPort, tc.clientPort)
			NewWithT(t).Expect(got.String()).To(Equal(tc.want))
		})
	}
}

func TestConfigValidate(t *testing.T) {
	g := NewWithT(t)
	for _, c := range []Config{
		{Mode: "relay", ServerIP: net.IPv4(10, 0, 0, 1), HTTPBase: "http://x"},
		{ServerIP: nil, HTTPBase: "http://x"},
		{ServerIP: net.IPv4(10, 0, 0, 1), HTTPBase: "x:80"},
		{ServerIP: net.IPv4(10, 0, 0, 1), HTTPBase: "http://x", BIOSFile: "../x"},
	} {
		c.Defaults()
		g.Expect(c.Validate()).To(HaveOccurred(), "%+v", c)
	}
}
