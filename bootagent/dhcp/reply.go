// Package dhcp is the boot agent's DHCP server: reservation mode (authoritative
// for known Machines), proxyDHCP (boot information only, beside another DHCP
// server, ports 67 and 4011) and relayed requests. Replies are built by pure
// functions of (request, reservation, config) without allocating (wire.go);
// the socket loop is in server.go.
// The package never imports Kubernetes: it takes a Backend that looks up a MAC.
package dhcp

import (
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/iana"

	"github.com/ggnet/ggnet/internal/ipxe"
)

// Mode is how the server answers.
type Mode string

const (
	// ModeReservation hands out each known Machine's reserved address with the
	// boot information; unknown MACs are ignored.
	ModeReservation Mode = "reservation"
	// ModeProxy answers PXE clients with boot information only; another DHCP
	// server hands out addresses.
	ModeProxy Mode = "proxy"
)

// Firmware forces a boot file type for a machine whatever it announces.
type Firmware string

const (
	FirmwareAuto Firmware = ""
	FirmwareBIOS Firmware = "BIOS"
	FirmwareUEFI Firmware = "UEFI"
)

// Reservation is what the server knows of one Machine.
type Reservation struct {
	MAC net.HardwareAddr
	// Address is the reserved IPv4 address; nil when the machine has none
	// (proxyDHCP).
	Address  net.IP
	Mask     net.IPMask
	Gateway  net.IP
	DNS      []net.IP
	Hostname string
	Firmware Firmware
	// LocalBoot machines get an address but no boot file, so their firmware
	// falls through to the local disk.
	LocalBoot bool
	// Token is the script token in the iPXE script URL
	// (HTTPBase/boot/<token>/<mac>.ipxe): the served session's token or the
	// MAC's nonce. Empty gives HTTPBase/boot/<mac>.ipxe. It is a credential:
	// never log it.
	Token string
}

// Backend looks up a Machine by MAC. The agent implements it from an informer
// cache; tests pass a map. It must not block on the network.
type Backend interface {
	LookupMAC(mac net.HardwareAddr) (Reservation, bool)
}

// Config is the server's configuration, validated once by Validate.
type Config struct {
	Mode Mode
	// ServerIP is this agent's address on the boot network: siaddr, server
	// identifier (option 54) and TFTP server (option 66).
	ServerIP net.IP
	// HTTPBase is the agent's HTTP address as seen by clients, such as
	// http://10.20.0.2:8880, for iPXE scripts and UEFI HTTP boot.
	HTTPBase string
	// BIOSFile is sent to BIOS PXE clients (default undionly.kpxe).
	BIOSFile string
	// UEFIFile is sent to UEFI PXE clients (default snponly.efi: iPXE on
	// the firmware's own NIC driver, so it runs on every NIC the firmware
	// boots from; ipxe.efi carries iPXE's own drivers).
	UEFIFile string
	// LeaseTime of reservations (default 12h).
	LeaseTime time.Duration
}

// Defaults fills unset fields.
func (c *Config) Defaults() {
	if c.Mode == "" {
		c.Mode = ModeReservation
	}
	if c.BIOSFile == "" {
		c.BIOSFile = "undionly.kpxe"
	}
	if c.UEFIFile == "" {
		c.UEFIFile = "snponly.efi"
	}
	if c.LeaseTime == 0 {
		c.LeaseTime = 12 * time.Hour
	}
}

// Validate checks the configuration once at start.
func (c *Config) Validate() error {
	if c.Mode != ModeReservation && c.Mode != ModeProxy {
		return fmt.Errorf("dhcp mode %q: want reservation or proxy", c.Mode)
	}
	if c.ServerIP.To4() == nil || c.ServerIP.IsUnspecified() {
		return fmt.Errorf("dhcp server IP %q: want this agent's IPv4 address on the boot network", c.ServerIP)
	}
	if !strings.HasPrefix(c.HTTPBase, "http://") && !strings.HasPrefix(c.HTTPBase, "https://") {
		return fmt.Errorf("HTTP base %q: want http://host:port", c.HTTPBase)
	}
	for _, f := range []string{c.BIOSFile, c.UEFIFile} {
		if f == "" || strings.ContainsAny(f, " /\\") {
			return fmt.Errorf("boot file %q: want a plain file name", f)
		}
	}
	if c.LeaseTime < time.Minute {
		return fmt.Errorf("lease time %s: want at least a minute", c.LeaseTime)
	}
	return nil
}

// Result says what happened to one request; it labels the metrics.
type Result string

