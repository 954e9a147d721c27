package helm

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	. "github.com/onsi/gomega"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
)

// render renders the chart with values (YAML) and parses the result.
func render(t *testing.T, values string) []*unstructured.Unstructured {
	t.Helper()
	args := []string{"template", "ggnet", chart, "-n", "ggnet-system"}
	if values != "" {
		f := filepath.Join(t.TempDir(), "values.yaml")
		if err := os.WriteFile(f, []byte(values), 0o600); err != nil {
			t.Fatal(err)
		}
		args = append(args, "-f", f)
	}
	out, err := helm(t, args...)
	if err != nil {
		t.Fatalf("helm template: %v\n%s", err, out)
	}
	return objects(t, out)
}

// typed converts a rendered object to its API type.
func typed[T any](t *testing.T, u *unstructured.Unstructured) *T {
	t.Helper()
	if u == nil {
		t.Fatal("object not rendered")
	}
	var out T
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, &out); err != nil {
		t.Fatal(err)
	}
	return &out
}

// podSpecs are the pod templates of every Deployment and DaemonSet, by name.
func podSpecs(t *testing.T, objs []*unstructured.Unstructured) map[string]corev1.PodSpec {
	out := map[string]corev1.PodSpec{}
	for _, o := range objs {
		switch o.GetKind() {
		case "Deployment":
			out[o.GetName()] = typed[appsv1.Deployment](t, o).Spec.Template.Spec
		case "DaemonSet":
			out[o.GetName()] = typed[appsv1.DaemonSet](t, o).Spec.Template.Spec
		}
	}
	return out
}

func args(p corev1.PodSpec) []string { return p.Containers[0].Args }

// TestListeners: the boot agent's TFTP and HTTP listen on the boot address,
// health and metrics on their own port (probed there), the portal on the
// node's address; no listener on 0.0.0.0 unless asked.
func TestListeners(t *testing.T) {
	for _, tc := range []struct {
		name, values  string
		boot, storage []string // wanted arguments
		metricsPort   int32
	}{{
		name: "defaults",
		boot: []string{"--server-ip=$(HOST_IP)", "--tftp-listen=$(HOST_IP):69", "--http-listen=$(HOST_IP):8880",
			"--metrics-listen=:8881", "--require-script-token=true", "--http-max-conns=512", "--max-long-polls=1000",
			"--tftp-max-per-source=8"},
		storage:     []string{"--portal=$(HOST_IP):3260"},
		metricsPort: 8881,
	}, {
		name: "named addresses",
		values: `
agent:
  boot: {serverIP: 192.168.50.1, httpPort: 8080, metricsListen: "$(HOST_IP):9100", requireScriptToken: false,
         httpMaxConns: 64, maxLongPolls: 10, tftpMaxPerSource: 2, discovery: {enabled: true, max: 50}}
  storage: {portalAddress: 10.9.0.5, portalPort: 3261}
`,
		boot: []string{"--server-ip=192.168.50.1", "--tftp-listen=192.168.50.1:69", "--http-listen=192.168.50.1:8080",
			"--metrics-listen=$(HOST_IP):9100", "--require-script-token=false", "--http-max-conns=64", "--max-long-polls=10",
			"--tftp-max-per-source=2", "--discovery-max=50", "--discovery-namespace=ggnet-system"},
		storage:     []string{"--portal=10.9.0.5:3261"},
		metricsPort: 9100,
	}} {
		t.Run(tc.name, func(t *testing.T) {
			g := NewWithT(t)
			pods := podSpecs(t, render(t, tc.values))
			boot, storage := pods["ggnet-ggnet-boot"], pods["ggnet-ggnet-storage"]
			g.Expect(args(boot)).To(ContainElements(tc.boot))
			g.Expect(args(storage)).To(ContainElements(tc.storage))
			for _, a := range append(args(boot), args(storage)...) {
				g.Expect(a).NotTo(ContainSubstring("0.0.0.0"), a)
				if strings.HasPrefix(a, "--tftp-listen=") || strings.HasPrefix(a, "--http-listen=") || strings.HasPrefix(a, "--portal=") ||
					strings.HasPrefix(a, "--replication-address=") {
					g.Expect(a).NotTo(MatchRegexp(`=:`), "%s listens on every address", a)
				}
			}
			// The kubelet probes the metrics listener, not the boot LAN's HTTP port.
			c := boot.Containers[0]
			metrics := c.Ports[len(c.Ports)-1]
			g.Expect(metrics.Name).To(Equal("metrics"))
			g.Expect(metrics.ContainerPort).To(Equal(tc.metricsPort))
			g.Expect(c.LivenessProbe.HTTPGet.Port.String()).To(Equal("metrics"))
			g.Expect(c.ReadinessProbe.HTTPGet.Port.String()).To(Equal("metrics"))
		})
	}
}

