package helm

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	bootv1 "github.com/ggnet/ggnet/api/v1alpha1"
	"github.com/ggnet/ggnet/internal/scheme"
	"github.com/ggnet/ggnet/internal/testbin"
	"github.com/ggnet/ggnet/internal/testenv"
)

// TestManagerServesOneNamespace runs the real manager binary as its
// ServiceAccount with exactly the RBAC the chart renders for
// watchNamespaces: [cafe] — a Role in cafe, a Role for its Lease in the
// release's namespace, a ClusterRole for Nodes alone — and checks that it
// reconciles Machines in cafe and leaves another namespace alone, and makes
// the replication Secret in the release's namespace.
func TestManagerServesOneNamespace(t *testing.T) {
	g := NewWithT(t)
	objs := render(t, "watchNamespaces: [cafe]\ncrds: {install: false}\nuserRoles: {enabled: false}\n")
	pods := podSpecs(t, objs)
	g.Expect(args(pods["ggnet-ggnet-manager"])).To(ContainElement("--namespace=cafe"))
	cr := typed[rbacv1.ClusterRole](t, find(objs, "ClusterRole", "ggnet-ggnet-manager"))
	for _, rule := range cr.Rules {
		g.Expect(rule.Resources).To(ConsistOf("nodes"), "the manager's only cluster-wide right is reading Nodes")
	}
	g.Expect(find(objs, "Role", "ggnet-ggnet-manager").GetNamespace()).To(Equal("cafe"))
	g.Expect(find(objs, "Role", "ggnet-ggnet-manager-leader-election").GetNamespace()).To(Equal("ggnet-system"))

	env, cfg, err := testenv.Start()
	g.Expect(err).NotTo(HaveOccurred())
	t.Cleanup(func() { _ = env.Stop() })
	c, err := client.New(cfg, client.Options{Scheme: scheme.New()})
	g.Expect(err).NotTo(HaveOccurred())
	ctx := context.Background()
	for _, ns := range []string{"ggnet-system", "cafe", "other"} {
		g.Expect(c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}})).To(Succeed())
	}
	for _, o := range objs {
		switch o.GetKind() {
		case "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding":
			if strings.HasPrefix(o.GetName(), "ggnet-ggnet-manager") {
				g.Expect(c.Create(ctx, o)).To(Succeed(), o.GetKind()+" "+o.GetName())
			}
		}
	}

	// The manager's kubeconfig acts as its ServiceAccount.
	admin, err := env.AddUser(envtest.User{Name: "installer", Groups: []string{"system:masters"}}, nil)
	g.Expect(err).NotTo(HaveOccurred())
	kc, err := admin.KubeConfig()
	g.Expect(err).NotTo(HaveOccurred())
	raw, err := clientcmd.Load(kc)
	g.Expect(err).NotTo(HaveOccurred())
	for _, a := range raw.AuthInfos {
		a.Impersonate = "system:serviceaccount:ggnet-system:ggnet-ggnet-manager"
		a.ImpersonateGroups = []string{"system:serviceaccounts", "system:serviceaccounts:ggnet-system", "system:authenticated"}
	}
	kubeconfig := filepath.Join(t.TempDir(), "kubeconfig")
	g.Expect(clientcmd.WriteToFile(*raw, kubeconfig)).To(Succeed())

	bin := testbin.Build(t, "./cmd/manager")
	metrics, probes := testbin.FreePort(t), testbin.FreePort(t)
	runCtx, cancel := context.WithCancel(ctx)
	cmd := exec.CommandContext(runCtx, bin, "--kubeconfig", kubeconfig, "--namespace=cafe",
		"--leader-elect", "--leader-election-namespace=ggnet-system", "--replication-secret=ggnet-ggnet-replication",
		fmt.Sprintf("--metrics-bind-address=127.0.0.1:%d", metrics),
		fmt.Sprintf("--health-probe-bind-address=127.0.0.1:%d", probes))
	logf, err := os.Create(filepath.Join(t.TempDir(), "manager.log"))
	g.Expect(err).NotTo(HaveOccurred())
	cmd.Stdout, cmd.Stderr = logf, logf
	g.Expect(cmd.Start()).To(Succeed())
	t.Cleanup(func() {
		cancel()
		_ = cmd.Wait()
		if t.Failed() {
			b, _ := os.ReadFile(logf.Name())
			t.Logf("manager log:\n%s", b)
		}
	})

	machine := func(ns string) *bootv1.Machine {
		m := &bootv1.Machine{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "seat-1"},
			Spec: bootv1.MachineSpec{MAC: "52:54:00:aa:bb:0" + map[string]string{"cafe": "1", "other": "2"}[ns]}}
		g.Expect(c.Create(ctx, m)).To(Succeed())
		return m
	}
	mine, theirs := machine("cafe"), machine("other")
	ready := func(m *bootv1.Machine) func() int {
		return func() int {
			_ = c.Get(ctx, client.ObjectKeyFromObject(m), m)
			return len(m.Status.Conditions)
		}
	}
	g.Eventually(ready(mine), 60*time.Second, 200*time.Millisecond).ShouldNot(BeZero(), "the manager reconciles Machines in cafe")
	g.Consistently(ready(theirs), 3*time.Second, 500*time.Millisecond).Should(BeZero(), "and leaves other namespaces alone")
	g.Eventually(func() int {
		var sec corev1.Secret
		_ = c.Get(ctx, client.ObjectKey{Namespace: "ggnet-system", Name: "ggnet-ggnet-replication"}, &sec)
		return len(sec.Data["key"])
	}, 30*time.Second, 200*time.Millisecond).Should(Equal(32), "the manager makes the replication Secret in the release's namespace")
	b, err := os.ReadFile(logf.Name())
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(string(b)).NotTo(ContainSubstring("forbidden"), "the chart's Roles are all the manager needs")
}
