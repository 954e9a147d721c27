// Command dhcpload is a DHCPv4 load generator for rates perfdhcp cannot
// reach on one core. Like perfdhcp -l in shared/bench-peers it acts as a
// relay: it sends from <local>:67 with giaddr set, unicast to the server, and
// the server answers to giaddr:67. Each exchange is DISCOVER, OFFER, REQUEST
// (with the offered address and server identifier), ACK, from a BIOS PXE
// client; client k has MAC 00:0c:01:kk:kk:kk (as perfdhcp -b
// mac=00:0c:01:00:00:00 -R n makes them, and as loadlab creates Machines).
// Packets are read and written in batches (recvmmsg, sendmmsg) from
// preallocated buffers, so the generator costs a fraction of perfdhcp per
// exchange.
//
// It prints one line: exchanges started, OFFERs and ACKs received, the loss
// (1 - ACKs/DISCOVERs), the latency percentiles of DISCOVER→OFFER and
// REQUEST→ACK, and how far the generator itself fell behind its schedule, so
// that a run limited by the generator shows it.
//
//	dhcpload -server 198.51.100.1:67 -local 198.51.100.2 -rate 50000 -clients 10000 -duration 10s
package main

import (
	"encoding/binary"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"runtime"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

const (
	pktLen = 300
	batch  = 64
)

var cookie = [4]byte{99, 130, 83, 99}

// exchange is one DORA's timestamps, in nanoseconds since start; 0 is not yet.
type exchange struct {
	seq      atomic.Uint64 // which exchange owns the slot (seq+1; 0 free)
	discover atomic.Int64
	offer    atomic.Int64
	request  atomic.Int64
	ack      atomic.Int64
	client   uint32
	yiaddr   [4]byte
	serverID [4]byte
}

// hist counts latencies in microseconds up to 1 s; the last bucket holds
// the rest.
type hist struct{ b [1000001]uint32 }

func (h *hist) add(ns int64) { h.b[min(ns/1000, int64(len(h.b)-1))]++ }

func (h *hist) pct(p float64) float64 {
	var n uint64
	for _, c := range h.b {
		n += uint64(c)
	}
	if n == 0 {
		return 0
	}
	want := uint64(float64(n)*p + 0.5)
	var seen uint64
	for i, c := range h.b {
		seen += uint64(c)
		if seen >= max(want, 1) {
			return float64(i) / 1000
		}
	}
	return float64(len(h.b)) / 1000
}

type gen struct {
	fd      int
	server  unix.RawSockaddrInet4
	local   [4]byte
	clients int
	ring    []exchange
	start   time.Time
	timeout time.Duration

	discovers, offers, acks, late, stray atomic.Uint64
	do, ra                               hist
}

func main() {
	server := flag.String("server", "198.51.100.1:67", "DHCP server address.")
	local := flag.String("local", "198.51.100.2", "Relay (giaddr) address to send from, on port 67.")
	rate := flag.Int("rate", 1000, "New exchanges per second.")
	clients := flag.Int("clients", 10000, "Number of simulated clients (MACs 00:0c:01:00:00:00 onwards).")
	duration := flag.Duration("duration", 10*time.Second, "How long to start exchanges.")
	timeout := flag.Duration("timeout", 500*time.Millisecond, "How long an exchange may take.")
	flag.Parse()

	srv, err := netip.ParseAddrPort(*server)
	if err != nil {
		fail(err)
	}
	la, err := netip.ParseAddr(*local)
	if err != nil || !la.Is4() {
		fail(fmt.Errorf("local address %q: want IPv4", *local))
	}
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM, 0)
	if err != nil {
		fail(err)
	}
	_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
	// Replies must not be lost in our own socket: 16 MiB, past rmem_max as root.
	if unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 16<<20) != nil {
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, 16<<20)
	}
	_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, 4<<20)
	if err := unix.Bind(fd, &unix.SockaddrInet4{Port: 67, Addr: la.As4()}); err != nil {
		fail(fmt.Errorf("binding %s:67: %w", la, err))
	}
	// A receive timeout lets the reader notice the end.
	_ = unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Usec: 100000})

	// The sender and the receiver each get a thread; the OS shares the
	// generator's core between them.
	runtime.GOMAXPROCS(2)
	g := &gen{fd: fd, local: la.As4(), clients: *clients, timeout: *timeout}
	g.server.Family = unix.AF_INET
	*(*[2]byte)(unsafe.Pointer(&g.server.Port)) = [2]byte{byte(srv.Port() >> 8), byte(srv.Port())}
	g.server.Addr = srv.Addr().As4()
	slots := int(float64(*rate)*(duration.Seconds()+timeout.Seconds())) + 1
	g.ring = make([]exchange, min(slots, 1<<22))

	g.start = time.Now()
	var stop atomic.Bool
	done := make(chan struct{})
	go func() { g.receive(&stop); close(done) }()
	scheduled, behind := g.send(*rate, *duration)
	time.Sleep(*timeout)
	stop.Store(true)
	<-done

	d, o, a := g.discovers.Load(), g.offers.Load(), g.acks.Load()
	loss := 100.0
	if d > 0 {
		loss = 100 * (1 - float64(a)/float64(d))
	}
	fmt.Printf("rate=%d clients=%d discovers=%d offers=%d acks=%d acks_per_s=%.0f loss%%=%.2f DO_p50=%.3fms DO_p99=%.3fms RA_p50=%.3fms RA_p99=%.3fms late=%d stray=%d generator_behind_max=%s scheduled=%d\n",
		*rate, *clients, d, o, a, float64(a)/duration.Seconds(), loss, g.do.pct(0.5), g.do.pct(0.99), g.ra.pct(0.5), g.ra.pct(0.99),
		g.late.Load(), g.stray.Load(), behind.Round(time.Microsecond), scheduled)
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "dhcpload:", err)
	os.Exit(1)
}

