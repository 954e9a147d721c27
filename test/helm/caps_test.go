package helm

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"

	"github.com/ggnet/ggnet/bootagent/dhcp"
	"github.com/ggnet/ggnet/bootagent/target"
)

// The capability lists of the chart are proved by running what each agent
// does with exactly those capabilities, as uid 0 with no_new_privs (what
// allowPrivilegeEscalation=false sets), under setpriv. Needs root.

const bindHelperEnv = "GGNET_CAPS_BIND_HELPER"

// TestMain lets the test binary act as the boot agent's bind helper.
func TestMain(m *testing.M) {
	if os.Getenv(bindHelperEnv) != "" {
		os.Exit(bindAsBootAgent())
	}
	os.Exit(m.Run())
}

// bindAsBootAgent opens the boot agent's sockets as it does: DHCP on 67 and
// 4011 bound to an interface (SO_BINDTODEVICE), TFTP on 69 and HTTP and
// metrics on the boot address.
func bindAsBootAgent() int {
	fail := func(err error) int { fmt.Fprintln(os.Stderr, err); return 1 }
	for _, addr := range []string{":67", ":4011"} {
		c, err := dhcp.Listen("lo", addr)
		if err != nil {
			return fail(err)
		}
		defer c.Close()
	}
	u, err := net.ListenPacket("udp4", "127.0.0.1:69")
	if err != nil {
		return fail(err)
	}
	defer u.Close()
	for _, addr := range []string{"127.0.0.1:8880", "127.0.0.1:8881"} {
		l, err := net.Listen("tcp4", addr)
		if err != nil {
			return fail(err)
		}
		defer l.Close()
	}
	return 0
}

// setpriv runs name with only caps (uid 0, no_new_privs).
func setpriv(caps []corev1.Capability, name string, args ...string) *exec.Cmd {
	bounding := "-all"
	for _, c := range caps {
		bounding += ",+" + strings.ToLower(string(c))
	}
	return exec.Command("setpriv", append([]string{"--no-new-privs", "--inh-caps=-all", "--bounding-set=" + bounding, name}, args...)...)
}

func needRoot(t *testing.T, tools ...string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	for _, tool := range append(tools, "setpriv") {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s", tool)
		}
	}
}

// chartCaps are the capabilities the chart adds to a workload's container.
func chartCaps(t *testing.T, values, workload string) []corev1.Capability {
	p, ok := podSpecs(t, render(t, values))[workload]
	if !ok {
		t.Fatalf("%s not rendered", workload)
	}
	return p.Containers[0].SecurityContext.Capabilities.Add
}

// TestBootAgentCapabilities: the boot agent's sockets open with the chart's
// capabilities, in a network namespace of their own, and not with fewer.
func TestBootAgentCapabilities(t *testing.T) {
	needRoot(t, "unshare")
	caps := chartCaps(t, "", "ggnet-ggnet-boot")
	for _, tc := range []struct {
		name string
		caps []corev1.Capability
		ok   bool
	}{
		{"chart's", caps, true},
		{"none", nil, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := NewWithT(t)
			sp := setpriv(tc.caps, os.Args[0])
			cmd := exec.Command("unshare", append([]string{"--net"}, sp.Args...)...)
			cmd.Env = append(os.Environ(), bindHelperEnv+"=1")
			out, err := cmd.CombinedOutput()
			if tc.ok {
				g.Expect(err).NotTo(HaveOccurred(), string(out))
			} else {
				g.Expect(err).To(HaveOccurred())
				g.Expect(string(out)).To(ContainSubstring("permission denied"))
			}
		})
	}
}

