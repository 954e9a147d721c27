package controllers

import (
	"context"
	"testing"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	bootv1 "github.com/ggnet/ggnet/api/v1alpha1"
	"github.com/ggnet/ggnet/internal/fixture"
)

func TestNodePortal(t *testing.T) {
	node := func(annotation string, addrs ...corev1.NodeAddress) *corev1.Node {
		n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "storage-1"}, Status: corev1.NodeStatus{Addresses: addrs}}
		if annotation != "" {
			n.Annotations = map[string]string{bootv1.ISCSIPortalAnnotation: annotation}
		}
		return n
	}
	internal := corev1.NodeAddress{Type: corev1.NodeInternalIP, Address: "10.0.0.5"}
	for _, tc := range []struct {
		name, annotation string
		addrs            []corev1.NodeAddress
		want             string
		err              bool
	}{
		{name: "announced portal wins", annotation: "10.9.0.5:3261", addrs: []corev1.NodeAddress{internal}, want: "10.9.0.5:3261"},
		{name: "announced portal without any address", annotation: "10.9.0.5:3260", want: "10.9.0.5:3260"},
		{name: "no annotation: InternalIP", addrs: []corev1.NodeAddress{{Type: corev1.NodeExternalIP, Address: "192.0.2.1"}, internal}, want: "10.0.0.5:3260"},
		{name: "no annotation, no InternalIP: first IPv4", addrs: []corev1.NodeAddress{{Type: corev1.NodeHostName, Address: "n1"}, {Type: corev1.NodeExternalIP, Address: "192.0.2.1"}}, want: "192.0.2.1:3260"},
		{name: "unspecified address ignored", annotation: "0.0.0.0:3260", addrs: []corev1.NodeAddress{internal}, want: "10.0.0.5:3260"},
		{name: "no port ignored", annotation: "10.9.0.5", addrs: []corev1.NodeAddress{internal}, want: "10.0.0.5:3260"},
		{name: "port 0 ignored", annotation: "10.9.0.5:0", addrs: []corev1.NodeAddress{internal}, want: "10.0.0.5:3260"},
		{name: "port out of range ignored", annotation: "10.9.0.5:65536", addrs: []corev1.NodeAddress{internal}, want: "10.0.0.5:3260"},
		{name: "IPv6 ignored", annotation: "[fd00::5]:3260", addrs: []corev1.NodeAddress{internal}, want: "10.0.0.5:3260"},
		{name: "IPv4-mapped IPv6 ignored", annotation: "[::ffff:10.9.0.5]:3260", addrs: []corev1.NodeAddress{internal}, want: "10.0.0.5:3260"},
		{name: "host name ignored", annotation: "storage-1:3260", addrs: []corev1.NodeAddress{internal}, want: "10.0.0.5:3260"},
		{name: "garbage ignored", annotation: "10.9.0.5:3260; rm -rf /", addrs: []corev1.NodeAddress{internal}, want: "10.0.0.5:3260"},
		{name: "nothing usable", annotation: "bad", addrs: []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: "fd00::1"}}, err: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := NewWithT(t)
			got, err := nodePortal(node(tc.annotation, tc.addrs...), 3260)
			if tc.err {
				g.Expect(err).To(HaveOccurred())
				return
			}
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(got).To(Equal(tc.want))
		})
	}
}

var _ = Describe("iSCSI portal", func() {
	var (
		ctx  context.Context
		ns   string
		node *corev1.Node
	)
	BeforeEach(func() {
		ctx = context.Background()
		ns = newNamespace(ctx)
		node = storageNode(ctx, "storage-"+ns, "10.20.0.5")
		img := fixture.Image(ns, "win11")
		Expect(k8sClient.Create(ctx, img)).To(Succeed())
		readyReplica(ctx, img, node.Name)
		Expect(k8sClient.Create(ctx, fixture.Machine(ns, "seat-1"))).To(Succeed())
	})

	portal := func(s *bootv1.BootSession) func() string {
		return func() string {
			s = get(ctx, s)()
			if s.Status.Target == nil {
				return ""
			}
			return s.Status.Target.Portal
		}
	}

	It("gives sessions the portal the storage agent announced on its Node, not the InternalIP", func() {
		change(ctx, node, false, func(n *corev1.Node) {
			metav1.SetMetaDataAnnotation(&n.ObjectMeta, bootv1.ISCSIPortalAnnotation, "10.9.0.5:3261")
		})
		s := fixture.Session(ns, "seat-1-a", "seat-1", "win11")
		Expect(k8sClient.Create(ctx, s)).To(Succeed())
		Eventually(view(ctx, s), eventually).Should(Equal(sessionView{bootv1.SessionReady, "True/Succeeded"}))
		Expect(s.Status.Target.Portal).To(Equal("10.9.0.5:3261"))

		By("following a new announcement (the agent restarted with another --portal)")
		change(ctx, node, false, func(n *corev1.Node) {
			metav1.SetMetaDataAnnotation(&n.ObjectMeta, bootv1.ISCSIPortalAnnotation, "10.9.0.6:3260")
		})
		Eventually(portal(s), eventually).Should(Equal("10.9.0.6:3260"))

		By("falling back to the InternalIP when the announcement is not an IPv4 address and port")
		change(ctx, node, false, func(n *corev1.Node) {
			metav1.SetMetaDataAnnotation(&n.ObjectMeta, bootv1.ISCSIPortalAnnotation, "0.0.0.0:3260")
		})
		Eventually(portal(s), eventually).Should(Equal("10.20.0.5:3260"))
	})
})
