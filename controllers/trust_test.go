package controllers

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/util/retry"
	"sigs.k8s.io/controller-runtime/pkg/client"

	bootv1 "github.com/ggnet/ggnet/api/v1alpha1"
	"github.com/ggnet/ggnet/internal/fixture"
	"github.com/ggnet/ggnet/internal/ipxe"
	"github.com/ggnet/ggnet/internal/testenv"
)

// applyUserRoles applies the chart's user roles (as rendered into
// config/deploy) and does the aggregation controller's work, which envtest
// does not run: every ClusterRole with an aggregationRule gets the rules of
// the roles its selectors match.
func applyUserRoles(ctx context.Context) {
	GinkgoHelper()
	f, err := os.Open(filepath.Join(testenv.RepoRoot(), "config", "deploy", "ggnet.yaml"))
	Expect(err).NotTo(HaveOccurred())
	defer f.Close()
	dec := utilyaml.NewYAMLOrJSONDecoder(f, 4096)
	found := 0
	for {
		var role rbacv1.ClusterRole
		if err := dec.Decode(&role); err != nil {
			Expect(err.Error()).To(Equal("EOF"))
			break
		}
		if role.Kind != "ClusterRole" || !map[string]bool{"ggnet-viewer": true, "ggnet-operator": true, "ggnet-admin": true}[role.Name] {
			continue
		}
		found++
		role.ResourceVersion = ""
		existing := &rbacv1.ClusterRole{}
		if k8sClient.Get(ctx, client.ObjectKey{Name: role.Name}, existing) == nil {
			existing.Rules, existing.Labels = role.Rules, role.Labels
			Expect(k8sClient.Update(ctx, existing)).To(Succeed())
		} else {
			Expect(k8sClient.Create(ctx, &role)).To(Succeed())
		}
	}
	Expect(found).To(Equal(3), "the chart's user roles ggnet-viewer, ggnet-operator, ggnet-admin")

	var all rbacv1.ClusterRoleList
	Expect(k8sClient.List(ctx, &all)).To(Succeed())
	for i := range all.Items {
		agg := &all.Items[i]
		if agg.AggregationRule == nil {
			continue
		}
		var rules []rbacv1.PolicyRule
		for _, sel := range agg.AggregationRule.ClusterRoleSelectors {
			s, err := metav1.LabelSelectorAsSelector(&sel)
			Expect(err).NotTo(HaveOccurred())
			var matched rbacv1.ClusterRoleList
			Expect(k8sClient.List(ctx, &matched, client.MatchingLabelsSelector{Selector: s})).To(Succeed())
			for _, m := range matched.Items {
				if m.Name != agg.Name {
					rules = append(rules, m.Rules...)
				}
			}
		}
		Expect(retry.RetryOnConflict(retry.DefaultRetry, func() error {
			if err := k8sClient.Get(ctx, client.ObjectKeyFromObject(agg), agg); err != nil {
				return err
			}
			agg.Rules = rules
			return k8sClient.Update(ctx, agg)
		})).To(Succeed())
	}
}

// bindUser binds a user to a ClusterRole in every namespace.
func bindUser(ctx context.Context, user, role string) {
	GinkgoHelper()
	b := &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{GenerateName: "ggnet-trust-"},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: role},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.UserKind, APIGroup: rbacv1.GroupName, Name: user}},
	}
	Expect(k8sClient.Create(ctx, b)).To(Succeed())
	DeferCleanup(func(ctx context.Context) { Expect(k8sClient.Delete(ctx, b)).To(Succeed()) })
}