func (g *gen) now() int64 { return int64(time.Since(g.start)) }

// send starts rate exchanges per second for d, in batches every
// millisecond. It returns how many it started and its worst lag.
func (g *gen) send(rate int, d time.Duration) (int, time.Duration) {
	bufs, hdrs := g.sendSlots()
	total := int(float64(rate) * d.Seconds())
	var behind time.Duration
	seq := 0
	for seq < total {
		due := min(total, int(float64(rate)*time.Since(g.start).Seconds())+1)
		if due <= seq {
			next := g.start.Add(time.Duration(float64(seq) / float64(rate) * float64(time.Second)))
			time.Sleep(time.Until(next))
			continue
		}
		if lag := time.Since(g.start.Add(time.Duration(float64(seq) / float64(rate) * float64(time.Second)))); lag > behind {
			behind = lag
		}
		for seq < due {
			n := min(batch, due-seq)
			for i := range n {
				s := seq + i
				e := &g.ring[s%len(g.ring)]
				e.client = uint32(s % g.clients)
				e.offer.Store(0)
				e.request.Store(0)
				e.ack.Store(0)
				g.build(bufs[i][:], uint32(s), e.client, 1, [4]byte{}, [4]byte{})
				e.discover.Store(g.now())
				e.seq.Store(uint64(s) + 1)
			}
			g.sendBatch(hdrs[:n])
			g.discovers.Add(uint64(n))
			seq += n
		}
	}
	return seq, behind
}

// sendSlots makes a batch of packet buffers and the sendmmsg headers that
// send them to the server.
func (g *gen) sendSlots() ([][pktLen]byte, []mmsghdr) {
	bufs := make([][pktLen]byte, batch)
	hdrs, iovs := make([]mmsghdr, batch), make([]unix.Iovec, batch)
	for i := range hdrs {
		iovs[i].Base = &bufs[i][0]
		iovs[i].SetLen(pktLen)
		hdrs[i].hdr.Iov = &iovs[i]
		hdrs[i].hdr.SetIovlen(1)
		hdrs[i].hdr.Name = (*byte)(unsafe.Pointer(&g.server))
		hdrs[i].hdr.Namelen = unix.SizeofSockaddrInet4
	}
	return bufs, hdrs
}

func (g *gen) sendBatch(hdrs []mmsghdr) {
	for off := 0; off < len(hdrs); {
		n, _, e := unix.Syscall6(unix.SYS_SENDMMSG, uintptr(g.fd), uintptr(unsafe.Pointer(&hdrs[off])), uintptr(len(hdrs)-off), 0, 0, 0)
		if e != 0 {
			if e == unix.EINTR || e == unix.EAGAIN || e == unix.ENOBUFS {
				continue
			}
			fail(fmt.Errorf("sendmmsg: %w", e))
		}
		off += int(n)
	}
}

