// nclient4, these tests' DHCP client, builds on Linux only (its raw socket
// needs unix.ETH_P_IP); portable_test.go runs everywhere.
//go:build linux

package dhcp

import (
	"context"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/dhcpv4/nclient4"
	"github.com/insomniacslk/dhcp/iana"
	. "github.com/onsi/gomega"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
)

type startedServer struct {
	addr    *net.UDPAddr
	metrics *Metrics
	// clientPort is where the server sends client replies (instead of 68).
	clientPort int
}

// startServer runs a server on an ephemeral loopback port until the test
// ends. Its socket is bound to lo so that its broadcasts stay on the
// machine; it answers clients at a free port of their own (not 68,
// which the test cannot count on), where newClient listens.
func startServer(t *testing.T, mode Mode, opts ...Option) startedServer {
	t.Helper()
	conn, err := Listen("lo", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	free, err := net.ListenUDP("udp4", &net.UDPAddr{})
	if err != nil {
		t.Fatal(err)
	}
	clientPort := free.LocalAddr().(*net.UDPAddr).Port
	_ = free.Close()
	m := NewMetrics(prometheus.NewRegistry())
	cfg := Config{Mode: mode, ServerIP: net.IPv4(127, 0, 0, 1), HTTPBase: "http://127.0.0.1:8880"}
	srv, err := NewServer(cfg, backendLoopback(), append(opts, WithMetrics(m), WithWorkers(2), WithClientPort(uint16(clientPort)))...)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = srv.Serve(ctx, conn); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return startedServer{addr: conn.LocalAddr().(*net.UDPAddr), metrics: m, clientPort: clientPort}
}

// backendLoopback reserves 10.20.0.131 for macKnown.
func backendLoopback() mapBackend { return backend() }

// newClient is a client of srv on its client port (on every address, for
// broadcasts); a test closes one client before it makes the next.
func newClient(t *testing.T, srv startedServer, mac net.HardwareAddr) *nclient4.Client {
	t.Helper()
	c, err := nclient4.New("",
		nclient4.WithUnicast(&net.UDPAddr{IP: net.IPv4zero, Port: srv.clientPort}),
		nclient4.WithHWAddr(mac),
		nclient4.WithServerAddr(srv.addr),
		nclient4.WithTimeout(time.Second), nclient4.WithRetry(2))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func TestServerExchanges(t *testing.T) {
	for path, opts := range socketPaths {
		t.Run(path, func(t *testing.T) { testServerExchanges(t, opts) })
	}
}

func testServerExchanges(t *testing.T, opts []Option) {
	timestamps := len(opts) == 0 // the batch path reads receive timestamps
	srv := startServer(t, ModeReservation, opts...)
	for name, tc := range map[string]struct {
		mods []dhcpv4.Modifier
		file string
	}{
		"BIOS PXE":  {biosPXE(), "undionly.kpxe"},
		"UEFI PXE":  {uefiPXE(iana.EFI_X86_64), "snponly.efi"},
		"UEFI HTTP": {uefiHTTP(), "http://127.0.0.1:8880/ipxe/snponly.efi"},
		"iPXE":      {ipxeClient(), "http://127.0.0.1:8880/boot/" + tokenKnown + "/52:54:00:12:34:31.ipxe"},
	} {
		t.Run(name, func(t *testing.T) {
			g := NewWithT(t)
			c := newClient(t, srv, macKnown)
			lease, err := c.Request(context.Background(), tc.mods...)
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(lease.Offer.BootFileName).To(Equal(tc.file))
			g.Expect(lease.ACK.MessageType()).To(Equal(dhcpv4.MessageTypeAck))
			g.Expect(lease.ACK.YourIPAddr.String()).To(Equal("10.20.0.131"))
			g.Expect(lease.ACK.BootFileName).To(Equal(tc.file))
		})
	}
	g := NewWithT(t)
	g.Expect(testutil.ToFloat64(srv.metrics.packets.WithLabelValues("DISCOVER", "offer"))).To(Equal(4.0))
	g.Expect(testutil.ToFloat64(srv.metrics.packets.WithLabelValues("REQUEST", "ack"))).To(Equal(4.0))
	// ggnet_dhcp_response_seconds: every reply from the batch path, timed
	// from its request's kernel receive timestamp; none from the portable
	// path, which has no timestamps.
	for _, reply := range []string{"OFFER", "ACK"} {
		count, sum := histogram(t, srv.metrics.response.WithLabelValues(reply))
		if !timestamps {
			g.Expect(count).To(BeZero(), reply)
			continue
		}
		g.Expect(count).To(Equal(uint64(4)), reply)
		g.Expect(sum).To(And(BeNumerically(">", 0), BeNumerically("<", 4*time.Second.Seconds())), reply)
	}
}

// histogram is a histogram's sample count and sum.
func histogram(t *testing.T, o prometheus.Observer) (uint64, float64) {
	t.Helper()
	var m dto.Metric
	if err := o.(prometheus.Metric).Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetHistogram().GetSampleCount(), m.GetHistogram().GetSampleSum()
}

func TestServerUnknownMACAndMalformedPackets(t *testing.T) {
	for path, opts := range socketPaths {
		t.Run(path, func(t *testing.T) {
			t.Parallel() // each waits ~3 s for the answer the unknown MAC never gets
			testServerUnknownMACAndMalformedPackets(t, opts)
		})
	}
}

func testServerUnknownMACAndMalformedPackets(t *testing.T, opts []Option) {
	g := NewWithT(t)
	seen := make(chan net.HardwareAddr, 1)
	srv := startServer(t, ModeReservation, append(opts, WithObserver(observerFunc(func(mac net.HardwareAddr) { seen <- mac })))...)

	// Garbage of every length up to a header, an option running past the
	// end and a datagram longer than the server reads are dropped and
	// counted.
	raw, err := net.DialUDP("udp4", nil, srv.addr)
	g.Expect(err).NotTo(HaveOccurred())
	defer raw.Close()
	long := discover(macKnown, biosPXE()...).ToBytes()
	long = append(long, make([]byte, 2000-len(long))...)
	for _, pkt := range [][]byte{{}, {1}, make([]byte, 100), append(make([]byte, 236), 0x63, 0x82, 0x53, 0x63, 53, 200), long} {
		_, err := raw.Write(pkt)
		g.Expect(err).NotTo(HaveOccurred())
	}
	g.Eventually(func() float64 {
		return testutil.ToFloat64(srv.metrics.packets.WithLabelValues("unknown", "malformed"))
	}).Should(BeNumerically("==", 5))

	// An unknown PXE client gets nothing but is reported.
	c := newClient(t, srv, macUnknown)
	_, err = c.DiscoverOffer(context.Background(), biosPXE()...)
	g.Expect(err).To(HaveOccurred())
	g.Eventually(seen).Should(Receive(Equal(macUnknown)))
	g.Expect(c.Close()).To(Succeed())

	// The server still answers.
	lease, err := newClient(t, srv, macKnown).Request(context.Background(), biosPXE()...)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(lease.ACK.YourIPAddr.String()).To(Equal("10.20.0.131"))
}

func TestServerNak(t *testing.T) {
	g := NewWithT(t)
	srv := startServer(t, ModeReservation)
	c := newClient(t, srv, macKnown)
	offer, err := c.DiscoverOffer(context.Background(), biosPXE()...)
	g.Expect(err).NotTo(HaveOccurred())
	offer.YourIPAddr = net.IPv4(10, 20, 0, 77)
	_, err = c.RequestFromOffer(context.Background(), offer)
	var nakErr *nclient4.ErrNak
	g.Expect(err).To(BeAssignableToTypeOf(nakErr))
	g.Expect(err.Error()).To(ContainSubstring("10.20.0.77 is not reserved"))
}

func TestServerRelayed(t *testing.T) {
	for path, opts := range socketPaths {
		t.Run(path, func(t *testing.T) { testServerRelayed(t, opts) })
	}
}

func testServerRelayed(t *testing.T, opts []Option) {
	// A relay agent listens on 127.0.0.2:67 (needs root for port 67) and
	// forwards with giaddr; the server must answer giaddr:67.
	g := NewWithT(t)
	srv := startServer(t, ModeReservation, opts...)
	relay, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 2), Port: ServerPort})
	if err != nil {
		t.Fatalf("binding the relay's port 67 (the suite runs as root): %v", err)
	}
	defer relay.Close()
	req := discover(macKnown, append(uefiPXE(iana.EFI_X86_64), dhcpv4.WithGatewayIP(net.IPv4(127, 0, 0, 2)))...)
	_, err = relay.WriteToUDP(req.ToBytes(), srv.addr)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(relay.SetReadDeadline(time.Now().Add(3 * time.Second))).To(Succeed())
	buf := make([]byte, 1500)
	n, from, err := relay.ReadFromUDP(buf)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(from.Port).To(Equal(srv.addr.Port))
	resp, err := dhcpv4.FromBytes(buf[:n])
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(resp.MessageType()).To(Equal(dhcpv4.MessageTypeOffer))
	g.Expect(resp.GatewayIPAddr.String()).To(Equal("127.0.0.2"))
	g.Expect(resp.YourIPAddr.String()).To(Equal("10.20.0.131"))
	g.Expect(resp.BootFileName).To(Equal("snponly.efi"))
}