// readAll reads, as the user the config as impersonates, every object of every GGnet
// kind in every namespace (list, get, and the status subresource), and the
// Events of both Event APIs, and returns it all as JSON. It fails when the
// user cannot read GGnet objects; Events the user may not read are skipped,
// and eventsRead says whether any were read.
func readAll(ctx context.Context, as *rest.Config) (dump string, eventsRead bool) {
	GinkgoHelper()
	dyn, err := dynamic.NewForConfig(as)
	Expect(err).NotTo(HaveOccurred())
	admin, err := discovery.NewDiscoveryClientForConfig(cfg)
	Expect(err).NotTo(HaveOccurred())
	gv := bootv1.GroupVersion
	resources, err := admin.ServerResourcesForGroupVersion(gv.String())
	Expect(err).NotTo(HaveOccurred())
	var b strings.Builder
	add := func(o any) {
		j, err := json.Marshal(o)
		Expect(err).NotTo(HaveOccurred())
		b.Write(j)
		b.WriteByte('\n')
	}
	hasStatus := map[string]bool{}
	for _, r := range resources.APIResources {
		if base, sub, ok := strings.Cut(r.Name, "/"); ok && sub == "status" {
			hasStatus[base] = true
		}
	}
	kinds := 0
	for _, r := range resources.APIResources {
		if strings.Contains(r.Name, "/") {
			continue
		}
		kinds++
		res := dyn.Resource(gv.WithResource(r.Name))
		list, err := res.List(ctx, metav1.ListOptions{})
		Expect(err).NotTo(HaveOccurred(), "listing %s", r.Name)
		add(list)
		for _, item := range list.Items {
			got, err := res.Namespace(item.GetNamespace()).Get(ctx, item.GetName(), metav1.GetOptions{})
			Expect(err).NotTo(HaveOccurred(), "getting %s %s/%s", r.Name, item.GetNamespace(), item.GetName())
			add(got)
			if hasStatus[r.Name] {
				st, err := res.Namespace(item.GetNamespace()).Get(ctx, item.GetName(), metav1.GetOptions{}, "status")
				Expect(err).NotTo(HaveOccurred(), "getting the status of %s %s/%s", r.Name, item.GetNamespace(), item.GetName())
				add(st)
			}
		}
	}
	Expect(kinds).To(BeNumerically(">=", 3), "Machines, Images, BootSessions")
	for _, gvr := range []schema.GroupVersionResource{{Version: "v1", Resource: "events"}, {Group: "events.k8s.io", Version: "v1", Resource: "events"}} {
		list, err := dyn.Resource(gvr).List(ctx, metav1.ListOptions{})
		if apierrors.IsForbidden(err) {
			continue
		}
		Expect(err).NotTo(HaveOccurred())
		eventsRead = true
		add(list)
	}
	return b.String(), eventsRead
}

