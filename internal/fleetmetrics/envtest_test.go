package fleetmetrics_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	bootv1 "github.com/ggnet/ggnet/api/v1alpha1"
	"github.com/ggnet/ggnet/internal/fixture"
	"github.com/ggnet/ggnet/internal/fleetmetrics"
	"github.com/ggnet/ggnet/internal/scheme"
	"github.com/ggnet/ggnet/internal/testenv"
)

// TestFromTheCache runs the metrics on a real manager's cache against a real
// API server: objects written through the API (statuses as the controllers
// and agents write them) show in the gauges at the next scrape, and session
// updates feed the counter and the histograms.
func TestFromTheCache(t *testing.T) {
	g := NewWithT(t)
	// A busy machine (several suites at once) starts kube-apiserver slowly.
	env, cfg, err := testenv.Start(func(e *envtest.Environment) { e.ControlPlaneStartTimeout = 2 * time.Minute })
	g.Expect(err).NotTo(HaveOccurred())
	t.Cleanup(func() { _ = env.Stop() })

	mgr, err := ctrl.NewManager(cfg, ctrl.Options{Scheme: scheme.New(), Metrics: metricsserver.Options{BindAddress: "0"}})
	g.Expect(err).NotTo(HaveOccurred())
	reg := prometheus.NewRegistry()
	g.Expect(fleetmetrics.RegisterWith(mgr, reg)).To(Succeed())
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- mgr.Start(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("manager: %v", err)
		}
	})
	c := mgr.GetClient()

	ns := "cafe-" + fmt.Sprint(time.Now().UnixNano()%100000)
	g.Expect(c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}})).To(Succeed())
	now := metav1.Now()
	ready := metav1.Condition{Type: bootv1.ReadyCondition, Status: metav1.ConditionTrue, Reason: bootv1.SucceededReason, LastTransitionTime: now}

	// A storage node as its agent shows it, and a plain node.
	g.Expect(c.Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "st-1", Annotations: map[string]string{bootv1.StorageAnnotation: `{"capacityBytes":1000000,"freeBytes":250000,"reserveBytes":100000,"replicaBytes":600000,"overlayBytes":150000,"overlays":3,"updated":"2026-11-27T08:00:00Z"}`}}})).To(Succeed())
	g.Expect(c.Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "worker-1"}})).To(Succeed())

	img := fixture.Image(ns, "win11")
	g.Expect(c.Create(ctx, img)).To(Succeed())
	img.Status.Replicas = []bootv1.ImageReplica{{Node: "st-1", State: bootv1.ReplicaReady}, {Node: "st-2", State: bootv1.ReplicaDownloading}}
	g.Expect(c.Status().Update(ctx, img)).To(Succeed())

	for i, active := range []string{"s1", "", ""} {
		m := fixture.Machine(ns, fmt.Sprintf("pc%d", i+1), fixture.WithMAC(fmt.Sprintf("52:54:00:00:00:0%d", i+1)))
		g.Expect(c.Create(ctx, m)).To(Succeed())
		m.Status.Conditions, m.Status.ActiveSession = []metav1.Condition{ready}, active
		g.Expect(c.Status().Update(ctx, m)).To(Succeed())
	}
	s1 := fixture.Session(ns, "s1", "pc1", "win11")
	s2 := fixture.Session(ns, "s2", "pc2", "win11")
	for _, s := range []*bootv1.BootSession{s1, s2} {
		g.Expect(c.Create(ctx, s)).To(Succeed())
	}
	s1.Status.Phase, s1.Status.StorageNode = bootv1.SessionProvisioning, "st-1"
	s1.Status.Timeline.Scheduled = &now
	g.Expect(c.Status().Update(ctx, s1)).To(Succeed())

	scrape := func() string {
		var b strings.Builder
		for _, name := range []string{"sessions", "machines", "image_replicas", "storage_node_capacity_bytes", "storage_node_used_bytes", "storage_node_free_bytes", "storage_node_overlays", "boots_total"} {
			fams, err := reg.Gather()
			g.Expect(err).NotTo(HaveOccurred())
			for _, f := range fams {
				if f.GetName() != fleetmetrics.Prefix+name {
					continue
				}
				for _, m := range f.Metric {
					var labels []string
					for _, l := range m.Label {
						labels = append(labels, l.GetName()+"="+l.GetValue())
					}
					v := m.GetGauge().GetValue() + m.GetCounter().GetValue()
					fmt.Fprintf(&b, "%s{%s} %g\n", name, strings.Join(labels, ","), v)
				}
			}
		}
		return b.String()
	}
	nsl := "namespace=" + ns
	g.Eventually(scrape, 20*time.Second, 100*time.Millisecond).Should(And(
		ContainSubstring("sessions{image=win11,"+nsl+",phase=Provisioning,storage_node=st-1} 1\n"),
		ContainSubstring("sessions{image=win11,"+nsl+",phase=Pending,storage_node=} 1\n"),
		ContainSubstring("machines{"+nsl+",state=Provisioning} 1\n"),
		ContainSubstring("machines{"+nsl+",state=Idle} 2\n"),
		ContainSubstring("image_replicas{image=win11,"+nsl+",state=Ready} 1\n"),
		ContainSubstring("image_replicas{image=win11,"+nsl+",state=Downloading} 1\n"),
		ContainSubstring("storage_node_capacity_bytes{storage_node=st-1} 1e+06\n"),
		ContainSubstring("storage_node_used_bytes{storage_node=st-1} 750000\n"),
		ContainSubstring("storage_node_free_bytes{storage_node=st-1} 250000\n"),
		ContainSubstring("storage_node_overlays{storage_node=st-1} 3\n"),
	))
	g.Expect(scrape()).NotTo(ContainSubstring("worker-1"), "a Node without a storage agent has no storage gauges")
	g.Expect(scrape()).NotTo(ContainSubstring("boots_total"), "no session has an outcome yet")

	// s1 becomes Ready 5 s after its creation, then its machine boots: DHCP,
	// and the first iSCSI login 12 s later.
	created := s1.CreationTimestamp.Time
	stamp := func(d time.Duration) *metav1.Time { t := metav1.NewTime(created.Add(d)); return &t }
	s1.Status.Phase, s1.Status.Timeline.Ready = bootv1.SessionReady, stamp(5*time.Second)
	g.Expect(c.Status().Update(ctx, s1)).To(Succeed())
	g.Eventually(func() int {
		return testutil.CollectAndCount(reg, fleetmetrics.Prefix+"session_create_to_ready_seconds")
	}).Should(Equal(1))
	s1.Status.Phase, s1.Status.Timeline.DHCP, s1.Status.Timeline.ISCSILogin = bootv1.SessionActive, stamp(20*time.Second), stamp(32*time.Second)
	g.Expect(c.Status().Update(ctx, s1)).To(Succeed())
	// s2 fails before booting.
	s2.Status.Phase = bootv1.SessionFailed
	g.Expect(c.Status().Update(ctx, s2)).To(Succeed())

	g.Eventually(scrape, 20*time.Second, 100*time.Millisecond).Should(And(
		ContainSubstring("boots_total{image=win11,"+nsl+",result=booted,storage_node=st-1} 1\n"),
		ContainSubstring("boots_total{image=win11,"+nsl+",result=failed,storage_node=} 1\n"),
		ContainSubstring("machines{"+nsl+",state=Active} 1\n"),
	))
	g.Expect(testutil.GatherAndCompare(reg, strings.NewReader(histogramText), fleetmetrics.Prefix+"session_create_to_ready_seconds", fleetmetrics.Prefix+"session_dhcp_to_login_seconds")).To(Succeed())

	// A later update of a session that has its result counts nothing again.
	s1.Spec.Stopped = true
	g.Expect(c.Update(ctx, s1)).To(Succeed())
	s1.Status.Phase = bootv1.SessionStopping
	g.Expect(c.Status().Update(ctx, s1)).To(Succeed())
	g.Eventually(scrape, 20*time.Second, 100*time.Millisecond).Should(ContainSubstring("sessions{image=win11," + nsl + ",phase=Stopping,storage_node=st-1} 1\n"))
	g.Expect(scrape()).To(ContainSubstring("boots_total{image=win11," + nsl + ",result=booted,storage_node=st-1} 1\n"))
	g.Expect(scrape()).NotTo(ContainSubstring("result=cancelled"))
}