// TestPodSecurity: seccomp RuntimeDefault everywhere, every capability
// dropped but the ones a role needs, no privilege escalation, read-only
// root file systems, a non-root manager; only LIO is privileged, and says why.
func TestPodSecurity(t *testing.T) {
	for _, tc := range []struct {
		name, values string
		pods         int                            // workloads rendered (tgtd with tgt only)
		add          map[string][]corev1.Capability // per workload; absent: privileged
	}{
		// NET_RAW: the IPv6 router advertisement responder's raw ICMPv6
		// socket (agent.boot.ipv6RA, default auto).
		{name: "defaults", pods: 4, add: map[string][]corev1.Capability{
			"ggnet-ggnet-manager": nil, "ggnet-ggnet-boot": {"NET_BIND_SERVICE", "NET_RAW"}, "ggnet-ggnet-storage": {"SETUID", "SETGID"}, "ggnet-ggnet-tgtd": nil}},
		{name: "no RA", values: "agent: {boot: {ipv6RA: \"off\"}}", pods: 4, add: map[string][]corev1.Capability{
			"ggnet-ggnet-manager": nil, "ggnet-ggnet-boot": {"NET_BIND_SERVICE"}, "ggnet-ggnet-storage": {"SETUID", "SETGID"}, "ggnet-ggnet-tgtd": nil}},
		{name: "no RA on an old kernel", values: "agent: {boot: {ipv6RA: \"off\", netRaw: true}}", pods: 4, add: map[string][]corev1.Capability{
			"ggnet-ggnet-manager": nil, "ggnet-ggnet-boot": {"NET_BIND_SERVICE", "NET_RAW"}, "ggnet-ggnet-storage": {"SETUID", "SETGID"}, "ggnet-ggnet-tgtd": nil}},
		{name: "lio", values: "agent: {storage: {targetDriver: lio}}", pods: 3, add: map[string][]corev1.Capability{
			"ggnet-ggnet-manager": nil, "ggnet-ggnet-boot": {"NET_BIND_SERVICE", "NET_RAW"}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := NewWithT(t)
			pods := podSpecs(t, render(t, tc.values))
			g.Expect(pods).To(HaveLen(tc.pods), "every workload checked")
			for name, p := range pods {
				g.Expect(p.SecurityContext).NotTo(BeNil(), name)
				g.Expect(p.SecurityContext.SeccompProfile).To(Equal(&corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault}), name)
				for _, c := range p.Containers {
					sc := c.SecurityContext
					g.Expect(sc).NotTo(BeNil(), name)
					g.Expect(sc.ReadOnlyRootFilesystem).To(HaveValue(BeTrue()), name)
					add, confined := tc.add[name]
					if !confined {
						g.Expect(sc.Privileged).To(HaveValue(BeTrue()), name)
						continue
					}
					g.Expect(sc.Privileged).To(Or(BeNil(), HaveValue(BeFalse())), name)
					g.Expect(sc.AllowPrivilegeEscalation).To(HaveValue(BeFalse()), name)
					g.Expect(sc.Capabilities).NotTo(BeNil(), name)
					g.Expect(sc.Capabilities.Drop).To(ConsistOf(corev1.Capability("ALL")), name)
					g.Expect(sc.Capabilities.Add).To(Equal(add), name)
				}
			}
			g.Expect(pods["ggnet-ggnet-manager"].SecurityContext.RunAsNonRoot).To(HaveValue(BeTrue()))
		})
	}
	// The one privileged setting says why, in the chart.
	g := NewWithT(t)
	out, err := helm(t, "template", "ggnet", chart, "--set", "agent.storage.targetDriver=lio")
	g.Expect(err).NotTo(HaveOccurred(), out)
	g.Expect(out).To(MatchRegexp(`(?s)configfs.*host's kernel.*privileged: true`))
}

