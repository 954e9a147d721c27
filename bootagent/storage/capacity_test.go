package storage

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	bootv1 "github.com/ggnet/ggnet/api/v1alpha1"
)

// nodeStorage is what the Node's storage annotation says (zero: nothing).
func nodeStorage() bootv1.NodeStorage {
	var node corev1.Node
	var ns bootv1.NodeStorage
	if k8sClient.Get(context.Background(), client.ObjectKey{Name: nodeName}, &node) == nil {
		_ = json.Unmarshal([]byte(node.Annotations[bootv1.StorageAnnotation]), &ns)
	}
	return ns
}

// scrape reads url's metrics, or says why not.
func scrape(url string) (map[string]*dto.MetricFamily, error) {
	resp, err := http.Get(url)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	p := expfmt.NewTextParser(model.UTF8Validation)
	return p.TextToMetricFamilies(resp.Body)
}

func gauge(families map[string]*dto.MetricFamily, name string) float64 {
	f := families[name]
	Expect(f).NotTo(BeNil(), name)
	Expect(f.Metric).To(HaveLen(1), name)
	Expect(f.Metric[0].Label).To(BeEmpty(), "%s: no label", name)
	return f.Metric[0].GetGauge().GetValue()
}

func get(url string) (int, string) {
	resp, err := http.Get(url)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

var _ = Describe("Storage capacity", func() {
	It("sweeps crash litter at start, shows the node's capacity and use on its Node and as metrics, and serves probes", func() {
		l := newLab()
		old := time.Now().Add(-time.Hour)
		file := func(rel string) string {
			p := filepath.Join(dataDir, rel)
			Expect(os.MkdirAll(filepath.Dir(p), 0o700)).To(Succeed())
			Expect(os.WriteFile(p, []byte("x"), 0o600)).To(Succeed())
			Expect(os.Chtimes(p, old, old)).To(Succeed())
			return p
		}
		litter := []string{
			file("images/" + l.ns + "/win11/.download-3141592"),
			file("images/" + l.ns + "/win11/.convert-2718281"),
			file("overlays/" + l.ns + "/.tmp-seat-1-a-uid.raw-1618033"),
			file("overlays/.reflink-probe-1414213"),
		}
		kept := []string{
			file("images/" + l.ns + "/win11/uid.raw"),
			file("overlays/" + l.ns + "/seat-1-a-uid.raw"),
		}
		const reserve = 64 << 20
		r := newRoleWith(func(c *Config) {
			c.Reserve, c.MetricsListen, c.CapacityInterval = reserve, "127.0.0.1:0", 300*time.Millisecond
		})
		for _, p := range litter {
			Expect(p).NotTo(BeAnExistingFile(), "litter is swept by New")
		}
		for _, p := range kept {
			Expect(p).To(BeAnExistingFile(), "a replica and an overlay are not litter")
			Expect(os.Remove(p)).To(Succeed()) // nothing wants them: the collector would
		}
		Expect(os.Remove(filepath.Dir(kept[0]))).To(Succeed())
		start(r)
		base := "http://" + r.MetricsAddr().String()

		By("probes")
		Eventually(func() int { code, _ := get(base + "/readyz"); return code }, eventually).Should(Equal(http.StatusOK))
		code, _ := get(base + "/healthz")
		Expect(code).To(Equal(http.StatusOK))

		By("the Node")
		Eventually(func() int64 { return nodeStorage().ReserveBytes }, eventually).Should(Equal(int64(reserve)))
		ns := nodeStorage()
		Expect(ns.CapacityBytes).To(BeNumerically("~", 2<<30, 128<<20), "the 2 GiB XFS of the suite")
		Expect(ns.FreeBytes).To(And(BeNumerically(">", 0), BeNumerically("<", ns.CapacityBytes)))
		Expect(ns.Updated.Time).To(BeTemporally("~", time.Now(), time.Minute))

		By("metrics: the same figures, no labels")
		families, err := scrape(base + "/metrics")
		Expect(err).NotTo(HaveOccurred())
		Expect(gauge(families, "ggnet_storage_capacity_bytes")).To(Equal(float64(ns.CapacityBytes)))
		Expect(gauge(families, "ggnet_storage_reserve_bytes")).To(Equal(float64(reserve)))
		Expect(gauge(families, "ggnet_storage_free_bytes")).To(BeNumerically("~", float64(ns.FreeBytes), 256<<20))
		Expect(gauge(families, "ggnet_storage_overlays")).To(Equal(float64(ns.Overlays)))
		Expect(families).To(HaveKey("ggnet_storage_replica_bytes"))
		Expect(families).To(HaveKey("ggnet_storage_overlay_bytes"))
		Expect(families).To(HaveKey("ggnet_storage_replicas_placing"))
		Expect(families).To(HaveKey("controller_runtime_reconcile_total"), "and controller-runtime's registry")

		By("a replica and a session's overlay show up")
		// Counted against the overlay directory: other specs' sessions may
		// come and go meanwhile.
		shows := func(rel string, there bool) func() bool {
			return func() bool {
				list, err := r.overlays.List()
				f, serr := scrape(base + "/metrics")
				return err == nil && serr == nil && slices.Contains(list, rel) == there &&
					nodeStorage().Overlays == len(list) && gauge(f, "ggnet_storage_overlays") == float64(len(list))
			}
		}
		before := nodeStorage()
		img := l.image("win11", 64<<20)
		l.machine("seat-1")
		s := l.session("seat-1-a", "seat-1", img.Name, bootv1.WritebackDiscard)
		info := credentials(s)
		rel, err := filepath.Rel(r.overlays.Dir(), s.Status.OverlayPath)
		Expect(err).NotTo(HaveOccurred())
		Eventually(shows(rel, true), eventually).Should(BeTrue())
		Expect(nodeStorage().ReplicaBytes).To(BeNumerically(">=", before.ReplicaBytes+64<<20), "the new replica's blocks")
		l.stop(s)
		Eventually(shows(rel, false), eventually).Should(BeTrue())

		By("no credential anywhere in the metrics")
		_, body := get(base + "/metrics")
		for _, secret := range []string{info.password, info.targetPassword} {
			Expect(strings.Contains(body, secret)).To(BeFalse())
		}
	})
})
