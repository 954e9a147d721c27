package controllers

import (
	"context"
	"encoding/base64"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	bootv1 "github.com/ggnet/ggnet/api/v1alpha1"
)

var _ = Describe("The replication Secret", func() {
	It("is made with a 32-byte random key when missing, completed when it has no key, and never changed once it has one", func() {
		ctx := context.Background()
		ns := newNamespace(ctx)
		key := func(name string) []byte {
			sec := &corev1.Secret{}
			Expect(k8sClient.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, sec)).To(Succeed())
			return sec.Data[bootv1.ReplicationSecretKey]
		}

		By("making it when missing")
		wrote, err := EnsureReplicationSecret(ctx, k8sClient, ns, "ggnet-replication")
		Expect(err).NotTo(HaveOccurred())
		Expect(wrote).To(BeTrue())
		first := key("ggnet-replication")
		Expect(first).To(HaveLen(32))

		By("leaving it alone at the next start")
		wrote, err = EnsureReplicationSecret(ctx, k8sClient, ns, "ggnet-replication")
		Expect(err).NotTo(HaveOccurred())
		Expect(wrote).To(BeFalse())
		Expect(key("ggnet-replication")).To(Equal(first))

		By("a second Secret gets another key")
		_, err = EnsureReplicationSecret(ctx, k8sClient, ns, "other")
		Expect(err).NotTo(HaveOccurred())
		Expect(key("other")).To(HaveLen(32))
		Expect(key("other")).NotTo(Equal(first))

		By("adding the key to a Secret of that name without one, keeping its other keys")
		Expect(k8sClient.Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "empty"},
			Data: map[string][]byte{"note": []byte("x")}})).To(Succeed())
		wrote, err = EnsureReplicationSecret(ctx, k8sClient, ns, "empty")
		Expect(err).NotTo(HaveOccurred())
		Expect(wrote).To(BeTrue())
		Expect(key("empty")).To(HaveLen(32))
		sec := &corev1.Secret{}
		Expect(k8sClient.Get(ctx, client.ObjectKey{Namespace: ns, Name: "empty"}, sec)).To(Succeed())
		Expect(sec.Data).To(HaveKeyWithValue("note", []byte("x")))

		By("as a manager Runnable, the same, and the key is in no log line")
		Expect(ReplicationSecret{Client: k8sClient, Namespace: ns, Name: "runnable"}.Start(ctx)).To(Succeed())
		k := key("runnable")
		Expect(k).To(HaveLen(32))
		Expect(managerLog.String()).NotTo(ContainSubstring(base64.StdEncoding.EncodeToString(k)))
		Expect(managerLog.String()).NotTo(ContainSubstring(string(k)))
	})
})
