package dhcp

import (
	"net"
	"net/netip"
)

// packetConn is how a server worker reads requests and sends replies: in
// batches (batchConn, recvmmsg and sendmmsg on Linux) or one at a time
// (portableConn, every system). read fills slots 0..n-1 with datagrams;
// queue fills reply slots, which write sends.
type packetConn interface {
	// read waits for at least one datagram and returns how many it read.
	read() (int, error)
	// packet returns datagram i of the last read, its source, and whether
	// it was whole (a datagram larger than maxPacket is not).
	packet(i int) ([]byte, netip.AddrPort, bool)
	// outBuf is the empty reply buffer of slot i.
	outBuf(i int) []byte
	// queue sets reply slot i to pkt (which must live in outBuf(i)) for dst.
	queue(i int, pkt []byte, dst netip.AddrPort)
	// write sends reply slots 0..n-1 and returns how many failed and the
	// last error.
	write(n int) (failed int, err error)
	// arrived is when datagram i of the last read reached the socket (its
	// kernel receive timestamp, Unix nanoseconds), 0 when not known.
	arrived(i int) int64
}

// portableConn is a packetConn of batches of one datagram through the net
// package (no allocation: netip addresses). It is the socket path on every
// system but Linux; Linux tests run it too (withPortableConn).
type portableConn struct {
	conn *net.UDPConn
	in   []byte // maxPacket+1: a longer datagram fills it and is not whole
	n    int
	peer netip.AddrPort
	out  []byte
	dst  netip.AddrPort
}

func newPortableConn(conn *net.UDPConn) *portableConn {
	return &portableConn{conn: conn, in: make([]byte, maxPacket+1), out: make([]byte, 0, maxPacket)}
}

func (b *portableConn) read() (int, error) {
	n, peer, err := b.conn.ReadFromUDPAddrPort(b.in)
	if err != nil {
		return 0, err
	}
	b.n, b.peer = n, peer
	return 1, nil
}

func (b *portableConn) packet(int) ([]byte, netip.AddrPort, bool) {
	return b.in[:min(b.n, maxPacket)], b.peer, b.n <= maxPacket
}

func (b *portableConn) outBuf(int) []byte { return b.out[:0] }

// arrived is not known on the portable path (no receive timestamps).
func (b *portableConn) arrived(int) int64 { return 0 }

func (b *portableConn) queue(_ int, pkt []byte, dst netip.AddrPort) { b.out, b.dst = pkt, dst }

func (b *portableConn) write(n int) (failed int, err error) {
	if n == 0 {
		return 0, nil
	}
	if _, err := b.conn.WriteToUDPAddrPort(b.out, b.dst); err != nil {
		return 1, err
	}
	return 0, nil
}
