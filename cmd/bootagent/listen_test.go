package main

import (
	"context"
	"errors"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/iana"
	. "github.com/onsi/gomega"
	"github.com/pin/tftp/v3"
	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	bootv1 "github.com/ggnet/ggnet/api/v1alpha1"
	"github.com/ggnet/ggnet/internal/fixture"
)

const pcMAC = "52:54:00:77:00:02"

// pxeClient are the options of a PC's PXE ROM asking to boot.
var pxeClient = []dhcpv4.Modifier{
	dhcpv4.WithOption(dhcpv4.OptClassIdentifier("PXEClient:Arch:00000:UNDI:002001")),
	dhcpv4.WithOption(dhcpv4.OptClientArch(iana.INTEL_X86PC)),
}

// bootNode is a boot agent in the node, answering DHCP on boot0 only, with
// --server-ip addrA and its metrics on 127.0.0.1:8881 inside the node, and
// one known PC.
func bootNode(t *testing.T, mode string) *netLab {
	t.Helper()
	c, bin := setup(t)
	ctx := context.Background()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "ggnet-listen-"}}
	if err := c.Create(ctx, ns); err != nil {
		t.Fatal(err)
	}
	m := fixture.Machine(ns.Name, "seat-1", fixture.WithMAC(pcMAC))
	m.Spec.IPv4 = &bootv1.IPv4Reservation{Address: "10.77.0.50", PrefixLength: 24, Gateway: addrA}
	if err := c.Create(ctx, m); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Delete(context.Background(), m) })
	root := t.TempDir()
	for _, f := range []string{"undionly.kpxe", "ipxe.efi", "snponly.efi"} {
		if err := os.WriteFile(filepath.Join(root, f), []byte("binary "+f), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	l := newNetLab(t)
	l.start(bin, "--boot", "--namespace", ns.Name, "--dhcp-mode", mode, "--server-ip", addrA, "--dhcp-interfaces", "boot0",
		"--metrics-listen", "127.0.0.1:8881", "--ipxe-root", root)
	g := NewWithT(t)
	g.Eventually(func() int { code, _, _ := l.node.get("http://127.0.0.1:8881/readyz"); return code }, 20*time.Second, 200*time.Millisecond).
		Should(Equal(http.StatusOK), "the agent's caches synced")
	return l
}

// udpSocket opens a UDP socket in ns on laddr, bound to dev when not empty,
// allowed to broadcast.
func udpSocket(t *testing.T, ns netns, dev, laddr string) *net.UDPConn {
	t.Helper()
	var conn *net.UDPConn
	err := ns.do(func() error {
		lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
			var serr error
			err := c.Control(func(fd uintptr) {
				serr = errors.Join(unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEADDR, 1),
					unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_BROADCAST, 1))
				if dev != "" && serr == nil {
					serr = unix.BindToDevice(int(fd), dev)
				}
			})
			return errors.Join(err, serr)
		}}
		pc, err := lc.ListenPacket(context.Background(), "udp4", laddr)
		if err != nil {
			return err
		}
		conn = pc.(*net.UDPConn)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

// exchange sends req to dst and returns the first reply with its xid within
// wait, or nil.
func exchange(t *testing.T, conn *net.UDPConn, dst string, req *dhcpv4.DHCPv4, wait time.Duration) *dhcpv4.DHCPv4 {
	t.Helper()
	to, err := net.ResolveUDPAddr("udp4", dst)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.WriteToUDP(req.ToBytes(), to); err != nil {
		t.Fatalf("sending to %s: %v", dst, err)
	}
	deadline := time.Now().Add(wait)
	buf := make([]byte, 1500)
	for {
		_ = conn.SetReadDeadline(deadline)
		n, _, err := conn.ReadFromUDP(buf)
		if err != nil {
			return nil
		}
		if rep, err := dhcpv4.FromBytes(buf[:n]); err == nil && rep.TransactionID == req.TransactionID && rep.OpCode == dhcpv4.OpcodeBootReply {
			return rep
		}
	}
}

