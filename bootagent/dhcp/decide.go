package dhcp

import (
	"fmt"
	"net"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/iana"
)

// The server's policy, what to answer, is one pure function: Decide reads a
// Query (what a request says, however it was parsed) and returns a Decision
// (what the reply holds, however it is written). The server parses with
// Request and writes with replyWriter (wire.go); the reference tests parse
// and write through insomniacslk/dhcp and call the same Decide, so a change
// of policy is made here once and those tests check parsing and encoding
// only.

// Query is what the policy reads of one request.
type Query struct {
	Op    dhcpv4.OpcodeType
	HType iana.HWType
	// MAC is the client hardware address, hlen bytes of chaddr (at most
	// 16); it may point into the packet buffer.
	MAC net.HardwareAddr
	// Type is option 53, MessageTypeNone when absent or not one byte.
	Type dhcpv4.MessageType
	// ServerID (option 54) and RequestedIP (option 50), when present as
	// exactly one IPv4 address.
	ServerID       [4]byte
	HasServerID    bool
	RequestedIP    [4]byte
	HasRequestedIP bool
	CIAddr         [4]byte
	GIAddr         [4]byte
	// Client is what the client announced (options 60, 77, 93).
	Client Client
	// ProxyPort is true for a request that arrived on port 4011.
	ProxyPort bool
}

// BootKind is the boot file a reply names.
type BootKind uint8

const (
	// BootNone: no boot information (a client that does not network-boot,
	// or a LocalBoot machine in reservation mode).
	BootNone BootKind = iota
	// BootBIOS: Config.BIOSFile over TFTP.
	BootBIOS
	// BootUEFI: Config.UEFIFile over TFTP.
	BootUEFI
	// BootUEFIHTTP: HTTPBase/ipxe/<UEFIFile>, for UEFI HTTP boot.
	BootUEFIHTTP
	// BootScript: the machine's iPXE script URL,
	// HTTPBase/boot/<token>/<mac>.ipxe (ends iPXE's chainload loop).
	BootScript
)

// TFTP reports whether the file is loaded over TFTP: the reply then names
// this server as TFTP server (option 66).
func (k BootKind) TFTP() bool { return k == BootBIOS || k == BootUEFI }

// String names the kind for tests and logs.
func (k BootKind) String() string {
	switch k {
	case BootNone:
		return "none"
	case BootBIOS:
		return "BIOS"
	case BootUEFI:
		return "UEFI"
	case BootUEFIHTTP:
		return "UEFI-HTTP"
	case BootScript:
		return "iPXE-script"
	}
	return fmt.Sprintf("BootKind(%d)", uint8(k))
}

// Decision is what to answer to one request. Every reply also carries this
// server as siaddr and server identifier (54), the request's xid, flags,
// chaddr and giaddr, its client identifier (61, RFC 6842) and relay agent
// information (82, RFC 3046): those are the encoders' part.
type Decision struct {
	// Result says what was done; it labels the metrics.
	Result Result
	// Type is OFFER, ACK or NAK, or MessageTypeNone when nothing is sent.
	Type dhcpv4.MessageType
	// Reservation is the Machine's (the boot file's token and MAC, and the
	// network options).
	Reservation Reservation
	// YourIP is yiaddr: the reserved address of an OFFER or ACK in
	// reservation mode, zero otherwise.
	YourIP [4]byte
	// Lease: lease, renewal and rebinding times (51, 58, 59) of
	// Config.LeaseTime.
	Lease bool
	// Network: the reservation's subnet mask, router, DNS servers and host
	// name (1, 3, 6, 12), each when set.
	Network bool
	// Boot is the boot file named in the file field and option 67.
	Boot BootKind
	// VendorClass is option 60: "PXEClient" or "HTTPClient", which a PXE or
	// HTTP boot client waits for; empty sends none.
	VendorClass string
	// DiscoveryControl is PXE vendor option 43 with sub-option 6 = 8: no
	// boot server discovery, load the file named in the reply.
	DiscoveryControl bool
	// NoPXEDHCP is iPXE's encapsulated option 175 with no-pxedhcp (176) = 1.
	NoPXEDHCP bool
	// Message is a NAK's option 56.
	Message string
}

// Decide is the server's policy: whether and what to answer to q, given the
// Machines backend knows and cfg. It has no side effects; it allocates only
// for a NAK's message.
func Decide(q *Query, backend Backend, cfg *Config) Decision {
	if q.Op != dhcpv4.OpcodeBootRequest {
		return Decision{Result: ResultNotBootReply}
	}
	if q.HType != iana.HWTypeEthernet || len(q.MAC) != 6 {
		return Decision{Result: ResultMalformed}
	}
	r, known := backend.LookupMAC(q.MAC)
	if cfg.Mode == ModeProxy || q.ProxyPort {
		return decideProxy(q, r, known, cfg)
	}
	return decideReservation(q, r, known, cfg)
}

