package main

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// sniffer notes when the packets of one VM that tell the boot's stages
// cross the lab's bridge (an AF_PACKET socket on it): DHCP, TFTP, and the
// IPv6 router and neighbour discovery around iPXE's autoconfiguration.
type sniffer struct {
	fd    int
	mu    sync.Mutex
	mac   net.HardwareAddr
	since time.Time
	evs   []packetAt
	quit  chan struct{}
	ended chan struct{}
}

type packetAt struct {
	what string
	at   time.Duration
}

// Packet kinds.
const (
	pDiscover = "discover"
	pAck      = "ack"
	pRRQ      = "rrq"
	pTFTP     = "tftp" // the agent's TFTP packets to the VM (OACK, DATA)
	pRS       = "rs"
	pNS       = "ns" // the agent's neighbour solicitation for the VM's link-local
	pNA       = "na"
	pRA       = "ra"
)

func sniff(iface string) (*sniffer, error) {
	ifi, err := net.InterfaceByName(iface)
	if err != nil {
		return nil, err
	}
	proto := int(htons(unix.ETH_P_ALL))
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, proto)
	if err != nil {
		return nil, fmt.Errorf("packet socket on %s: %w", iface, err)
	}
	if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: ifi.Index}); err != nil {
		_ = unix.Close(fd)
		return nil, fmt.Errorf("packet socket on %s: %w", iface, err)
	}
	tv := unix.NsecToTimeval(int64(200 * time.Millisecond))
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		_ = unix.Close(fd)
		return nil, err
	}
	s := &sniffer{fd: fd, quit: make(chan struct{}), ended: make(chan struct{})}
	go s.loop()
	return s, nil
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

func (s *sniffer) close() { close(s.quit); <-s.ended; _ = unix.Close(s.fd) }

// start notes the packets of mac from now on, their times since since.
func (s *sniffer) start(mac string, since time.Time) {
	hw, _ := net.ParseMAC(mac)
	s.mu.Lock()
	s.mac, s.since, s.evs = hw, since, nil
	s.mu.Unlock()
}

// stop returns the boot's stages on the wire: for UEFI the firmware's
// DHCP and TFTP download first, then iPXE's DHCP and IPv6
// autoconfiguration (first solicitation, the agent's neighbour
// solicitation and the VM's answer when there was one, the first router
// advertisement, and how many solicitations iPXE sent until then).
func (s *sniffer) stop() []stageAt {
	s.mu.Lock()
	evs := s.evs
	s.mac, s.evs = nil, nil
	s.mu.Unlock()
	return netStages(evs)
}

// netStageNames are the columns of netStages, in order.
var netStageNames = []string{"fw-ack", "rrq", "tftp-end", "discover", "ack", "rs", "ns", "na", "ra", "rs-sent"}

func netStages(evs []packetAt) []stageAt {
	out := make([]stageAt, len(netStageNames))
	for i, n := range netStageNames {
		out[i] = stageAt{n, -1}
	}
	set := func(i int, d time.Duration) { out[i].at = d }
	first := func(what string, from time.Duration) time.Duration {
		for _, e := range evs {
			if e.what == what && e.at >= from {
				return e.at
			}
		}
		return -1
	}
	// iPXE's part is the last DHCP exchange; the firmware's (UEFI: PXE,
	// then HTTP boot when PXE gave up) come before it.
	ipxe := time.Duration(0)
	for _, e := range evs {
		if e.what == pDiscover && (e.at-ipxe > 500*time.Millisecond || ipxe == 0) {
			ipxe = e.at // a new exchange (not a retransmission within it)
		}
	}
	for _, e := range evs {
		if e.what == pAck && e.at < ipxe && out[0].at < 0 {
			set(0, e.at)
		}
	}
	if rrq := first(pRRQ, 0); rrq >= 0 && rrq < ipxe {
		set(1, rrq)
		for _, e := range evs {
			if e.what == pTFTP && e.at > rrq && e.at < ipxe {
				set(2, e.at)
			}
		}
	}
	disc := first(pDiscover, ipxe)
	set(3, disc)
	if disc >= 0 {
		set(4, first(pAck, disc))
	}
	rs := first(pRS, ipxe-100*time.Millisecond)
	set(5, rs)
	if rs < 0 {
		return out
	}
	set(6, first(pNS, rs))
	set(7, first(pNA, rs))
	ra := first(pRA, rs)
	set(8, ra)
	n := 0
	for _, e := range evs {
		if e.what == pRS && e.at >= rs && (ra < 0 || e.at <= ra) {
			n++
		}
	}
	out[9].at = time.Duration(n) * time.Second // a count, shown as seconds
	return out
}

func (s *sniffer) loop() {
	defer close(s.ended)
	buf := make([]byte, 2048)
	for {
		select {
		case <-s.quit:
			return
		default:
		}
		n, _, err := unix.Recvfrom(s.fd, buf, 0)
		now := time.Now()
		if err != nil {
			continue // EAGAIN every 200 ms without traffic
		}
		s.mu.Lock()
		if s.mac != nil {
			if what := classify(buf[:n], s.mac); what != "" {
				s.evs = append(s.evs, packetAt{what, now.Sub(s.since)})
			}
		}
		s.mu.Unlock()
	}
}

// classify names a frame that belongs to mac's boot, "" for the others.
func classify(f []byte, mac net.HardwareAddr) string {
	if len(f) < 14 {
		return ""
	}
	dst, src, typ := f[0:6], f[6:12], binary.BigEndian.Uint16(f[12:14])
	toVM, fromVM := bytes.Equal(dst, mac), bytes.Equal(src, mac)
	p := f[14:]
	switch typ {
	case unix.ETH_P_IP:
		if len(p) < 20 || p[9] != unix.IPPROTO_UDP {
			return ""
		}
		ihl := int(p[0]&0x0f) * 4
		if len(p) < ihl+8 {
			return ""
		}
		sport, dport := binary.BigEndian.Uint16(p[ihl:]), binary.BigEndian.Uint16(p[ihl+2:])
		u := p[ihl+8:]
		switch {
		case sport == 68 || dport == 68:
			// DHCP: chaddr at 28, the message type option after the
			// magic cookie at 236.
			if len(u) < 240 || !bytes.Equal(u[28:34], mac) {
				return ""
			}
			for o := u[240:]; len(o) >= 2 && o[0] != 255; {
				if o[0] == 0 {
					o = o[1:]
					continue
				}
				if o[0] == 53 && o[1] == 1 && len(o) >= 3 {
					switch o[2] {
					case 1:
						return pDiscover
					case 5:
						return pAck
					}
					return ""
				}
				if len(o) < 2+int(o[1]) {
					return ""
				}
				o = o[2+int(o[1]):]
			}
		case fromVM && dport == 69:
			return pRRQ
		case toVM:
			return pTFTP // UDP to the VM other than DHCP: TFTP in the lab
		}
	case unix.ETH_P_IPV6:
		// NDP has no extension headers (MLD's hop-by-hop ones are
		// not looked at).
		if len(p) < 41 || p[6] != unix.IPPROTO_ICMPV6 {
			return ""
		}
		switch t := p[40]; {
		case t == 133 && fromVM:
			return pRS
		case t == 134 && toVM:
			return pRA
		case t == 136 && fromVM:
			return pNA
		case t == 135 && !fromVM && len(p) >= 64:
			// Its target: the VM's EUI-64 link-local.
			tgt := p[48:64]
			if tgt[0] == 0xfe && tgt[1] == 0x80 && tgt[13] == mac[3] && tgt[14] == mac[4] && tgt[15] == mac[5] {
				return pNS
			}
		}
	}
	return ""
}