// TestWatchNamespace: with a watched namespace the agents get Roles there
// and a ClusterRole only for Nodes, and watch only it; without,
// ClusterRoles. Either way, Leases are written through Roles only: the
// manager's leader election Lease and the storage agent's own, each in the
// namespace it lives in.
func TestWatchNamespace(t *testing.T) {
	g := NewWithT(t)
	objs := render(t, "")
	for _, r := range []string{"ggnet-ggnet-manager", "ggnet-ggnet-boot-agent", "ggnet-ggnet-storage-agent"} {
		g.Expect(find(objs, "ClusterRole", r)).NotTo(BeNil(), r)
		g.Expect(find(objs, "ClusterRoleBinding", r)).NotTo(BeNil(), r)
	}
	leaseRoles := func(objs []*unstructured.Unstructured, ns string) {
		t.Helper()
		roles := map[string]*rbacv1.Role{}
		for _, o := range objs {
			switch o.GetKind() {
			case "Role":
				roles[o.GetName()] = typed[rbacv1.Role](t, o)
			case "ClusterRole":
				for _, rule := range typed[rbacv1.ClusterRole](t, o).Rules {
					if slices.Contains(rule.Resources, "leases") {
						g.Expect(rule.Verbs).To(ConsistOf("get", "list", "watch"), "%s: no Lease written cluster-wide", o.GetName())
					}
				}
			}
		}
		for name, verbs := range map[string][]string{
			"ggnet-ggnet-manager-leader-election": {"create", "get", "update"},
			"ggnet-ggnet-storage-agent-lease":     {"create", "get", "update"},
		} {
			g.Expect(roles).To(HaveKey(name))
			want := ns
			if name == "ggnet-ggnet-manager-leader-election" {
				want = "ggnet-system" // --leader-election-namespace
			}
			g.Expect(roles[name].Namespace).To(Equal(want), name)
			var got []string
			for _, rule := range roles[name].Rules {
				if slices.Contains(rule.Resources, "leases") {
					g.Expect(rule.APIGroups).To(ConsistOf("coordination.k8s.io"), name)
					g.Expect(rule.ResourceNames).To(BeEmpty(), name)
					got = append(got, rule.Verbs...)
				}
			}
			g.Expect(got).To(ConsistOf(verbs), name)
			rb := typed[rbacv1.RoleBinding](t, find(objs, "RoleBinding", name))
			g.Expect(rb.Namespace).To(Equal(want), name)
			g.Expect(rb.RoleRef).To(Equal(rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "Role", Name: name}))
		}
	}
	leaseRoles(objs, "ggnet-system")
	for _, o := range objs {
		if o.GetKind() == "Role" {
			g.Expect(o.GetName()).To(Or(Equal("ggnet-ggnet-manager-leader-election"), Equal("ggnet-ggnet-storage-agent-lease")),
				"without a watched namespace the only Roles are the Leases'")
		}
	}
	for name, p := range podSpecs(t, objs) {
		for _, a := range args(p) {
			g.Expect(a).NotTo(HavePrefix("--namespace"), name)
		}
	}

	objs = render(t, "watchNamespaces: [cafe]\nagent: {boot: {discovery: {enabled: true}}}\n")
	leaseRoles(objs, "cafe")
	for _, r := range []string{"ggnet-ggnet-boot-agent", "ggnet-ggnet-storage-agent"} {
		role := find(objs, "Role", r)
		g.Expect(role).NotTo(BeNil(), r)
		g.Expect(role.GetNamespace()).To(Equal("cafe"))
		rb := typed[rbacv1.RoleBinding](t, find(objs, "RoleBinding", r))
		g.Expect(rb.Namespace).To(Equal("cafe"))
		g.Expect(rb.RoleRef).To(Equal(rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "Role", Name: r}))
		g.Expect(rb.Subjects[0].Namespace).To(Equal("ggnet-system"))
		for _, rule := range typed[rbacv1.Role](t, role).Rules {
			g.Expect(rule.Resources).NotTo(ContainElement("nodes"), r)
		}
	}
	// Nodes are cluster-scoped: the storage agent and the manager keep a
	// ClusterRole for them alone (TestManagerServesOneNamespace runs the
	// manager with exactly these roles); the boot agent needs none.
	g.Expect(find(objs, "ClusterRole", "ggnet-ggnet-boot-agent")).To(BeNil())
	cr := typed[rbacv1.ClusterRole](t, find(objs, "ClusterRole", "ggnet-ggnet-storage-agent"))
	for _, rule := range cr.Rules {
		g.Expect(rule.Resources).To(Or(ConsistOf("nodes"), ConsistOf("nodes/status")))
		if rule.Resources[0] == "nodes" {
			// patch: it announces its iSCSI portal on its own Node.
			g.Expect(rule.Verbs).To(ConsistOf("get", "list", "watch", "patch"))
		} else {
			// A condition on its own Node (orphaned persistent disks).
			g.Expect(rule.Verbs).To(ConsistOf("patch"))
		}
	}
	pods := podSpecs(t, objs)
	g.Expect(args(pods["ggnet-ggnet-manager"])).To(ContainElement("--namespace=cafe"))
	g.Expect(args(pods["ggnet-ggnet-boot"])).To(ContainElements("--namespace=cafe", "--discovery-namespace=cafe"))
	g.Expect(args(pods["ggnet-ggnet-storage"])).To(ContainElement("--namespace=cafe"))
}

