//go:build !linux

package dhcp

// The socket on every system but Linux (batch_linux.go): the portable path
// (portable.go), one datagram per call. Binding to an interface needs
// Linux's SO_BINDTODEVICE; elsewhere Listen refuses an interface rather than
// answer on every one.

import (
	"fmt"
	"net"
	"runtime"
)

// Listen opens a UDP socket for DHCP on addr (":67", "127.0.0.1:0"). An
// interface can only be bound on Linux: here iface must be empty. Go's net
// package sets SO_BROADCAST on every UDP socket.
func Listen(iface, addr string) (*net.UDPConn, error) {
	if iface != "" {
		return nil, fmt.Errorf("listening for DHCP on %s: binding to interface %q needs Linux (SO_BINDTODEVICE), not %s", addr, iface, runtime.GOOS)
	}
	pc, err := net.ListenPacket("udp4", addr)
	if err != nil {
		return nil, fmt.Errorf("listening for DHCP on %s: %w", addr, err)
	}
	conn := pc.(*net.UDPConn)
	// A deep receive buffer absorbs boot storms.
	_ = conn.SetReadBuffer(4 << 20)
	return conn, nil
}

// newBatchConn is the portable path's conn: one datagram per call.
func newBatchConn(conn *net.UDPConn, _ int) (*portableConn, error) {
	return newPortableConn(conn), nil
}
