package e2e

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	bootv1 "github.com/ggnet/ggnet/api/v1alpha1"
	"github.com/ggnet/ggnet/internal/lab"
	"github.com/ggnet/ggnet/internal/scheme"
	"github.com/ggnet/ggnet/internal/testenv"
)

// The examples of docs/examples, run as they are written: each is read from
// the repository and only the values its header marks as site-specific are
// replaced with the lab's.

// siteHost is the site's router, DHCP and TFTP server on the lab's boot LAN
// (the examples' 10.20.0.1); the agent is lab.ServerIP (their 10.20.0.2).
const siteHost = "10.99.0.2"

var exampleAddr = regexp.MustCompile(`\b10\.20\.0\.(\d+)\b`)

// renderExample reads docs/examples/name and puts the lab's values in place
// of the site-specific ones: the boot LAN 10.20.0.0/24 becomes the lab's
// 10.99.0.0/24, with the router (10.20.0.1) and the agent (10.20.0.2) at the
// lab's addresses, and each of paths (a site path the header names) becomes
// its value. Every path must be in the file, and no 10.20.0.x may be left.
func renderExample(name string, paths map[string]string) string {
	GinkgoHelper()
	b, err := os.ReadFile(filepath.Join(testenv.RepoRoot(), "docs", "examples", name))
	Expect(err).NotTo(HaveOccurred())
	s := exampleAddr.ReplaceAllStringFunc(string(b), func(a string) string {
		n, _ := strconv.Atoi(exampleAddr.FindStringSubmatch(a)[1])
		switch n {
		case 1:
			return siteHost
		case 2:
			return lab.ServerIP
		}
		return "10.99.0." + strconv.Itoa(n)
	})
	for from, to := range paths {
		Expect(s).To(ContainSubstring(from), "%s names %s", name, from)
		s = strings.ReplaceAll(s, from, to)
	}
	Expect(s).NotTo(ContainSubstring("10.20.0."))
	return s
}

// siteServer runs a program inside the site host until the spec ends; its
// output goes to <dir>/<name>.out.
func siteServer(site *lab.Host, dir, name string, env []string, args ...string) func() string {
	GinkgoHelper()
	out := filepath.Join(dir, name+".out")
	f, err := os.Create(out)
	Expect(err).NotTo(HaveOccurred())
	defer f.Close()
	// ip netns exec execs the program: the PID is the server's.
	cmd := exec.Command("ip", append([]string{"netns", "exec", site.Netns, name}, args...)...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	Expect(cmd.Start()).To(Succeed())
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	DeferCleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
	})
	log := func() string { b, _ := os.ReadFile(out); return string(b) }
	Consistently(exited, 300*time.Millisecond).ShouldNot(BeClosed(), func() string { return name + " ended:\n" + log() })
	return log
}

// externalMachine makes a Machine with no reserved address, as the examples
// want: the site's DHCP server gives it one.
func externalMachine(mac string) *bootv1.Machine {
	GinkgoHelper()
	nextMAC++
	m := &bootv1.Machine{ObjectMeta: metav1.ObjectMeta{Namespace: lab.Namespace, Name: fmt.Sprintf("site-seat-%d", nextMAC)},
		Spec: bootv1.MachineSpec{MAC: mac, ImageRef: &bootv1.LocalObjectReference{Name: "demo"}, BootPolicy: bootv1.BootPolicyManual}}
	Expect(l.Client.Create(ctx, m)).To(Succeed())
	return m
}