// decideReservation answers known Machines with their reserved address:
// DISCOVER gets an OFFER, REQUEST for the reserved address (to this server
// or to none named) an ACK and for another address a NAK, INFORM an ACK
// without an address or lease.
func decideReservation(q *Query, r Reservation, known bool, cfg *Config) Decision {
	if !known {
		return Decision{Result: ResultUnknownMAC}
	}
	if r.Address == nil {
		return Decision{Result: ResultNoAddress}
	}
	d := Decision{Reservation: r}
	switch q.Type {
	case dhcpv4.MessageTypeDiscover:
		d.Type, d.Result = dhcpv4.MessageTypeOffer, ResultOffer
	case dhcpv4.MessageTypeRequest:
		if q.HasServerID && q.ServerID != ip4Of(cfg.ServerIP) {
			return Decision{Result: ResultOtherServer}
		}
		asked := q.CIAddr
		if q.HasRequestedIP {
			asked = q.RequestedIP
		}
		if r.Address.To4() == nil || asked != ip4Of(r.Address) {
			return Decision{Result: ResultNak, Type: dhcpv4.MessageTypeNak,
				Message: fmt.Sprintf("address %s is not reserved for %s", net.IPv4(asked[0], asked[1], asked[2], asked[3]), q.MAC)}
		}
		d.Type, d.Result = dhcpv4.MessageTypeAck, ResultAck
	case dhcpv4.MessageTypeInform:
		d.Type, d.Result = dhcpv4.MessageTypeAck, ResultAck
	default:
		return Decision{Result: ResultIgnoredType}
	}
	if q.Type != dhcpv4.MessageTypeInform {
		d.YourIP, d.Lease = ip4Of(r.Address), true
	}
	d.Network = true
	if q.Client.Booting() && !r.LocalBoot {
		d.boot(q.Client, r, false)
	}
	return d
}

// decideProxy answers a PXE client beside another DHCP server: no address,
// only where to boot from. DISCOVER on 67 gets an OFFER; REQUEST on 67 (to
// this server or to none named: iPXE also reads a proxy ACK to the
// address-giving server's) and REQUEST or INFORM on 4011 get an ACK.
func decideProxy(q *Query, r Reservation, known bool, cfg *Config) Decision {
	if !q.Client.Booting() {
		return Decision{Result: ResultNotPXE}
	}
	if !known {
		return Decision{Result: ResultUnknownMAC}
	}
	if r.LocalBoot {
		return Decision{Result: ResultNotPXE}
	}
	d := Decision{Reservation: r}
	switch t := q.Type; {
	case t == dhcpv4.MessageTypeDiscover && !q.ProxyPort:
		d.Type, d.Result = dhcpv4.MessageTypeOffer, ResultOffer
	case t == dhcpv4.MessageTypeRequest && !q.ProxyPort:
		if q.HasServerID && q.ServerID != ip4Of(cfg.ServerIP) {
			return Decision{Result: ResultOtherServer}
		}
		d.Type, d.Result = dhcpv4.MessageTypeAck, ResultAck
	case (t == dhcpv4.MessageTypeRequest || t == dhcpv4.MessageTypeInform) && q.ProxyPort:
		d.Type, d.Result = dhcpv4.MessageTypeAck, ResultAck
	default:
		return Decision{Result: ResultIgnoredType}
	}
	d.boot(q.Client, r, true)
	return d
}

// boot sets the boot information for a client that asked for it: the file
// (iPXE its machine's script URL, UEFI HTTP the UEFI binary's URL, UEFI PXE
// the UEFI binary, BIOS PXE the BIOS one) and the options its firmware waits
// for.
func (d *Decision) boot(c Client, r Reservation, proxy bool) {
	switch {
	case c.IPXE:
		d.Boot = BootScript
	case c.HTTP:
		d.Boot = BootUEFIHTTP
	case c.uefi(r.Firmware):
		d.Boot = BootUEFI
	default:
		d.Boot = BootBIOS
	}
	switch {
	case c.HTTP:
		// UEFI HTTP boot ignores offers without HTTPClient in option 60.
		d.VendorClass = "HTTPClient"
	case c.IPXE && !proxy:
		// No PXEClient: from the server that hands out the address and the
		// script URL there is no ProxyDHCP answer to wait for. And iPXE's
		// no-pxedhcp: without it iPXE still waits up to 2 s of DHCP
		// discovery for ProxyDHCP offers before it requests
		// (src/net/udp/dhcp.c), measured ~1.8 s of every lab boot
		// (docs/benchmarks.md, Boot).
		d.NoPXEDHCP = true
	case c.PXE:
		// A firmware PXE client that finds no PXE vendor options takes the
		// offer for a BINL one and asks a boot server on port 4011 for its
		// file instead of loading the one in the reply: EDK2 (OVMF, UEFI
		// PCs) does, and after ~10 s without an answer falls back to HTTP
		// boot. Discovery control 8 makes it load the named file.
		d.VendorClass = "PXEClient"
		d.DiscoveryControl = true
	}
}