var _ = Describe("Credentials stay in the Secret", func() {
	It("shows users bound to ggnet-viewer and to view no credential in any GGnet object or Event, and not the Secret", func() {
		ctx := context.Background()
		ns := newNamespace(ctx)
		other := newNamespace(ctx)
		node := "storage-" + ns
		storageNode(ctx, node, "10.20.0.5")
		for _, n := range []string{ns, other} {
			img := fixture.Image(n, "win11")
			Expect(k8sClient.Create(ctx, img)).To(Succeed())
			readyReplica(ctx, img, node)
		}
		Expect(k8sClient.Create(ctx, fixture.Machine(ns, "seat-1", fixture.WithMAC("52:54:00:7e:00:01"), fixture.WithAddress("10.20.0.121")))).To(Succeed())
		Expect(k8sClient.Create(ctx, fixture.Machine(other, "seat-1", fixture.WithMAC("52:54:00:7e:00:02"), fixture.WithAddress("10.20.0.122")))).To(Succeed())
		s := fixture.Session(ns, "trust-pc", "seat-1", "win11")
		Expect(k8sClient.Create(ctx, s)).To(Succeed())
		s2 := fixture.Session(other, "trust-pc", "seat-1", "win11")
		Expect(k8sClient.Create(ctx, s2)).To(Succeed())
		Eventually(view(ctx, s), eventually).Should(Equal(sessionView{bootv1.SessionReady, "True/Succeeded"}))
		Eventually(view(ctx, s2), eventually).Should(Equal(sessionView{bootv1.SessionReady, "True/Succeeded"}))
		// A session's happy path records no Event: a second session of the
		// machine waits, with a MachineBusy Event for the readers to see.
		next := fixture.Session(ns, "trust-next", "seat-1", "win11")
		Expect(k8sClient.Create(ctx, next)).To(Succeed())
		Eventually(func() []string { return events(ctx, ns, "trust-next") }, eventually).Should(ContainElement(HavePrefix(bootv1.MachineBusyReason + ": ")))

		var values []string
		for _, sess := range []*bootv1.BootSession{s, s2} {
			sec := &corev1.Secret{}
			Expect(k8sClient.Get(ctx, client.ObjectKey{Namespace: sess.Namespace, Name: sess.Status.CHAPSecretRef.Name}, sec)).To(Succeed())
			for _, k := range []string{bootv1.SecretKeyUsername, bootv1.SecretKeyPassword, bootv1.SecretKeyTargetUsername, bootv1.SecretKeyTargetPassword, bootv1.SecretKeyToken} {
				Expect(sec.Data).To(HaveKey(k))
				values = append(values, string(sec.Data[k]))
			}
		}

		applyUserRoles(ctx)
		users := map[string]string{"trust-ggnet-viewer": "ggnet-viewer", "trust-view": "view"}
		for user, role := range users {
			bindUser(ctx, user, role)
		}
		for user, role := range users {
			By("reading everything as " + user + " (ClusterRole " + role + ")")
			as := rest.CopyConfig(cfg)
			as.Impersonate = rest.ImpersonationConfig{UserName: user}
			var dump string
			var eventsRead bool
			// RBAC changes reach the authorizer within a moment.
			Eventually(func(g Gomega) {
				dyn, err := dynamic.NewForConfig(as)
				g.Expect(err).NotTo(HaveOccurred())
				_, err = dyn.Resource(bootv1.GroupVersion.WithResource("bootsessions")).List(ctx, metav1.ListOptions{})
				g.Expect(err).NotTo(HaveOccurred())
			}, eventually).Should(Succeed())
			dump, eventsRead = readAll(ctx, as)

			// The reads saw the sessions, their status and their Events:
			// the check below is not vacuous.
			Expect(dump).To(ContainSubstring(`"chapSecretRef":{"name":"trust-pc-chap"}`))
			Expect(dump).To(ContainSubstring(ipxe.CredentialsComment), "the script preview")
			if role == "view" {
				Expect(eventsRead).To(BeTrue(), "view reads Events")
				Expect(dump).To(ContainSubstring(`"involvedObject":{"apiVersion":"boot.ggnet.io/v1alpha1","kind":"BootSession","name":"trust-next","namespace":"` + ns + `"`))
			}
			for _, v := range values {
				Expect(strings.Contains(dump, v)).To(BeFalse(), "a credential of the session Secret is readable by %s", user)
			}

			By("refusing " + user + " the Secret")
			c, err := client.New(as, client.Options{Scheme: k8sClient.Scheme()})
			Expect(err).NotTo(HaveOccurred())
			err = c.Get(ctx, client.ObjectKey{Namespace: ns, Name: s.Status.CHAPSecretRef.Name}, &corev1.Secret{})
			Expect(apierrors.IsForbidden(err)).To(BeTrue(), "get: %v", err)
			err = c.List(ctx, &corev1.SecretList{}, client.InNamespace(ns))
			Expect(apierrors.IsForbidden(err)).To(BeTrue(), "list: %v", err)
		}

		By("keeping the credentials out of the manager's log")
		log := managerLog.String()
		Expect(log).To(ContainSubstring("trust-pc"), "the log is captured")
		for _, v := range values {
			Expect(strings.Contains(log, v)).To(BeFalse(), "a credential is in the manager's log")
		}
	})
})