// build writes a BIOS PXE client's DISCOVER (msgType 1) or REQUEST (3).
func (g *gen) build(b []byte, xid, client uint32, msgType byte, yiaddr, serverID [4]byte) {
	clear(b)
	b[0], b[1], b[2], b[3] = 1, 1, 6, 1 // BOOTREQUEST, Ethernet, hlen, hops (relayed)
	binary.BigEndian.PutUint32(b[4:8], xid)
	copy(b[24:28], g.local[:]) // giaddr
	copy(b[28:34], []byte{0x00, 0x0c, 0x01, byte(client >> 16), byte(client >> 8), byte(client)})
	copy(b[236:240], cookie[:])
	o := b[240:240]
	o = append(o, 53, 1, msgType)
	if msgType == 3 {
		o = append(o, 50, 4)
		o = append(o, yiaddr[:]...)
		o = append(o, 54, 4)
		o = append(o, serverID[:]...)
	}
	o = append(o, 55, 4, 1, 3, 6, 67)
	o = append(o, 60, 32)
	o = append(o, "PXEClient:Arch:00000:UNDI:002001"...)
	o = append(o, 93, 2, 0, 0, 255)
	_ = o
}

// receive reads replies until stop; each OFFER is answered with a REQUEST in
// the same batch.
func (g *gen) receive(stop *atomic.Bool) {
	in := make([][1500]byte, batch)
	rh, riov := make([]mmsghdr, batch), make([]unix.Iovec, batch)
	for i := range rh {
		riov[i].Base = &in[i][0]
		riov[i].SetLen(1500)
		rh[i].hdr.Iov = &riov[i]
		rh[i].hdr.SetIovlen(1)
	}
	out, sh := g.sendSlots()
	for !stop.Load() {
		n, _, e := unix.Syscall6(unix.SYS_RECVMMSG, uintptr(g.fd), uintptr(unsafe.Pointer(&rh[0])), batch, unix.MSG_WAITFORONE, 0, 0)
		if e != 0 {
			if e == unix.EAGAIN || e == unix.EINTR || e == syscall.ETIMEDOUT {
				continue
			}
			fail(fmt.Errorf("recvmmsg: %w", e))
		}
		now := g.now()
		reqs := 0
		for i := range int(n) {
			p := in[i][:rh[i].n]
			if len(p) < 240 || p[0] != 2 || [4]byte(p[236:240]) != cookie {
				g.stray.Add(1)
				continue
			}
			xid := binary.BigEndian.Uint32(p[4:8])
			e := &g.ring[int(xid)%len(g.ring)]
			if e.seq.Load() != uint64(xid)+1 {
				g.stray.Add(1)
				continue
			}
			typ, sid := options(p[240:])
			switch typ {
			case 2: // OFFER
				if e.offer.Load() != 0 {
					continue
				}
				e.offer.Store(now)
				g.offers.Add(1)
				g.do.add(now - e.discover.Load())
				e.yiaddr, e.serverID = [4]byte(p[16:20]), sid
				g.build(out[reqs][:], xid, e.client, 3, e.yiaddr, e.serverID)
				e.request.Store(now)
				reqs++
			case 5: // ACK
				if e.ack.Load() != 0 || e.request.Load() == 0 {
					continue
				}
				e.ack.Store(now)
				if now-e.discover.Load() > int64(g.timeout) {
					g.late.Add(1) // counted as lost, like perfdhcp -W
					continue
				}
				g.acks.Add(1)
				g.ra.add(now - e.request.Load())
			default:
				g.stray.Add(1)
			}
		}
		if reqs > 0 {
			g.sendBatch(sh[:reqs])
		}
	}
}

// options returns the message type and server identifier of a reply.
func options(o []byte) (byte, [4]byte) {
	var typ byte
	var sid [4]byte
	for i := 0; i < len(o); {
		switch o[i] {
		case 0:
			i++
			continue
		case 255:
			return typ, sid
		}
		if i+2 > len(o) || i+2+int(o[i+1]) > len(o) {
			return 0, sid
		}
		v := o[i+2 : i+2+int(o[i+1])]
		switch {
		case o[i] == 53 && len(v) == 1:
			typ = v[0]
		case o[i] == 54 && len(v) == 4:
			sid = [4]byte(v)
		}
		i += 2 + len(v)
	}
	return typ, sid
}

type mmsghdr struct {
	hdr unix.Msghdr
	n   uint32
	_   [4]byte
}
