package controllers

import (
	"context"
	"fmt"
	"strconv"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/watch"
	"sigs.k8s.io/controller-runtime/pkg/client"

	bootv1 "github.com/ggnet/ggnet/api/v1alpha1"
	"github.com/ggnet/ggnet/internal/fixture"
	"github.com/ggnet/ggnet/internal/scheme"
)

// applyForeignStatus plays a storage agent: it applies, with its own field
// manager, one status.persistentDisks entry and one condition of its own,
// both carrying round.
func applyForeignStatus(ctx context.Context, m *bootv1.Machine, node string, round int) {
	GinkgoHelper()
	u := &unstructured.Unstructured{}
	u.SetAPIVersion(bootv1.GroupVersion.String())
	u.SetKind("Machine")
	u.SetNamespace(m.Namespace)
	u.SetName(m.Name)
	u.Object["status"] = map[string]any{
		"persistentDisks": []any{map[string]any{
			"node": node, "image": "win11", "imageUID": "6f1c0a52-0000-4000-8000-000000000001",
			"path": "/var/lib/ggnet/overlays/" + m.Namespace + "/persist/disk.raw", "sizeBytes": int64(round),
			"state": string(bootv1.PersistentDiskAvailable),
		}},
		"conditions": []any{map[string]any{
			"type": "test.ggnet.io/Agent", "status": "True", "reason": "Round", "message": strconv.Itoa(round),
			"lastTransitionTime": time.Now().UTC().Format(time.RFC3339),
		}},
	}
	Expect(k8sClient.Status().Apply(ctx, client.ApplyConfigurationFromUnstructured(u),
		client.FieldOwner("ggnet-storage-"+node), client.ForceOwnership)).To(Succeed())
}

// foreignRound is the round of a version's storage agent fields: of its
// persistentDisks entry and of its condition, -1 for one that is missing.
func foreignRound(m *bootv1.Machine) (disk, cond int) {
	disk, cond = -1, -1
	for _, d := range m.Status.PersistentDisks {
		disk = int(d.SizeBytes)
	}
	if c := meta.FindStatusCondition(m.Status.Conditions, "test.ggnet.io/Agent"); c != nil {
		cond, _ = strconv.Atoi(c.Message)
	}
	return disk, cond
}

var _ = Describe("Machine status shared with the storage agents", func() {
	It("never loses or rolls back a storage agent's persistentDisks entry or condition while the manager rewrites its own", func() {
		ctx := context.Background()
		ns := newNamespace(ctx)
		node := "storage-" + ns
		m := fixture.Machine(ns, "seat-1", fixture.WithMAC("52:54:00:00:5f:01"), fixture.WithAddress("10.20.0.91"))
		Expect(k8sClient.Create(ctx, m)).To(Succeed())
		Eventually(func() string { return readyReason(get(ctx, m)().Status.Conditions) }, eventually).Should(Equal("True/Succeeded"))

		wc, err := client.NewWithWatch(cfg, client.Options{Scheme: scheme.New()})
		Expect(err).NotTo(HaveOccurred())
		w, err := wc.Watch(ctx, &bootv1.MachineList{}, client.InNamespace(ns), &client.ListOptions{Raw: &metav1.ListOptions{ResourceVersion: m.ResourceVersion}})
		Expect(err).NotTo(HaveOccurred())
		defer w.Stop()

		// Each round changes the spec, which makes the manager rewrite its
		// Ready condition, and at once applies the agent's fields: the
		// manager's write is often made from a cache that has not seen them.
		const rounds = 20
		for round := 1; round <= rounds; round++ {
			gateway := "10.20.0.1"
			if round%2 == 1 {
				gateway = "10.21.0.1" // outside the subnet: Ready=False
			}
			change(ctx, m, false, func(x *bootv1.Machine) { x.Spec.IPv4.Gateway = gateway })
			applyForeignStatus(ctx, m, node, round)
			want := "True/Succeeded"
			if round%2 == 1 {
				want = "False/InvalidReservation"
			}
			Eventually(func(g Gomega) {
				x := get(ctx, m)()
				g.Expect(x.Status.ObservedGeneration).To(Equal(x.Generation))
				g.Expect(readyReason(x.Status.Conditions)).To(Equal(want))
			}, eventually).Should(Succeed())
		}

		By("checking every version the API server served")
		versions, disk, cond := 0, -1, -1
		for done := false; !done; {
			select {
			case ev := <-w.ResultChan():
				Expect(ev.Type).To(Equal(watch.Modified), fmt.Sprint(ev.Object))
				x := ev.Object.(*bootv1.Machine)
				d, c := foreignRound(x)
				Expect(d).To(BeNumerically(">=", disk), "version %s lost or rolled back the agent's persistentDisks entry", x.ResourceVersion)
				Expect(c).To(BeNumerically(">=", cond), "version %s lost or rolled back the agent's condition", x.ResourceVersion)
				disk, cond = d, c
				versions++
			case <-time.After(time.Second):
				done = true
			}
		}
		Expect(versions).To(BeNumerically(">=", 3*rounds), "spec, agent and manager writes each round")
		Expect([]int{disk, cond}).To(Equal([]int{rounds, rounds}))
		Expect(get(ctx, m)().Status.PersistentDisks).To(HaveLen(1))
	})
})
