package agent

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/dhcpv4/nclient4"
	"github.com/insomniacslk/dhcp/iana"
	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	"github.com/pin/tftp/v3"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	bootv1 "github.com/ggnet/ggnet/api/v1alpha1"
	"github.com/ggnet/ggnet/internal/fixture"
	"github.com/ggnet/ggnet/internal/ipxe"
)

const mac = "52:54:00:12:34:31"

func dhcpClient(a *Agent, hw string) *nclient4.Client {
	addr, err := a.Addr(context.Background(), "dhcp")
	Expect(err).NotTo(HaveOccurred())
	m, _ := net.ParseMAC(hw)
	c, err := nclient4.New("", nclient4.WithUnicast(&net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)}),
		nclient4.WithHWAddr(m), nclient4.WithServerAddr(addr.(*net.UDPAddr)),
		nclient4.WithTimeout(500*time.Millisecond), nclient4.WithRetry(2))
	Expect(err).NotTo(HaveOccurred())
	DeferCleanup(c.Close)
	return c
}

var ipxeUserClass = []dhcpv4.Modifier{
	dhcpv4.WithOption(dhcpv4.OptClassIdentifier("PXEClient:Arch:00000:UNDI:002001")),
	dhcpv4.WithOption(dhcpv4.OptClientArch(iana.INTEL_X86PC)),
	dhcpv4.WithOption(dhcpv4.OptUserClass("iPXE")),
}

func httpGet(a *Agent, path string) string {
	addr, err := a.Addr(context.Background(), "http")
	Expect(err).NotTo(HaveOccurred())
	resp, err := http.Get(fmt.Sprintf("http://%s%s", addr, path))
	Expect(err).NotTo(HaveOccurred())
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	Expect(err).NotTo(HaveOccurred())
	return string(b)
}

func tftpGet(a *Agent, name string) (string, error) {
	addr, err := a.Addr(context.Background(), "tftp")
	Expect(err).NotTo(HaveOccurred())
	c, err := tftp.NewClient(addr.String())
	Expect(err).NotTo(HaveOccurred())
	c.SetTimeout(time.Second)
	wt, err := c.Receive(name, "octet")
	if err != nil {
		return "", err
	}
	var buf bytes.Buffer
	_, err = wt.WriteTo(&buf)
	return buf.String(), err
}

func script(ns, name string) string {
	s, err := ipxe.Render(ipxe.Session{
		Name: ns + "/" + name, Image: "win11", Portal: "127.0.0.1:3260",
		TargetIQN: "iqn.2026-11.io.ggnet:" + name, InitiatorIQN: "iqn.2026-11.io.ggnet:initiator:" + name,
		Username: name, Password: "secretsecret",
	})
	Expect(err).NotTo(HaveOccurred())
	return s
}

// makeReady plays the controller's part: the session becomes Ready with a
// script.
func makeReady(ctx context.Context, s *bootv1.BootSession) {
	s.Status.Phase = bootv1.SessionReady
	s.Status.MAC = mac
	s.Status.Script = script(s.Namespace, s.Name)
	Expect(k8sClient.Status().Update(ctx, s)).To(Succeed())
}

