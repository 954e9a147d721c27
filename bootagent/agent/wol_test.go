package agent

import (
	"context"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	bootv1 "github.com/ggnet/ggnet/api/v1alpha1"
	"github.com/ggnet/ggnet/bootagent/wol"
	"github.com/ggnet/ggnet/internal/fixture"
)

var _ = Describe("Boot agent's wake-on-LAN index", func() {
	It("lists exactly the Ready sessions that ask to be woken and have no DHCP request recorded", func() {
		ctx := context.Background()
		ns := newNamespace(ctx)
		a := startAgent(restCfg, ns, nil)
		wants := func() []string {
			var list bootv1.BootSessionList
			Expect(a.cache.List(ctx, &list, client.InNamespace(ns), client.MatchingFields{wol.WantsIndex: "true"})).To(Succeed())
			var names []string
			for _, s := range list.Items {
				names = append(names, s.Name)
			}
			return names
		}
		for i, name := range []string{"seat-061", "seat-062"} {
			Expect(k8sClient.Create(ctx, fixture.Machine(ns, name, fixture.WithMAC("52:54:00:12:34:6"+string(rune('1'+i)))))).To(Succeed())
		}
		woken := fixture.Session(ns, "seat-061-a", "seat-061", "win11")
		woken.Spec.Wake = true
		Expect(k8sClient.Create(ctx, woken)).To(Succeed())
		plain := fixture.Session(ns, "seat-062-a", "seat-062", "win11")
		Expect(k8sClient.Create(ctx, plain)).To(Succeed())
		By("not before it is Ready")
		Consistently(wants, "1s").Should(BeEmpty())
		makeReady(ctx, k8sClient, woken, "52:54:00:12:34:61", sessionToken)
		makeReady(ctx, k8sClient, plain, "52:54:00:12:34:62", sessionToken)
		Eventually(wants).Should(Equal([]string{"seat-061-a"}))
		By("no longer once its machine's DHCP request is recorded")
		Expect(k8sClient.Get(ctx, client.ObjectKeyFromObject(woken), woken)).To(Succeed())
		woken.Status.Timeline.DHCP = &metav1.Time{Time: metav1.Now().Time}
		Expect(k8sClient.Status().Update(ctx, woken)).To(Succeed())
		Eventually(wants).Should(BeEmpty())
	})
})
