package ra

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr/testr"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"golang.org/x/sys/unix"
)

// The responder tests use two network namespaces joined by a veth pair:
// "node" (boot0, fe80::1, the responder) and "lan" (pc0, fe80::2 with the
// MAC pcMAC: the PC, and a router when a test needs one). They need root.

type lab struct {
	node, lan string
}

func newLab(t *testing.T) *lab {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: network namespaces and raw sockets")
	}
	id := fmt.Sprintf("%d-%d", os.Getpid(), time.Now().UnixNano()%1e6)
	l := &lab{node: "ggra-node-" + id, lan: "ggra-lan-" + id}
	run := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v %s", strings.Join(args, " "), err, out)
		}
	}
	for _, ns := range []string{l.node, l.lan} {
		run("netns", "add", ns)
		t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", ns).Run() })
	}
	run("-n", l.node, "link", "add", "boot0", "type", "veth", "peer", "name", "pc0", "netns", l.lan)
	run("-n", l.lan, "link", "set", "pc0", "address", pcMAC.String())
	// Fixed link-local addresses, no duplicate address detection: usable
	// at once.
	for _, x := range []struct{ ns, dev, addr string }{{l.node, "boot0", "fe80::1"}, {l.lan, "pc0", "fe80::2"}} {
		run("-n", x.ns, "link", "set", x.dev, "addrgenmode", "none")
		run("-n", x.ns, "addr", "add", x.addr+"/64", "dev", x.dev, "nodad")
		run("-n", x.ns, "link", "set", x.dev, "up")
		run("-n", x.ns, "link", "set", "lo", "up")
		// addrgenmode none leaves out the multicast route too.
		run("-n", x.ns, "-6", "route", "add", "multicast", "ff00::/8", "dev", x.dev, "table", "local")
	}
	return l
}

// in runs f on a thread inside namespace ns: sockets made there stay there.
func in(t *testing.T, ns string, f func()) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		runtime.LockOSThread()
		// The thread is not unlocked: it ends with the goroutine, never to
		// run other goroutines in the wrong namespace.
		h, err := os.Open("/run/netns/" + ns)
		if err != nil {
			t.Error(err)
			return
		}
		defer h.Close()
		if err := unix.Setns(int(h.Fd()), unix.CLONE_NEWNET); err != nil {
			t.Error(err)
			return
		}
		f()
	}()
	<-done
}

// start runs a responder on boot0 in the node namespace.
func (l *lab) start(t *testing.T, p *Policy) *Metrics {
	t.Helper()
	return l.startWith(t, Config{Policy: p})
}

