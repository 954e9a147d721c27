package dhcp

import (
	"net"
	"testing"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/iana"
	. "github.com/onsi/gomega"
)

// The policy, without packets: Decide's answer to each kind of request.
// reply_test.go checks the same through the wire path and the library.

var (
	server4 = [4]byte{10, 20, 0, 2}   // config()'s ServerIP
	known4  = [4]byte{10, 20, 0, 131} // macKnown's reservation
)

// query is a request from mac of type t by client c.
func query(mac net.HardwareAddr, t dhcpv4.MessageType, c Client, mods ...func(*Query)) *Query {
	q := &Query{Op: dhcpv4.OpcodeBootRequest, HType: iana.HWTypeEthernet, MAC: mac, Type: t, Client: c}
	for _, m := range mods {
		m(q)
	}
	return q
}

func asking(a [4]byte) func(*Query) {
	return func(q *Query) { q.RequestedIP, q.HasRequestedIP = a, true }
}
func toServer(a [4]byte) func(*Query) { return func(q *Query) { q.ServerID, q.HasServerID = a, true } }
func ciaddr(a [4]byte) func(*Query)   { return func(q *Query) { q.CIAddr = a } }
func onProxyPort(q *Query)            { q.ProxyPort = true }

var (
	plainClient = Client{}
	biosClient  = Client{PXE: true, Arch: iana.INTEL_X86PC, HasArch: true}
	uefiClient  = Client{PXE: true, Arch: iana.EFI_X86_64, HasArch: true}
	httpClient  = Client{HTTP: true, Arch: iana.EFI_X86_64_HTTP, HasArch: true}
	ipxeBIOS    = Client{PXE: true, IPXE: true, Arch: iana.INTEL_X86PC, HasArch: true}
	noArchPXE   = Client{PXE: true}
)

const (
	discoverT = dhcpv4.MessageTypeDiscover
	requestT  = dhcpv4.MessageTypeRequest
	informT   = dhcpv4.MessageTypeInform
	releaseT  = dhcpv4.MessageTypeRelease
	offerT    = dhcpv4.MessageTypeOffer
	ackT      = dhcpv4.MessageTypeAck
)

// the boot options Decide adds for each kind of client (proxy: false).
var (
	bootBIOS   = Decision{Boot: BootBIOS, VendorClass: "PXEClient", DiscoveryControl: true}
	bootUEFI   = Decision{Boot: BootUEFI, VendorClass: "PXEClient", DiscoveryControl: true}
	bootHTTP   = Decision{Boot: BootUEFIHTTP, VendorClass: "HTTPClient"}
	bootScript = Decision{Boot: BootScript, NoPXEDHCP: true}
)

// with is d's boot options on base.
func (d Decision) with(base Decision) Decision {
	base.Boot, base.VendorClass, base.DiscoveryControl, base.NoPXEDHCP = d.Boot, d.VendorClass, d.DiscoveryControl, d.NoPXEDHCP
	return base
}