func TestServerProxy(t *testing.T) {
	g := NewWithT(t)
	srv67 := startServer(t, ModeProxy)
	srv4011 := startServer(t, ModeProxy, WithProxyPort())

	// The café router gave the PC 192.168.1.50; the proxy offers only boot
	// information on 67, then ACKs the PXE REQUEST on 4011.
	offer, err := newClient(t, srv67, macKnown).DiscoverOffer(context.Background(), biosPXE()...)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(offer.YourIPAddr.IsUnspecified()).To(BeTrue())
	g.Expect(offer.BootFileName).To(Equal("undionly.kpxe"))
	g.Expect(offer.GetOneOption(dhcpv4.OptionVendorSpecificInformation)).To(Equal([]byte{6, 1, 8, 255}))

	c := newClient(t, srv4011, macKnown)
	req := discover(macKnown, append(biosPXE(), dhcpv4.WithMessageType(dhcpv4.MessageTypeRequest),
		dhcpv4.WithClientIP(net.IPv4(192, 168, 1, 50)))...)
	ack, err := c.SendAndRead(context.Background(), srv4011.addr, req, nclient4.IsMessageType(dhcpv4.MessageTypeAck))
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(ack.BootFileName).To(Equal("undionly.kpxe"))
	g.Expect(ack.ServerIPAddr.String()).To(Equal("127.0.0.1"))
}

