package table

import (
	"bufio"
	"bytes"
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"sync"
)

// Neighbors maps an IPv4 address on the boot network to the MAC the agent's
// host last resolved it to. Production reads the kernel's neighbour table
// (ProcNeighbors); tests pass a NeighborMap.
type Neighbors interface {
	Lookup(ip netip.Addr) (net.HardwareAddr, bool)
}

// NeighborMap is a fixed neighbour table, for tests. It is safe for
// concurrent use.
type NeighborMap struct {
	mu sync.RWMutex
	m  map[netip.Addr]net.HardwareAddr
}

// Set maps ip to mac; a nil mac removes ip.
func (n *NeighborMap) Set(ip netip.Addr, mac net.HardwareAddr) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.m == nil {
		n.m = map[netip.Addr]net.HardwareAddr{}
	}
	if mac == nil {
		delete(n.m, ip)
		return
	}
	n.m[ip] = mac
}

// Lookup implements Neighbors.
func (n *NeighborMap) Lookup(ip netip.Addr) (net.HardwareAddr, bool) {
	n.mu.RLock()
	defer n.mu.RUnlock()
	mac, ok := n.m[ip]
	return mac, ok
}

// ProcNeighbors reads the IPv4 neighbour table of the agent's network
// namespace from /proc/net/arp on every lookup (a script request, not a
// DHCP packet), keeping only complete entries on the boot interfaces.
type ProcNeighbors struct {
	// Path is the table's file (default /proc/net/arp).
	Path string
	// Interfaces are the boot interfaces; empty accepts every interface.
	Interfaces []string
}

// atfCom is the kernel's "complete entry" flag (ATF_COM).
const atfCom = 0x2

// Lookup implements Neighbors.
func (p ProcNeighbors) Lookup(ip netip.Addr) (net.HardwareAddr, bool) {
	path := p.Path
	if path == "" {
		path = "/proc/net/arp"
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, false
	}
	return parseARP(data, ip, p.Interfaces)
}

// parseARP finds ip in the text of /proc/net/arp:
//
//	IP address       HW type     Flags       HW address            Mask     Device
//	10.20.0.131      0x1         0x2         52:54:00:12:34:31     *        br-boot
func parseARP(data []byte, ip netip.Addr, ifaces []string) (net.HardwareAddr, bool) {
	sc := bufio.NewScanner(bytes.NewReader(data))
	first := true
	for sc.Scan() {
		if first {
			first = false
			continue
		}
		f := bytes.Fields(sc.Bytes())
		if len(f) < 6 {
			continue
		}
		a, err := netip.ParseAddr(string(f[0]))
		if err != nil || a != ip {
			continue
		}
		flags, err := strconv.ParseUint(string(f[2]), 0, 32)
		if err != nil || flags&atfCom == 0 {
			continue
		}
		if len(ifaces) > 0 && !slices.Contains(ifaces, string(f[5])) {
			continue
		}
		mac, err := net.ParseMAC(string(f[3]))
		if err != nil || len(mac) != 6 {
			continue
		}
		return mac, true
	}
	return nil, false
}
