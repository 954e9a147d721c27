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
	m := NewMetrics(prometheus.NewRegistry())
	var r *Responder
	var err error
	in(t, l.node, func() {
		r, err = Listen(Config{Policy: p, Interfaces: []string{"boot0"}, Log: testr.New(t), Metrics: m, ProbeInterval: time.Hour})
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
	if got := count(m, Answered); got != 1 {
		t.Fatalf("answered %v, want 1", got)
	}

	send(Solicit(net.HardwareAddr{0x02, 0, 0, 0, 0, 9}))
	if b, _, _ := readType(t, pc, TypeRouterAdvertisement, 500*time.Millisecond); b != nil {
		t.Fatal("an unknown MAC was answered")
	}
	send([]byte{133, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0})
	// A solicitation sent with hop limit 64 was forwarded: not from the link.
	setHops(t, pc, 64)
	send(Solicit(pcMAC))
	time.Sleep(300 * time.Millisecond)
	for _, c := range []struct {
		what string
		got  float64
	}{
		{"unknown_mac", count(m, UnknownMAC)},
		{"malformed", testutil.ToFloat64(m.dropped.WithLabelValues("malformed"))},
		{"hop_limit", testutil.ToFloat64(m.dropped.WithLabelValues("hop_limit"))},
	} {
		if c.got != 1 {
			t.Errorf("%s %v, want 1", c.what, c.got)
		}
	}
	setHops(t, pc, HopLimit)
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
	time.Sleep(300 * time.Millisecond) // past the probe wait
	if _, err := router.WriteToIP(Solicit(pcMAC), &net.IPAddr{IP: allRouters, Zone: "pc0"}); err != nil {
		t.Fatal(err)
	}
	if b, _, _ := readType(t, router, TypeRouterAdvertisement, 500*time.Millisecond); b != nil {
		t.Fatal("answered beside a real router")
	}
	if got := count(m, RouterPresent); got != 1 {
		t.Fatalf("router_present %v, want 1", got)
	}
	if got := testutil.ToFloat64(m.heard.WithLabelValues("router")); got != 1 {
		t.Fatalf("routers heard %v, want 1", got)
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
