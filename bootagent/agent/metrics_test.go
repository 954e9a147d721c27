package agent

import (
	"context"
	"net/http"
	"net/netip"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/ggnet/ggnet/bootagent/table"
	"github.com/ggnet/ggnet/internal/fixture"
	"github.com/ggnet/ggnet/internal/ipxe"
)

var _ = Describe("Metrics hold no credential", func() {
	It("the boot agent's /metrics after a session with a Secret was served by DHCP, HTTP and TFTP, and a request was refused", func() {
		ctx := context.Background()
		ns := newNamespace(ctx)
		neighbors := &table.NeighborMap{}
		neighbors.Set(netip.MustParseAddr("127.0.0.1"), mustMAC(mac))
		a := startAgent(restCfg, ns, neighbors)

		m := fixture.Machine(ns, "seat-031", fixture.WithMAC(mac), fixture.WithAddress("10.20.0.131"))
		Expect(k8sClient.Create(ctx, m)).To(Succeed())
		DeferCleanup(func(ctx context.Context) { _ = k8sClient.Delete(ctx, m) })
		s := fixture.Session(ns, "seat-031-a", "seat-031", "win11")
		Expect(k8sClient.Create(ctx, s)).To(Succeed())
		makeReady(ctx, k8sClient, s, mac, sessionToken)
		Eventually(func() string { return httpGet(a, scriptPath(mac, sessionToken)) }, 10*time.Second).Should(Equal(served(ns, s.Name)))

		By("DHCP, TFTP, a failure report and refused requests")
		lease, err := dhcpClient(a, mac).Request(ctx, ipxeUserClass...)
		Expect(err).NotTo(HaveOccurred())
		Expect(lease.ACK.BootFileName).To(ContainSubstring(sessionToken))
		got, err := tftpGet(a, ipxe.ScriptPath(mustMAC(mac), sessionToken))
		Expect(err).NotTo(HaveOccurred())
		Expect(got).To(ContainSubstring("set password " + creds.Password))
		code, _ := httpGetStatus(a, "http", scriptPath(mac, wrongToken))
		Expect(code).To(Equal(http.StatusForbidden))
		_, err = tftpGet(a, ipxe.ScriptPath(mustMAC(mac), wrongToken))
		Expect(err).To(HaveOccurred())
		httpGetStatus(a, "http", scriptPath(mac, sessionToken)+"?failed=0x0216eb3c")

		var sec corev1.Secret
		Expect(k8sClient.Get(ctx, client.ObjectKey{Namespace: ns, Name: s.Name + "-chap"}, &sec)).To(Succeed())
		Expect(sec.Data).NotTo(BeEmpty())
		code, body := httpGetStatus(a, "metrics", "/metrics")
		Expect(code).To(Equal(http.StatusOK))
		Expect(body).To(ContainSubstring(`result="forbidden"`), "the refused requests were counted")
		for key, v := range sec.Data {
			Expect(body).NotTo(ContainSubstring(string(v)), "the Secret's %s", key)
		}
		Expect(body).NotTo(ContainSubstring(wrongToken), "nor a token someone tried")
		Expect(body).NotTo(ContainSubstring(nonceOf(a, mac)), "nor the MAC's nonce")
	})
})
