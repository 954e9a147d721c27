package agent

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/netip"
	"net/url"
	"strings"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/dhcpv4/nclient4"
	"github.com/insomniacslk/dhcp/iana"
	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	"github.com/pin/tftp/v3"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	bootv1 "github.com/ggnet/ggnet/api/v1alpha1"
	"github.com/ggnet/ggnet/bootagent/table"
	"github.com/ggnet/ggnet/internal/fixture"
	"github.com/ggnet/ggnet/internal/ipxe"
)

const (
	mac = "52:54:00:12:34:31"
	// sessionToken is the session Secret's script token in these tests.
	sessionToken = "sessiontokensessiontokensession2"
	wrongToken   = "wrongtokenwrongtokenwrongtoken22"
)

var creds = ipxe.Credentials{Username: "seat-031", Password: "Passw0rdPassw0rd", TargetUsername: "target-031", TargetPassword: "Target0Target0Ta"}

// lastDHCPClient is closed when the next is made: they share the agent's
// client port.
var lastDHCPClient *nclient4.Client

func dhcpClient(a *Agent, hw string) *nclient4.Client {
	addr, err := a.Addr(context.Background(), "dhcp")
	Expect(err).NotTo(HaveOccurred())
	m, _ := net.ParseMAC(hw)
	if lastDHCPClient != nil {
		_ = lastDHCPClient.Close()
	}
	c, err := nclient4.New("", nclient4.WithUnicast(&net.UDPAddr{IP: net.IPv4zero, Port: int(a.cfg.Boot.DHCPClientPort)}),
		nclient4.WithHWAddr(m), nclient4.WithServerAddr(addr.(*net.UDPAddr)),
		nclient4.WithTimeout(500*time.Millisecond), nclient4.WithRetry(2))
	Expect(err).NotTo(HaveOccurred())
	lastDHCPClient = c
	DeferCleanup(c.Close)
	return c
}

var ipxeUserClass = []dhcpv4.Modifier{
	dhcpv4.WithOption(dhcpv4.OptClassIdentifier("PXEClient:Arch:00000:UNDI:002001")),
	dhcpv4.WithOption(dhcpv4.OptClientArch(iana.INTEL_X86PC)),
	dhcpv4.WithOption(dhcpv4.OptUserClass("iPXE")),
}

// httpGetStatus fetches path from the agent's listener name.
func httpGetStatus(a *Agent, name, path string) (int, string) {
	addr, err := a.Addr(context.Background(), name)
	Expect(err).NotTo(HaveOccurred())
	resp, err := http.Get(fmt.Sprintf("http://%s%s", addr, path))
	Expect(err).NotTo(HaveOccurred())
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	Expect(err).NotTo(HaveOccurred())
	return resp.StatusCode, string(b)
}

