package helm

import (
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"

	"github.com/ggnet/ggnet/internal/testenv"
)

// TestStorageAgentFlags: the storage role's image and metrics values reach
// its flags; its health and metrics listener gets a port and the kubelet's
// probes there (none when it is off); an image path root is mounted
// read-only at its own path, and only when set.
func TestStorageAgentFlags(t *testing.T) {
	for _, tc := range []struct {
		name, values string
		args         []string
		metricsPort  int32 // 0: no listener
		pathRoot     string
	}{{
		name:        "defaults",
		args:        []string{"--image-max-virtual-size-gib=512", "--image-stall-timeout=60s", "--storage-metrics-listen=:8882"},
		metricsPort: 8882,
	}, {
		name: "set",
		values: `
agent:
  storage: {imagePathRoot: /srv/images/, imageMaxVirtualSizeGiB: 64, imageStallTimeout: 2m30s, metricsListen: "$(HOST_IP):9200"}
`,
		args: []string{"--image-path-root=/srv/images/", "--image-max-virtual-size-gib=64", "--image-stall-timeout=2m30s",
			"--storage-metrics-listen=$(HOST_IP):9200"},
		metricsPort: 9200,
		pathRoot:    "/srv/images/",
	}, {
		name:   "metrics off",
		values: `agent: {storage: {metricsListen: "-", replication: {enabled: false}}}`,
		args:   []string{"--storage-metrics-listen=-"},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			g := NewWithT(t)
			pods := podSpecs(t, render(t, tc.values))
			p := pods[storageName]
			c := p.Containers[0]
			g.Expect(c.Args).To(ContainElements(tc.args))
			if tc.pathRoot == "" {
				g.Expect(c.Args).NotTo(ContainElement(HavePrefix("--image-path-root")), "path sources refused")
			}
			if tc.metricsPort == 0 {
				g.Expect(c.Ports).To(BeEmpty())
				g.Expect(c.LivenessProbe).To(BeNil())
				g.Expect(c.ReadinessProbe).To(BeNil())
			} else {
				g.Expect(c.Ports[0]).To(Equal(corev1.ContainerPort{Name: "metrics", ContainerPort: tc.metricsPort}))
				g.Expect(c.LivenessProbe.HTTPGet.Path).To(Equal("/healthz"))
				g.Expect(c.LivenessProbe.HTTPGet.Port.String()).To(Equal("metrics"))
				g.Expect(c.ReadinessProbe.HTTPGet.Path).To(Equal("/readyz"))
				g.Expect(c.ReadinessProbe.HTTPGet.Port.String()).To(Equal("metrics"))
			}
			// The boot agent's listener is another port: both roles may run
			// on one node, with hostNetwork.
			boot := pods["ggnet-ggnet-boot"].Containers[0]
			g.Expect(boot.Ports[len(boot.Ports)-1].ContainerPort).NotTo(Equal(tc.metricsPort))

			var mount *corev1.VolumeMount
			for i, m := range c.VolumeMounts {
				if m.Name == "image-path-root" {
					mount = &c.VolumeMounts[i]
				}
			}
			if tc.pathRoot == "" {
				g.Expect(mount).To(BeNil())
				g.Expect(hostPaths(p)).To(HaveLen(2), "the data and tgtd's socket directories only")
				return
			}
			g.Expect(mount).NotTo(BeNil())
			g.Expect(mount.ReadOnly).To(BeTrue())
			g.Expect(hostPaths(p)).To(HaveKeyWithValue(tc.pathRoot, tc.pathRoot), "at the path Images name")
			g.Expect(hostPaths(pods[tgtdName])).NotTo(HaveKey(tc.pathRoot), "tgtd never reads sources")
		})
	}
}

