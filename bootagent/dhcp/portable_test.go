package dhcp

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	. "github.com/onsi/gomega"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// socketPaths are the server's two ways to read and write its socket: the
// Linux batches (recvmmsg, sendmmsg) and the portable path every other
// system uses (there both names run it).
var socketPaths = map[string][]Option{"batches": nil, "portable": {withPortableConn()}}

// TestServerUnicast runs exchanges that need no broadcast and no interface
// binding, with a plain UDP socket as the client, so that it runs on every
// system: an INFORM from a client with an address, answered at its ciaddr,
// and a proxyDHCP REQUEST on 4011, answered at its source address. A
// datagram longer than the server reads is dropped and counted.
func TestServerUnicast(t *testing.T) {
	for path, opts := range socketPaths {
		t.Run(path, func(t *testing.T) {
			for name, tc := range map[string]struct {
				mode      Mode
				proxyPort bool
				req       *dhcpv4.DHCPv4
				file      string
			}{
				"INFORM at ciaddr": {mode: ModeReservation, file: "http://127.0.0.1:8880/boot/" + tokenKnown + "/52:54:00:12:34:31.ipxe",
					req: discover(macKnown, append(ipxeClient(), dhcpv4.WithMessageType(dhcpv4.MessageTypeInform),
						dhcpv4.WithClientIP(net.IPv4(127, 0, 0, 1)))...)},
				"proxy REQUEST on 4011": {mode: ModeProxy, proxyPort: true, file: "undionly.kpxe",
					req: discover(macKnown, append(biosPXE(), dhcpv4.WithMessageType(dhcpv4.MessageTypeRequest),
						dhcpv4.WithClientIP(net.IPv4(127, 0, 0, 1)))...)},
			} {
				t.Run(name, func(t *testing.T) {
					g := NewWithT(t)
					client, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
					g.Expect(err).NotTo(HaveOccurred())
					defer client.Close()
					o := opts
					if tc.proxyPort {
						o = append(o[:len(o):len(o)], WithProxyPort())
					}
					addr, m := serveLoopback(t, tc.mode, uint16(client.LocalAddr().(*net.UDPAddr).Port), o...)

					_, err = client.WriteToUDP(tc.req.ToBytes(), addr)
					g.Expect(err).NotTo(HaveOccurred())
					g.Expect(client.SetReadDeadline(time.Now().Add(3 * time.Second))).To(Succeed())
					buf := make([]byte, 1500)
					n, from, err := client.ReadFromUDP(buf)
					g.Expect(err).NotTo(HaveOccurred())
					g.Expect(from.Port).To(Equal(addr.Port))
					resp, err := dhcpv4.FromBytes(buf[:n])
					g.Expect(err).NotTo(HaveOccurred())
					g.Expect(resp.MessageType()).To(Equal(dhcpv4.MessageTypeAck))
					g.Expect(resp.TransactionID).To(Equal(tc.req.TransactionID))
					g.Expect(resp.BootFileName).To(Equal(tc.file))

					long := append(tc.req.ToBytes(), make([]byte, 2000)...)
					_, err = client.WriteToUDP(long, addr)
					g.Expect(err).NotTo(HaveOccurred())
					g.Eventually(func() float64 {
						return testutil.ToFloat64(m.packets.WithLabelValues("unknown", "malformed"))
					}).Should(Equal(1.0))
				})
			}
		})
	}
}

// serveLoopback runs a server on an ephemeral port of 127.0.0.1, bound to
// no interface, answering clients at clientPort, until the test ends.
func serveLoopback(t *testing.T, mode Mode, clientPort uint16, opts ...Option) (*net.UDPAddr, *Metrics) {
	t.Helper()
	conn, err := Listen("", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	m := NewMetrics(prometheus.NewRegistry())
	cfg := Config{Mode: mode, ServerIP: net.IPv4(127, 0, 0, 1), HTTPBase: "http://127.0.0.1:8880"}
	srv, err := NewServer(cfg, backend(), append(opts, WithMetrics(m), WithWorkers(2), WithClientPort(clientPort))...)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = srv.Serve(ctx, conn); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return conn.LocalAddr().(*net.UDPAddr), m
}
