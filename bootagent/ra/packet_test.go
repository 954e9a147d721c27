package ra

import (
	"bytes"
	"errors"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

var pcMAC = net.HardwareAddr{0x52, 0x54, 0x00, 0x67, 0x68, 0x01}

func TestParseSolicitation(t *testing.T) {
	for _, tc := range []struct {
		name string
		b    []byte
		mac  net.HardwareAddr
		err  error
	}{
		// What iPXE sends: type 133, reserved, SLLA option.
		{"iPXE's", Solicit(pcMAC), pcMAC, nil},
		{"no options", []byte{133, 0, 0, 0, 0, 0, 0, 0}, nil, nil},
		{"SLLA after another option", append([]byte{133, 0, 0, 0, 0, 0, 0, 0, 14, 1, 0, 0, 0, 0, 0, 0}, Solicit(pcMAC)[8:]...), pcMAC, nil},
		{"short", []byte{133, 0, 0, 0}, nil, ErrShort},
		{"empty", nil, nil, ErrShort},
		{"an advertisement", Advertise(pcMAC), nil, ErrType},
		{"code 1", []byte{133, 1, 0, 0, 0, 0, 0, 0}, nil, ErrType},
		{"option of length 0", []byte{133, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0}, nil, ErrOptions},
		{"option past the end", []byte{133, 0, 0, 0, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 0, 0}, nil, ErrOptions},
		{"one byte of option", []byte{133, 0, 0, 0, 0, 0, 0, 0, 1}, nil, ErrOptions},
		// An SLLA of another link layer's size is not a MAC.
		{"SLLA of 14 bytes", []byte{133, 0, 0, 0, 0, 0, 0, 0, 1, 2, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14}, nil, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := ParseSolicitation(tc.b)
			if !errors.Is(err, tc.err) {
				t.Fatalf("error %v, want %v", err, tc.err)
			}
			if !bytes.Equal(s.MAC, tc.mac) {
				t.Fatalf("MAC %v, want %v", s.MAC, tc.mac)
			}
		})
	}
}

// radvd's advertisement on a LAN with a router: lifetime 1800, a prefix.
var routerRA = []byte{
	134, 0, 0, 0, 64, 0, 0x07, 0x08, 0, 0, 0, 0, 0, 0, 0, 0,
	3, 4, 64, 0xc0, 0, 0, 0x0e, 0x10, 0, 0, 0x07, 0x08, 0, 0, 0, 0,
	0x20, 0x01, 0x0d, 0xb8, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
	1, 1, 0x02, 0, 0, 0, 0, 1,
}

func TestParseAdvertisement(t *testing.T) {
	for _, tc := range []struct {
		name   string
		b      []byte
		router bool
		err    error
	}{
		{"the responder's own", Advertise(pcMAC), false, nil},
		{"a router's", routerRA, true, nil},
		{"lifetime only", []byte{134, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0}, true, nil},
		{"M only (DHCPv6)", []byte{134, 0, 0, 0, 0, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}, true, nil},
		{"O only", []byte{134, 0, 0, 0, 0, 0x40, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}, true, nil},
		{"RDNSS only", []byte{134, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 25, 1, 0, 0, 0, 0, 0, 0}, true, nil},
		{"nothing", []byte{134, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}, false, nil},
		{"short", []byte{134, 0, 0, 0, 0, 0, 0, 0}, false, ErrShort},
		{"a solicitation", Solicit(pcMAC), false, ErrType},
		{"truncated prefix", routerRA[:20], false, ErrOptions},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, err := ParseAdvertisement(tc.b)
			if !errors.Is(err, tc.err) {
				t.Fatalf("error %v, want %v", err, tc.err)
			}
			if err == nil && a.Router() != tc.router {
				t.Fatalf("Router() %v, want %v (%+v)", a.Router(), tc.router, a)
			}
		})
	}
}

// TestAdvertise: the answer is what ends iPXE's IPv6 configurator without
// configuring anything: type 134 code 0, M=O=0, lifetime 0, no prefix, and
// well-formed options (iPXE drops an advertisement with a bad option).
func TestAdvertise(t *testing.T) {
	b := Advertise(pcMAC)
	want := []byte{134, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 0x52, 0x54, 0x00, 0x67, 0x68, 0x01}
	if !bytes.Equal(b, want) {
		t.Fatalf("% x\nwant % x", b, want)
	}
	a, err := ParseAdvertisement(b)
	if err != nil || a.Router() || a.Managed || a.Other || a.Lifetime != 0 || a.Prefixes != 0 {
		t.Fatalf("%+v %v", a, err)
	}
}

