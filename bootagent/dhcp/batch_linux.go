package dhcp

// The Linux socket path: the socket bound to its interface
// (SO_BINDTODEVICE), and datagrams read and written in batches with
// recvmmsg and sendmmsg. batch_other.go is the portable one.

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Listen opens a UDP socket for DHCP on addr (":67", "127.0.0.1:0"), bound
// to iface when it is not empty so that replies leave by the interface the
// request came in on, with SO_BROADCAST for broadcast replies.
func Listen(iface, addr string) (*net.UDPConn, error) {
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			if serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); serr != nil {
				return
			}
			if serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_BROADCAST, 1); serr != nil {
				return
			}
			// Each datagram's kernel receive time (SCM_TIMESTAMPNS), for
			// ggnet_dhcp_response_seconds: what a request waited before a
			// worker read it is part of its answer's time.
			_ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_TIMESTAMPNS, 1)
			// A deep receive buffer absorbs boot storms (hundreds of PCs
			// powered on at once).
			_ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF, 4<<20)
			if iface != "" {
				serr = unix.BindToDevice(int(fd), iface)
			}
		})
		if err != nil {
			return err
		}
		return serr
	}}
	pc, err := lc.ListenPacket(context.Background(), "udp4", addr)
	if err != nil {
		return nil, fmt.Errorf("listening for DHCP on %s (interface %q): %w", addr, iface, err)
	}
	return pc.(*net.UDPConn), nil
}

// mmsghdr is struct mmsghdr of recvmmsg(2) and sendmmsg(2).
type mmsghdr struct {
	hdr unix.Msghdr
	n   uint32
	_   [4]byte
}

// batchConn reads and writes batches of IPv4 datagrams on one UDP socket with
// recvmmsg and sendmmsg, through the runtime's poller, into buffers it owns:
// nothing is allocated per packet (golang.org/x/net's ReadBatch allocates an
// address per datagram). One worker owns one batchConn.
type batchConn struct {
	rc syscall.RawConn

	in      [][]byte // receive buffers, maxPacket each
	rhdrs   []mmsghdr
	riov    []unix.Iovec
	rnames  []unix.RawSockaddrInet4
	rctl    []rxControl // each datagram's control messages: its timestamp
	rn      int
	rerr    error
	readFn  func(uintptr) bool
	out     [][]byte // reply buffers handed out by outBuf
	shdrs   []mmsghdr
	siov    []unix.Iovec
	snames  []unix.RawSockaddrInet4
	soff    int
	scount  int
	sent    int
	serr    error
	writeFn func(uintptr) bool
}

func newBatchConn(conn *net.UDPConn, size int) (*batchConn, error) {
	rc, err := conn.SyscallConn()
	if err != nil {
		return nil, err
	}
	b := &batchConn{rc: rc,
		in: make([][]byte, size), rhdrs: make([]mmsghdr, size), riov: make([]unix.Iovec, size), rnames: make([]unix.RawSockaddrInet4, size),
		rctl: make([]rxControl, size),
		out:  make([][]byte, size), shdrs: make([]mmsghdr, size), siov: make([]unix.Iovec, size), snames: make([]unix.RawSockaddrInet4, size),
	}
	for i := range size {
		b.in[i] = make([]byte, maxPacket)
		b.riov[i].Base = &b.in[i][0]
		b.riov[i].SetLen(maxPacket)
		b.rhdrs[i].hdr.Iov = &b.riov[i]
		b.rhdrs[i].hdr.SetIovlen(1)
		b.rhdrs[i].hdr.Name = (*byte)(unsafe.Pointer(&b.rnames[i]))
		b.rhdrs[i].hdr.Control = &b.rctl[i][0]

		b.out[i] = make([]byte, 0, maxPacket)
		b.shdrs[i].hdr.Iov = &b.siov[i]
		b.shdrs[i].hdr.SetIovlen(1)
		b.shdrs[i].hdr.Name = (*byte)(unsafe.Pointer(&b.snames[i]))
	}
	b.readFn = b.recv
	b.writeFn = b.send
	return b, nil
}

func (b *batchConn) recv(fd uintptr) bool {
	for {
		n, _, e := unix.Syscall6(unix.SYS_RECVMMSG, fd, uintptr(unsafe.Pointer(&b.rhdrs[0])), uintptr(len(b.rhdrs)), unix.MSG_DONTWAIT, 0, 0)
		switch e {
		case 0:
			b.rn, b.rerr = int(n), nil
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return false // wait until readable
		default:
			b.rn, b.rerr = 0, e
		}
		return true
	}
}

