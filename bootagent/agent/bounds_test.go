package agent

import (
	"context"
	"fmt"
	"net/netip"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	"sigs.k8s.io/controller-runtime/pkg/client"

	bootv1 "github.com/ggnet/ggnet/api/v1alpha1"
	"github.com/ggnet/ggnet/bootagent/table"
	"github.com/ggnet/ggnet/internal/fixture"
)

var _ = Describe("Boot agent past --discovery-max", func() {
	It("still boots a known PC while unknown clients are no longer recorded", func() {
		ctx := context.Background()
		ns := newNamespace(ctx)
		neighbors := &table.NeighborMap{}
		neighbors.Set(netip.MustParseAddr("127.0.0.1"), mustMAC(mac))
		a := startAgent(restCfg, ns, neighbors, func(c *Config) { c.Boot.DiscoveryMax = 1 })

		for i := range 4 {
			_, err := dhcpClient(a, fmt.Sprintf("52:54:00:aa:cc:%02x", i)).DiscoverOffer(ctx, ipxeUserClass...)
			Expect(err).To(HaveOccurred(), "unknown MACs get no offer")
		}
		Eventually(func() []bootv1.Machine {
			var list bootv1.MachineList
			Expect(k8sClient.List(ctx, &list, client.InNamespace(ns), client.HasLabels{bootv1.DiscoveredLabel})).To(Succeed())
			return list.Items
		}, 10*time.Second).Should(HaveLen(1), "the cap is reached")

		m := fixture.Machine(ns, "seat-031", fixture.WithMAC(mac), fixture.WithAddress("10.20.0.131"))
		Expect(k8sClient.Create(ctx, m)).To(Succeed())
		DeferCleanup(func(ctx context.Context) { _ = k8sClient.Delete(ctx, m) })
		s := fixture.Session(ns, "seat-031-a", "seat-031", "win11")
		Expect(k8sClient.Create(ctx, s)).To(Succeed())
		makeReady(ctx, k8sClient, s, mac, sessionToken)
		Eventually(func() string { return httpGet(a, scriptPath(mac, sessionToken)) }, 10*time.Second).Should(Equal(served(ns, s.Name)))
		lease, err := dhcpClient(a, mac).Request(ctx, ipxeUserClass...)
		Expect(err).NotTo(HaveOccurred(), "the known PC gets its lease past the cap")
		Expect(lease.ACK.YourIPAddr.String()).To(Equal("10.20.0.131"))
		Expect(lease.ACK.BootFileName).To(HaveSuffix(scriptPath(mac, sessionToken)))
	})
})