// histogramText is one observation of 5 s (create to Ready) and one of 12 s
// (DHCP to login).
const histogramText = `
# HELP ggnet_fleet_session_create_to_ready_seconds Time from a BootSession's creation to timeline.ready (scheduled, storage made, script rendered).
# TYPE ggnet_fleet_session_create_to_ready_seconds histogram
ggnet_fleet_session_create_to_ready_seconds_bucket{le="0.1"} 0
ggnet_fleet_session_create_to_ready_seconds_bucket{le="0.2"} 0
ggnet_fleet_session_create_to_ready_seconds_bucket{le="0.4"} 0
ggnet_fleet_session_create_to_ready_seconds_bucket{le="0.8"} 0
ggnet_fleet_session_create_to_ready_seconds_bucket{le="1.6"} 0
ggnet_fleet_session_create_to_ready_seconds_bucket{le="3.2"} 0
ggnet_fleet_session_create_to_ready_seconds_bucket{le="6.4"} 1
ggnet_fleet_session_create_to_ready_seconds_bucket{le="12.8"} 1
ggnet_fleet_session_create_to_ready_seconds_bucket{le="25.6"} 1
ggnet_fleet_session_create_to_ready_seconds_bucket{le="51.2"} 1
ggnet_fleet_session_create_to_ready_seconds_bucket{le="102.4"} 1
ggnet_fleet_session_create_to_ready_seconds_bucket{le="204.8"} 1
ggnet_fleet_session_create_to_ready_seconds_bucket{le="409.6"} 1
ggnet_fleet_session_create_to_ready_seconds_bucket{le="819.2"} 1
ggnet_fleet_session_create_to_ready_seconds_bucket{le="1638.4"} 1
ggnet_fleet_session_create_to_ready_seconds_bucket{le="+Inf"} 1
ggnet_fleet_session_create_to_ready_seconds_sum 5
ggnet_fleet_session_create_to_ready_seconds_count 1
# HELP ggnet_fleet_session_dhcp_to_login_seconds Time from the boot agent's last DHCP answer to a session's machine to the machine's first iSCSI login (timeline.dhcp to timeline.iscsiLogin).
# TYPE ggnet_fleet_session_dhcp_to_login_seconds histogram
ggnet_fleet_session_dhcp_to_login_seconds_bucket{le="0.25"} 0
ggnet_fleet_session_dhcp_to_login_seconds_bucket{le="0.5"} 0
ggnet_fleet_session_dhcp_to_login_seconds_bucket{le="1"} 0
ggnet_fleet_session_dhcp_to_login_seconds_bucket{le="2"} 0
ggnet_fleet_session_dhcp_to_login_seconds_bucket{le="4"} 0
ggnet_fleet_session_dhcp_to_login_seconds_bucket{le="8"} 0
ggnet_fleet_session_dhcp_to_login_seconds_bucket{le="16"} 1
ggnet_fleet_session_dhcp_to_login_seconds_bucket{le="32"} 1
ggnet_fleet_session_dhcp_to_login_seconds_bucket{le="64"} 1
ggnet_fleet_session_dhcp_to_login_seconds_bucket{le="128"} 1
ggnet_fleet_session_dhcp_to_login_seconds_bucket{le="256"} 1
ggnet_fleet_session_dhcp_to_login_seconds_bucket{le="512"} 1
ggnet_fleet_session_dhcp_to_login_seconds_bucket{le="+Inf"} 1
ggnet_fleet_session_dhcp_to_login_seconds_sum 12
ggnet_fleet_session_dhcp_to_login_seconds_count 1
`