var _ = Describe("docs/examples", Ordered, func() {
	var site *lab.Host
	var dir string

	BeforeAll(func() {
		dir = GinkgoT().TempDir()
		By("the agent as the examples want it: no script token, the boot LAN's ARP binds addresses to MACs")
		l.Kill("bootagent")
		Expect(l.StartAgentWith("--require-script-token=false", "--bind-neighbors=true")).To(Succeed())
		DeferCleanup(func() {
			l.Kill("bootagent")
			Expect(l.StartAgent()).To(Succeed())
		})
		var err error
		site, err = l.AddHost("site", siteHost)
		Expect(err).NotTo(HaveOccurred())

		By("the boot node behind the firewall example (nftables.conf), loaded for real")
		rules := filepath.Join(dir, "nftables.conf")
		Expect(os.WriteFile(rules, []byte(renderExample("nftables.conf", map[string]string{`"eth1"`: `"` + lab.Bridge + `"`})), 0o600)).To(Succeed())
		out, err := exec.Command("nft", "-c", "-f", rules).CombinedOutput()
		Expect(err).NotTo(HaveOccurred(), "nft -c: %s", out)
		out, err = exec.Command("nft", "-f", rules).CombinedOutput()
		Expect(err).NotTo(HaveOccurred(), "nft -f: %s", out)
		DeferCleanup(func() {
			out, err := exec.Command("nft", "delete", "table", "inet", "ggnet").CombinedOutput()
			Expect(err).NotTo(HaveOccurred(), string(out))
		})
	})

	// bootThrough powers on a BIOS VM whose MAC has leading zeros in its
	// bytes, with a session, and waits for the demo disk to boot; it
	// returns the VM's console.
	bootThrough := func(mac string) string {
		GinkgoHelper()
		m := externalMachine(mac)
		s := session(m, m.Name, bootv1.WritebackDiscard)
		b := boot(m)
		Expect(b.Count).To(Equal(1))
		// The script URL iPXE fetched: the MAC in two hex digits a byte.
		// iPXE shows the URL of a script's chain with the colons escaped.
		Expect(b.Serial).To(MatchRegexp(regexp.QuoteMeta(lab.HTTPBase+"/boot/")+strings.ReplaceAll(mac, ":", "(:|%3A)")+`\.ipxe`), "iPXE fetched the machine's script from the agent")
		Expect(l.Client.Get(ctx, client.ObjectKeyFromObject(s), s)).To(Succeed())
		Expect(s.Status.Timeline.ScriptServed).NotTo(BeNil())
		stop(s)
		return b.Serial
	}

	It("isc-dhcpd.conf: ISC dhcpd hands a BIOS PC to GGnet and it boots", func() {
		conf := filepath.Join(dir, "dhcpd.conf")
		Expect(os.WriteFile(conf, []byte(renderExample("isc-dhcpd.conf", nil)), 0o600)).To(Succeed())
		leases := filepath.Join(dir, "dhcpd.leases")
		Expect(os.WriteFile(leases, nil, 0o600)).To(Succeed())
		log := siteServer(site, dir, "dhcpd", nil, "-4", "-f", "-d", "-cf", conf, "-lf", leases, "-pf", filepath.Join(dir, "dhcpd.pid"), "eth0")
		mac := "52:54:00:0e:01:0a"
		bootThrough(mac)
		Expect(log()).To(MatchRegexp(`DHCPACK on 10\.99\.0\.\d+ to `+mac), "the site's dhcpd gave the address")
	})

	It("dnsmasq.conf: dnsmasq hands a BIOS PC to GGnet and it boots", func() {
		conf := filepath.Join(dir, "dnsmasq.conf")
		Expect(os.WriteFile(conf, []byte(renderExample("dnsmasq.conf", nil)), 0o600)).To(Succeed())
		log := siteServer(site, dir, "dnsmasq", nil, "-k", "-C", conf, "--user=root", "--log-dhcp", "--log-facility=-",
			"--pid-file="+filepath.Join(dir, "dnsmasq.pid"), "--dhcp-leasefile="+filepath.Join(dir, "dnsmasq.leases"))
		mac := "52:54:00:0e:02:0b"
		bootThrough(mac)
		Expect(log()).To(MatchRegexp(`DHCPACK\(eth0\) 10\.99\.0\.\d+ `+mac), "the site's dnsmasq gave the address")
	})

	It("kea-dhcp4.conf: Kea hands a BIOS PC to GGnet and it boots", func() {
		conf := filepath.Join(dir, "kea-dhcp4.conf")
		Expect(os.WriteFile(conf, []byte(renderExample("kea-dhcp4.conf",
			map[string]string{"/var/lib/kea/kea-leases4.csv": filepath.Join(dir, "kea-leases4.csv")})), 0o600)).To(Succeed())
		log := siteServer(site, dir, "kea-dhcp4", []string{"KEA_PIDFILE_DIR=" + dir, "KEA_LOCKFILE_DIR=" + dir}, "-c", conf)
		mac := "52:54:00:0e:03:0c"
		bootThrough(mac)
		Expect(log()).To(MatchRegexp(`DHCP4_LEASE_ALLOC .*hwtype=1 `+mac+`.* lease 10\.99\.0\.\d+ has been allocated`), "the site's Kea gave the address")
	})

	It("boot.ipxe on the site's TFTP server (tftpd-hpa), handed out by dnsmasq-site-tftp.conf: the PC boots", func() {
		root := filepath.Join(dir, "tftp")
		Expect(os.Mkdir(root, 0o755)).To(Succeed())
		Expect(os.WriteFile(filepath.Join(root, "boot.ipxe"), []byte(renderExample("boot.ipxe", nil)), 0o644)).To(Succeed())
		siteServer(site, dir, "in.tftpd", nil, "-L", "-v", "-v", "-u", "root", "-a", siteHost+":69", "-s", root)
		conf := filepath.Join(dir, "dnsmasq-site-tftp.conf")
		Expect(os.WriteFile(conf, []byte(renderExample("dnsmasq-site-tftp.conf", nil)), 0o600)).To(Succeed())
		siteServer(site, dir, "dnsmasq", nil, "-k", "-C", conf, "--user=root", "--log-dhcp", "--log-facility=-",
			"--pid-file="+filepath.Join(dir, "dnsmasq-tftp.pid"), "--dhcp-leasefile="+filepath.Join(dir, "dnsmasq-tftp.leases"))
		mac := "52:54:00:0e:04:0d"
		serial := bootThrough(mac)
		Expect(serial).To(ContainSubstring("tftp://"+siteHost+"/boot.ipxe"), "iPXE ran boot.ipxe from the site's TFTP server")
	})

	It("nftables.conf: the boot LAN reaches the boot ports and nothing else on the node", func() {
		// A listener on every address of the boot node, on a port the rules
		// do not open (as the kubelet's 10250 or the agent's metrics).
		ln, err := net.Listen("tcp", ":10250")
		Expect(err).NotTo(HaveOccurred())
		defer ln.Close()
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				c.Close()
			}
		}()
		dial := func(port string) error {
			_, err := site.Run("timeout", "3", "bash", "-c", "exec 3<>/dev/tcp/"+lab.ServerIP+"/"+port)
			return err
		}
		Expect(dial("8880")).To(Succeed(), "the boot HTTP port is open to the boot LAN")
		Expect(dial("3260")).To(Succeed(), "the iSCSI portal is open to the boot LAN")
		Expect(dial("10250")).NotTo(Succeed(), "any other port of the node is closed to the boot LAN")
		c, err := net.DialTimeout("tcp", "127.0.0.1:10250", 3*time.Second)
		Expect(err).NotTo(HaveOccurred(), "the node itself still reaches it")
		c.Close()
	})
})