type observerFunc func(net.HardwareAddr)

func (f observerFunc) Answered(net.HardwareAddr, dhcpv4.MessageType, netip.Addr) {}
func (f observerFunc) Unknown(mac net.HardwareAddr, _ Client)                    { f(slices.Clone(mac)) }

func TestServerNotReady(t *testing.T) {
	g := NewWithT(t)
	var ready atomic.Bool
	srv := startServer(t, ModeReservation, WithReady(ready.Load))
	c := newClient(t, srv, macKnown)
	_, err := c.DiscoverOffer(context.Background(), ipxeClient()...)
	g.Expect(err).To(HaveOccurred(), "no answer before the caches synced")
	g.Expect(testutil.ToFloat64(srv.metrics.packets.WithLabelValues("DISCOVER", "not-ready"))).To(BeNumerically(">=", 1))

	ready.Store(true)
	offer, err := c.DiscoverOffer(context.Background(), ipxeClient()...)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(offer.BootFileName).To(Equal("http://127.0.0.1:8880/boot/" + tokenKnown + "/52:54:00:12:34:31.ipxe"))
}

// addrObserver records the addresses Answered reports.
type addrObserver struct {
	mu    sync.Mutex
	addrs []string
}

func (o *addrObserver) Answered(_ net.HardwareAddr, t dhcpv4.MessageType, a netip.Addr) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.addrs = append(o.addrs, t.String()+" "+a.String())
}
func (o *addrObserver) Unknown(net.HardwareAddr, Client) {}

func (o *addrObserver) get() []string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return slices.Clone(o.addrs)
}