// TestStorageAgentReplication: the storage agents serve replicas to each
// other on the node's (or the storage network's) address, never 0.0.0.0,
// with the release's replication Secret and the bandwidth cap; off, no flag
// and no port.
func TestStorageAgentReplication(t *testing.T) {
	for _, tc := range []struct {
		name, values string
		args         []string
		port         int32 // 0: off
		role         bool  // a Role for the Secret in the release's namespace
	}{{
		name: "defaults",
		args: []string{"--replication-address=$(HOST_IP):3262", "--replication-secret=ggnet-system/ggnet-ggnet-replication", "--replication-bandwidth=0"},
		port: 3262,
	}, {
		name:   "set",
		values: `agent: {storage: {replication: {address: 10.9.0.5, port: 4000, bandwidth: 125000000}}}`,
		args:   []string{"--replication-address=10.9.0.5:4000", "--replication-bandwidth=125000000"},
		port:   4000,
	}, {
		name:   "a quantity with one watched namespace",
		values: "watchNamespaces: [cafe]\nagent: {storage: {replication: {bandwidth: 100Mi}, metricsListen: \"-\"}}",
		args:   []string{"--replication-bandwidth=100Mi", "--replication-secret=ggnet-system/ggnet-ggnet-replication"},
		port:   3262,
		role:   true,
	}, {
		name:   "off",
		values: `agent: {storage: {replication: {enabled: false}}}`,
	}} {
		t.Run(tc.name, func(t *testing.T) {
			g := NewWithT(t)
			objs := render(t, tc.values)
			c := podSpecs(t, objs)[storageName].Containers[0]
			role := find(objs, "Role", "ggnet-ggnet-storage-replication")
			if tc.port == 0 {
				g.Expect(c.Args).NotTo(ContainElement(HavePrefix("--replication")))
				g.Expect(c.Ports).NotTo(ContainElement(HaveField("Name", "replication")))
				g.Expect(role).To(BeNil())
				return
			}
			g.Expect(c.Args).To(ContainElements(tc.args))
			g.Expect(c.Ports).To(ContainElement(corev1.ContainerPort{Name: "replication", ContainerPort: tc.port}))
			if !tc.role {
				g.Expect(role).To(BeNil(), "the storage agent's ClusterRole reads Secrets")
				return
			}
			g.Expect(role).NotTo(BeNil())
			g.Expect(role.GetNamespace()).To(Equal("ggnet-system"))
			r := typed[rbacv1.Role](t, role)
			g.Expect(r.Rules).To(Equal([]rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"secrets"},
				ResourceNames: []string{"ggnet-ggnet-replication"}, Verbs: []string{"get"}}}))
			rb := typed[rbacv1.RoleBinding](t, find(objs, "RoleBinding", "ggnet-ggnet-storage-replication"))
			g.Expect(rb.Subjects).To(Equal([]rbacv1.Subject{{Kind: "ServiceAccount", Name: "ggnet-ggnet-storage", Namespace: "ggnet-system"}}))
		})
	}
	for _, bad := range []string{"agent.storage.replication.address=0.0.0.0", "agent.storage.replication.port=0",
		"agent.storage.replication.bandwidth=-5", "agent.storage.replication.bandwidth=fast"} {
		out, err := helm(t, "template", "ggnet", chart, "-n", "ggnet-system", "--set", bad)
		NewWithT(t).Expect(err).To(HaveOccurred(), "%s: %s", bad, out)
	}
}

// TestStorageAgentRefusedValues: an image path root that holds the data
// directory or lies in it, and malformed values, fail at install.
func TestStorageAgentRefusedValues(t *testing.T) {
	for _, tc := range []struct{ set, want string }{
		{"agent.storage.imagePathRoot=/", "must not hold one another"},
		{"agent.storage.imagePathRoot=/var/lib", "must not hold one another"},
		{"agent.storage.imagePathRoot=/var/lib/ggnet", "must not hold one another"},
		{"agent.storage.imagePathRoot=/var/lib/ggnet/", "must not hold one another"},
		{"agent.storage.imagePathRoot=/var/lib/ggnet/images", "must not hold one another"},
		{"agent.storage.imagePathRoot=images", "imagePathRoot"},
		{"agent.storage.imageMaxVirtualSizeGiB=0", "imageMaxVirtualSizeGiB"},
		{"agent.storage.imageStallTimeout=soon", "imageStallTimeout"},
		{"agent.storage.metricsListen=metrics", "metricsListen"},
	} {
		t.Run(tc.set, func(t *testing.T) {
			g := NewWithT(t)
			out, err := helm(t, "template", "ggnet", chart, "--set", tc.set)
			g.Expect(err).To(HaveOccurred())
			g.Expect(out).To(ContainSubstring(tc.want))
		})
	}
	g := NewWithT(t)
	out, err := helm(t, "template", "ggnet", chart, "--set", "agent.storage.imagePathRoot=/var/lib/ggnet-images")
	g.Expect(err).NotTo(HaveOccurred(), "a sibling of the data directory is fine: %s", out)
}

// TestChartFlagsExist: every flag the chart passes to a binary, with every
// switch on, is one that binary defines (-help lists them): a renamed or
// missing flag would stop the container at start.
func TestChartFlagsExist(t *testing.T) {
	g := NewWithT(t)
	bins := t.TempDir()
	build := exec.Command("go", "build", "-o", bins+"/", "./cmd/bootagent", "./cmd/manager")
	build.Dir = testenv.RepoRoot()
	out, err := build.CombinedOutput()
	g.Expect(err).NotTo(HaveOccurred(), "go build: %s", out)
	defined := func(bin string) map[string]bool {
		out, _ := exec.Command(filepath.Join(bins, bin), "-help").CombinedOutput()
		flags := map[string]bool{}
		for _, m := range regexp.MustCompile(`(?m)^\s+-([a-z0-9-]+)`).FindAllStringSubmatch(string(out), -1) {
			flags[m[1]] = true
		}
		g.Expect(flags).NotTo(BeEmpty(), "%s -help: %s", bin, out)
		return flags
	}
	agent, manager := defined("bootagent"), defined("manager")
	for _, values := range []string{"", `
watchNamespaces: [cafe]
agent:
  boot: {dhcpMode: proxy, interfaces: [eno2], bindNeighbors: true, discovery: {enabled: true}}
  storage: {imagePathRoot: /srv/images, tgtControlPort: 3}
`, "agent: {storage: {targetDriver: lio}}"} {
		for name, p := range podSpecs(t, render(t, values)) {
			flags := agent
			switch name {
			case "ggnet-ggnet-manager":
				flags = manager
			case tgtdName:
				continue // tgtd's own command line, run by TestStorageAgentCapabilities
			}
			for _, a := range p.Containers[0].Args {
				if !strings.HasPrefix(a, "-") {
					continue
				}
				flag, _, _ := strings.Cut(strings.TrimLeft(a, "-"), "=")
				g.Expect(flags).To(HaveKey(flag), "%s passes %s", name, a)
			}
		}
	}
}
