package ra

import (
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"
)

// Mode is when the responder answers.
type Mode string

const (
	// ModeAuto answers unless a real IPv6 router was heard on the
	// interface within Holdoff (its advertisements, or its answer to the
	// responder's own probes), and not before the first probe had time to
	// be answered.
	ModeAuto Mode = "auto"
	// ModeOn always answers (a lab, or a LAN whose router must not
	// configure iPXE).
	ModeOn Mode = "on"
	// ModeOff opens no socket and answers nothing.
	ModeOff Mode = "off"
)

// ParseMode parses --ipv6-ra.
func ParseMode(s string) (Mode, error) {
	switch m := Mode(s); m {
	case ModeAuto, ModeOn, ModeOff:
		return m, nil
	}
	return "", fmt.Errorf("--ipv6-ra %q: want auto, on or off", s)
}

// Result is what was done with a router solicitation (the metric's label).
type Result string

const (
	Answered Result = "answered"
	// UnknownMAC: no Machine has the solicitation's MAC. The agent answers
	// DHCP for its Machines only; other hosts on the LAN are left alone.
	UnknownMAC Result = "unknown_mac"
	// NoMAC: no source link-layer address option (a MAC of 6 bytes).
	NoMAC Result = "no_mac"
	// NotLinkLocal: the source address is not an IPv6 link-local unicast
	// address. iPXE always solicits from its link-local address with its
	// MAC; the unspecified source (::, which RFC 4861 allows only without
	// a link-layer address option, and whose answer would go to every
	// node) and any other source are left unanswered, so that a forged
	// solicitation cannot make the node resolve arbitrary addresses.
	NotLinkLocal Result = "not_link_local"
	// RouterPresent: auto mode heard a real router on this interface.
	RouterPresent Result = "router_present"
	// Probing: auto mode has not yet given a router time to answer its
	// first probe.
	Probing Result = "probing"
	// NotReady: the agent's caches have not synced (it does not know its
	// Machines yet).
	NotReady Result = "not_ready"
	// MACRateLimited: this MAC was answered less than the per-MAC spacing
	// ago (iPXE solicits at least 250 ms apart: a real PC never is).
	MACRateLimited Result = "mac_rate_limited"
	// RateLimited: over the answer rate of all MACs together.
	RateLimited Result = "rate_limited"
	// Off: mode off (which opens no socket, so never counts it).
	Off Result = "off"
)

// Defaults of Policy.
const (
	// DefaultHoldoff is how long auto mode stays quiet after it last heard
	// a real router: three probe intervals, and more than routers' longest
	// interval between unsolicited advertisements (1800 s) halved.
	DefaultHoldoff = 15 * time.Minute
	// DefaultProbeInterval is how often auto mode solicits routers itself.
	DefaultProbeInterval = 5 * time.Minute
	// DefaultProbeWait is how long auto mode waits after its first probe
	// before it answers: routers delay answers up to 0.5 s (RFC 4861
	// MAX_RA_DELAY_TIME) and rate-limit multicast ones to one per 3 s.
	DefaultProbeWait = 4 * time.Second
)

// Policy decides whether to answer a solicitation. It is safe for
// concurrent use; its clock is the caller's.
type Policy struct {
	Mode Mode
	// Known says whether a Machine has the MAC.
	Known func(net.HardwareAddr) bool
	// Ready says whether the agent knows its Machines yet.
	Ready   func() bool
	Holdoff time.Duration
	// ProbeWait is the quiet time after the first probe (auto).
	ProbeWait time.Duration

	mu      sync.Mutex
	started map[string]time.Time // first probe per interface
	router  map[string]time.Time // last real router heard per interface
}

// Probed records that the responder solicited routers on iface at now.
func (p *Policy) Probed(iface string, now time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.started == nil {
		p.started = map[string]time.Time{}
	}
	if _, ok := p.started[iface]; !ok {
		p.started[iface] = now
	}
}

// HeardRouter records a real router's advertisement on iface at now.
func (p *Policy) HeardRouter(iface string, now time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.router == nil {
		p.router = map[string]time.Time{}
	}
	p.router[iface] = now
}

// RouterPresent says whether auto mode is quiet on iface because of a real
// router.
func (p *Policy) RouterPresent(iface string, now time.Time) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	t, ok := p.router[iface]
	return ok && now.Sub(t) < p.holdoff()
}

func (p *Policy) holdoff() time.Duration {
	if p.Holdoff > 0 {
		return p.Holdoff
	}
	return DefaultHoldoff
}

// LinkLocal reports whether a is an IPv6 link-local unicast address
// (fe80::/10, not an IPv4 one mapped): the only source answered.
func LinkLocal(a netip.Addr) bool {
	return a.Is6() && !a.Is4In6() && a.IsLinkLocalUnicast()
}

// Decide says what to do with a solicitation from src (its IPv6 source)
// carrying s, heard on iface at now.
func (p *Policy) Decide(iface string, src netip.Addr, s Solicitation, now time.Time) Result {
	if p.Mode == ModeOff {
		return Off
	}
	if !LinkLocal(src) {
		return NotLinkLocal
	}
	if len(s.MAC) != 6 {
		return NoMAC
	}
	if p.Ready != nil && !p.Ready() {
		return NotReady
	}
	if p.Known == nil || !p.Known(s.MAC) {
		return UnknownMAC
	}
	if p.Mode == ModeAuto {
		if p.RouterPresent(iface, now) {
			return RouterPresent
		}
		p.mu.Lock()
		started, ok := p.started[iface]
		p.mu.Unlock()
		wait := p.ProbeWait
		if wait <= 0 {
			wait = DefaultProbeWait
		}
		if !ok || now.Sub(started) < wait {
			return Probing
		}
	}
	return Answered
}