// read waits for at least one datagram and reads up to the batch size; it
// returns how many were read.
func (b *batchConn) read() (int, error) {
	for i := range b.rhdrs {
		b.rhdrs[i].hdr.Namelen = unix.SizeofSockaddrInet4
		b.rhdrs[i].hdr.SetControllen(len(b.rctl[i]))
		b.rhdrs[i].hdr.Flags = 0
	}
	if err := b.rc.Read(b.readFn); err != nil {
		return 0, err
	}
	return b.rn, b.rerr
}

// packet returns datagram i of the last read, its source, and whether it was
// whole (a datagram larger than the buffer is cut).
func (b *batchConn) packet(i int) ([]byte, netip.AddrPort, bool) {
	h := &b.rhdrs[i]
	var peer netip.AddrPort
	if sa := &b.rnames[i]; sa.Family == unix.AF_INET && h.hdr.Namelen >= unix.SizeofSockaddrInet4 {
		p := (*[2]byte)(unsafe.Pointer(&sa.Port)) // network byte order
		port := uint16(p[0])<<8 | uint16(p[1])
		peer = netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), port)
	}
	return b.in[i][:h.n], peer, h.hdr.Flags&unix.MSG_TRUNC == 0
}

// rxControl holds one datagram's control messages: a cmsghdr and a
// timespec (SCM_TIMESTAMPNS), with room to spare.
type rxControl [64]byte

// arrived is datagram i's kernel receive time (SCM_TIMESTAMPNS, Unix
// nanoseconds), 0 when the kernel gave none.
func (b *batchConn) arrived(i int) int64 {
	h := &b.rhdrs[i].hdr
	ctl := b.rctl[i][:min(int(h.Controllen), len(b.rctl[i]))]
	for len(ctl) >= unix.SizeofCmsghdr {
		c := (*unix.Cmsghdr)(unsafe.Pointer(&ctl[0]))
		if c.Len < unix.SizeofCmsghdr || int(c.Len) > len(ctl) {
			return 0
		}
		if c.Level == unix.SOL_SOCKET && c.Type == unix.SCM_TIMESTAMPNS && int(c.Len) >= unix.CmsgLen(int(unsafe.Sizeof(unix.Timespec{}))) {
			ts := (*unix.Timespec)(unsafe.Pointer(&ctl[unix.CmsgLen(0)]))
			return ts.Nano()
		}
		ctl = ctl[min(unix.CmsgSpace(int(c.Len)-unix.CmsgLen(0)), len(ctl)):]
	}
	return 0
}

// outBuf is the empty reply buffer for slot i.
func (b *batchConn) outBuf(i int) []byte { return b.out[i][:0] }

// queue sets reply slot i to pkt (which must live in outBuf(i)) for dst.
func (b *batchConn) queue(i int, pkt []byte, dst netip.AddrPort) {
	b.out[i] = pkt
	b.siov[i].Base = unsafe.SliceData(pkt)
	b.siov[i].SetLen(len(pkt))
	sa := &b.snames[i]
	sa.Family = unix.AF_INET
	*(*[2]byte)(unsafe.Pointer(&sa.Port)) = [2]byte{byte(dst.Port() >> 8), byte(dst.Port())}
	sa.Addr = dst.Addr().As4()
	b.shdrs[i].hdr.Namelen = unix.SizeofSockaddrInet4
}

func (b *batchConn) send(fd uintptr) bool {
	for {
		n, _, e := unix.Syscall6(unix.SYS_SENDMMSG, fd, uintptr(unsafe.Pointer(&b.shdrs[b.soff])), uintptr(b.scount-b.soff), unix.MSG_DONTWAIT, 0, 0)
		switch e {
		case 0:
			b.sent, b.serr = int(n), nil
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return false // wait until writable
		default:
			b.sent, b.serr = 0, e
		}
		return true
	}
}

// write sends reply slots 0..n-1. A datagram the kernel refuses (no route,
// say) is skipped; write returns how many failed and the last error.
func (b *batchConn) write(n int) (failed int, err error) {
	b.soff, b.scount = 0, n
	for b.soff < n {
		if werr := b.rc.Write(b.writeFn); werr != nil {
			return failed + n - b.soff, werr
		}
		if b.serr != nil || b.sent == 0 {
			failed++
			err = b.serr
			if err == nil {
				err = errors.New("sendmmsg sent nothing")
			}
			b.soff++
			continue
		}
		b.soff += b.sent
	}
	return failed, err
}
