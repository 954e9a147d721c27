package controllers

import (
	"context"
	"net/http"
	"net/http/httptest"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	ctrlmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"

	bootv1 "github.com/ggnet/ggnet/api/v1alpha1"
	"github.com/ggnet/ggnet/internal/fixture"
)

var _ = Describe("Metrics hold no credential", func() {
	It("the manager's metrics after a session with a Secret became Ready", func() {
		ctx := context.Background()
		ns := newNamespace(ctx)
		node := storageNode(ctx, "storage-"+ns, "10.20.0.5")
		img := fixture.Image(ns, "win11")
		Expect(k8sClient.Create(ctx, img)).To(Succeed())
		readyReplica(ctx, img, node.Name)
		Expect(k8sClient.Create(ctx, fixture.Machine(ns, "seat-1"))).To(Succeed())
		s := fixture.Session(ns, "seat-1-a", "seat-1", "win11")
		Expect(k8sClient.Create(ctx, s)).To(Succeed())
		Eventually(view(ctx, s), eventually).Should(Equal(sessionView{bootv1.SessionReady, "True/Succeeded"}))

		var sec corev1.Secret
		Expect(k8sClient.Get(ctx, client.ObjectKey{Namespace: ns, Name: s.Status.CHAPSecretRef.Name}, &sec)).To(Succeed())
		Expect(sec.Data).To(HaveKey(bootv1.SecretKeyPassword))
		// The manager's /metrics serves controller-runtime's registry.
		rec := httptest.NewRecorder()
		promhttp.HandlerFor(ctrlmetrics.Registry, promhttp.HandlerOpts{}).ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
		Expect(rec.Code).To(Equal(http.StatusOK))
		body := rec.Body.String()
		Expect(body).To(ContainSubstring(`controller="bootsession"`), "the session's reconciles are in it")
		for key, v := range sec.Data {
			Expect(body).NotTo(ContainSubstring(string(v)), "the Secret's %s", key)
		}
	})
})
