package ra

import (
	"encoding/binary"
	"fmt"
	"net"
	"os"

	"golang.org/x/sys/unix"
)

// allRouters is ff02::2, where router solicitations go.
var allRouters = net.ParseIP("ff02::2")

// listen opens a raw ICMPv6 socket (CAP_NET_RAW) on iface that receives
// only router solicitations and advertisements, joined to all-routers,
// sending with hop limit 255 and reporting each packet's hop limit.
func listen(iface string) (*net.IPConn, *net.Interface, error) {
	ifi, err := net.InterfaceByName(iface)
	if err != nil {
		return nil, nil, err
	}
	fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_ICMPV6)
	if err != nil {
		return nil, nil, fmt.Errorf("raw ICMPv6 socket (needs CAP_NET_RAW): %w", err)
	}
	var filter unix.ICMPv6Filter
	for i := range filter.Data {
		filter.Data[i] = ^uint32(0) // a set bit blocks its type
	}
	for _, t := range []int{TypeRouterSolicitation, TypeRouterAdvertisement} {
		filter.Data[t>>5] &^= 1 << (t & 31)
	}
	mreq := unix.IPv6Mreq{Interface: uint32(ifi.Index)}
	copy(mreq.Multiaddr[:], allRouters)
	for _, step := range []struct {
		what string
		err  func() error
	}{
		{"SO_BINDTODEVICE", func() error { return unix.SetsockoptString(fd, unix.SOL_SOCKET, unix.SO_BINDTODEVICE, iface) }},
		{"ICMPV6_FILTER", func() error {
			return unix.SetsockoptICMPv6Filter(fd, unix.IPPROTO_ICMPV6, unix.ICMPV6_FILTER, &filter)
		}},
		{"IPV6_RECVHOPLIMIT", func() error { return unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_RECVHOPLIMIT, 1) }},
		{"IPV6_UNICAST_HOPS", func() error { return unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_UNICAST_HOPS, HopLimit) }},
		{"IPV6_MULTICAST_HOPS", func() error {
			return unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_MULTICAST_HOPS, HopLimit)
		}},
		{"IPV6_MULTICAST_IF", func() error { return unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_MULTICAST_IF, ifi.Index) }},
		// The responder's own probes are not to come back to it.
		{"IPV6_MULTICAST_LOOP", func() error { return unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_MULTICAST_LOOP, 0) }},
		{"IPV6_JOIN_GROUP ff02::2", func() error { return unix.SetsockoptIPv6Mreq(fd, unix.IPPROTO_IPV6, unix.IPV6_JOIN_GROUP, &mreq) }},
	} {
		if err := step.err(); err != nil {
			_ = unix.Close(fd)
			return nil, nil, fmt.Errorf("%s on %s: %w", step.what, iface, err)
		}
	}
	f := os.NewFile(uintptr(fd), "icmpv6-"+iface)
	pc, err := net.FilePacketConn(f)
	_ = f.Close()
	if err != nil {
		return nil, nil, err
	}
	conn, ok := pc.(*net.IPConn)
	if !ok {
		_ = pc.Close()
		return nil, nil, fmt.Errorf("raw ICMPv6 socket on %s is a %T", iface, pc)
	}
	return conn, ifi, nil
}

// hopLimit returns the IPV6_HOPLIMIT of a packet's control messages, -1
// when there is none.
func hopLimit(oob []byte) int {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return -1
	}
	for _, m := range msgs {
		if m.Header.Level == unix.IPPROTO_IPV6 && m.Header.Type == unix.IPV6_HOPLIMIT && len(m.Data) >= 4 {
			return int(int32(binary.NativeEndian.Uint32(m.Data)))
		}
	}
	return -1
}

// oobSize holds one IPV6_HOPLIMIT control message.
var oobSize = unix.CmsgSpace(4)