func httpGet(a *Agent, path string) string {
	_, body := httpGetStatus(a, "http", path)
	return body
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

func bootSession(ns, name string) ipxe.Session {
	return ipxe.Session{
		Name: ns + "/" + name, Image: "win11", Portal: "127.0.0.1:3260",
		TargetIQN: "iqn.2026-11.io.ggnet:" + name, InitiatorIQN: "iqn.2026-11.io.ggnet:initiator:" + name,
	}
}

// preview is the script the controller keeps in status.script.
func preview(ns, name string) string {
	s, err := ipxe.Render(bootSession(ns, name))
	Expect(err).NotTo(HaveOccurred())
	return s
}

// served is the script the agent serves: the preview with the credentials.
func served(ns, name string) string {
	s, err := ipxe.AddCredentials(preview(ns, name), creds)
	Expect(err).NotTo(HaveOccurred())
	return s
}

// makeReady plays the controller's part: the session Secret, then the
// session Ready with its target and preview.
func makeReady(ctx context.Context, c client.Client, s *bootv1.BootSession, hw, token string) {
	secret := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Namespace: s.Namespace, Name: s.Name + "-chap", Labels: map[string]string{bootv1.SessionSecretLabel: s.Name}},
		Data: map[string][]byte{
			bootv1.SecretKeyUsername: []byte(creds.Username), bootv1.SecretKeyPassword: []byte(creds.Password),
			bootv1.SecretKeyTargetUsername: []byte(creds.TargetUsername), bootv1.SecretKeyTargetPassword: []byte(creds.TargetPassword),
			bootv1.SecretKeyToken: []byte(token),
		},
	}
	Expect(c.Create(ctx, secret)).To(Succeed())
	b := bootSession(s.Namespace, s.Name)
	s.Status.Phase = bootv1.SessionReady
	s.Status.MAC = hw
	s.Status.Target = &bootv1.ISCSITarget{Portal: b.Portal, IQN: b.TargetIQN, LUN: b.LUN}
	s.Status.InitiatorIQN = b.InitiatorIQN
	s.Status.CHAPSecretRef = &bootv1.LocalObjectReference{Name: secret.Name}
	s.Status.Script = preview(s.Namespace, s.Name)
	Expect(c.Status().Update(ctx, s)).To(Succeed())
}

func scriptPath(hw, token string) string { return "/" + ipxe.ScriptPath(mustMAC(hw), token) }

func nonceOf(a *Agent, hw string) string {
	r, ok := a.Table().LookupMAC(mustMAC(hw))
	Expect(ok).To(BeTrue())
	Expect(ipxe.ValidToken(r.Token)).To(BeTrue())
	return r.Token
}

// forbiddenEvents lists the ScriptForbidden Events on a Machine.
func forbiddenEvents(ctx context.Context, ns, machine string) []corev1.Event {
	var list corev1.EventList
	Expect(k8sClient.List(ctx, &list, client.InNamespace(ns))).To(Succeed())
	var out []corev1.Event
	for _, e := range list.Items {
		if e.Reason == bootv1.ScriptForbiddenReason && e.InvolvedObject.Name == machine {
			out = append(out, e)
		}
	}
	return out
}

