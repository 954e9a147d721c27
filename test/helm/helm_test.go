// Package helm tests the chart: lint, render with default, full and bad
// values, and install into a real API server, then checks that each role
// is allowed what it says and refused the rest (SubjectAccessReviews).
package helm

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	authv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/ggnet/ggnet/internal/scheme"
	"github.com/ggnet/ggnet/internal/testenv"
)

var chart = filepath.Join(testenv.RepoRoot(), "charts", "ggnet")

// readInputs reads the chart and config/ in the test process, once: helm
// and kubectl read them in subprocesses, which go test's cache does not
// see, so a chart change would otherwise leave a cached pass.
var readInputs = sync.OnceFunc(func() {
	for _, dir := range []string{chart, filepath.Join(testenv.RepoRoot(), "config")} {
		_ = filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
			if err == nil && !d.IsDir() {
				_, _ = os.ReadFile(p)
			}
			return nil
		})
	}
})

func helmBin(t *testing.T) string {
	readInputs()
	out, err := exec.Command(filepath.Join(testenv.RepoRoot(), "hack", "helm.sh")).Output()
	if err != nil {
		t.Fatalf("building helm (hack/helm.sh): %v", err)
	}
	return strings.TrimSpace(string(out))
}

func helm(t *testing.T, args ...string) (string, error) {
	out, err := exec.Command(helmBin(t), args...).CombinedOutput()
	return string(out), err
}

// objects parses rendered manifests.
func objects(t *testing.T, manifests string) []*unstructured.Unstructured {
	var out []*unstructured.Unstructured
	d := utilyaml.NewYAMLOrJSONDecoder(bytes.NewBufferString(manifests), 4096)
	for {
		u := &unstructured.Unstructured{}
		if err := d.Decode(&u.Object); errors.Is(err, io.EOF) {
			return out
		} else if err != nil {
			t.Fatal(err)
		}
		if len(u.Object) > 0 {
			out = append(out, u)
		}
	}
}

func find(objs []*unstructured.Unstructured, kind, name string) *unstructured.Unstructured {
	for _, o := range objs {
		if o.GetKind() == kind && (name == "" || o.GetName() == name) {
			return o
		}
	}
	return nil
}

