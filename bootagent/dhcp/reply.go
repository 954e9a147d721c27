// Package dhcp is the boot agent's DHCP server: reservation mode (authoritative
// for known Machines), proxyDHCP (boot information only, beside another DHCP
// server, ports 67 and 4011) and relayed requests. What to answer is one pure
// function, Decide (decide.go); the server reads requests and writes the
// replies it decides without allocating (wire.go, reply.go); the socket loop
// is in server.go, with recvmmsg/sendmmsg batches on Linux (batch_linux.go)
// and one datagram per call elsewhere (batch_other.go).
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

// appendBootFile appends the name of boot file k to dst: a file name on
// this server's TFTP, or a URL.
func appendBootFile(dst []byte, k BootKind, r Reservation, cfg *Config) []byte {
	base := strings.TrimRight(cfg.HTTPBase, "/")
	switch k {
	case BootScript:
		return ipxe.AppendScriptURL(dst, base, r.MAC, r.Token)
	case BootUEFIHTTP:
		dst = append(dst, base...)
		dst = append(dst, "/ipxe/"...)
		return append(dst, cfg.UEFIFile...)
	case BootUEFI:
		return append(dst, cfg.UEFIFile...)
	case BootBIOS:
		return append(dst, cfg.BIOSFile...)
	}
	return dst
}

// replier writes replies; each server worker has its own, so a reply costs
// no allocation.
type replier struct {
	w    replyWriter
	name []byte // boot file name
	tftp []byte // dotted server address for option 66
}

// encode writes the reply d describes to req, nil when none is sent.
// Options go in increasing code order, as the library writes them.
func (p *replier) encode(req *Request, d *Decision, cfg *Config) []byte {
	server := ip4Of(cfg.ServerIP)
	switch d.Type {
	case dhcpv4.MessageTypeNone:
		return nil
	case dhcpv4.MessageTypeNak:
		return p.nak(req, server, d.Message)
	}
	p.name = appendBootFile(p.name[:0], d.Boot, d.Reservation, cfg)
	p.tftp = p.tftp[:0]
	if d.Boot.TFTP() {
		p.tftp = appendIP4(p.tftp, server)
	}
	w := &p.w
	w.header(req, d.YourIP, server, req.Flags, p.name)
	if r := &d.Reservation; d.Network {
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
	}
	if d.DiscoveryControl {
		w.option(dhcpv4.OptionVendorSpecificInformation, pxeDiscoveryControl)
	}
	if d.Lease {
		w.optionUint32(dhcpv4.OptionIPAddressLeaseTime, uint32(cfg.LeaseTime/time.Second))
	}
	w.b = append(w.b, dhcpv4.OptionDHCPMessageType.Code(), 1, byte(d.Type))
	w.option(dhcpv4.OptionServerIdentifier, server[:])
	if d.Lease {
		w.optionUint32(dhcpv4.OptionRenewTimeValue, uint32(cfg.LeaseTime/2/time.Second))
		w.optionUint32(dhcpv4.OptionRebindingTimeValue, uint32(cfg.LeaseTime*7/8/time.Second))
	}
	if d.VendorClass != "" {
		w.optionString(dhcpv4.OptionClassIdentifier, d.VendorClass)
	}
	if v := req.opts[tClientID]; v != nil {
		// RFC 6842: the client identifier is echoed.
		w.option(dhcpv4.OptionClientIdentifier, v)
	}
	if d.Boot != BootNone {
		if len(p.tftp) > 0 {
			w.option(dhcpv4.OptionTFTPServerName, p.tftp)
		}
		w.option(dhcpv4.OptionBootfileName, p.name)
	}
	if d.NoPXEDHCP {
		w.option(optIPXEEncap, ipxeNoPXEDHCP)
	}
	return w.finish(req)
}

// pxeDiscoveryControl is PXE vendor sub-option 6 = 8 (Decision.DiscoveryControl).
var pxeDiscoveryControl = []byte{6, 1, 8, 255}

// iPXE's encapsulated options (175) and its no-pxedhcp setting (176 = 1).
var optIPXEEncap dhcpv4.OptionCode = dhcpv4.GenericOptionCode(175)

var ipxeNoPXEDHCP = []byte{176, 1, 1}

// nak writes a NAK: broadcast flag, no yiaddr or siaddr, the server
// identifier, the message and the client identifier.
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