var _ = Describe("Boot agent", func() {
	var (
		ctx       context.Context
		ns        string
		a         *Agent
		neighbors *table.NeighborMap
	)
	BeforeEach(func() {
		ctx = context.Background()
		ns = newNamespace(ctx)
		neighbors = &table.NeighborMap{}
		// The test client's requests come from 127.0.0.1: the neighbour
		// table binds it to the machine's MAC.
		neighbors.Set(netip.MustParseAddr("127.0.0.1"), mustMAC(mac))
		a = startAgent(restCfg, ns, neighbors, func(c *Config) { c.Boot.DiscoveryMax = 2 })
	})

	It("hands out a token in DHCP and serves the session's script with its credentials only for it", func() {
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
		nonce := nonceOf(a, mac)
		Expect(lease.ACK.BootFileName).To(Equal("http://127.0.0.1:8880"+scriptPath(mac, nonce)), "the MAC's nonce while it has no session")

		By("falling back while there is no session")
		Expect(httpGet(a, scriptPath(mac, nonce))).To(ContainSubstring("no boot session for seat-031"))

		By("serving the script, credentials included, once the session is Ready and its Secret synced")
		s := fixture.Session(ns, "seat-031-a", "seat-031", "win11")
		Expect(k8sClient.Create(ctx, s)).To(Succeed())
		makeReady(ctx, k8sClient, s, mac, sessionToken)
		Eventually(func() string { return httpGet(a, scriptPath(mac, sessionToken)) }, 10*time.Second).Should(Equal(served(ns, s.Name)))
		Expect(served(ns, s.Name)).To(ContainSubstring("set password " + creds.Password))
		lease, err := c.Request(ctx, ipxeUserClass...)
		Expect(err).NotTo(HaveOccurred())
		Expect(lease.ACK.BootFileName).To(Equal("http://127.0.0.1:8880"+scriptPath(mac, sessionToken)), "the session's token once it is served")
		got, err := tftpGet(a, ipxe.ScriptPath(mustMAC(mac), sessionToken))
		Expect(err).NotTo(HaveOccurred())
		Expect(got).To(Equal(served(ns, s.Name)))
		_, err = tftpGet(a, ipxe.ScriptPath(mustMAC(mac), wrongToken))
		Expect(err).To(MatchError(ContainSubstring("forbidden")), "TFTP refuses a wrong token")

		By("recording the script request and the DHCP ACK in the session's timeline")
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
		Eventually(func() int { code, _ := httpGetStatus(a, "http", scriptPath(mac, sessionToken)); return code }, 10*time.Second).
			Should(Equal(http.StatusForbidden), "its token goes with it")
		Expect(httpGet(a, scriptPath(mac, nonceOf(a, mac)))).To(ContainSubstring("no boot session"))
	})

	It("refuses a wrong token or an unbound address with 403, one Event and no side effect", func() {
		m := fixture.Machine(ns, "seat-031", fixture.WithMAC(mac), fixture.WithAddress("10.20.0.131"))
		Expect(k8sClient.Create(ctx, m)).To(Succeed())
		s := fixture.Session(ns, "seat-031-a", "seat-031", "win11")
		Expect(k8sClient.Create(ctx, s)).To(Succeed())
		makeReady(ctx, k8sClient, s, mac, sessionToken)
		Eventually(func() bool { _, ok := a.Table().Session(mustMAC(mac)); return ok }, 10*time.Second).Should(BeTrue())

		for _, path := range []string{scriptPath(mac, wrongToken), scriptPath(mac, wrongToken) + "?failed=0x0216eb3c",
			scriptPath(mac, ""), "/boot/" + nonceOf(a, "52:54:00:12:34:31")[:31] + "x/" + mac + ".ipxe"} {
			status, body := httpGetStatus(a, "http", path)
			Expect(status).To(Equal(http.StatusForbidden), path)
			Expect(body).NotTo(ContainSubstring("set password"))
		}
		By("the right token from an address not bound to the MAC")
		neighbors.Set(netip.MustParseAddr("127.0.0.1"), nil)
		status, _ := httpGetStatus(a, "http", scriptPath(mac, sessionToken))
		Expect(status).To(Equal(http.StatusForbidden))
		status, _ = httpGetStatus(a, "http", scriptPath(mac, sessionToken)+"?failed=0x0216eb3c")
		Expect(status).To(Equal(http.StatusForbidden))

		By("one rate-limited Event on the Machine, without the token")
		Eventually(func() []corev1.Event { return forbiddenEvents(ctx, ns, "seat-031") }, 10*time.Second).Should(HaveLen(1))
		ev := forbiddenEvents(ctx, ns, "seat-031")[0]
		Expect(ev.Type).To(Equal(corev1.EventTypeWarning))
		Expect(ev.InvolvedObject.UID).To(Equal(m.UID))
		Expect(ev.Message).To(ContainSubstring(mac))
		Expect(ev.Message).NotTo(ContainSubstring(wrongToken))
		Expect(ev.Message).NotTo(ContainSubstring(sessionToken))

		By("no ScriptServed, no BootFailed")
		Consistently(func(g Gomega) {
			var cur bootv1.BootSession
			g.Expect(k8sClient.Get(ctx, client.ObjectKeyFromObject(s), &cur)).To(Succeed())
			g.Expect(cur.Status.Timeline.ScriptServed).To(BeNil())
			g.Expect(meta.FindStatusCondition(cur.Status.Conditions, bootv1.BootFailedCondition)).To(BeNil())
		}, 2*time.Second, 200*time.Millisecond).Should(Succeed())
		Expect(forbiddenEvents(ctx, ns, "seat-031")).To(HaveLen(1))

		By("the right token from the bound address")
		neighbors.Set(netip.MustParseAddr("127.0.0.1"), mustMAC(mac))
		status, body := httpGetStatus(a, "http", scriptPath(mac, sessionToken))
		Expect(status).To(Equal(http.StatusOK))
		Expect(body).To(Equal(served(ns, s.Name)))
		Expect(body).To(ContainSubstring("set password " + creds.Password))
		Expect(body).To(ContainSubstring("set reverse-password " + creds.TargetPassword))
	})

	It("does not serve the session of a Conflict machine or of a non-owner in another namespace", func() {
		const hw = "52:54:00:12:34:77" // no other spec's Machine has it: this agent watches every namespace
		const mineToken = "minetokenminetokenminetokenmine2"
		neighbors.Set(netip.MustParseAddr("127.0.0.1"), mustMAC(hw))
		owner := fixture.Machine(ns, "seat-077", fixture.WithMAC(hw))
		Expect(k8sClient.Create(ctx, owner)).To(Succeed())
		time.Sleep(1100 * time.Millisecond) // creation timestamps have a one-second resolution

		By("a newer Machine with the same MAC in another namespace, with a Ready session")
		other := newNamespace(ctx)
		intruder := fixture.Machine(other, "seat-077", fixture.WithMAC(hw))
		Expect(k8sClient.Create(ctx, intruder)).To(Succeed())
		s := fixture.Session(other, "seat-077-a", "seat-077", "win11")
		Expect(k8sClient.Create(ctx, s)).To(Succeed())
		makeReady(ctx, k8sClient, s, hw, sessionToken)
		wide := startAgent(restCfg, "", neighbors, func(c *Config) { c.Boot.Discovery = false })
		status := func(path string) func() int {
			return func() int { code, _ := httpGetStatus(wide, "http", path); return code }
		}
		Eventually(func() bool { return wide.Table().HasMachine(mustMAC(hw)) }, 10*time.Second).Should(BeTrue())
		Consistently(status(scriptPath(hw, sessionToken)), time.Second, 200*time.Millisecond).Should(Equal(http.StatusForbidden))
		_, body := httpGetStatus(wide, "http", scriptPath(hw, nonceOf(wide, hw)))
		Expect(body).To(ContainSubstring("no boot session for seat-077"))
		Expect(body).NotTo(ContainSubstring("sanboot"))

		By("the owner's own session, until the owner has Conflict=True")
		Expect(k8sClient.Delete(ctx, intruder)).To(Succeed())
		mine := fixture.Session(ns, "seat-077-b", "seat-077", "win11")
		Expect(k8sClient.Create(ctx, mine)).To(Succeed())
		makeReady(ctx, k8sClient, mine, hw, mineToken)
		Eventually(func() string { return httpGet(wide, scriptPath(hw, mineToken)) }, 10*time.Second).Should(Equal(served(ns, mine.Name)))
		Expect(k8sClient.Get(ctx, client.ObjectKeyFromObject(owner), owner)).To(Succeed())
		meta.SetStatusCondition(&owner.Status.Conditions, metav1.Condition{Type: bootv1.ConflictCondition, Status: metav1.ConditionTrue,
			Reason: bootv1.DuplicateMACReason, Message: "test"})
		Expect(k8sClient.Status().Update(ctx, owner)).To(Succeed())
		Eventually(status(scriptPath(hw, mineToken)), 10*time.Second).Should(Equal(http.StatusForbidden))
		_, body = httpGetStatus(wide, "http", scriptPath(hw, nonceOf(wide, hw)))
		Expect(body).To(ContainSubstring("shares its MAC or address with another Machine"))
		Expect(body).NotTo(ContainSubstring("sanboot"))
	})

	It("caches only the labelled session Secrets", func() {
		Expect(k8sClient.Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "unrelated"},
			StringData: map[string]string{"password": "x"}})).To(Succeed())
		s := fixture.Session(ns, "seat-031-a", "seat-031", "win11")
		Expect(k8sClient.Create(ctx, s)).To(Succeed())
		makeReady(ctx, k8sClient, s, mac, sessionToken)
		Eventually(func() []string {
			var list corev1.SecretList
			Expect(a.cache.List(ctx, &list, client.InNamespace(ns))).To(Succeed())
			var names []string
			for _, s := range list.Items {
				names = append(names, s.Name)
			}
			return names
		}, 10*time.Second).Should(Equal([]string{"seat-031-a-chap"}))
	})

	It("records unknown PXE clients as discovered machines, at most --discovery-max", func() {
		for i := range 5 {
			unknown := fmt.Sprintf("52:54:00:aa:bb:%02x", i)
			_, err := dhcpClient(a, unknown).DiscoverOffer(ctx, ipxeUserClass...)
			Expect(err).To(HaveOccurred(), "unknown MACs get no offer")
		}
		var list bootv1.MachineList
		Eventually(func() []bootv1.Machine {
			Expect(k8sClient.List(ctx, &list, client.InNamespace(ns))).To(Succeed())
			return list.Items
		}, 10*time.Second).Should(HaveLen(2))
		Consistently(func() []bootv1.Machine {
			Expect(k8sClient.List(ctx, &list, client.InNamespace(ns))).To(Succeed())
			return list.Items
		}, 2*time.Second).Should(HaveLen(2))
		for _, m := range list.Items {
			Expect(m.Spec.BootPolicy).To(Equal(bootv1.BootPolicyLocalBoot))
			Expect(m.Labels).To(HaveKeyWithValue(bootv1.DiscoveredLabel, "true"))
		}
	})

	It("asks for a session for an AutoSession machine with its nonce and long-polls until it is Ready", func() {
		m := fixture.Machine(ns, "seat-031", fixture.WithMAC(mac), fixture.WithImage("win11"),
			fixture.WithBootPolicy(bootv1.BootPolicyAutoSession))
		Expect(k8sClient.Create(ctx, m)).To(Succeed())
		Eventually(func() bool { _, ok := a.Table().Machine(mustMAC(mac)); return ok }, 10*time.Second).Should(BeTrue())

		body := make(chan string, 1)
		go func() {
			defer GinkgoRecover()
			body <- httpGet(a, scriptPath(mac, nonceOf(a, mac)))
		}()
		// The controller's part: see the request, create the session, make it Ready.
		Eventually(func(g Gomega) {
			g.Expect(k8sClient.Get(ctx, client.ObjectKeyFromObject(m), m)).To(Succeed())
			g.Expect(m.Annotations).To(HaveKey(bootv1.SessionRequestedAnnotation))
		}, 10*time.Second).Should(Succeed())
		s := fixture.Session(ns, "seat-031-auto", "seat-031", "win11")
		Expect(k8sClient.Create(ctx, s)).To(Succeed())
		makeReady(ctx, k8sClient, s, mac, sessionToken)
		Eventually(body, 15*time.Second).Should(Receive(Equal(served(ns, s.Name))))
	})

	It("serves probes and metrics on their own listener", func() {
		status, _ := httpGetStatus(a, "metrics", "/readyz")
		Expect(status).To(Equal(http.StatusOK))
		status, body := httpGetStatus(a, "metrics", "/metrics")
		Expect(status).To(Equal(http.StatusOK))
		Expect(body).To(ContainSubstring("ggnet_dhcp_reply_seconds"))
		status, _ = httpGetStatus(a, "http", "/metrics")
		Expect(status).To(Equal(http.StatusNotFound), "not on the boot listener")
	})
})