const (
	ResultOffer        Result = "offer"
	ResultAck          Result = "ack"
	ResultNak          Result = "nak"
	ResultUnknownMAC   Result = "unknown-mac"
	ResultNoAddress    Result = "no-address"
	ResultNotPXE       Result = "not-pxe"
	ResultOtherServer  Result = "other-server"
	ResultIgnoredType  Result = "ignored-type"
	ResultMalformed    Result = "malformed"
	ResultSendFailed   Result = "send-failed"
	ResultNotBootReply Result = "not-request"
	// ResultNotReady: the agent's caches have not synced yet, so it does not
	// know who may boot; the request is dropped.
	ResultNotReady Result = "not-ready"
)

// Client describes the booting client as read from its request.
type Client struct {
	// IPXE is true when user class (option 77) is "iPXE".
	IPXE bool
	// PXE is true for option 60 starting with PXEClient.
	PXE bool
	// HTTP is true for UEFI HTTP boot (option 60 starting with HTTPClient).
	HTTP bool
	// Arch is the first client architecture (option 93), if any.
	Arch    iana.Arch
	HasArch bool
}

// Booting reports whether the client asked for network boot information.
func (c Client) Booting() bool { return c.PXE || c.HTTP || c.IPXE }

// uefi reports whether the client is UEFI, from the reservation's firmware
// override first, then option 93.
func (c Client) uefi(f Firmware) bool {
	switch f {
	case FirmwareBIOS:
		return false
	case FirmwareUEFI:
		return true
	}
	if !c.HasArch {
		return false
	}
	switch c.Arch {
	case iana.INTEL_X86PC:
		return false
	default:
		return true
	}
}

// BootFile is what a client is told to load: TFTP (name on the agent's TFTP
// server) or a full URL for HTTP.
type BootFile struct {
	Name string
	// HTTP is true when Name is a URL.
	HTTP bool
}

// ChooseBootFile picks the boot file: iPXE gets its machine's script URL
// (ending the chainload loop), UEFI HTTP clients an http URL of the UEFI iPXE
// binary, UEFI PXE the UEFI binary, BIOS PXE undionly.kpxe.
func ChooseBootFile(c Client, r Reservation, cfg *Config) BootFile {
	name, http := appendBootFile(nil, c, r, cfg)
	return BootFile{Name: string(name), HTTP: http}
}

// appendBootFile appends the boot file name of ChooseBootFile to dst.
func appendBootFile(dst []byte, c Client, r Reservation, cfg *Config) ([]byte, bool) {
	base := strings.TrimRight(cfg.HTTPBase, "/")
	switch {
	case c.IPXE:
		return ipxe.AppendScriptURL(dst, base, r.MAC, r.Token), true
	case c.HTTP:
		dst = append(dst, base...)
		dst = append(dst, "/ipxe/"...)
		return append(dst, cfg.UEFIFile...), true
	case c.uefi(r.Firmware):
		return append(dst, cfg.UEFIFile...), false
	default:
		return append(dst, cfg.BIOSFile...), false
	}
}

// replier builds replies; each server worker has its own, so a reply costs
// no allocation.
type replier struct {
	w    replyWriter
	name []byte // boot file name
	tftp []byte // dotted server address for option 66
}

// reply answers req: the reply packet (valid until the next call) and its
// message type, or nil with the reason it is not answered. proxyPort is true
// for requests that arrived on port 4011.
func (p *replier) reply(req *Request, backend Backend, cfg *Config, proxyPort bool) ([]byte, dhcpv4.MessageType, Result) {
	if req.Op != dhcpv4.OpcodeBootRequest {
		return nil, 0, ResultNotBootReply
	}
	if req.HType != iana.HWTypeEthernet || req.HLen != 6 {
		return nil, 0, ResultMalformed
	}
	r, known := backend.LookupMAC(req.MAC())
	client := req.Client()
	if cfg.Mode == ModeProxy || proxyPort {
		return p.proxyReply(req, client, r, known, cfg, proxyPort)
	}
	return p.reservationReply(req, client, r, known, cfg)
}