func TestLintAndTemplate(t *testing.T) {
	g := NewWithT(t)
	out, err := helm(t, "lint", chart)
	g.Expect(err).NotTo(HaveOccurred(), out)

	out, err = helm(t, "template", "ggnet", chart, "-n", "ggnet-system")
	g.Expect(err).NotTo(HaveOccurred(), out)
	objs := objects(t, out)
	for _, crd := range []string{"machines.boot.ggnet.io", "images.boot.ggnet.io", "bootsessions.boot.ggnet.io"} {
		o := find(objs, "CustomResourceDefinition", crd)
		g.Expect(o).NotTo(BeNil(), crd)
		g.Expect(o.GetAnnotations()).To(HaveKeyWithValue("helm.sh/resource-policy", "keep"))
	}
	g.Expect(find(objs, "Deployment", "ggnet-ggnet-manager")).NotTo(BeNil())
	g.Expect(out).To(ContainSubstring(`{name: GOMEMLIMIT, value: "160MiB"}`))
	boot := find(objs, "DaemonSet", "ggnet-ggnet-boot")
	g.Expect(boot).NotTo(BeNil())
	hostNet, _, _ := unstructured.NestedBool(boot.Object, "spec", "template", "spec", "hostNetwork")
	g.Expect(hostNet).To(BeTrue())
	g.Expect(out).NotTo(ContainSubstring("--dhcp-interfaces"), "by default the agent answers DHCP on the interface of its server IP only")
	g.Expect(find(objs, "DaemonSet", "ggnet-ggnet-storage")).NotTo(BeNil())
	g.Expect(find(objs, "ServiceMonitor", "")).To(BeNil())
	for _, r := range []string{"ggnet-viewer", "ggnet-operator", "ggnet-admin"} {
		g.Expect(find(objs, "ClusterRole", r)).NotTo(BeNil(), r)
	}
	g.Expect(find(objs, "ClusterRole", "ggnet-operator").GetLabels()).To(HaveKeyWithValue("rbac.authorization.k8s.io/aggregate-to-edit", "true"))

	// Full values: every switch the other way.
	full := filepath.Join(t.TempDir(), "full.yaml")
	g.Expect(os.WriteFile(full, []byte(`
crds: {install: true, keep: false}
image: {registry: registry.cafe.internal/ggnet, tag: "0.1.0", pullPolicy: Always}
imagePullSecrets: [{name: regcred}]
manager:
  replicas: 3
  metrics: {serviceMonitor: {enabled: true, interval: 15s}}
  nodeSelector: {node-role.kubernetes.io/control-plane: ""}
agent:
  boot:
    dhcpMode: proxy
    interfaces: [eno2]
    uefiBootFile: snponly.efi
    fallback: exit
    discovery: {enabled: true, namespace: cafe}
  storage:
    targetDriver: lio
    dataDir: /srv/ggnet
userRoles: {enabled: true, aggregate: false}
`), 0o600)).To(Succeed())
	out, err = helm(t, "template", "ggnet", chart, "-n", "ggnet-system", "-f", full)
	g.Expect(err).NotTo(HaveOccurred(), out)
	objs = objects(t, out)
	g.Expect(find(objs, "ServiceMonitor", "")).NotTo(BeNil())
	g.Expect(find(objs, "CustomResourceDefinition", "machines.boot.ggnet.io").GetAnnotations()).NotTo(HaveKey("helm.sh/resource-policy"))
	g.Expect(out).To(ContainSubstring("--dhcp-mode=proxy"))
	g.Expect(out).To(ContainSubstring("--dhcp-interfaces=eno2"))
	g.Expect(out).To(ContainSubstring("containerPort: 4011"))
	g.Expect(out).To(ContainSubstring("--discovery-namespace=cafe"))
	g.Expect(out).To(ContainSubstring("image: registry.cafe.internal/ggnet/bootagent:0.1.0"))
	g.Expect(out).To(ContainSubstring("privileged: true"), "LIO writes configfs")
	g.Expect(out).To(ContainSubstring("path: /sys/kernel/config"))
	g.Expect(find(objs, "ClusterRole", "ggnet-operator").GetLabels()).NotTo(HaveKey("rbac.authorization.k8s.io/aggregate-to-edit"))

	// Bad values fail at install with a message.
	for bad, want := range map[string]string{
		"agent.boot.dhcpMode=magic":          "dhcpMode",
		"agent.storage.targetDriver=iet":     "targetDriver",
		"manager.replicas=0":                 "replicas",
		"agent.storage.dataDir=relative/dir": "dataDir",
		"typo=1":                             "typo",
		"manager.goMemLimit=lots":            "goMemLimit",
	} {
		out, err := helm(t, "template", "ggnet", chart, "--set", bad)
		g.Expect(err).To(HaveOccurred(), bad)
		g.Expect(out).To(ContainSubstring(want), bad)
	}
}