var _ = Describe("Boot agent before its caches synced", func() {
	It("answers no DHCP and 503 for scripts", func() {
		// The API server behind a proxy that never answers for Secrets: the
		// Machine and BootSession caches sync, the Secret cache never does.
		ctx := context.Background()
		ns := newNamespace(ctx)
		Expect(k8sClient.Create(ctx, fixture.Machine(ns, "seat-031", fixture.WithMAC(mac), fixture.WithAddress("10.20.0.131")))).To(Succeed())
		transport, err := rest.TransportFor(restCfg)
		Expect(err).NotTo(HaveOccurred())
		target, err := url.Parse(restCfg.Host)
		Expect(err).NotTo(HaveOccurred())
		proxy := httputil.NewSingleHostReverseProxy(target)
		proxy.Transport = transport
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if strings.Contains(r.URL.Path, "/secrets") {
				<-r.Context().Done()
				return
			}
			proxy.ServeHTTP(w, r)
		}))
		DeferCleanup(srv.Close)
		neighbors := &table.NeighborMap{}
		neighbors.Set(netip.MustParseAddr("127.0.0.1"), mustMAC(mac))
		a := runAgent(&rest.Config{Host: srv.URL}, ns, neighbors)
		Eventually(func() bool { return a.Table().HasMachine(mustMAC(mac)) }, 10*time.Second).Should(BeTrue(), "Machines are watched")

		_, err = dhcpClient(a, mac).DiscoverOffer(ctx, ipxeUserClass...)
		Expect(err).To(HaveOccurred(), "no DHCP answer before the caches synced")
		code, _ := httpGetStatus(a, "http", scriptPath(mac, nonceOf(a, mac)))
		Expect(code).To(Equal(http.StatusServiceUnavailable))
		_, err = tftpGet(a, ipxe.ScriptPath(mustMAC(mac), nonceOf(a, mac)))
		Expect(err).To(HaveOccurred())
		code, _ = httpGetStatus(a, "metrics", "/readyz")
		Expect(code).To(Equal(http.StatusServiceUnavailable))
		_, body := httpGetStatus(a, "metrics", "/metrics")
		Expect(body).To(MatchRegexp(`ggnet_dhcp_packets_total\{result="not-ready",type="DISCOVER"\} [1-9]`))
		Expect(body).To(MatchRegexp(`ggnet_http_script_requests_total\{result="not-ready"\} 1`))
		Expect(a.synced.Load()).To(BeFalse())
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
		neighbors := &table.NeighborMap{}
		neighbors.Set(netip.MustParseAddr("127.0.0.1"), mustMAC(mac))
		a := startAgent(cfg, ns, neighbors)
		Expect(c.Create(ctx, fixture.Machine(ns, "seat-031", fixture.WithMAC(mac), fixture.WithAddress("10.20.0.131")))).To(Succeed())
		s := fixture.Session(ns, "seat-031-a", "seat-031", "win11")
		Expect(c.Create(ctx, s)).To(Succeed())
		makeReady(ctx, c, s, mac, sessionToken)
		Eventually(func() string { return httpGet(a, scriptPath(mac, sessionToken)) }, 10*time.Second).Should(Equal(served(ns, s.Name)))

		By("stopping kube-apiserver and etcd")
		_ = own.Stop() // kills them when a graceful stop takes over a second
		Expect(c.List(ctx, &bootv1.MachineList{})).NotTo(Succeed(), "the API server is gone")

		lease, err := dhcpClient(a, mac).Request(ctx, ipxeUserClass...)
		Expect(err).NotTo(HaveOccurred())
		Expect(lease.ACK.YourIPAddr.String()).To(Equal("10.20.0.131"))
		Expect(lease.ACK.BootFileName).To(HaveSuffix(scriptPath(mac, sessionToken)))
		Expect(httpGet(a, scriptPath(mac, sessionToken))).To(Equal(served(ns, s.Name)))
	})
})

func mustMAC(s string) net.HardwareAddr {
	m, err := net.ParseMAC(s)
	Expect(err).NotTo(HaveOccurred())
	return m
}