var _ = Describe("docs/examples/audit-policy.yaml", func() {
	It("a real kube-apiserver logs GGnet's writes with their bodies, status writes without, and no Secret's data", func() {
		dir := GinkgoT().TempDir()
		auditLog := filepath.Join(dir, "audit.log")
		// kube-apiserver's own output, for a start that fails.
		apiLog, err := os.Create(filepath.Join(dir, "kube-apiserver.log"))
		Expect(err).NotTo(HaveOccurred())
		DeferCleanup(apiLog.Close)
		env, cfg, err := testenv.Start(func(e *envtest.Environment) {
			e.ControlPlaneStopTimeout = 2 * time.Second
			api := e.ControlPlane.GetAPIServer()
			api.Out, api.Err = apiLog, apiLog
			// The lab's network namespace has no default route, from which
			// kube-apiserver would pick the address it advertises (it
			// exits without one), and it refuses a loopback one: the
			// lab's address, as the lab's own API server is given.
			api.Configure().
				Set("advertise-address", lab.ServerIP).
				Set("audit-policy-file", filepath.Join(testenv.RepoRoot(), "docs", "examples", "audit-policy.yaml")).
				Set("audit-log-path", auditLog).
				Set("audit-log-mode", "blocking")
		})
		if err != nil {
			out, _ := os.ReadFile(apiLog.Name())
			if len(out) > 4000 {
				out = out[len(out)-4000:]
			}
			Fail(fmt.Sprintf("%v\nkube-apiserver's output (its end):\n%s", err, out))
		}
		stopped := false
		DeferCleanup(func() {
			if !stopped {
				_ = env.Stop()
			}
		})
		c, err := client.New(cfg, client.Options{Scheme: scheme.New()})
		Expect(err).NotTo(HaveOccurred())
		const secretValue = "AuditMustNotSeeThis1"
		Expect(c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "cafe"}})).To(Succeed())
		Expect(c.Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: "cafe", Name: "chap"},
			Data: map[string][]byte{"password": []byte(secretValue)}})).To(Succeed())
		var sec corev1.Secret
		Expect(c.Get(ctx, client.ObjectKey{Namespace: "cafe", Name: "chap"}, &sec)).To(Succeed())
		m := &bootv1.Machine{ObjectMeta: metav1.ObjectMeta{Namespace: "cafe", Name: "seat-1"},
			Spec: bootv1.MachineSpec{MAC: "52:54:00:aa:00:01", BootPolicy: bootv1.BootPolicyManual}}
		Expect(c.Create(ctx, m)).To(Succeed())
		s := &bootv1.BootSession{ObjectMeta: metav1.ObjectMeta{Namespace: "cafe", Name: "s1"}, Spec: bootv1.BootSessionSpec{
			MachineRef: bootv1.LocalObjectReference{Name: "seat-1"}, ImageRef: bootv1.LocalObjectReference{Name: "demo"}}}
		Expect(c.Create(ctx, s)).To(Succeed())
		Expect(c.Get(ctx, client.ObjectKeyFromObject(s), s)).To(Succeed())
		s.Status.Phase = bootv1.SessionPending
		Expect(c.Status().Update(ctx, s)).To(Succeed())
		Expect(c.Patch(ctx, s, client.RawPatch("application/merge-patch+json", []byte(`{"spec":{"stopped":true}}`)))).To(Succeed())
		Expect(env.Stop()).To(Succeed())
		stopped = true

		raw, err := os.ReadFile(auditLog)
		Expect(err).NotTo(HaveOccurred())
		Expect(string(raw)).NotTo(ContainSubstring(secretValue))
		Expect(string(raw)).NotTo(ContainSubstring("QXVkaXRNdXN0Tm90U2VlVGhpczE"), "nor its base64")
		type entry struct {
			Level     string `json:"level"`
			Verb      string `json:"verb"`
			ObjectRef struct {
				APIGroup    string `json:"apiGroup"`
				Resource    string `json:"resource"`
				Subresource string `json:"subresource"`
				Name        string `json:"name"`
			} `json:"objectRef"`
			RequestObject  json.RawMessage `json:"requestObject"`
			ResponseObject json.RawMessage `json:"responseObject"`
		}
		var got []string
		sc := bufio.NewScanner(strings.NewReader(string(raw)))
		sc.Buffer(nil, 1<<20)
		for sc.Scan() {
			var e entry
			Expect(json.Unmarshal(sc.Bytes(), &e)).To(Succeed())
			r := e.ObjectRef
			if r.Resource == "secrets" {
				Expect(e.Level).To(Equal("Metadata"))
				Expect(e.RequestObject).To(BeEmpty())
				Expect(e.ResponseObject).To(BeEmpty())
			}
			if r.APIGroup != bootv1.GroupVersion.Group {
				continue
			}
			bodies := "no bodies"
			if len(e.RequestObject) > 0 && len(e.ResponseObject) > 0 {
				bodies = "bodies"
			}
			res := r.Resource
			if r.Subresource != "" {
				res += "/" + r.Subresource
			}
			got = append(got, fmt.Sprintf("%s %s %s: %s", e.Level, e.Verb, res, bodies))
		}
		Expect(sc.Err()).NotTo(HaveOccurred())
		Expect(got).To(ContainElements(
			"RequestResponse create machines: bodies",
			"RequestResponse create bootsessions: bodies",
			"Metadata update bootsessions/status: no bodies",
			"RequestResponse patch bootsessions: bodies",
		))
		for _, g := range got {
			Expect(g).NotTo(MatchRegexp(`^\S+ (get|list|watch) `), "reads of GGnet's objects are not logged")
		}
	})
})