func TestInstall(t *testing.T) {
	g := NewWithT(t)
	env, cfg, err := testenv.Start(func(e *envtest.Environment) { e.CRDDirectoryPaths = nil; e.ErrorIfCRDPathMissing = false })
	g.Expect(err).NotTo(HaveOccurred())
	t.Cleanup(func() { _ = env.Stop() })
	user, err := env.AddUser(envtest.User{Name: "installer", Groups: []string{"system:masters"}}, nil)
	g.Expect(err).NotTo(HaveOccurred())
	kc, _ := user.KubeConfig()
	kubeconfig := filepath.Join(t.TempDir(), "kubeconfig")
	g.Expect(os.WriteFile(kubeconfig, kc, 0o600)).To(Succeed())

	out, err := helm(t, "install", "ggnet", chart, "-n", "ggnet-system", "--create-namespace", "--kubeconfig", kubeconfig)
	g.Expect(err).NotTo(HaveOccurred(), out)
	g.Expect(out).To(ContainSubstring("User roles: ggnet-viewer, ggnet-operator"), "NOTES.txt")

	c, err := client.New(cfg, client.Options{Scheme: scheme.New()})
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(apiextensionsv1.AddToScheme(c.Scheme())).To(Succeed())
	ctx := context.Background()
	for _, name := range []string{"machines.boot.ggnet.io", "images.boot.ggnet.io", "bootsessions.boot.ggnet.io"} {
		g.Eventually(func() bool {
			var crd apiextensionsv1.CustomResourceDefinition
			if c.Get(ctx, client.ObjectKey{Name: name}, &crd) != nil {
				return false
			}
			for _, cond := range crd.Status.Conditions {
				if cond.Type == apiextensionsv1.Established && cond.Status == apiextensionsv1.ConditionTrue {
					return true
				}
			}
			return false
		}, 30*time.Second).Should(BeTrue(), name+" established")
	}

	// The kustomize bases (config/default: CRDs, namespace, the chart rendered
	// with defaults) are accepted by the API server too.
	assets, err := testenv.AssetsDir()
	g.Expect(err).NotTo(HaveOccurred())
	kout, err := exec.Command(filepath.Join(assets, "kubectl"), "--kubeconfig", kubeconfig, "apply", "--dry-run=server",
		"-k", filepath.Join(testenv.RepoRoot(), "config", "default")).CombinedOutput()
	g.Expect(err).NotTo(HaveOccurred(), string(kout))
	g.Expect(string(kout)).To(ContainSubstring("daemonset.apps/ggnet-ggnet-boot"))

	// User roles bound in a namespace, as a café admin would.
	for user, role := range map[string]string{"vic": "ggnet-viewer", "olga": "ggnet-operator", "adam": "ggnet-admin"} {
		g.Expect(c.Create(ctx, &rbacv1.RoleBinding{
			ObjectMeta: metav1.ObjectMeta{Namespace: "ggnet-system", Name: user},
			RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: role},
			Subjects:   []rbacv1.Subject{{APIGroup: "rbac.authorization.k8s.io", Kind: "User", Name: user}},
		})).To(Succeed())
	}

	sa := func(name string) string { return "system:serviceaccount:ggnet-system:ggnet-ggnet-" + name }
	for _, tc := range []struct {
		user, verb, group, resource, sub, ns string
		allowed                              bool
	}{
		{sa("manager"), "patch", "boot.ggnet.io", "bootsessions", "status", "cafe", true},
		{sa("manager"), "create", "", "secrets", "", "cafe", true},
		{sa("manager"), "create", "coordination.k8s.io", "leases", "", "ggnet-system", true},
		{sa("manager"), "create", "", "pods", "", "cafe", false},
		{sa("manager"), "delete", "", "nodes", "", "", false},
		{sa("boot"), "create", "boot.ggnet.io", "machines", "", "cafe", true},
		{sa("boot"), "patch", "boot.ggnet.io", "bootsessions", "status", "cafe", true},
		{sa("boot"), "delete", "boot.ggnet.io", "machines", "", "cafe", false},
		// The session Secrets' informer selects by label; RBAC cannot, so
		// the boot agent may read Secrets where it serves (watchNamespaces
		// narrows that to one namespace), and write none.
		{sa("boot"), "watch", "", "secrets", "", "cafe", true},
		{sa("boot"), "create", "", "secrets", "", "cafe", false},
		{sa("boot"), "update", "", "secrets", "", "cafe", false},
		{sa("boot"), "create", "", "events", "", "cafe", true},
		{sa("boot"), "update", "boot.ggnet.io", "images", "", "cafe", false},
		{sa("storage"), "get", "", "secrets", "", "cafe", true},
		{sa("storage"), "patch", "boot.ggnet.io", "images", "status", "cafe", true},
		{sa("storage"), "update", "boot.ggnet.io", "bootsessions", "", "cafe", true},
		{sa("storage"), "create", "boot.ggnet.io", "machines", "", "cafe", false},
		{sa("storage"), "create", "", "secrets", "", "cafe", false},
		// The storage agents' Leases (their liveness): the agent holds its
		// own, the manager reads them.
		// Its Lease lives in its pod's namespace (the release's): a Role
		// there, never a ClusterRole, so a storage node cannot rewrite the
		// manager's leader Lease, kube-system's leaders', the kubelets' node
		// Leases (kube-node-lease) or any other.
		{sa("storage"), "create", "coordination.k8s.io", "leases", "", "ggnet-system", true},
		{sa("storage"), "get", "coordination.k8s.io", "leases", "", "ggnet-system", true},
		{sa("storage"), "update", "coordination.k8s.io", "leases", "", "ggnet-system", true},
		{sa("storage"), "delete", "coordination.k8s.io", "leases", "", "ggnet-system", false},
		{sa("storage"), "patch", "coordination.k8s.io", "leases", "", "ggnet-system", false},
		{sa("storage"), "update", "coordination.k8s.io", "leases", "", "kube-system", false},
		{sa("storage"), "update", "coordination.k8s.io", "leases", "", "kube-node-lease", false},
		{sa("storage"), "create", "coordination.k8s.io", "leases", "", "kube-node-lease", false},
		{sa("storage"), "update", "coordination.k8s.io", "leases", "", "cafe", false},
		{sa("storage"), "create", "coordination.k8s.io", "leases", "", "cafe", false},
		{sa("storage"), "get", "coordination.k8s.io", "leases", "", "kube-system", false},
		{sa("storage"), "list", "coordination.k8s.io", "leases", "", "", false},
		{sa("manager"), "watch", "coordination.k8s.io", "leases", "", "cafe", true},
		{sa("manager"), "list", "coordination.k8s.io", "leases", "", "", true},
		// The manager writes only its leader election Lease, in the
		// release's namespace, and only as leader election does.
		{sa("manager"), "update", "coordination.k8s.io", "leases", "", "ggnet-system", true},
		{sa("manager"), "delete", "coordination.k8s.io", "leases", "", "ggnet-system", false},
		{sa("manager"), "patch", "coordination.k8s.io", "leases", "", "ggnet-system", false},
		{sa("manager"), "update", "coordination.k8s.io", "leases", "", "kube-system", false},
		{sa("manager"), "update", "coordination.k8s.io", "leases", "", "kube-node-lease", false},
		{sa("manager"), "create", "coordination.k8s.io", "leases", "", "cafe", false},
		{"vic", "list", "boot.ggnet.io", "bootsessions", "", "ggnet-system", true},
		{"vic", "create", "boot.ggnet.io", "bootsessions", "", "ggnet-system", false},
		{"olga", "create", "boot.ggnet.io", "bootsessions", "", "ggnet-system", true},
		{"olga", "patch", "boot.ggnet.io", "bootsessions", "", "ggnet-system", true},
		{"olga", "create", "boot.ggnet.io", "machines", "", "ggnet-system", false},
		{"olga", "create", "boot.ggnet.io", "bootsessions", "", "other", false},
		{"adam", "create", "boot.ggnet.io", "machines", "", "ggnet-system", true},
		{"adam", "delete", "boot.ggnet.io", "images", "", "ggnet-system", true},
		{"adam", "get", "", "secrets", "", "ggnet-system", false},
	} {
		sar := &authv1.SubjectAccessReview{Spec: authv1.SubjectAccessReviewSpec{User: tc.user,
			ResourceAttributes: &authv1.ResourceAttributes{Namespace: tc.ns, Verb: tc.verb, Group: tc.group, Resource: tc.resource, Subresource: tc.sub}}}
		if strings.HasPrefix(tc.user, "system:serviceaccount:") {
			sar.Spec.Groups = []string{"system:serviceaccounts", "system:serviceaccounts:ggnet-system"}
		}
		g.Expect(c.Create(ctx, sar)).To(Succeed())
		g.Expect(sar.Status.Allowed).To(Equal(tc.allowed), "%s %s %s/%s %s in %q", tc.user, tc.verb, tc.resource, tc.sub, tc.group, tc.ns)
	}

	// A second release serving one namespace: its manager and agents may
	// act there only, and read Nodes.
	g.Expect(c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "lab-cafe"}})).To(Succeed())
	out, err = helm(t, "install", "lab", chart, "-n", "lab-system", "--create-namespace", "--kubeconfig", kubeconfig,
		"--set", "crds.install=false", "--set", "userRoles.enabled=false", "--set", "watchNamespaces={lab-cafe}")
	g.Expect(err).NotTo(HaveOccurred(), out)
	g.Expect(out).To(ContainSubstring("The manager and the agents serve namespace lab-cafe only"), "NOTES.txt")
	labSA := func(name string) string { return "system:serviceaccount:lab-system:lab-ggnet-" + name }
	for _, tc := range []struct {
		user, verb, group, resource, sub, ns string
		allowed                              bool
	}{
		{labSA("storage"), "get", "", "secrets", "", "lab-cafe", true},
		{labSA("storage"), "get", "", "secrets", "", "cafe", false},
		{labSA("storage"), "list", "", "secrets", "", "", false},
		{labSA("storage"), "patch", "boot.ggnet.io", "bootsessions", "status", "lab-cafe", true},
		{labSA("storage"), "patch", "boot.ggnet.io", "bootsessions", "status", "cafe", false},
		{labSA("storage"), "list", "", "nodes", "", "", true},
		{labSA("boot"), "create", "boot.ggnet.io", "machines", "", "lab-cafe", true},
		{labSA("boot"), "create", "boot.ggnet.io", "machines", "", "cafe", false},
		{labSA("boot"), "watch", "", "secrets", "", "lab-cafe", true},
		{labSA("boot"), "watch", "", "secrets", "", "cafe", false},
		{labSA("boot"), "create", "", "events", "", "lab-cafe", true},
		{labSA("boot"), "list", "boot.ggnet.io", "bootsessions", "", "", false},
		{labSA("boot"), "list", "", "nodes", "", "", false},
		// The manager too (--namespace): its Role in lab-cafe, its Lease
		// in the release's namespace, Nodes cluster-wide, nothing else.
		{labSA("manager"), "create", "", "secrets", "", "lab-cafe", true},
		{labSA("manager"), "create", "", "secrets", "", "cafe", false},
		{labSA("manager"), "patch", "boot.ggnet.io", "bootsessions", "status", "lab-cafe", true},
		{labSA("manager"), "patch", "boot.ggnet.io", "bootsessions", "status", "cafe", false},
		{labSA("manager"), "list", "boot.ggnet.io", "machines", "", "", false},
		{labSA("manager"), "update", "coordination.k8s.io", "leases", "", "lab-system", true},
		{labSA("manager"), "update", "coordination.k8s.io", "leases", "", "cafe", false},
		{labSA("manager"), "watch", "coordination.k8s.io", "leases", "", "lab-cafe", true},
		{labSA("manager"), "update", "coordination.k8s.io", "leases", "", "lab-cafe", false},
		{labSA("manager"), "delete", "coordination.k8s.io", "leases", "", "lab-system", false},
		{labSA("storage"), "create", "coordination.k8s.io", "leases", "", "lab-cafe", true},
		{labSA("storage"), "update", "coordination.k8s.io", "leases", "", "lab-cafe", true},
		{labSA("storage"), "create", "coordination.k8s.io", "leases", "", "cafe", false},
		{labSA("storage"), "update", "coordination.k8s.io", "leases", "", "lab-system", false},
		{labSA("storage"), "update", "coordination.k8s.io", "leases", "", "ggnet-system", false},
		{labSA("storage"), "update", "coordination.k8s.io", "leases", "", "kube-system", false},
		{labSA("storage"), "update", "coordination.k8s.io", "leases", "", "kube-node-lease", false},
		{labSA("manager"), "list", "", "nodes", "", "", true},
	} {
		sar := &authv1.SubjectAccessReview{Spec: authv1.SubjectAccessReviewSpec{User: tc.user,
			Groups:             []string{"system:serviceaccounts", "system:serviceaccounts:lab-system"},
			ResourceAttributes: &authv1.ResourceAttributes{Namespace: tc.ns, Verb: tc.verb, Group: tc.group, Resource: tc.resource, Subresource: tc.sub}}}
		g.Expect(c.Create(ctx, sar)).To(Succeed())
		g.Expect(sar.Status.Allowed).To(Equal(tc.allowed), "%s %s %s/%s %s in %q", tc.user, tc.verb, tc.resource, tc.sub, tc.group, tc.ns)
	}
	// Its storage agents read the replication Secret in the release's
	// namespace, that one only, by name.
	for _, tc := range []struct {
		verb, name string
		allowed    bool
	}{{"get", "lab-ggnet-replication", true}, {"get", "other", false}, {"update", "lab-ggnet-replication", false}, {"list", "", false}} {
		sar := &authv1.SubjectAccessReview{Spec: authv1.SubjectAccessReviewSpec{User: labSA("storage"),
			Groups:             []string{"system:serviceaccounts", "system:serviceaccounts:lab-system"},
			ResourceAttributes: &authv1.ResourceAttributes{Namespace: "lab-system", Verb: tc.verb, Resource: "secrets", Name: tc.name}}}
		g.Expect(c.Create(ctx, sar)).To(Succeed())
		g.Expect(sar.Status.Allowed).To(Equal(tc.allowed), "storage %s secret %q in lab-system", tc.verb, tc.name)
	}
}
