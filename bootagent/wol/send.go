package wol

import (
	"context"
	"fmt"
	"net"
	"syscall"

	"golang.org/x/sys/unix"
)

// Sender broadcasts magic packets on a network interface.
type Sender interface {
	// Send broadcasts packet on the interface named iface.
	Send(ctx context.Context, iface string, packet []byte) error
}

// UDPSender sends each magic packet as a UDP datagram to
// 255.255.255.255:Port out of the named interface (SO_BINDTODEVICE, which
// needs no capability since Linux 5.7, and SO_BROADCAST): an Ethernet
// broadcast on that interface only, never routed, and no raw socket needed.
type UDPSender struct{}

// Send implements Sender.
func (UDPSender) Send(ctx context.Context, iface string, packet []byte) error {
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			if serr = unix.BindToDevice(int(fd), iface); serr != nil {
				return
			}
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_BROADCAST, 1)
		})
		if err != nil {
			return err
		}
		return serr
	}}
	conn, err := lc.ListenPacket(ctx, "udp4", ":0")
	if err != nil {
		return fmt.Errorf("a UDP socket on %s for wake-on-LAN: %w", iface, err)
	}
	defer conn.Close()
	if _, err := conn.WriteTo(packet, &net.UDPAddr{IP: net.IPv4bcast, Port: Port}); err != nil {
		return fmt.Errorf("broadcasting the magic packet on %s: %w", iface, err)
	}
	return nil
}