var _ = Describe("Boot agent", func() {
	var (
		ctx context.Context
		ns  string
		a   *Agent
	)
	BeforeEach(func() {
		ctx = context.Background()
		ns = newNamespace(ctx)
		a = startAgent(restCfg, ns)
	})

	It("answers a known machine's DHCP from its cache and serves its session's script", func() {
		m := fixture.Machine(ns, "seat-031", fixture.WithMAC(mac), fixture.WithAddress("10.20.0.131"))
		Expect(k8sClient.Create(ctx, m)).To(Succeed())

		c := dhcpClient(a, mac)
		var lease *nclient4.Lease
		Eventually(func() error {
			var err error
			lease, err = c.Request(ctx, ipxeUserClass...)
			return err
		}, 10*time.Second, 100*time.Millisecond).Should(Succeed())
		Expect(lease.ACK.YourIPAddr.String()).To(Equal("10.20.0.131"))
		Expect(lease.ACK.BootFileName).To(Equal("http://127.0.0.1:8880/boot/" + mac + ".ipxe"))

		By("falling back while there is no session")
		Expect(httpGet(a, "/boot/"+mac+".ipxe")).To(ContainSubstring("no boot session for seat-031"))

		By("serving the script once the session is Ready")
		s := fixture.Session(ns, "seat-031-a", "seat-031", "win11")
		Expect(k8sClient.Create(ctx, s)).To(Succeed())
		makeReady(ctx, s)
		Eventually(func() string { return httpGet(a, "/boot/"+mac+".ipxe") }, 10*time.Second).Should(Equal(s.Status.Script))
		got, err := tftpGet(a, mac+".ipxe")
		Expect(err).NotTo(HaveOccurred())
		Expect(got).To(Equal(s.Status.Script))

		By("recording the script request and the DHCP ACK in the session's timeline")
		_, err = c.Request(ctx, ipxeUserClass...)
		Expect(err).NotTo(HaveOccurred())
		Eventually(func(g Gomega) {
			var cur bootv1.BootSession
			g.Expect(k8sClient.Get(ctx, client.ObjectKeyFromObject(s), &cur)).To(Succeed())
			g.Expect(cur.Status.Timeline.ScriptServed).NotTo(BeNil())
			g.Expect(cur.Status.Timeline.DHCP).NotTo(BeNil())
		}, 10*time.Second).Should(Succeed())

		By("no longer serving it once stopped")
		Expect(k8sClient.Get(ctx, client.ObjectKeyFromObject(s), s)).To(Succeed())
		s.Spec.Stopped = true
		Expect(k8sClient.Update(ctx, s)).To(Succeed())
		Eventually(func() string { return httpGet(a, "/boot/"+mac+".ipxe") }, 10*time.Second).Should(ContainSubstring("no boot session"))
	})

	It("records the DHCP ACK of every machine in a boot storm, paced, with the time of the ACK", func() {
		const n = 40 // eight times the write burst: the rest must wait, not be lost
		macs := make([]string, n)
		sessions := make([]*bootv1.BootSession, n)
		for i := range n {
			macs[i] = fmt.Sprintf("52:54:00:aa:00:%02x", i)
			name := fmt.Sprintf("seat-%02d", i)
			Expect(k8sClient.Create(ctx, fixture.Machine(ns, name, fixture.WithMAC(macs[i]), fixture.WithAddress(fmt.Sprintf("10.20.1.%d", i+10))))).To(Succeed())
			s := fixture.Session(ns, name+"-a", name, "win11")
			Expect(k8sClient.Create(ctx, s)).To(Succeed())
			s.Status.Phase, s.Status.MAC, s.Status.Script = bootv1.SessionReady, macs[i], script(ns, s.Name)
			Expect(k8sClient.Status().Update(ctx, s)).To(Succeed())
			sessions[i] = s
		}
		Eventually(func() int { _, s := a.Table().Len(); return s }, 10*time.Second).Should(Equal(n))

		before := time.Now().Truncate(time.Second)
		for _, hw := range macs {
			_, err := dhcpClient(a, hw).Request(ctx, ipxeUserClass...)
			Expect(err).NotTo(HaveOccurred())
		}
		after := time.Now()
		Eventually(func(g Gomega) {
			for _, s := range sessions {
				var cur bootv1.BootSession
				g.Expect(k8sClient.Get(ctx, client.ObjectKeyFromObject(s), &cur)).To(Succeed())
				g.Expect(cur.Status.Timeline.DHCP).NotTo(BeNil(), s.Name)
				g.Expect(cur.Status.Timeline.DHCP.Time).To(BeTemporally(">=", before), s.Name)
				g.Expect(cur.Status.Timeline.DHCP.Time).To(BeTemporally("<=", after), "%s: the ACK's time, not the write's", s.Name)
			}
		}, 15*time.Second, 250*time.Millisecond).Should(Succeed())
	})

	It("records an unknown PXE client once as a discovered machine", func() {
		unknown := "52:54:00:aa:bb:cc"
		c := dhcpClient(a, unknown)
		for range 3 {
			_, err := c.DiscoverOffer(ctx, ipxeUserClass...)
			Expect(err).To(HaveOccurred(), "unknown MACs get no offer")
		}
		var m bootv1.Machine
		Eventually(func() error {
			return k8sClient.Get(ctx, types.NamespacedName{Namespace: ns, Name: "discovered-525400aabbcc"}, &m)
		}, 10*time.Second).Should(Succeed())
		Expect(m.Spec.MAC).To(Equal(unknown))
		Expect(m.Spec.BootPolicy).To(Equal(bootv1.BootPolicyLocalBoot))
		Expect(m.Labels).To(HaveKeyWithValue(bootv1.DiscoveredLabel, "true"))
		var list bootv1.MachineList
		Expect(k8sClient.List(ctx, &list, client.InNamespace(ns))).To(Succeed())
		Expect(list.Items).To(HaveLen(1))
	})

	It("asks for a session for an AutoSession machine and long-polls until it is Ready", func() {
		m := fixture.Machine(ns, "seat-031", fixture.WithMAC(mac), fixture.WithImage("win11"),
			fixture.WithBootPolicy(bootv1.BootPolicyAutoSession))
		Expect(k8sClient.Create(ctx, m)).To(Succeed())
		Eventually(func() bool { _, ok := a.Table().Machine(mustMAC(mac)); return ok }, 10*time.Second).Should(BeTrue())

		body := make(chan string, 1)
		go func() {
			defer GinkgoRecover()
			body <- httpGet(a, "/boot/"+mac+".ipxe")
		}()
		// The controller's part: see the request, create the session, make it Ready.
		Eventually(func(g Gomega) {
			g.Expect(k8sClient.Get(ctx, client.ObjectKeyFromObject(m), m)).To(Succeed())
			g.Expect(m.Annotations).To(HaveKey(SessionRequestedAnnotation))
		}, 10*time.Second).Should(Succeed())
		s := fixture.Session(ns, "seat-031-auto", "seat-031", "win11")
		Expect(k8sClient.Create(ctx, s)).To(Succeed())
		makeReady(ctx, s)
		Eventually(body, 15*time.Second).Should(Receive(Equal(s.Status.Script)))
	})
})

