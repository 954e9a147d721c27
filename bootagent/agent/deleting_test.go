package agent

import (
	"context"
	"net/netip"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"

	bootv1 "github.com/ggnet/ggnet/api/v1alpha1"
	"github.com/ggnet/ggnet/bootagent/table"
	"github.com/ggnet/ggnet/internal/fixture"
	"github.com/ggnet/ggnet/internal/ipxe"
)

var _ = Describe("Boot agent while a Machine is being deleted", func() {
	It("keeps answering its running PC's DHCP with the reservation and serving its session's script", func() {
		ctx := context.Background()
		ns := newNamespace(ctx)
		const hw = "52:54:00:12:34:d1" // no other spec's Machine has it
		neighbors := &table.NeighborMap{}
		neighbors.Set(netip.MustParseAddr("127.0.0.1"), mustMAC(hw))
		a := startAgent(restCfg, ns, neighbors)

		// The manager holds MachineFinalizer while the Machine's session
		// runs, and keeps the session Ready (phase Active).
		m := fixture.Machine(ns, "seat-0d1", fixture.WithMAC(hw), fixture.WithAddress("10.20.0.141"))
		m.Finalizers = []string{bootv1.MachineFinalizer}
		Expect(k8sClient.Create(ctx, m)).To(Succeed())
		DeferCleanup(func(ctx context.Context) {
			Expect(client.IgnoreNotFound(k8sClient.Get(ctx, client.ObjectKeyFromObject(m), m))).To(Succeed())
			if controllerutil.RemoveFinalizer(m, bootv1.MachineFinalizer) {
				Expect(client.IgnoreNotFound(k8sClient.Update(ctx, m))).To(Succeed())
			}
		})
		s := fixture.Session(ns, "seat-0d1-a", "seat-0d1", "win11")
		Expect(k8sClient.Create(ctx, s)).To(Succeed())
		makeReady(ctx, k8sClient, s, hw, sessionToken)
		s.Status.Phase = bootv1.SessionActive
		Expect(k8sClient.Status().Update(ctx, s)).To(Succeed())

		c := dhcpClient(a, hw)
		leaseAndScript := func(g Gomega) {
			lease, err := c.Request(ctx, ipxeUserClass...)
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(lease.ACK.YourIPAddr.String()).To(Equal("10.20.0.141"))
			g.Expect(lease.ACK.BootFileName).To(Equal("http://127.0.0.1:8880"+scriptPath(hw, sessionToken)), "the session's token")
			g.Expect(httpGet(a, scriptPath(hw, sessionToken))).To(Equal(served(ns, s.Name)))
			got, err := tftpGet(a, ipxe.ScriptPath(mustMAC(hw), sessionToken))
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(got).To(Equal(served(ns, s.Name)))
		}
		Eventually(leaseAndScript, 10*time.Second, 200*time.Millisecond).Should(Succeed())

		By("deleting the Machine: it stays, being deleted, while its session runs")
		Expect(k8sClient.Delete(ctx, m)).To(Succeed())
		Eventually(func() bool {
			var seen bootv1.Machine
			return a.cache.Get(ctx, client.ObjectKeyFromObject(m), &seen) == nil && seen.DeletionTimestamp != nil
		}, 10*time.Second).Should(BeTrue(), "the agent saw the deletion")
		Consistently(leaseAndScript, 3*time.Second, 300*time.Millisecond).Should(Succeed())

		By("the Machine gone (its session ended): no reservation any more")
		Expect(k8sClient.Get(ctx, client.ObjectKeyFromObject(m), m)).To(Succeed())
		controllerutil.RemoveFinalizer(m, bootv1.MachineFinalizer)
		Expect(k8sClient.Update(ctx, m)).To(Succeed())
		Eventually(func() bool { return a.Table().HasMachine(mustMAC(hw)) }, 10*time.Second).Should(BeFalse())
	})
})
