package main

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync"
	"syscall"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"golang.org/x/sys/unix"
)

// dhcpClient is the simulated PCs' shared DHCP socket on the segment
// (0.0.0.0:68 on the simulator's eth0, broadcast): each PC's exchange
// waits for the replies to its own transaction ID, as iPXE does.
type dhcpClient struct {
	conn *net.UDPConn
	mu   sync.Mutex
	wait map[uint32]chan *dhcpv4.DHCPv4
}

// newDHCPClient opens the socket; open runs its argument inside the
// simulator's network namespace.
func newDHCPClient(open func(func() error) error) (*dhcpClient, error) {
	c := &dhcpClient{wait: map[uint32]chan *dhcpv4.DHCPv4{}}
	err := open(func() error {
		lc := net.ListenConfig{Control: func(_, _ string, rc syscall.RawConn) error {
			var serr error
			err := rc.Control(func(fd uintptr) {
				for _, o := range [][2]int{{unix.SO_REUSEADDR, 1}, {unix.SO_BROADCAST, 1}, {unix.SO_RCVBUF, 8 << 20}} {
					if serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, o[0], o[1]); serr != nil {
						return
					}
				}
				serr = unix.BindToDevice(int(fd), "eth0")
			})
			if err != nil {
				return err
			}
			return serr
		}}
		pc, err := lc.ListenPacket(context.Background(), "udp4", "0.0.0.0:68")
		if err != nil {
			return err
		}
		c.conn = pc.(*net.UDPConn)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("the simulator's DHCP socket: %w", err)
	}
	go c.receive()
	return c, nil
}

func (c *dhcpClient) receive() {
	buf := make([]byte, 1500)
	for {
		n, _, err := c.conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		m, err := dhcpv4.FromBytes(buf[:n])
		if err != nil || m.OpCode != dhcpv4.OpcodeBootReply {
			continue
		}
		xid := binary.BigEndian.Uint32(m.TransactionID[:])
		c.mu.Lock()
		ch := c.wait[xid]
		c.mu.Unlock()
		if ch != nil {
			select {
			case ch <- m:
			default:
			}
		}
	}
}

func (c *dhcpClient) close() { c.conn.Close() }

// lease is what a PC's DHCP exchange got.
type lease struct {
	ip       netip.Addr
	server   netip.Addr
	bootFile string
	// attempts counts DISCOVERs sent.
	attempts int
}

// iPXE's options: a BIOS PXE client (60, 93) that is iPXE (77), asking for
// the usual parameters.
var pxeClassID = []byte("PXEClient:Arch:00000:UNDI:002001")

// packet builds a DISCOVER or REQUEST.
func packet(mac net.HardwareAddr, xid uint32, typ dhcpv4.MessageType, requested, server netip.Addr) []byte {
	b := make([]byte, 240, 400)
	b[0], b[1], b[2] = 1, 1, 6
	binary.BigEndian.PutUint32(b[4:], xid)
	b[10] = 0x80 // broadcast
	copy(b[28:], mac)
	copy(b[236:], []byte{99, 130, 83, 99})
	opt := func(code byte, v []byte) { b = append(append(b, code, byte(len(v))), v...) }
	opt(53, []byte{byte(typ)})
	if requested.IsValid() {
		a := requested.As4()
		opt(50, a[:])
	}
	if server.IsValid() {
		a := server.As4()
		opt(54, a[:])
	}
	opt(55, []byte{1, 3, 6, 12, 15, 17, 43, 60, 66, 67, 119, 128, 175})
	opt(60, pxeClassID)
	opt(77, []byte("iPXE"))
	opt(93, []byte{0, 0})
	opt(94, []byte{1, 2, 1})
	b = append(b, 255)
	for len(b) < 300 {
		b = append(b, 0)
	}
	return b
}

var broadcast = netip.AddrPortFrom(netip.AddrFrom4([4]byte{255, 255, 255, 255}), 67)

// exchange runs DISCOVER, OFFER, REQUEST, ACK for mac, resending as iPXE
// does (after 1, 2, 4, 8 s) until ctx ends; the first OFFER wins.
func (c *dhcpClient) exchange(ctx context.Context, mac net.HardwareAddr) (lease, error) {
	xid := rand.Uint32()
	ch := make(chan *dhcpv4.DHCPv4, 8)
	c.mu.Lock()
	c.wait[xid] = ch
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		delete(c.wait, xid)
		c.mu.Unlock()
	}()
	var l lease
	timeout := time.Second
	for ctx.Err() == nil {
		l.attempts++
		if _, err := c.conn.WriteToUDPAddrPort(packet(mac, xid, dhcpv4.MessageTypeDiscover, netip.Addr{}, netip.Addr{}), broadcast); err != nil {
			return l, err
		}
		offer := c.await(ctx, ch, dhcpv4.MessageTypeOffer, netip.Addr{}, timeout)
		if offer == nil {
			timeout = min(2*timeout, 8*time.Second)
			continue
		}
		yi, _ := netip.AddrFromSlice(offer.YourIPAddr.To4())
		sid, _ := netip.AddrFromSlice(offer.ServerIdentifier().To4())
		if _, err := c.conn.WriteToUDPAddrPort(packet(mac, xid, dhcpv4.MessageTypeRequest, yi, sid), broadcast); err != nil {
			return l, err
		}
		ack := c.await(ctx, ch, dhcpv4.MessageTypeAck, sid, timeout)
		if ack == nil {
			timeout = min(2*timeout, 8*time.Second)
			continue
		}
		l.ip, l.server = yi, sid
		l.bootFile = ack.BootFileNameOption()
		if l.bootFile == "" {
			l.bootFile = ack.BootFileName
		}
		return l, nil
	}
	return l, ctx.Err()
}

// await waits up to timeout for a reply of type typ (from server, when
// valid); a NAK ends the wait.
func (c *dhcpClient) await(ctx context.Context, ch chan *dhcpv4.DHCPv4, typ dhcpv4.MessageType, server netip.Addr, timeout time.Duration) *dhcpv4.DHCPv4 {
	t := time.NewTimer(timeout)
	defer t.Stop()
	for {
		select {
		case m := <-ch:
			if server.IsValid() {
				if sid, _ := netip.AddrFromSlice(m.ServerIdentifier().To4()); sid != server {
					continue
				}
			}
			switch m.MessageType() {
			case typ:
				return m
			case dhcpv4.MessageTypeNak:
				return nil
			}
		case <-t.C:
			return nil
		case <-ctx.Done():
			return nil
		}
	}
}