func (p *replier) reservationReply(req *Request, client Client, r Reservation, known bool, cfg *Config) ([]byte, dhcpv4.MessageType, Result) {
	if !known {
		return nil, 0, ResultUnknownMAC
	}
	if r.Address == nil {
		return nil, 0, ResultNoAddress
	}
	var (
		msgType dhcpv4.MessageType
		result  Result
	)
	server := ip4Of(cfg.ServerIP)
	switch req.MessageType() {
	case dhcpv4.MessageTypeDiscover:
		msgType, result = dhcpv4.MessageTypeOffer, ResultOffer
	case dhcpv4.MessageTypeRequest:
		if sid, ok := req.ip4(tServerID); ok && sid != server {
			return nil, 0, ResultOtherServer
		}
		asked, ok := req.ip4(tRequestedIP)
		if !ok {
			asked = req.CIAddr
		}
		if asked != ip4Of(r.Address) || r.Address.To4() == nil {
			msg := fmt.Sprintf("address %s is not reserved for %s", net.IPv4(asked[0], asked[1], asked[2], asked[3]), req.MAC())
			return p.nak(req, server, msg), dhcpv4.MessageTypeNak, ResultNak
		}
		msgType, result = dhcpv4.MessageTypeAck, ResultAck
	case dhcpv4.MessageTypeInform:
		msgType, result = dhcpv4.MessageTypeAck, ResultAck
	default:
		return nil, 0, ResultIgnoredType
	}
	inform := req.MessageType() == dhcpv4.MessageTypeInform
	boot := client.Booting() && !r.LocalBoot
	var yiaddr [4]byte
	if !inform {
		yiaddr = ip4Of(r.Address)
	}
	w := p.header(req, client, r, cfg, boot, yiaddr, server)
	if r.Mask != nil {
		mask := r.Mask
		if len(mask) > net.IPv4len {
			mask = mask[:net.IPv4len]
		}
		w.option(dhcpv4.OptionSubnetMask, mask)
	}
	if r.Gateway != nil {
		w.optionIPs(dhcpv4.OptionRouter, r.Gateway)
	}
	if len(r.DNS) > 0 {
		w.optionIPs(dhcpv4.OptionDomainNameServer, r.DNS...)
	}
	if r.Hostname != "" {
		w.optionString(dhcpv4.OptionHostName, r.Hostname)
	}
	if boot && client.PXE && !client.HTTP && !client.IPXE {
		// A firmware PXE client (PXEClient in option 60) that finds no PXE
		// vendor options takes the offer for a BINL one and asks a boot
		// server on port 4011 for its file instead of loading the one in
		// the offer: EDK2 (OVMF, UEFI PCs) does, and after ~10 s without
		// an answer falls back to HTTP boot. Sub-option 6 = 8: no boot
		// server discovery, load the boot file named in the reply.
		w.option(dhcpv4.OptionVendorSpecificInformation, pxeDiscoveryControl)
	}
	lease := uint32(cfg.LeaseTime / time.Second)
	if !inform {
		w.optionUint32(dhcpv4.OptionIPAddressLeaseTime, lease)
	}
	w.b = append(w.b, dhcpv4.OptionDHCPMessageType.Code(), 1, byte(msgType))
	w.option(dhcpv4.OptionServerIdentifier, server[:])
	if !inform {
		w.optionUint32(dhcpv4.OptionRenewTimeValue, uint32(cfg.LeaseTime/2/time.Second))
		w.optionUint32(dhcpv4.OptionRebindingTimeValue, uint32(cfg.LeaseTime*7/8/time.Second))
	}
	p.bootOptions(req, client, cfg, boot, false)
	return w.finish(req), msgType, result
}

// proxyReply answers a PXE client beside another DHCP server: no address, only
// where to boot from. DISCOVER on 67 gets an OFFER; REQUEST (or INFORM) on
// 4011 gets an ACK.
func (p *replier) proxyReply(req *Request, client Client, r Reservation, known bool, cfg *Config, proxyPort bool) ([]byte, dhcpv4.MessageType, Result) {
	if !client.Booting() {
		return nil, 0, ResultNotPXE
	}
	if !known {
		return nil, 0, ResultUnknownMAC
	}
	if r.LocalBoot {
		return nil, 0, ResultNotPXE
	}
	var (
		msgType dhcpv4.MessageType
		result  Result
	)
	server := ip4Of(cfg.ServerIP)
	switch t := req.MessageType(); {
	case t == dhcpv4.MessageTypeDiscover && !proxyPort:
		msgType, result = dhcpv4.MessageTypeOffer, ResultOffer
	case t == dhcpv4.MessageTypeRequest && !proxyPort:
		// The client's REQUEST to the address-giving server; iPXE also looks
		// at a proxy ACK to it.
		if sid, ok := req.ip4(tServerID); ok && sid != server {
			return nil, 0, ResultOtherServer
		}
		msgType, result = dhcpv4.MessageTypeAck, ResultAck
	case (t == dhcpv4.MessageTypeRequest || t == dhcpv4.MessageTypeInform) && proxyPort:
		msgType, result = dhcpv4.MessageTypeAck, ResultAck
	default:
		return nil, 0, ResultIgnoredType
	}
	w := p.header(req, client, r, cfg, true, [4]byte{}, server)
	if client.PXE && !client.HTTP {
		// PXE vendor sub-option 6 = 8: no boot server discovery, load the
		// boot file named in the reply.
		w.option(dhcpv4.OptionVendorSpecificInformation, pxeDiscoveryControl)
	}
	w.b = append(w.b, dhcpv4.OptionDHCPMessageType.Code(), 1, byte(msgType))
	w.option(dhcpv4.OptionServerIdentifier, server[:])
	p.bootOptions(req, client, cfg, true, true)
	return w.finish(req), msgType, result
}

