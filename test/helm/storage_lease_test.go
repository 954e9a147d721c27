package helm

import (
	"context"
	"strings"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	authenticationv1 "k8s.io/api/authentication/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	bootv1 "github.com/ggnet/ggnet/api/v1alpha1"
	"github.com/ggnet/ggnet/internal/scheme"
	"github.com/ggnet/ggnet/internal/testenv"
)

const nodeNameExtra = "authentication.kubernetes.io/node-name"

// TestStorageLeasePolicy proves the chart's ValidatingAdmissionPolicy on a
// real kube-apiserver: with the token of a pod on node-a (TokenRequest
// bound to the pod, as the kubelet mounts it), the storage agent's
// ServiceAccount writes its own Lease and no other node's; a token of the
// same ServiceAccount bound to no pod writes no Lease; the manager and an
// admin still write any.
func TestStorageLeasePolicy(t *testing.T) {
	g := NewWithT(t)
	const ns, saName = "ggnet-system", "ggnet-ggnet-storage"
	objs := render(t, "crds: {install: false}\nuserRoles: {enabled: false}\n")
	g.Expect(find(objs, "ValidatingAdmissionPolicy", "ggnet-ggnet-storage-lease")).NotTo(BeNil())
	g.Expect(find(objs, "ValidatingAdmissionPolicyBinding", "ggnet-ggnet-storage-lease")).NotTo(BeNil())
	off := render(t, "agent: {storage: {leasePolicy: false}}\n")
	g.Expect(find(off, "ValidatingAdmissionPolicy", "ggnet-ggnet-storage-lease")).To(BeNil(), "agent.storage.leasePolicy=false: no policy")
	g.Expect(find(off, "ValidatingAdmissionPolicyBinding", "ggnet-ggnet-storage-lease")).To(BeNil())

	env, cfg, err := testenv.Start()
	g.Expect(err).NotTo(HaveOccurred())
	t.Cleanup(func() { _ = env.Stop() })
	c, err := client.New(cfg, client.Options{Scheme: scheme.New()})
	g.Expect(err).NotTo(HaveOccurred())
	admin := kubernetes.NewForConfigOrDie(cfg)
	ctx := context.Background()
	g.Expect(c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}})).To(Succeed())
	for _, o := range objs {
		switch o.GetKind() {
		case "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding",
			"ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding":
			if o.GetKind() == "ServiceAccount" {
				o.SetNamespace(ns) // helm install sets it; helm template leaves it out
			}
			g.Expect(c.Create(ctx, o)).To(Succeed(), o.GetKind()+" "+o.GetName())
		}
	}

	// A node name past 239 characters gives a cut Lease name with a hash
	// (StorageLeaseName); its 222nd character is a ".", which the cut drops.
	long := strings.Repeat("l", 63) + "." + strings.Repeat("o", 63) + "." + strings.Repeat("n", 63) + "." +
		strings.Repeat("g", 29) + "." + strings.Repeat("x", 28)
	g.Expect(long).To(HaveLen(250))
	g.Expect(long[221]).To(BeEquivalentTo('.'))
	// Another long node sharing the first 200 characters.
	otherLong := long[:200] + strings.Repeat("y", 50)
	pods := map[string]*corev1.Pod{}
	for _, node := range []string{"node-a", "node-b", long} {
		g.Expect(c.Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: node}})).To(Succeed())
		// No kubelet runs: the pod object is what the token is bound to.
		p := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, GenerateName: "storage-"},
			Spec: corev1.PodSpec{NodeName: node, ServiceAccountName: saName,
				Containers: []corev1.Container{{Name: "bootagent", Image: "bootagent"}}},
		}
		g.Expect(c.Create(ctx, p)).To(Succeed())
		pods[node] = p
	}

	// asAgent is a client with a token of the storage agent's
	// ServiceAccount, bound to pod when it is not nil. The token stays in
	// the client: never printed.
	asAgent := func(pod *corev1.Pod) *kubernetes.Clientset {
		tr := &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{}}
		if pod != nil {
			tr.Spec.BoundObjectRef = &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID}
		}
		tr, err := admin.CoreV1().ServiceAccounts(ns).CreateToken(ctx, saName, tr, metav1.CreateOptions{})
		g.Expect(err).NotTo(HaveOccurred())
		return kubernetes.NewForConfigOrDie(&rest.Config{Host: cfg.Host,
			TLSClientConfig: rest.TLSClientConfig{CAData: cfg.CAData}, BearerToken: tr.Status.Token})
	}
	// whoami is the user the API server sees behind a client.
	whoami := func(cs kubernetes.Interface) authenticationv1.UserInfo {
		r, err := cs.AuthenticationV1().SelfSubjectReviews().Create(ctx, &authenticationv1.SelfSubjectReview{}, metav1.CreateOptions{})
		g.Expect(err).NotTo(HaveOccurred())
		return r.Status.UserInfo
	}
	lease := func(name string) *coordinationv1.Lease {
		return &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name,
			Labels: map[string]string{bootv1.StorageLeaseLabel: "true"}}}
	}

	a := asAgent(pods["node-a"])
	user := whoami(a)
	g.Expect(user.Username).To(Equal("system:serviceaccount:" + ns + ":" + saName))
	g.Expect(user.Extra).To(HaveKeyWithValue(nodeNameExtra, ConsistOf("node-a")),
		"a pod-bound token carries its pod's node (ServiceAccountTokenPodNodeInfo)")
	leases := a.CoordinationV1().Leases(ns)

	// The policy takes effect once the API server has loaded it: wait
	// with dry runs, which run admission and write nothing.
	const policyDenied = "ValidatingAdmissionPolicy 'ggnet-ggnet-storage-lease'"
	g.Eventually(func() string {
		_, err := leases.Create(ctx, lease("ggnet-storage-node-b"), metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
		if err == nil {
			return ""
		}
		return err.Error()
	}, 30*time.Second, 200*time.Millisecond).Should(ContainSubstring(policyDenied))

	// Its own Lease: created, renewed, as lease.go does.
	own, err := leases.Create(ctx, lease(bootv1.StorageLeaseName("node-a")), metav1.CreateOptions{})
	g.Expect(err).NotTo(HaveOccurred())
	now := metav1.NewMicroTime(time.Now())
	own.Spec.RenewTime = &now
	_, err = leases.Update(ctx, own, metav1.UpdateOptions{})
	g.Expect(err).NotTo(HaveOccurred())

	// Another node's Lease: refused, whoever made it.
	_, err = leases.Create(ctx, lease("ggnet-storage-node-b"), metav1.CreateOptions{})
	g.Expect(err).To(MatchError(And(ContainSubstring(policyDenied),
		ContainSubstring("The storage agent on node node-a may write only its own Lease ggnet-storage-node-a, not ggnet-storage-node-b"))))
	other, err := admin.CoordinationV1().Leases(ns).Create(ctx, lease("ggnet-storage-node-b"), metav1.CreateOptions{})
	g.Expect(err).NotTo(HaveOccurred(), "an admin is not matched")
	other.Spec.RenewTime = &now
	_, err = leases.Update(ctx, other, metav1.UpdateOptions{})
	g.Expect(err).To(MatchError(ContainSubstring("may write only its own Lease ggnet-storage-node-a, not ggnet-storage-node-b")))
	// The agent's own Lease name with another node's in it is no way round.
	_, err = leases.Create(ctx, lease("ggnet-storage-node-a-and-b"), metav1.CreateOptions{})
	g.Expect(err).To(MatchError(ContainSubstring(policyDenied)))

	// Delete: RBAC refuses it already; grant it here to show that the
	// policy refuses another node's Lease on its own.
	g.Expect(c.Create(ctx, &rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "test-delete-leases"},
		Rules: []rbacv1.PolicyRule{{APIGroups: []string{"coordination.k8s.io"}, Resources: []string{"leases"}, Verbs: []string{"delete"}}}})).To(Succeed())
	g.Expect(c.Create(ctx, &rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "test-delete-leases"},
		RoleRef:  rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "Role", Name: "test-delete-leases"},
		Subjects: []rbacv1.Subject{{Kind: "ServiceAccount", Namespace: ns, Name: saName}}})).To(Succeed())
	g.Eventually(func() error {
		return leases.Delete(ctx, "ggnet-storage-node-b", metav1.DeleteOptions{DryRun: []string{metav1.DryRunAll}})
	}, 10*time.Second, 200*time.Millisecond).Should(MatchError(ContainSubstring("may write only its own Lease ggnet-storage-node-a, not ggnet-storage-node-b")),
		"the policy, not RBAC, refuses")
	g.Expect(leases.Delete(ctx, bootv1.StorageLeaseName("node-a"), metav1.DeleteOptions{})).To(Succeed())

	// A token of the ServiceAccount bound to no pod names no node: it
	// writes no Lease, not even one that looks like its own.
	unbound := asAgent(nil)
	g.Expect(whoami(unbound).Extra).NotTo(HaveKey(nodeNameExtra))
	for _, name := range []string{"ggnet-storage-node-a", "ggnet-storage-node-b", "anything"} {
		_, err = unbound.CoordinationV1().Leases(ns).Create(ctx, lease(name), metav1.CreateOptions{})
		g.Expect(err).To(MatchError(And(ContainSubstring(policyDenied), ContainSubstring("token names no node"))), name)
	}

	// A node name too long for a whole Lease name: the cut name with its
	// hash, as the agent makes it; another long node's is refused.
	g.Expect(bootv1.StorageLeaseName(long)).NotTo(ContainSubstring(long))
	l := asAgent(pods[long])
	g.Expect(whoami(l).Extra).To(HaveKeyWithValue(nodeNameExtra, ConsistOf(long)))
	_, err = l.CoordinationV1().Leases(ns).Create(ctx, lease(bootv1.StorageLeaseName(long)), metav1.CreateOptions{})
	g.Expect(err).NotTo(HaveOccurred())
	_, err = l.CoordinationV1().Leases(ns).Create(ctx, lease(bootv1.StorageLeaseName(otherLong)), metav1.CreateOptions{})
	g.Expect(err).To(MatchError(ContainSubstring(policyDenied)))
	_, err = l.CoordinationV1().Leases(ns).Create(ctx, lease("ggnet-storage-node-a"), metav1.CreateOptions{})
	g.Expect(err).To(MatchError(ContainSubstring(policyDenied)))

	// The manager (its ServiceAccount, impersonated) and an admin still
	// write another node's Lease.
	mcfg := rest.CopyConfig(cfg)
	mcfg.Impersonate = rest.ImpersonationConfig{UserName: "system:serviceaccount:" + ns + ":ggnet-ggnet-manager",
		Groups: []string{"system:serviceaccounts", "system:serviceaccounts:" + ns, "system:authenticated"}}
	manager := kubernetes.NewForConfigOrDie(mcfg).CoordinationV1().Leases(ns)
	other, err = manager.Get(ctx, "ggnet-storage-node-b", metav1.GetOptions{})
	g.Expect(err).NotTo(HaveOccurred())
	later := metav1.NewMicroTime(time.Now().Add(time.Second))
	other.Spec.RenewTime = &later
	other, err = manager.Update(ctx, other, metav1.UpdateOptions{})
	g.Expect(err).NotTo(HaveOccurred(), "the manager is not matched")
	other.Spec.RenewTime = &now
	_, err = admin.CoordinationV1().Leases(ns).Update(ctx, other, metav1.UpdateOptions{})
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(admin.CoordinationV1().Leases(ns).Delete(ctx, "ggnet-storage-node-b", metav1.DeleteOptions{})).To(Succeed())
}