// FuzzParse: no input panics either parser, and what parses as a
// solicitation with a MAC round-trips through Solicit.
func FuzzParse(f *testing.F) {
	for _, b := range [][]byte{Solicit(pcMAC), Advertise(pcMAC), routerRA, {133}, {134, 0}, nil} {
		f.Add(b)
	}
	r := &Responder{cfg: Config{Policy: &Policy{Mode: ModeOn, Known: func(net.HardwareAddr) bool { return false }}, Metrics: NewMetrics(prometheus.NewRegistry())}}
	f.Fuzz(func(t *testing.T, b []byte) {
		if s, err := ParseSolicitation(b); err == nil && s.MAC != nil {
			again, err := ParseSolicitation(Solicit(s.MAC))
			if err != nil || !bytes.Equal(again.MAC, s.MAC) {
				t.Fatalf("round trip of %v: %v %v", s.MAC, again.MAC, err)
			}
		}
		_, _ = ParseAdvertisement(b)
		// The responder's handler never panics either.
		r.handle(&sock{iface: "boot0"}, b, HopLimit, &net.IPAddr{IP: net.ParseIP("fe80::1")}, time.Now())
	})
}

func TestDecide(t *testing.T) {
	t0 := time.Unix(1000, 0)
	ll := netip.MustParseAddr("fe80::5054:ff:fe67:6801")
	known := func(m net.HardwareAddr) bool { return bytes.Equal(m, pcMAC) }
	ready := func() bool { return true }
	for _, tc := range []struct {
		name   string
		mode   Mode
		ready  func() bool
		src    netip.Addr
		mac    net.HardwareAddr
		probed bool          // first probe at t0
		router time.Duration // a router heard this long before now (0: none)
		at     time.Duration // now - t0
		want   Result
	}{
		{"auto, known, probed, no router", ModeAuto, ready, ll, pcMAC, true, 0, 5 * time.Second, Answered},
		{"auto, before the probe wait", ModeAuto, ready, ll, pcMAC, true, 0, time.Second, Probing},
		{"auto, never probed", ModeAuto, ready, ll, pcMAC, false, 0, time.Hour, Probing},
		{"auto, router heard a minute ago", ModeAuto, ready, ll, pcMAC, true, time.Minute, time.Hour, RouterPresent},
		{"auto, router heard 14 min ago", ModeAuto, ready, ll, pcMAC, true, 14 * time.Minute, time.Hour, RouterPresent},
		{"auto, router gone 16 min ago", ModeAuto, ready, ll, pcMAC, true, 16 * time.Minute, time.Hour, Answered},
		{"on, router heard", ModeOn, ready, ll, pcMAC, false, time.Second, time.Hour, Answered},
		{"on, unknown MAC", ModeOn, ready, ll, net.HardwareAddr{2, 0, 0, 0, 0, 1}, false, 0, time.Hour, UnknownMAC},
		{"auto, unknown MAC", ModeAuto, ready, ll, net.HardwareAddr{2, 0, 0, 0, 0, 1}, true, 0, time.Hour, UnknownMAC},
		{"no SLLA", ModeOn, ready, ll, nil, false, 0, time.Hour, NoMAC},
		// Link-local unicast sources only: iPXE's. Any other is not
		// answered (the node would resolve it), whatever the mode.
		{"unspecified source", ModeOn, ready, netip.IPv6Unspecified(), pcMAC, false, 0, time.Hour, NotLinkLocal},
		{"unspecified source, no SLLA", ModeOn, ready, netip.IPv6Unspecified(), nil, false, 0, time.Hour, NotLinkLocal},
		{"global source", ModeOn, ready, netip.MustParseAddr("2001:db8::1"), pcMAC, false, 0, time.Hour, NotLinkLocal},
		{"unique local source", ModeOn, ready, netip.MustParseAddr("fd00::1"), pcMAC, false, 0, time.Hour, NotLinkLocal},
		{"multicast source", ModeOn, ready, netip.MustParseAddr("ff02::1"), pcMAC, false, 0, time.Hour, NotLinkLocal},
		{"link-local multicast source", ModeOn, ready, netip.MustParseAddr("ff02::2"), pcMAC, false, 0, time.Hour, NotLinkLocal},
		{"loopback source", ModeOn, ready, netip.IPv6Loopback(), pcMAC, false, 0, time.Hour, NotLinkLocal},
		{"IPv4 link-local mapped", ModeOn, ready, netip.MustParseAddr("::ffff:169.254.1.1"), pcMAC, false, 0, time.Hour, NotLinkLocal},
		{"IPv4 link-local", ModeOn, ready, netip.MustParseAddr("169.254.1.1"), pcMAC, false, 0, time.Hour, NotLinkLocal},
		{"no source", ModeOn, ready, netip.Addr{}, pcMAC, false, 0, time.Hour, NotLinkLocal},
		{"unknown MAC, global source", ModeOn, ready, netip.MustParseAddr("2001:db8::1"), net.HardwareAddr{2, 0, 0, 0, 0, 1}, false, 0, time.Hour, NotLinkLocal},
		{"link-local with a zone", ModeOn, ready, ll.WithZone("boot0"), pcMAC, false, 0, time.Hour, Answered},
		{"auto, global source, no router", ModeAuto, ready, netip.MustParseAddr("2001:db8::1"), pcMAC, true, 0, time.Hour, NotLinkLocal},
		{"caches not synced", ModeOn, func() bool { return false }, ll, pcMAC, false, 0, time.Hour, NotReady},
		{"off", ModeOff, ready, ll, pcMAC, true, 0, time.Hour, Off},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := &Policy{Mode: tc.mode, Known: known, Ready: tc.ready}
			now := t0.Add(tc.at)
			if tc.probed {
				p.Probed("boot0", t0)
				p.Probed("boot0", now) // only the first counts
			}
			if tc.router > 0 {
				p.HeardRouter("boot0", now.Add(-tc.router))
			}
			// Another interface's router does not quiet this one.
			p.HeardRouter("other0", now)
			if got := p.Decide("boot0", tc.src, Solicitation{MAC: tc.mac}, now); got != tc.want {
				t.Fatalf("%s, want %s", got, tc.want)
			}
		})
	}
	if _, err := ParseMode("yes"); err == nil {
		t.Fatal("ParseMode(yes) passed")
	}
}