// startWith runs a responder configured by cfg (its policy, spacing and
// rate; the rest is the lab's) on boot0 in the node namespace.
func (l *lab) startWith(t *testing.T, cfg Config) *Metrics {
	t.Helper()
	m := NewMetrics(prometheus.NewRegistry())
	cfg.Interfaces, cfg.Log, cfg.Metrics, cfg.ProbeInterval = []string{"boot0"}, testr.New(t), m, time.Hour
	var r *Responder
	var err error
	in(t, l.node, func() {
		r, err = Listen(cfg)
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = r.Serve(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return m
}

// pc is a raw ICMPv6 socket on pc0 in the lan namespace.
func (l *lab) pc(t *testing.T) *net.IPConn {
	t.Helper()
	var c *net.IPConn
	in(t, l.lan, func() {
		var err error
		if c, _, err = listen("pc0"); err != nil {
			t.Fatal(err)
		}
	})
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// readType returns the next packet of ICMPv6 type typ within d with its
// source and hop limit, or nil.
func readType(t *testing.T, c *net.IPConn, typ byte, d time.Duration) ([]byte, *net.IPAddr, int) {
	t.Helper()
	buf, oob := make([]byte, 1500), make([]byte, oobSize)
	deadline := time.Now().Add(d)
	for {
		_ = c.SetReadDeadline(deadline)
		n, oobn, _, src, err := c.ReadMsgIP(buf, oob)
		if err != nil {
			return nil, nil, 0
		}
		if n > 0 && buf[0] == typ {
			return append([]byte(nil), buf[:n]...), src, hopLimit(oob[:oobn])
		}
	}
}

var allNodes = net.ParseIP("ff02::1")

func setHops(t *testing.T, c *net.IPConn, hops int) {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IPV6, unix.IPV6_MULTICAST_HOPS, hops)
	}); err != nil || serr != nil {
		t.Fatal(err, serr)
	}
}

func known(mac net.HardwareAddr) bool { return mac.String() == pcMAC.String() }

func count(m *Metrics, r Result) float64 {
	return testutil.ToFloat64(m.solicitations.WithLabelValues(string(r)))
}

// counter is a metric the tests wait for.
type counter struct {
	what string
	get  func() float64
	want float64
}

func solicitations(m *Metrics, r Result, want float64) counter {
	return counter{string(r), func() float64 { return count(m, r) }, want}
}

func dropped(m *Metrics, reason string, want float64) counter {
	return counter{"dropped " + reason, func() float64 { return testutil.ToFloat64(m.dropped.WithLabelValues(reason)) }, want}
}

// settle waits (up to 5 s, in 20 ms steps) until every counter has its
// value, then checks that they keep it a little longer: nothing more was
// counted late.
func settle(t *testing.T, cs ...counter) {
	t.Helper()
	off := func() string {
		for _, c := range cs {
			if got := c.get(); got != c.want {
				return fmt.Sprintf("%s %v, want %v", c.what, got, c.want)
			}
		}
		return ""
	}
	deadline := time.Now().Add(5 * time.Second)
	for off() != "" && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if o := off(); o != "" {
		t.Fatal(o)
	}
	time.Sleep(100 * time.Millisecond)
	if o := off(); o != "" {
		t.Fatalf("later: %s", o)
	}
}

// TestAnswersKnownMachine: a PC's solicitation (as iPXE sends it) gets a
// unicast advertisement from the boot interface's link-local address with
// hop limit 255 that configures nothing; an unknown MAC gets none; a
// malformed or forwarded solicitation is dropped, counted, and the next is
// answered.
func TestAnswersKnownMachine(t *testing.T) {
	l := newLab(t)
	m := l.start(t, &Policy{Mode: ModeOn, Known: known})
	pc := l.pc(t)
	send := func(b []byte) {
		t.Helper()
		if _, err := pc.WriteToIP(b, &net.IPAddr{IP: allRouters, Zone: "pc0"}); err != nil {
			t.Fatal(err)
		}
	}

	send(Solicit(pcMAC))
	b, src, hops := readType(t, pc, TypeRouterAdvertisement, 3*time.Second)
	if b == nil {
		t.Fatal("no router advertisement")
	}
	if src.IP.String() != "fe80::1" || hops != HopLimit {
		t.Fatalf("from %v hop limit %d, want fe80::1 and 255", src, hops)
	}
	a, err := ParseAdvertisement(b)
	if err != nil || a.Router() {
		t.Fatalf("%+v %v: want an advertisement that configures nothing", a, err)
	}
	settle(t, solicitations(m, Answered, 1))

	send(Solicit(net.HardwareAddr{0x02, 0, 0, 0, 0, 9}))
	send([]byte{133, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0})
	// A solicitation sent with hop limit 64 was forwarded: not from the link.
	setHops(t, pc, 64)
	send(Solicit(pcMAC))
	settle(t, solicitations(m, Answered, 1), solicitations(m, UnknownMAC, 1), dropped(m, "malformed", 1), dropped(m, "hop_limit", 1))
	if b, _, _ := readType(t, pc, TypeRouterAdvertisement, 100*time.Millisecond); b != nil {
		t.Fatal("an unknown MAC or a forwarded solicitation was answered")
	}
	setHops(t, pc, HopLimit)
	// Past the per-MAC spacing since the first answer: two settles and a
	// read took 300 ms at least.
	send(Solicit(pcMAC))
	if b, _, _ := readType(t, pc, TypeRouterAdvertisement, 3*time.Second); b == nil {
		t.Fatal("no answer after the dropped packets")
	}
}

// TestAutoQuietWithRouter: in auto mode the responder solicits routers
// itself on start; a real router's advertisement (here sent to all nodes,
// as routers answer) quiets it, and the PC's solicitation is left to the
// router. Without a router, after the probe wait, it answers.
func TestAutoQuietWithRouter(t *testing.T) {
	l := newLab(t)
	router := l.pc(t) // the LAN's router, on pc0 too
	p := &Policy{Mode: ModeAuto, Known: known, ProbeWait: 200 * time.Millisecond}
	m := l.start(t, p)

	probe, src, hops := readType(t, router, TypeRouterSolicitation, 3*time.Second)
	if probe == nil {
		t.Fatal("the responder did not solicit routers on start")
	}
	s, err := ParseSolicitation(probe)
	if err != nil || src.IP.String() != "fe80::1" || hops != HopLimit || s.MAC == nil {
		t.Fatalf("probe %+v from %v hop limit %d: %v", s, src, hops, err)
	}
	// The router's advertisement with pc0's MAC as its link-layer address
	// (the node's kernel takes it into its neighbour table).
	ra := append(append([]byte(nil), routerRA[:len(routerRA)-6]...), pcMAC...)
	if _, err := router.WriteToIP(ra, &net.IPAddr{IP: allNodes, Zone: "pc0"}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(3 * time.Second)
	for !p.RouterPresent("boot0", time.Now()) {
		if time.Now().After(deadline) {
			t.Fatal("the router's advertisement was not heard")
		}
		time.Sleep(20 * time.Millisecond)
	}
	// Past the probe wait: only the router keeps the responder quiet.
	p.mu.Lock()
	probed := p.started["boot0"]
	p.mu.Unlock()
	time.Sleep(time.Until(probed.Add(p.ProbeWait + 50*time.Millisecond)))
	if _, err := router.WriteToIP(Solicit(pcMAC), &net.IPAddr{IP: allRouters, Zone: "pc0"}); err != nil {
		t.Fatal(err)
	}
	settle(t, solicitations(m, RouterPresent, 1), solicitations(m, Answered, 0), solicitations(m, Probing, 0),
		counter{"routers heard", func() float64 { return testutil.ToFloat64(m.heard.WithLabelValues("router")) }, 1})
	if b, _, _ := readType(t, router, TypeRouterAdvertisement, 100*time.Millisecond); b != nil {
		t.Fatal("answered beside a real router")
	}

	// The router gone past the hold-off: answered again.
	p.mu.Lock()
	p.router["boot0"] = time.Now().Add(-DefaultHoldoff - time.Second)
	p.mu.Unlock()
	if _, err := router.WriteToIP(Solicit(pcMAC), &net.IPAddr{IP: allRouters, Zone: "pc0"}); err != nil {
		t.Fatal(err)
	}
	if b, _, _ := readType(t, router, TypeRouterAdvertisement, 3*time.Second); b == nil {
		t.Fatalf("not answered once the router was gone: answered %v router_present %v probing %v heard %v", count(m, Answered), count(m, RouterPresent), count(m, Probing), testutil.ToFloat64(m.heard.WithLabelValues("router")))
	}
}

// TestPerMACSpacing: a burst of solicitations with one known Machine's MAC
// (as a LAN host forging them would send) gets one answer, the rest are
// counted mac_rate_limited, and another known Machine is still answered.
// Solicitations from a source that is not link-local are not answered.
func TestPerMACSpacing(t *testing.T) {
	l := newLab(t)
	other := net.HardwareAddr{0x52, 0x54, 0x00, 0x67, 0x68, 0x02}
	both := func(mac net.HardwareAddr) bool {
		return known(mac) || mac.String() == other.String() || mac.String() == "52:54:00:67:68:03"
	}
	// A spacing far longer than the test: the burst cannot outlast it
	// however slow the machine.
	m := l.startWith(t, Config{Policy: &Policy{Mode: ModeOn, Known: both}, MACSpacing: time.Hour})
	pc := l.pc(t)
	send := func(mac net.HardwareAddr) {
		t.Helper()
		if _, err := pc.WriteToIP(Solicit(mac), &net.IPAddr{IP: allRouters, Zone: "pc0"}); err != nil {
			t.Fatal(err)
		}
	}
	const burst = 50
	for i := 0; i < burst; i++ {
		send(pcMAC)
	}
	settle(t, solicitations(m, Answered, 1), solicitations(m, MACRateLimited, burst-1), solicitations(m, RateLimited, 0))
	answers := 0
	for {
		b, _, _ := readType(t, pc, TypeRouterAdvertisement, 200*time.Millisecond)
		if b == nil {
			break
		}
		answers++
	}
	if answers != 1 {
		t.Fatalf("%d answers to a burst from one MAC, want 1", answers)
	}

	send(other)
	if b, _, _ := readType(t, pc, TypeRouterAdvertisement, 3*time.Second); b == nil {
		t.Fatal("another known Machine was not answered after the burst")
	}
	settle(t, solicitations(m, Answered, 2), solicitations(m, MACRateLimited, burst-1))

	// From a unique local address (not link-local), with a known MAC not
	// answered yet: counted, not answered.
	if out, err := exec.Command("ip", "-n", l.lan, "addr", "add", "fd00::2/64", "dev", "pc0", "nodad").CombinedOutput(); err != nil {
		t.Fatalf("ip addr add: %v %s", err, out)
	}
	var ula *net.IPConn
	in(t, l.lan, func() {
		var err error
		if ula, err = net.ListenIP("ip6:ipv6-icmp", &net.IPAddr{IP: net.ParseIP("fd00::2")}); err != nil {
			t.Error(err)
		}
	})
	if ula == nil {
		t.FailNow()
	}
	t.Cleanup(func() { _ = ula.Close() })
	setHops(t, ula, HopLimit)
	if _, err := ula.WriteToIP(Solicit(net.HardwareAddr{0x52, 0x54, 0x00, 0x67, 0x68, 0x03}), &net.IPAddr{IP: allRouters, Zone: "pc0"}); err != nil {
		t.Fatal(err)
	}
	settle(t, solicitations(m, NotLinkLocal, 1), solicitations(m, Answered, 2))
}