var _ = Describe("Boot agent without its API server", Ordered, func() {
	It("keeps answering DHCP and serving scripts from its cache", func() {
		ctx := context.Background()
		// An API server of its own, to stop.
		own, cfg, err := startOwnAPIServer()
		Expect(err).NotTo(HaveOccurred())
		c, err := client.New(cfg, client.Options{Scheme: k8sClient.Scheme()})
		Expect(err).NotTo(HaveOccurred())
		ns := "default"
		a := startAgent(cfg, ns)
		Expect(c.Create(ctx, fixture.Machine(ns, "seat-031", fixture.WithMAC(mac), fixture.WithAddress("10.20.0.131")))).To(Succeed())
		s := fixture.Session(ns, "seat-031-a", "seat-031", "win11")
		Expect(c.Create(ctx, s)).To(Succeed())
		s.Status = bootv1.BootSessionStatus{Phase: bootv1.SessionReady, MAC: mac, Script: script(ns, s.Name)}
		Expect(c.Status().Update(ctx, s)).To(Succeed())
		Eventually(func() string { return httpGet(a, "/boot/"+mac+".ipxe") }, 10*time.Second).Should(Equal(s.Status.Script))

		By("stopping kube-apiserver and etcd")
		_ = own.Stop() // kills them when a graceful stop takes over a second
		Expect(c.List(ctx, &bootv1.MachineList{})).NotTo(Succeed(), "the API server is gone")

		lease, err := dhcpClient(a, mac).Request(ctx, ipxeUserClass...)
		Expect(err).NotTo(HaveOccurred())
		Expect(lease.ACK.YourIPAddr.String()).To(Equal("10.20.0.131"))
		Expect(httpGet(a, "/boot/"+mac+".ipxe")).To(Equal(s.Status.Script))
	})
})

func mustMAC(s string) net.HardwareAddr {
	m, err := net.ParseMAC(s)
	Expect(err).NotTo(HaveOccurred())
	return m
}