// TestAllow: one answer per MAC per spacing, whatever the burst, and a
// burst from one MAC does not take from the others' shared rate; a PC
// soliciting as iPXE does (250 ms apart or more) is always answered.
func TestAllow(t *testing.T) {
	other := net.HardwareAddr{0x52, 0x54, 0x00, 0x67, 0x68, 0x02}
	r := newResponder(Config{Rate: 2})
	t0 := time.Unix(1000, 0)
	if got := r.allow(pcMAC, t0); got != Answered {
		t.Fatalf("first: %s", got)
	}
	for i := 0; i < 1000; i++ {
		if got := r.allow(pcMAC, t0.Add(time.Duration(i)*100*time.Microsecond)); got != MACRateLimited {
			t.Fatalf("burst %d: %s, want %s", i, got, MACRateLimited)
		}
	}
	// The burst took one token of two: another MAC is answered.
	if got := r.allow(other, t0.Add(time.Millisecond)); got != Answered {
		t.Fatalf("another MAC during the burst: %s", got)
	}
	// The shared rate still applies (2/s, burst 2, both taken).
	third := net.HardwareAddr{0x52, 0x54, 0x00, 0x67, 0x68, 0x03}
	if got := r.allow(third, t0.Add(2*time.Millisecond)); got != RateLimited {
		t.Fatalf("over the shared rate: %s, want %s", got, RateLimited)
	}
	// A rate-limited MAC is not held back by the spacing afterwards.
	if got := r.allow(third, t0.Add(time.Second)); got != Answered {
		t.Fatalf("after the shared rate refilled: %s", got)
	}

	// iPXE's pace, with a shared rate that never binds.
	r = newResponder(Config{Rate: 200})
	for i := 0; i < 20; i++ {
		if got := r.allow(pcMAC, t0.Add(time.Duration(i)*250*time.Millisecond)); got != Answered {
			t.Fatalf("solicitation %d at 250 ms: %s", i, got)
		}
	}
	if got := r.allow(pcMAC, t0.Add(19*250*time.Millisecond+199*time.Millisecond)); got != MACRateLimited {
		t.Fatalf("199 ms after: %s", got)
	}
}

// TestAllowPrunes: MACs answered long ago leave the map.
func TestAllowPrunes(t *testing.T) {
	r := newResponder(Config{Rate: 1e6})
	t0 := time.Unix(1000, 0)
	for i := 0; i < 500; i++ {
		r.allow(net.HardwareAddr{2, 0, 0, 0, byte(i >> 8), byte(i)}, t0)
	}
	if len(r.answered) != 500 {
		t.Fatalf("%d MACs held, want 500", len(r.answered))
	}
	r.allow(pcMAC, t0.Add(time.Minute))
	if len(r.answered) != 1 {
		t.Fatalf("%d MACs held after a minute, want 1", len(r.answered))
	}
}
