// Package wol wakes Machines: the Wake-on-LAN magic packet (with an
// optional SecureOn password), a sender that broadcasts it on a boot
// interface, and the Waker, which sends it for Ready sessions that ask for
// it (BootSession spec.wake) until the machine's firmware shows up.
//
// The SecureOn password is a credential of sorts (it is sent in clear on
// the boot LAN, like every magic packet, but nowhere else): it is read from
// the Machine's Secret only to send, and never goes into a log line, an
// Event, a metric or a CR.
package wol

import (
	"errors"
	"fmt"
	"net"
	"strings"

	"github.com/ggnet/ggnet/internal/ipxe"
)

// Port is where the magic packet goes (UDP, "discard"); the NIC looks for
// the pattern anywhere in the frame, so the port does not matter to it.
const Port = 9

// EtherType is Wake-on-LAN's own EtherType, for raw Ethernet frames.
const EtherType = 0x0842

// PasswordKey is the key of the SecureOn password in the Machine's Secret
// (spec.wakeOnLAN.secureOnSecretRef).
const PasswordKey = "password"

// MagicPacket returns the magic packet for mac: six 0xff bytes, then the MAC
// sixteen times, then the SecureOn password (none, 4 or 6 bytes).
func MagicPacket(mac net.HardwareAddr, password []byte) ([]byte, error) {
	if len(mac) != 6 {
		return nil, fmt.Errorf("wake-on-LAN needs a 6-byte MAC, not %d bytes", len(mac))
	}
	switch len(password) {
	case 0, 4, 6:
	default:
		return nil, fmt.Errorf("a SecureOn password is 4 or 6 bytes, not %d", len(password))
	}
	p := make([]byte, 0, 6+16*6+len(password))
	for range 6 {
		p = append(p, 0xff)
	}
	for range 16 {
		p = append(p, mac...)
	}
	return append(p, password...), nil
}

// ErrBadPassword is what ParsePassword returns; it never contains the
// value it was given.
var ErrBadPassword = errors.New("the SecureOn password must be six bytes written aa:bb:cc:dd:ee:ff (or with '-')")

// ParsePassword reads a SecureOn password written as six hex bytes,
// aa:bb:cc:dd:ee:ff or aa-bb-cc-dd-ee-ff (surrounding white space, such as
// a trailing newline of a Secret made from a file, is ignored).
func ParsePassword(s string) ([]byte, error) {
	// The same six-byte form as a MAC: one parser (internal/ipxe).
	b, ok := ipxe.ParseMAC(strings.TrimSpace(s))
	if !ok {
		return nil, ErrBadPassword
	}
	return []byte(b), nil
}
