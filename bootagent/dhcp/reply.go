// Package dhcp is the boot agent's DHCP server: reservation mode (authoritative
// for known Machines), proxyDHCP (boot information only, beside another DHCP
// server, ports 67 and 4011) and relayed requests. Replies are built by pure
// functions of (request, reservation, config); the socket loop is in server.go.
// The package never imports Kubernetes: it takes a Backend that looks up a MAC.
package dhcp

import (
	"bytes"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/iana"
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
	// UEFIFile is sent to UEFI PXE clients (default ipxe.efi; snponly.efi
	// uses the firmware's own NIC driver).
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
		c.UEFIFile = "ipxe.efi"
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

// ReadClient classifies a request.
func ReadClient(req *dhcpv4.DHCPv4) Client {
	var c Client
	vc := req.ClassIdentifier()
	c.PXE = strings.HasPrefix(vc, "PXEClient")
	c.HTTP = strings.HasPrefix(vc, "HTTPClient")
	if uc := req.GetOneOption(dhcpv4.OptionUserClassInformation); len(uc) > 0 {
		// iPXE sends the plain string "iPXE"; RFC 3004 clients length-prefix it.
		c.IPXE = bytes.Equal(uc, []byte("iPXE")) || bytes.Equal(uc, []byte("\x04iPXE"))
	}
	if archs := req.ClientArch(); len(archs) > 0 {
		c.Arch, c.HasArch = archs[0], true
	}
	return c
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
	switch {
	case c.IPXE:
		return BootFile{Name: ScriptURL(cfg.HTTPBase, r.MAC), HTTP: true}
	case c.HTTP:
		return BootFile{Name: strings.TrimRight(cfg.HTTPBase, "/") + "/ipxe/" + cfg.UEFIFile, HTTP: true}
	case c.uefi(r.Firmware):
		return BootFile{Name: cfg.UEFIFile}
	default:
		return BootFile{Name: cfg.BIOSFile}
	}
}

// ScriptURL is the machine's iPXE script URL on the agent.
func ScriptURL(httpBase string, mac net.HardwareAddr) string {
	return strings.TrimRight(httpBase, "/") + "/boot/" + mac.String() + ".ipxe"
}

// Reply builds the reply to req, or nil with the reason it is not answered.
// proxyPort is true for requests that arrived on port 4011.
func Reply(req *dhcpv4.DHCPv4, backend Backend, cfg *Config, proxyPort bool) (*dhcpv4.DHCPv4, Result) {
	if req.OpCode != dhcpv4.OpcodeBootRequest {
		return nil, ResultNotBootReply
	}
	if req.HWType != iana.HWTypeEthernet || len(req.ClientHWAddr) != 6 {
		return nil, ResultMalformed
	}
	r, known := backend.LookupMAC(req.ClientHWAddr)
	client := ReadClient(req)
	if cfg.Mode == ModeProxy || proxyPort {
		return proxyReply(req, client, r, known, cfg, proxyPort)
	}
	return reservationReply(req, client, r, known, cfg)
}

func reservationReply(req *dhcpv4.DHCPv4, client Client, r Reservation, known bool, cfg *Config) (*dhcpv4.DHCPv4, Result) {
	if !known {
		return nil, ResultUnknownMAC
	}
	if r.Address == nil {
		return nil, ResultNoAddress
	}
	var (
		msgType dhcpv4.MessageType
		result  Result
	)
	switch req.MessageType() {
	case dhcpv4.MessageTypeDiscover:
		msgType, result = dhcpv4.MessageTypeOffer, ResultOffer
	case dhcpv4.MessageTypeRequest:
		if sid := req.ServerIdentifier(); sid != nil && !sid.Equal(cfg.ServerIP) {
			return nil, ResultOtherServer
		}
		asked := req.RequestedIPAddress()
		if asked == nil {
			asked = req.ClientIPAddr
		}
		if !asked.Equal(r.Address) {
			return nak(req, cfg, fmt.Sprintf("address %s is not reserved for %s", asked, req.ClientHWAddr)), ResultNak
		}
		msgType, result = dhcpv4.MessageTypeAck, ResultAck
	case dhcpv4.MessageTypeInform:
		msgType, result = dhcpv4.MessageTypeAck, ResultAck
	default:
		return nil, ResultIgnoredType
	}
	resp, err := newReply(req, msgType, cfg)
	if err != nil {
		return nil, ResultMalformed
	}
	if req.MessageType() != dhcpv4.MessageTypeInform {
		resp.YourIPAddr = r.Address
		resp.UpdateOption(dhcpv4.OptIPAddressLeaseTime(cfg.LeaseTime))
		resp.UpdateOption(dhcpv4.OptRenewTimeValue(cfg.LeaseTime / 2))
		resp.UpdateOption(dhcpv4.OptRebindingTimeValue(cfg.LeaseTime * 7 / 8))
	}
	if r.Mask != nil {
		resp.UpdateOption(dhcpv4.OptSubnetMask(r.Mask))
	}
	if r.Gateway != nil {
		resp.UpdateOption(dhcpv4.OptRouter(r.Gateway))
	}
	if len(r.DNS) > 0 {
		resp.UpdateOption(dhcpv4.OptDNS(r.DNS...))
	}
	if r.Hostname != "" {
		resp.UpdateOption(dhcpv4.OptHostName(r.Hostname))
	}
	if client.Booting() && !r.LocalBoot {
		setBootOptions(resp, client, ChooseBootFile(client, r, cfg), cfg, false)
	}
	return resp, result
}

// proxyReply answers a PXE client beside another DHCP server: no address, only
// where to boot from. DISCOVER on 67 gets an OFFER; REQUEST (or INFORM) on
// 4011 gets an ACK.
func proxyReply(req *dhcpv4.DHCPv4, client Client, r Reservation, known bool, cfg *Config, proxyPort bool) (*dhcpv4.DHCPv4, Result) {
	if !client.Booting() {
		return nil, ResultNotPXE
	}
	if !known {
		return nil, ResultUnknownMAC
	}
	if r.LocalBoot {
		return nil, ResultNotPXE
	}
	var (
		msgType dhcpv4.MessageType
		result  Result
	)
	switch t := req.MessageType(); {
	case t == dhcpv4.MessageTypeDiscover && !proxyPort:
		msgType, result = dhcpv4.MessageTypeOffer, ResultOffer
	case t == dhcpv4.MessageTypeRequest && !proxyPort:
		// The client's REQUEST to the address-giving server; iPXE also looks
		// at a proxy ACK to it.
		if sid := req.ServerIdentifier(); sid != nil && !sid.Equal(cfg.ServerIP) {
			return nil, ResultOtherServer
		}
		msgType, result = dhcpv4.MessageTypeAck, ResultAck
	case (t == dhcpv4.MessageTypeRequest || t == dhcpv4.MessageTypeInform) && proxyPort:
		msgType, result = dhcpv4.MessageTypeAck, ResultAck
	default:
		return nil, ResultIgnoredType
	}
	resp, err := newReply(req, msgType, cfg)
	if err != nil {
		return nil, ResultMalformed
	}
	resp.YourIPAddr = net.IPv4zero
	setBootOptions(resp, client, ChooseBootFile(client, r, cfg), cfg, true)
	return resp, result
}

// newReply starts a reply from this server: message type, siaddr and server
// identifier.
func newReply(req *dhcpv4.DHCPv4, msgType dhcpv4.MessageType, cfg *Config) (*dhcpv4.DHCPv4, error) {
	return dhcpv4.NewReplyFromRequest(req,
		dhcpv4.WithMessageType(msgType),
		dhcpv4.WithServerIP(cfg.ServerIP),
		dhcpv4.WithOption(dhcpv4.OptServerIdentifier(cfg.ServerIP)),
	)
}

// pxeDiscoveryControl is PXE vendor sub-option 6 = 8: no boot server
// discovery, load the boot file named in the reply.
var pxeDiscoveryControl = []byte{6, 1, 8, 255}

func setBootOptions(resp *dhcpv4.DHCPv4, client Client, bf BootFile, cfg *Config, proxy bool) {
	resp.BootFileName = bf.Name
	resp.UpdateOption(dhcpv4.OptBootFileName(bf.Name))
	if !bf.HTTP {
		resp.ServerIPAddr = cfg.ServerIP
		resp.UpdateOption(dhcpv4.OptTFTPServerName(cfg.ServerIP.String()))
	}
	switch {
	case client.HTTP:
		// UEFI HTTP boot ignores offers without HTTPClient in option 60.
		resp.UpdateOption(dhcpv4.OptClassIdentifier("HTTPClient"))
	case client.IPXE && !proxy:
		// iPXE waits several seconds for a ProxyDHCP answer when the
		// reply says PXEClient; from the server that hands out the address
		// and the script URL there is nothing more to wait for.
	case client.PXE:
		resp.UpdateOption(dhcpv4.OptClassIdentifier("PXEClient"))
		if proxy {
			resp.UpdateOption(dhcpv4.OptGeneric(dhcpv4.OptionVendorSpecificInformation, pxeDiscoveryControl))
		}
	}
}

func nak(req *dhcpv4.DHCPv4, cfg *Config, msg string) *dhcpv4.DHCPv4 {
	resp, err := dhcpv4.NewReplyFromRequest(req,
		dhcpv4.WithMessageType(dhcpv4.MessageTypeNak),
		dhcpv4.WithOption(dhcpv4.OptServerIdentifier(cfg.ServerIP)),
		dhcpv4.WithOption(dhcpv4.OptMessage(msg)),
	)
	if err != nil {
		return nil
	}
	resp.ClientIPAddr = net.IPv4zero
	resp.YourIPAddr = net.IPv4zero
	resp.SetBroadcast()
	return resp
}