func TestDecideReservation(t *testing.T) {
	b := backend()
	known, local := b[string(macKnown)], b[string(macLocal)]
	offer := Decision{Result: ResultOffer, Type: offerT, Reservation: known, YourIP: known4, Lease: true, Network: true}
	ack := offer
	ack.Result, ack.Type = ResultAck, ackT
	inform := ack
	inform.YourIP, inform.Lease = [4]byte{}, false
	forced := func(f Firmware) Backend {
		b := backend()
		r := b[string(macKnown)]
		r.Firmware = f
		b[string(macKnown)] = r
		return b
	}
	withFirmware := func(d Decision, f Firmware) Decision { d.Reservation.Firmware = f; return d }

	for name, tc := range map[string]struct {
		q    *Query
		b    Backend
		want Decision
	}{
		"BIOS PXE DISCOVER: OFFER with undionly.kpxe": {q: query(macKnown, discoverT, biosClient), want: bootBIOS.with(offer)},
		"UEFI PXE DISCOVER: the UEFI binary":          {q: query(macKnown, discoverT, uefiClient), want: bootUEFI.with(offer)},
		"PXE without option 93: BIOS":                 {q: query(macKnown, discoverT, noArchPXE), want: bootBIOS.with(offer)},
		"UEFI HTTP: the UEFI binary's URL":            {q: query(macKnown, discoverT, httpClient), want: bootHTTP.with(offer)},
		"iPXE: its script, no-pxedhcp":                {q: query(macKnown, discoverT, ipxeBIOS), want: bootScript.with(offer)},
		"firmware BIOS forced on a UEFI client": {q: query(macKnown, discoverT, uefiClient), b: forced(FirmwareBIOS),
			want: withFirmware(bootBIOS.with(offer), FirmwareBIOS)},
		"firmware UEFI forced, no option 93": {q: query(macKnown, discoverT, noArchPXE), b: forced(FirmwareUEFI),
			want: withFirmware(bootUEFI.with(offer), FirmwareUEFI)},
		"a client that does not netboot: address only": {q: query(macKnown, discoverT, plainClient), want: offer},
		"LocalBoot: address, no boot file": {q: query(macLocal, discoverT, biosClient),
			want: Decision{Result: ResultOffer, Type: offerT, Reservation: local, YourIP: [4]byte{10, 20, 0, 132}, Lease: true, Network: true}},
		"REQUEST for the reserved address to this server: ACK": {q: query(macKnown, requestT, ipxeBIOS, asking(known4), toServer(server4)), want: bootScript.with(ack)},
		"REQUEST naming no server: ACK":                        {q: query(macKnown, requestT, biosClient, asking(known4)), want: bootBIOS.with(ack)},
		"renewal, the address in ciaddr: ACK":                  {q: query(macKnown, requestT, plainClient, ciaddr(known4)), want: ack},
		"REQUEST for another address: NAK": {q: query(macKnown, requestT, biosClient, asking([4]byte{10, 20, 0, 99}), toServer(server4)),
			want: Decision{Result: ResultNak, Type: dhcpv4.MessageTypeNak, Message: "address 10.20.0.99 is not reserved for 52:54:00:12:34:31"}},
		"REQUEST without any address: NAK": {q: query(macKnown, requestT, plainClient),
			want: Decision{Result: ResultNak, Type: dhcpv4.MessageTypeNak, Message: "address 0.0.0.0 is not reserved for 52:54:00:12:34:31"}},
		"REQUEST to another server: ignored": {q: query(macKnown, requestT, biosClient, asking(known4), toServer([4]byte{10, 20, 0, 250})),
			want: Decision{Result: ResultOtherServer}},
		"INFORM: options, no address or lease": {q: query(macKnown, informT, plainClient, ciaddr(known4)), want: inform},
		"RELEASE: ignored":                     {q: query(macKnown, releaseT, biosClient), want: Decision{Result: ResultIgnoredType}},
		"no message type: ignored":             {q: query(macKnown, dhcpv4.MessageTypeNone, biosClient), want: Decision{Result: ResultIgnoredType}},
		"unknown MAC: ignored":                 {q: query(macUnknown, discoverT, biosClient), want: Decision{Result: ResultUnknownMAC}},
		"Machine without an address: ignored":  {q: query(macNoAddr, discoverT, biosClient), want: Decision{Result: ResultNoAddress}},
		"a BOOTREPLY: ignored": {q: query(macKnown, discoverT, biosClient, func(q *Query) { q.Op = dhcpv4.OpcodeBootReply }),
			want: Decision{Result: ResultNotBootReply}},
		"not Ethernet: malformed": {q: query(macKnown, discoverT, biosClient, func(q *Query) { q.HType = iana.HWTypeIEEE802 }),
			want: Decision{Result: ResultMalformed}},
		"an 8-byte hardware address: malformed": {q: query(net.HardwareAddr{1, 2, 3, 4, 5, 6, 7, 8}, discoverT, biosClient),
			want: Decision{Result: ResultMalformed}},
	} {
		t.Run(name, func(t *testing.T) {
			be := tc.b
			if be == nil {
				be = b
			}
			NewWithT(t).Expect(Decide(tc.q, be, config(ModeReservation))).To(Equal(tc.want))
		})
	}
}