// TestStorageAgentCapabilities: tgtd runs with the command line and the
// capabilities (none) of the chart's tgtd DaemonSet, answers its readiness
// probe, serves a LUN, and its management socket takes commands from a
// process with the storage agent's capabilities (SETUID and SETGID only).
func TestStorageAgentCapabilities(t *testing.T) {
	needRoot(t, "tgtd", "tgtadm", "iscsi-ls")
	g := NewWithT(t)

	disk := filepath.Join(t.TempDir(), "disk.img")
	g.Expect(os.WriteFile(disk, nil, 0o600)).To(Succeed())
	g.Expect(os.Truncate(disk, 8<<20)).To(Succeed())
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	g.Expect(err).NotTo(HaveOccurred())
	portal := l.Addr().String()
	l.Close()
	_, port, _ := net.SplitHostPort(portal)
	control := strconv.Itoa(20000 + os.Getpid()%10000)

	pods := podSpecs(t, render(t, fmt.Sprintf("agent: {storage: {portalAddress: 127.0.0.1, portalPort: %s, tgtControlPort: %s}}", port, control)))
	agentCaps := pods["ggnet-ggnet-storage"].Containers[0].SecurityContext.Capabilities.Add
	// SETUID and SETGID only drop qemu-img to nobody; nothing of tgt needs them.
	g.Expect(agentCaps).To(ConsistOf(corev1.Capability("SETUID"), corev1.Capability("SETGID")))
	c := pods["ggnet-ggnet-tgtd"].Containers[0]
	tgtdCaps := c.SecurityContext.Capabilities.Add
	g.Expect(tgtdCaps).To(BeEmpty())
	g.Expect(c.Args).To(ContainElement("portal=" + portal))

	// The chart's tgtd has GGnet's tgtd environment (target.TGTDEnv: glibc's
	// mmap threshold), and runs with it here.
	var env []string
	for _, e := range c.Env {
		if e.ValueFrom == nil {
			env = append(env, e.Name+"="+e.Value)
		}
	}
	g.Expect(env).To(ContainElements(target.TGTDEnv))
	tgtd := setpriv(tgtdCaps, c.Command[0], c.Args...)
	tgtd.Env = append(os.Environ(), env...)
	var log strings.Builder
	tgtd.Stdout, tgtd.Stderr = &log, &log
	g.Expect(tgtd.Start()).To(Succeed())
	t.Cleanup(func() {
		_ = tgtd.Process.Kill()
		_ = tgtd.Wait()
		matches, _ := filepath.Glob("/var/run/tgtd/socket." + control + "*")
		for _, m := range matches {
			_ = os.Remove(m)
		}
	})
	probe := c.ReadinessProbe.Exec.Command
	g.Eventually(func() error {
		out, err := setpriv(tgtdCaps, probe[0], probe[1:]...).CombinedOutput()
		if err != nil {
			return fmt.Errorf("readiness probe %v: %v: %s", probe, err, out)
		}
		return nil
	}, 10*time.Second, 100*time.Millisecond).Should(Succeed(), func() string { return log.String() })
	tgtadm := func(args ...string) error {
		out, err := setpriv(agentCaps, "tgtadm", append([]string{"-C", control, "--lld", "iscsi"}, args...)...).CombinedOutput()
		if err != nil {
			return fmt.Errorf("tgtadm %v: %v: %s", args, err, out)
		}
		return nil
	}
	iqn := "iqn.2026-11.io.ggnet:caps-test"
	g.Expect(tgtadm("--op", "new", "--mode", "target", "--tid", "1", "-T", iqn)).To(Succeed(), func() string { return log.String() })
	g.Expect(tgtadm("--op", "new", "--mode", "logicalunit", "--tid", "1", "--lun", "1", "-b", disk)).To(Succeed())
	g.Expect(tgtadm("--op", "bind", "--mode", "target", "--tid", "1", "-I", "127.0.0.1")).To(Succeed())

	out, err := exec.Command("iscsi-ls", "-s", "iscsi://"+portal).CombinedOutput()
	g.Expect(err).NotTo(HaveOccurred(), string(out))
	g.Expect(string(out)).To(ContainSubstring("Target:" + iqn))
	g.Expect(string(out)).To(MatchRegexp(`Lun:1\s+Type:DIRECT_ACCESS`))
}