func TestServerObservesClientAddress(t *testing.T) {
	t.Run("reservation: the reserved address handed out", func(t *testing.T) {
		g := NewWithT(t)
		o := &addrObserver{}
		srv := startServer(t, ModeReservation, WithObserver(o))
		_, err := newClient(t, srv, macKnown).Request(context.Background(), ipxeClient()...)
		g.Expect(err).NotTo(HaveOccurred())
		g.Eventually(o.get).Should(Equal([]string{"OFFER 10.20.0.131", "ACK 10.20.0.131"}))
	})
	t.Run("proxy: nothing, the client's ciaddr and requested address are only claims", func(t *testing.T) {
		g := NewWithT(t)
		o := &addrObserver{}
		srv := startServer(t, ModeProxy, WithObserver(o), WithProxyPort())
		c := newClient(t, srv, macKnown)
		req := discover(macKnown, append(biosPXE(), dhcpv4.WithMessageType(dhcpv4.MessageTypeRequest),
			dhcpv4.WithClientIP(net.IPv4(192, 168, 1, 50)))...)
		_, err := c.SendAndRead(context.Background(), srv.addr, req, nclient4.IsMessageType(dhcpv4.MessageTypeAck))
		g.Expect(err).NotTo(HaveOccurred())
		req = discover(macKnown, append(biosPXE(), dhcpv4.WithMessageType(dhcpv4.MessageTypeRequest),
			dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(net.IPv4(192, 168, 1, 51))))...)
		_, err = c.SendAndRead(context.Background(), srv.addr, req, nclient4.IsMessageType(dhcpv4.MessageTypeAck))
		g.Expect(err).NotTo(HaveOccurred())
		g.Eventually(o.get).Should(Equal([]string{"ACK invalid IP", "ACK invalid IP"}))
	})
}

// TestServerNeverAnswersTheSendersPort is the spoofed-chaddr attack: a
// process on an ordinary UDP port sends a REQUEST for another PC's MAC with
// iPXE's user class and its own ciaddr. The reply carries the PC's script
// token, so it must go where RFC 2131 says (the client's port 68, here a
// test port), never back to the sender's port.
func TestServerNeverAnswersTheSendersPort(t *testing.T) {
	for name, proxyPort := range map[string]bool{"port 67": false, "port 4011": true} {
		t.Run(name, func(t *testing.T) {
			g := NewWithT(t)
			var opts []Option
			if proxyPort {
				opts = append(opts, WithProxyPort())
			}
			srv := startServer(t, ModeProxy, opts...)
			client, err := net.ListenUDP("udp4", &net.UDPAddr{Port: srv.clientPort})
			g.Expect(err).NotTo(HaveOccurred())
			defer client.Close()
			attacker, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
			g.Expect(err).NotTo(HaveOccurred())
			defer attacker.Close()
			req := discover(macKnown, append(ipxeClient(), dhcpv4.WithMessageType(dhcpv4.MessageTypeRequest),
				dhcpv4.WithClientIP(net.IPv4(127, 0, 0, 1)))...)
			_, err = attacker.WriteToUDP(req.ToBytes(), srv.addr)
			g.Expect(err).NotTo(HaveOccurred())
			// The server answered, at the client's port ...
			g.Expect(client.SetReadDeadline(time.Now().Add(3 * time.Second))).To(Succeed())
			_, _, err = client.ReadFromUDP(make([]byte, 1500))
			g.Expect(err).NotTo(HaveOccurred())
			// ... but not to the sender's port.
			g.Expect(attacker.SetReadDeadline(time.Now().Add(500 * time.Millisecond))).To(Succeed())
			n, _, err := attacker.ReadFromUDP(make([]byte, 1500))
			g.Expect(err).To(HaveOccurred(), "the sender got a %d-byte reply", n)
			g.Expect(replyAddr(&Query{CIAddr: [4]byte{127, 0, 0, 1}}, dhcpv4.MessageTypeAck,
				attacker.LocalAddr().(*net.UDPAddr).AddrPort(), proxyPort, ClientPort)).
				To(Equal(netip.MustParseAddrPort("127.0.0.1:68")))
		})
	}
}