func TestDecideProxy(t *testing.T) {
	b := backend()
	known, noAddr := b[string(macKnown)], b[string(macNoAddr)]
	offer := Decision{Result: ResultOffer, Type: offerT, Reservation: known}
	ack := Decision{Result: ResultAck, Type: ackT, Reservation: known}
	// In proxy mode iPXE is told PXEClient like firmware: a ProxyDHCP
	// answer is what it waits for.
	proxyIPXE := Decision{Boot: BootScript, VendorClass: "PXEClient", DiscoveryControl: true}
	for name, tc := range map[string]struct {
		q    *Query
		mode Mode
		want Decision
	}{
		"DISCOVER on 67: OFFER, boot file only":          {q: query(macKnown, discoverT, biosClient), want: bootBIOS.with(offer)},
		"iPXE: its script, as a PXE answer":              {q: query(macKnown, discoverT, ipxeBIOS), want: proxyIPXE.with(offer)},
		"UEFI HTTP: the binary's URL":                    {q: query(macKnown, discoverT, httpClient), want: bootHTTP.with(offer)},
		"a Machine without an address still boots":       {q: query(macNoAddr, discoverT, uefiClient), want: bootUEFI.with(Decision{Result: ResultOffer, Type: offerT, Reservation: noAddr})},
		"REQUEST on 67 to the other server's address":    {q: query(macKnown, requestT, biosClient, asking([4]byte{192, 168, 1, 50})), want: bootBIOS.with(ack)},
		"REQUEST on 67 to this server":                   {q: query(macKnown, requestT, biosClient, toServer(server4)), want: bootBIOS.with(ack)},
		"REQUEST on 67 naming another server: ignored":   {q: query(macKnown, requestT, biosClient, toServer([4]byte{192, 168, 1, 1})), want: Decision{Result: ResultOtherServer}},
		"REQUEST on 4011: ACK":                           {q: query(macKnown, requestT, uefiClient, onProxyPort, ciaddr([4]byte{192, 168, 1, 50})), want: bootUEFI.with(ack)},
		"INFORM on 4011: ACK":                            {q: query(macKnown, informT, uefiClient, onProxyPort), want: bootUEFI.with(ack)},
		"INFORM on 67: ignored":                          {q: query(macKnown, informT, uefiClient), want: Decision{Result: ResultIgnoredType}},
		"DISCOVER on 4011: ignored":                      {q: query(macKnown, discoverT, biosClient, onProxyPort), want: Decision{Result: ResultIgnoredType}},
		"4011 in reservation mode answers as a proxy":    {q: query(macKnown, requestT, biosClient, onProxyPort), mode: ModeReservation, want: bootBIOS.with(ack)},
		"a client that does not netboot: not answered":   {q: query(macKnown, discoverT, plainClient), want: Decision{Result: ResultNotPXE}},
		"unknown MAC: not answered":                      {q: query(macUnknown, discoverT, biosClient), want: Decision{Result: ResultUnknownMAC}},
		"LocalBoot: not answered, the disk boots":        {q: query(macLocal, discoverT, biosClient), want: Decision{Result: ResultNotPXE}},
		"non-booting client before the MAC is looked at": {q: query(macUnknown, discoverT, plainClient), want: Decision{Result: ResultNotPXE}},
	} {
		t.Run(name, func(t *testing.T) {
			mode := tc.mode
			if mode == "" {
				mode = ModeProxy
			}
			NewWithT(t).Expect(Decide(tc.q, b, config(mode))).To(Equal(tc.want))
		})
	}
}

func TestBootFileNames(t *testing.T) {
	cfg := config(ModeReservation)
	r := backend()[string(macKnown)]
	for k, want := range map[BootKind]string{
		BootNone:     "",
		BootBIOS:     "undionly.kpxe",
		BootUEFI:     "snponly.efi",
		BootUEFIHTTP: "http://10.20.0.2:8880/ipxe/snponly.efi",
		BootScript:   "http://10.20.0.2:8880/boot/" + tokenKnown + "/52:54:00:12:34:31.ipxe",
	} {
		t.Run(k.String(), func(t *testing.T) {
			g := NewWithT(t)
			g.Expect(string(appendBootFile(nil, k, r, cfg))).To(Equal(want))
			g.Expect(refBootFile(k, r, cfg)).To(Equal(want))
			g.Expect(k.TFTP()).To(Equal(k == BootBIOS || k == BootUEFI))
		})
	}
}