var pxeDiscoveryControl = []byte{6, 1, 8, 255}

// iPXE's encapsulated options (175) and its no-pxedhcp setting (176 = 1).
var optIPXEEncap dhcpv4.OptionCode = dhcpv4.GenericOptionCode(175)

var ipxeNoPXEDHCP = []byte{176, 1, 1}

// header chooses the boot file (when boot is set) and writes the reply's
// header: siaddr is this server.
func (p *replier) header(req *Request, client Client, r Reservation, cfg *Config, boot bool, yiaddr, server [4]byte) *replyWriter {
	p.name = p.name[:0]
	httpBoot := false
	if boot {
		p.name, httpBoot = appendBootFile(p.name, client, r, cfg)
	}
	p.tftp = p.tftp[:0]
	if boot && !httpBoot {
		p.tftp = appendIP4(p.tftp, server)
	}
	p.w.header(req, yiaddr, server, req.Flags, p.name)
	return &p.w
}

// bootOptions writes options 60 to 67 and 175 (after 53 and 54, before 82):
// the vendor class a PXE or HTTP client waits for, the copied client
// identifier, the TFTP server, the boot file name and iPXE's no-pxedhcp.
func (p *replier) bootOptions(req *Request, client Client, cfg *Config, boot, proxy bool) {
	w := &p.w
	noPXEDHCP := false
	if boot {
		switch {
		case client.HTTP:
			// UEFI HTTP boot ignores offers without HTTPClient in option 60.
			w.optionString(dhcpv4.OptionClassIdentifier, "HTTPClient")
		case client.IPXE && !proxy:
			// No PXEClient: from the server that hands out the address and
			// the script URL there is no ProxyDHCP answer to wait for. And
			// iPXE's no-pxedhcp setting (encapsulated option 175.176 = 1):
			// without it iPXE still waits up to 2 s of DHCP discovery for
			// ProxyDHCP offers before it requests (src/net/udp/dhcp.c),
			// measured ~1.8 s of every lab boot (docs/benchmarks.md, Boot).
			noPXEDHCP = true
		case client.PXE:
			w.optionString(dhcpv4.OptionClassIdentifier, "PXEClient")
		}
	}
	if v := req.opts[tClientID]; v != nil {
		// RFC 6842: the client identifier is echoed.
		w.option(dhcpv4.OptionClientIdentifier, v)
	}
	if boot {
		if len(p.tftp) > 0 {
			w.option(dhcpv4.OptionTFTPServerName, p.tftp)
		}
		w.option(dhcpv4.OptionBootfileName, p.name)
	}
	if noPXEDHCP {
		w.option(optIPXEEncap, ipxeNoPXEDHCP)
	}
}

func (p *replier) nak(req *Request, server [4]byte, msg string) []byte {
	w := &p.w
	w.header(req, [4]byte{}, [4]byte{}, req.Flags|0x8000, nil)
	w.b = append(w.b, dhcpv4.OptionDHCPMessageType.Code(), 1, byte(dhcpv4.MessageTypeNak))
	w.option(dhcpv4.OptionServerIdentifier, server[:])
	w.optionString(dhcpv4.OptionMessage, msg)
	if v := req.opts[tClientID]; v != nil {
		w.option(dhcpv4.OptionClientIdentifier, v)
	}
	return w.finish(req)
}

func appendIP4(dst []byte, ip [4]byte) []byte {
	for i, b := range ip {
		if i > 0 {
			dst = append(dst, '.')
		}
		dst = strconv.AppendUint(dst, uint64(b), 10)
	}
	return dst
}