// TestRefusedValues: values that would widen a listener or break the
// namespace model fail at install with a message.
func TestRefusedValues(t *testing.T) {
	for _, tc := range []struct{ set, want string }{
		{"agent.storage.portalAddress=0.0.0.0", "portalAddress"},
		{"agent.boot.serverIP=0.0.0.0", "serverIP"},
		{"agent.boot.serverIP=boot-lan", "serverIP"},
		{"agent.boot.metricsListen=metrics", "metricsListen"},
		{"agent.boot.httpMaxConns=0", "httpMaxConns"},
		{"agent.boot.discovery.max=0", "max"},
		{"watchNamespaces={cafe,lab}", "at most one"},
		{"watchNamespaces={Cafe}", "watchNamespaces"},
	} {
		t.Run(tc.set, func(t *testing.T) {
			g := NewWithT(t)
			out, err := helm(t, "template", "ggnet", chart, "--set", tc.set)
			g.Expect(err).To(HaveOccurred())
			g.Expect(out).To(ContainSubstring(tc.want))
		})
	}
	g := NewWithT(t)
	out, err := helm(t, "template", "ggnet", chart, "--set", "watchNamespaces={cafe}", "--set", "agent.boot.discovery.enabled=true",
		"--set", "agent.boot.discovery.namespace=lab")
	g.Expect(err).To(HaveOccurred())
	g.Expect(out).To(ContainSubstring(`discovery.namespace "lab" is not the watched namespace "cafe"`))
}