// received reports whether conn got any packet within wait.
func received(conn *net.UDPConn, wait time.Duration) bool {
	_ = conn.SetReadDeadline(time.Now().Add(wait))
	_, _, err := conn.ReadFromUDP(make([]byte, 1500))
	return err == nil
}

// refusedUDP sends payload to dst from a connected socket in ns and reports
// whether the node answered with ICMP port unreachable (nothing listens
// there for that packet).
func refusedUDP(t *testing.T, ns netns, dst string, payload []byte) bool {
	t.Helper()
	c, err := ns.dial("udp4", dst)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write(payload); err != nil {
		return errors.Is(err, syscall.ECONNREFUSED)
	}
	_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
	_, err = c.Read(make([]byte, 1500))
	return errors.Is(err, syscall.ECONNREFUSED)
}

func discover(t *testing.T) *dhcpv4.DHCPv4 {
	hw, _ := net.ParseMAC(pcMAC)
	d, err := dhcpv4.NewDiscovery(hw, pxeClient...)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func TestDHCPOnlyOnBootInterfaces(t *testing.T) {
	g := NewWithT(t)
	l := bootNode(t, "reservation")
	pc := udpSocket(t, l.lan, "pc0", "0.0.0.0:68")
	other := udpSocket(t, l.lan, "pc1", "0.0.0.0:68")

	var offer *dhcpv4.DHCPv4
	g.Eventually(func() *dhcpv4.DHCPv4 {
		offer = exchange(t, pc, "255.255.255.255:67", discover(t), time.Second)
		return offer
	}, 20*time.Second).ShouldNot(BeNil(), "a DISCOVER on the boot interface is answered")
	g.Expect(offer.MessageType()).To(Equal(dhcpv4.MessageTypeOffer))
	g.Expect(offer.YourIPAddr.String()).To(Equal("10.77.0.50"))
	g.Expect(offer.ServerIdentifier().String()).To(Equal(addrA))

	// A probe on other0's port 67 shows the requests do arrive there.
	probe := udpSocket(t, l.node, "other0", "0.0.0.0:67")
	g.Expect(exchange(t, other, "255.255.255.255:67", discover(t), 2*time.Second)).To(BeNil(),
		"the same DISCOVER arriving on another interface is not answered")
	g.Expect(received(probe, time.Second)).To(BeTrue(), "the DISCOVER reached the node on other0")
	g.Expect(probe.Close()).To(Succeed())
	g.Expect(refusedUDP(t, l.lan, addrB+":67", discover(t).ToBytes())).To(BeTrue(),
		"a DISCOVER sent to the other address finds no DHCP socket")
}

func TestProxyDHCPOnlyOnBootInterfaces(t *testing.T) {
	g := NewWithT(t)
	l := bootNode(t, "proxy")
	hw, _ := net.ParseMAC(pcMAC)
	request := func(ciaddr string) *dhcpv4.DHCPv4 {
		r, err := dhcpv4.New(append([]dhcpv4.Modifier{dhcpv4.WithHwAddr(hw), dhcpv4.WithMessageType(dhcpv4.MessageTypeRequest),
			dhcpv4.WithClientIP(net.ParseIP(ciaddr))}, pxeClient...)...)
		g.Expect(err).NotTo(HaveOccurred())
		return r
	}

	pc := udpSocket(t, l.lan, "pc0", "0.0.0.0:68")
	var offer *dhcpv4.DHCPv4
	g.Eventually(func() *dhcpv4.DHCPv4 {
		offer = exchange(t, pc, "255.255.255.255:67", discover(t), time.Second)
		return offer
	}, 20*time.Second).ShouldNot(BeNil(), "a proxy offer on the boot interface")
	g.Expect(offer.YourIPAddr.IsUnspecified()).To(BeTrue(), "proxyDHCP hands out no address")

	ack := exchange(t, pc, addrA+":4011", request(pcA), 2*time.Second)
	g.Expect(ack).NotTo(BeNil(), "a request to the boot address on 4011 is answered")
	g.Expect(ack.MessageType()).To(Equal(dhcpv4.MessageTypeAck))
	g.Expect(ack.BootFileName).To(Equal("undionly.kpxe"))

	other := udpSocket(t, l.lan, "pc1", "0.0.0.0:68")
	g.Expect(exchange(t, other, "255.255.255.255:67", discover(t), 2*time.Second)).To(BeNil(), "no proxy offer on another interface")
	g.Expect(refusedUDP(t, l.lan, addrB+":4011", request(pcB).ToBytes())).To(BeTrue(),
		"port 4011 on the other address: nothing listens")
	g.Expect(exchange(t, other, "255.255.255.255:4011", request(pcB), 2*time.Second)).To(BeNil(),
		"a proxyDHCP request broadcast on another interface is not answered")
}

func TestTFTPListensOnBootAddress(t *testing.T) {
	g := NewWithT(t)
	l := bootNode(t, "reservation")
	var got []byte
	err := l.lan.do(func() error {
		c, err := tftp.NewClient(addrA + ":69")
		if err != nil {
			return err
		}
		c.SetTimeout(time.Second)
		wt, err := c.Receive("undionly.kpxe", "octet")
		if err != nil {
			return err
		}
		var buf fileBuf
		_, err = wt.WriteTo(&buf)
		got = buf
		return err
	})
	g.Expect(err).NotTo(HaveOccurred(), "TFTP on the boot address")
	g.Expect(string(got)).To(Equal("binary undionly.kpxe"))

	rrq := append([]byte{0, 1}, "undionly.kpxe\x00octet\x00"...)
	g.Expect(refusedUDP(t, l.lan, addrB+":69", rrq)).To(BeTrue(), "TFTP on the other address: port unreachable")
	g.Expect(refusedUDP(t, l.node, "127.0.0.1:69", rrq)).To(BeTrue(), "nor on loopback: not 0.0.0.0")
}

// fileBuf collects a TFTP transfer.
type fileBuf []byte

func (b *fileBuf) Write(p []byte) (int, error) { *b = append(*b, p...); return len(p), nil }

func TestHTTPListensOnBootAddress(t *testing.T) {
	g := NewWithT(t)
	l := bootNode(t, "reservation")
	code, body, err := l.lan.get("http://" + addrA + ":8880/ipxe/ipxe.efi")
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(code).To(Equal(http.StatusOK))
	g.Expect(body).To(Equal("binary ipxe.efi"))

	_, err = l.lan.dial("tcp", addrB+":8880")
	g.Expect(err).To(MatchError(syscall.ECONNREFUSED), "HTTP on the other address")
	_, err = l.node.dial("tcp", "127.0.0.1:8880")
	g.Expect(err).To(MatchError(syscall.ECONNREFUSED), "nor on loopback: not 0.0.0.0")

	t.Run("probes and metrics on --metrics-listen only", func(t *testing.T) {
		g := NewWithT(t)
		for _, path := range []string{"/metrics", "/readyz", "/healthz"} {
			code, body, err := l.node.get("http://127.0.0.1:8881" + path)
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(code).To(Equal(http.StatusOK), path)
			if path == "/metrics" {
				g.Expect(body).To(ContainSubstring("ggnet_dhcp_reply_seconds"))
			}
			code, _, err = l.lan.get("http://" + addrA + ":8880" + path)
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(code).To(Equal(http.StatusNotFound), "not on the boot listener: "+path)
		}
		for _, addr := range []string{addrA + ":8881", addrB + ":8881"} {
			_, err := l.lan.dial("tcp", addr)
			g.Expect(err).To(MatchError(syscall.ECONNREFUSED), addr)
		}
	})
}
