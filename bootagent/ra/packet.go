// Package ra answers IPv6 router solicitations on the boot interfaces so
// that iPXE's IPv6 autoconfiguration ends at once instead of waiting for a
// router that is not there.
//
// iPXE configures a network device with every configurator at once (DHCPv4
// and IPv6) and waits until all have ended (ifconf, src/usr/ifmgmt.c). The
// IPv6 one sends router solicitations on a retry timer of 0.25 s doubling to
// a 10 s cap and gives up only when the next wait would pass the cap: about
// 15.75 s after it started (src/net/ndp.c, src/net/retry.c). It ends at the
// first router advertisement instead, and with neither M nor O set it starts
// no DHCPv6 (ipv6conf_rx_router_advertisement). The answer here is such an
// advertisement, unicast to the soliciting PC: router lifetime 0 (not a
// default router), no prefix, M=O=0. It configures nothing.
//
// On a LAN with a real IPv6 router the responder stays quiet in its default
// mode (auto): docs/ipv6.md.
package ra

import (
	"errors"
	"net"
)

// ICMPv6 types and NDP options (RFC 4861).
const (
	TypeRouterSolicitation  = 133
	TypeRouterAdvertisement = 134

	optSourceLLAddr = 1
	optPrefixInfo   = 3
	optRouteInfo    = 24 // RFC 4191
	optRDNSS        = 25 // RFC 8106
	optDNSSL        = 31 // RFC 8106

	flagManaged = 0x80
	flagOther   = 0x40

	// HopLimit is the hop limit of every NDP packet: one that arrives
	// with another was forwarded, so it is not from this link.
	HopLimit = 255
)

// Errors of the parsers; each malformed packet is dropped and counted.
var (
	ErrShort   = errors.New("too short")
	ErrType    = errors.New("not the expected ICMPv6 type or code")
	ErrOptions = errors.New("malformed NDP options")
)

// Solicitation is a parsed router solicitation.
type Solicitation struct {
	// MAC is the source link-layer address option (nil when absent).
	MAC net.HardwareAddr
}

// ParseSolicitation parses an ICMPv6 router solicitation as a raw ICMPv6
// socket returns it (no IPv6 header). The kernel has checked the checksum.
func ParseSolicitation(b []byte) (Solicitation, error) {
	var s Solicitation
	if len(b) < 8 {
		return s, ErrShort
	}
	if b[0] != TypeRouterSolicitation || b[1] != 0 {
		return s, ErrType
	}
	err := walkOptions(b[8:], func(typ byte, body []byte) {
		// Ethernet: 6 bytes in an 8-byte option. Other link layers are
		// not boot LANs.
		if typ == optSourceLLAddr && len(body) == 6 && s.MAC == nil {
			s.MAC = net.HardwareAddr(append([]byte(nil), body...))
		}
	})
	return s, err
}

// Advertisement is a parsed router advertisement.
type Advertisement struct {
	Managed, Other bool
	// Lifetime is the router lifetime in seconds (0: not a default router).
	Lifetime uint16
	// Prefixes counts Prefix Information options.
	Prefixes int
	// Configuring counts the other options that configure a host: routes,
	// DNS servers, DNS search lists.
	Configuring int
}

// Router says whether the advertisement configures anything: a default
// router, a prefix, DHCPv6, routes or DNS. The responder's own answers (and
// another GGnet agent's) configure nothing; a real router's do.
func (a Advertisement) Router() bool {
	return a.Lifetime > 0 || a.Managed || a.Other || a.Prefixes > 0 || a.Configuring > 0
}

// ParseAdvertisement parses an ICMPv6 router advertisement (no IPv6
// header).
func ParseAdvertisement(b []byte) (Advertisement, error) {
	var a Advertisement
	if len(b) < 16 {
		return a, ErrShort
	}
	if b[0] != TypeRouterAdvertisement || b[1] != 0 {
		return a, ErrType
	}
	a.Managed, a.Other = b[5]&flagManaged != 0, b[5]&flagOther != 0
	a.Lifetime = uint16(b[6])<<8 | uint16(b[7])
	err := walkOptions(b[16:], func(typ byte, _ []byte) {
		switch typ {
		case optPrefixInfo:
			a.Prefixes++
		case optRouteInfo, optRDNSS, optDNSSL:
			a.Configuring++
		}
	})
	return a, err
}

// walkOptions calls f with each option's type and body (the option less its
// two-byte header). Like iPXE's ndp_rx_options and the kernel's, it rejects
// an option of length 0 or one that runs past the packet.
func walkOptions(b []byte, f func(typ byte, body []byte)) error {
	for len(b) > 0 {
		if len(b) < 2 || b[1] == 0 || int(b[1])*8 > len(b) {
			return ErrOptions
		}
		n := int(b[1]) * 8
		f(b[0], b[2:n])
		b = b[n:]
	}
	return nil
}

// Advertise returns the responder's answer: a router advertisement with
// current hop limit unspecified, M=O=0, router lifetime 0, reachable time
// and retransmission timer unspecified, and only the source link-layer
// address option (the boot interface's MAC, so the PC need not resolve
// it). The kernel fills the checksum.
func Advertise(mac net.HardwareAddr) []byte { return message(TypeRouterAdvertisement, 16, mac) }

// Solicit returns a router solicitation with the source link-layer address
// option: the responder's probe for real routers.
func Solicit(mac net.HardwareAddr) []byte { return message(TypeRouterSolicitation, 8, mac) }

// message is an ICMPv6 message of type typ whose fixed part (header
// included) is n zero bytes, with the source link-layer address option when
// mac is an Ethernet address.
func message(typ byte, n int, mac net.HardwareAddr) []byte {
	b := make([]byte, n, n+8)
	b[0] = typ
	if len(mac) == 6 {
		b = append(b, optSourceLLAddr, 1)
		b = append(b, mac...)
	}
	return b
}
