// Package fleetmetrics exports the manager's fleet metrics: how many
// sessions are in each phase on each storage node and image, machines by
// state, image replicas by state, each storage node's capacity and use
// (gauges, computed from the manager's informer cache at scrape time), and
// boots by result and the create-to-Ready and DHCP-to-login times (a counter
// and histograms, fed by the BootSession informer's update events). It makes
// no API call of its own: it reads the cache the controllers already keep.
//
// Only the elected leader exports them (its gauges are empty and its
// counters still until it leads), so that two manager replicas do not
// double every sum. docs/monitoring.md describes each metric.
package fleetmetrics

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	toolscache "k8s.io/client-go/tools/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	ctrlmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"

	bootv1 "github.com/ggnet/ggnet/api/v1alpha1"
)

// Prefix starts every metric of this package.
const Prefix = "ggnet_fleet_"

// listTimeout bounds the cache lists of one scrape (they wait only while
// the cache is syncing).
const listTimeout = 10 * time.Second

// Register adds the fleet metrics to controller-runtime's registry (the
// manager's /metrics) and the BootSession informer's event handler to mgr's
// cache. Call it once, before mgr.Start.
func Register(mgr manager.Manager) error {
	return RegisterWith(mgr, ctrlmetrics.Registry)
}

// RegisterWith is Register with another registry (tests).
func RegisterWith(mgr manager.Manager, reg prometheus.Registerer) error {
	m := newMetrics(mgr.GetCache(), mgr.Elected(), mgr.GetLogger().WithName("fleetmetrics"))
	for _, c := range []prometheus.Collector{m, m.boots, m.createToReady, m.dhcpToLogin, m.collectErrors} {
		if err := reg.Register(c); err != nil {
			return fmt.Errorf("registering the fleet metrics: %w", err)
		}
	}
	inf, err := mgr.GetCache().GetInformer(context.Background(), &bootv1.BootSession{})
	if err != nil {
		return fmt.Errorf("the BootSession informer: %w", err)
	}
	if _, err := inf.AddEventHandler(toolscache.ResourceEventHandlerFuncs{UpdateFunc: m.onUpdate}); err != nil {
		return fmt.Errorf("the BootSession informer's handler: %w", err)
	}
	return nil
}

// metrics is the collector of the gauges and the holder of the
// event-driven metrics.
type metrics struct {
	reader  client.Reader
	elected <-chan struct{}
	log     logr.Logger
	now     func() time.Time

	boots         *prometheus.CounterVec
	createToReady prometheus.Histogram
	dhcpToLogin   prometheus.Histogram
	collectErrors *prometheus.CounterVec

	sessions, phaseLongest, machines, replicas *prometheus.Desc
	storage                                    []storageGauge

	errOnce sync.Map // kinds whose list error was logged
}

// storageGauge is one gauge per storage node, from its NodeStorage.
type storageGauge struct {
	desc  *prometheus.Desc
	value func(bootv1.NodeStorage) float64
}

func newMetrics(reader client.Reader, elected <-chan struct{}, log logr.Logger) *metrics {
	m := &metrics{
		reader: reader, elected: elected, log: log, now: time.Now,
		boots: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: Prefix + "boots_total",
			Help: "Sessions by how they ended up, counted once each when decided: booted (the machine logged in to its iSCSI disk), " +
				"boot_failed (its iPXE could not sanboot: BootFailed), failed (phase Failed before any login), cancelled (stopped or deleted before any of these).",
		}, []string{"namespace", "image", "storage_node", "result"}),
		createToReady: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    Prefix + "session_create_to_ready_seconds",
			Help:    "Time from a BootSession's creation to timeline.ready (scheduled, storage made, script rendered).",
			Buckets: prometheus.ExponentialBuckets(0.1, 2, 15), // 0.1 s to 27 min
		}),
		dhcpToLogin: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    Prefix + "session_dhcp_to_login_seconds",
			Help:    "Time from the boot agent's last DHCP answer to a session's machine to the machine's first iSCSI login (timeline.dhcp to timeline.iscsiLogin).",
			Buckets: prometheus.ExponentialBuckets(0.25, 2, 12), // 0.25 s to 8.5 min
		}),
		collectErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: Prefix + "collect_errors_total",
			Help: "Scrapes whose list of a kind from the manager's cache failed (its gauges were left out), and storage annotations that could not be read (kind=node).",
		}, []string{"kind"}),
		sessions: prometheus.NewDesc(Prefix+"sessions",
			"BootSessions by namespace, phase (a session not reconciled yet counts as Pending), storage node (empty before scheduling) and image.",
			[]string{"namespace", "phase", "storage_node", "image"}, nil),
		phaseLongest: prometheus.NewDesc(Prefix+"session_phase_longest_seconds",
			"The longest time any session of the namespace has been in its current phase (from its timeline), for every phase but Stopped and Failed.",
			[]string{"namespace", "phase"}, nil),
		machines: prometheus.NewDesc(Prefix+"machines",
			"Machines by namespace and state: the phase of the active session, else Discovered, Conflict, NotReady, LocalBoot or Idle.",
			[]string{"namespace", "state"}, nil),
		replicas: prometheus.NewDesc(Prefix+"image_replicas",
			"Image replicas by namespace, image and state (Pending, Downloading, Converting, Ready, Failed, Deleting).",
			[]string{"namespace", "image", "state"}, nil),
	}
	for _, k := range []string{"bootsession", "machine", "image", "node"} {
		m.collectErrors.WithLabelValues(k)
	}
	g := func(name, help string, v func(bootv1.NodeStorage) float64) {
		m.storage = append(m.storage, storageGauge{prometheus.NewDesc(Prefix+"storage_node_"+name, help, []string{"storage_node"}, nil), v})
	}
	g("capacity_bytes", "Size of the storage node's data file system, as its storage agent last wrote it on its Node.", func(s bootv1.NodeStorage) float64 { return float64(s.CapacityBytes) })
	g("used_bytes", "Used space of the storage node's data file system (capacity less free).", func(s bootv1.NodeStorage) float64 { return float64(s.CapacityBytes - s.FreeBytes) })
	g("free_bytes", "Free space of the storage node's data file system (available to the agent).", func(s bootv1.NodeStorage) float64 { return float64(s.FreeBytes) })
	g("reserve_bytes", "Free space the storage agent keeps for running sessions' writes: new overlays and replicas are refused below it.", func(s bootv1.NodeStorage) float64 { return float64(s.ReserveBytes) })
	g("replica_bytes", "Space the image replicas take on the storage node.", func(s bootv1.NodeStorage) float64 { return float64(s.ReplicaBytes) })
	g("overlay_bytes", "Space the overlays' own writes take on the storage node.", func(s bootv1.NodeStorage) float64 { return float64(s.OverlayBytes) })
	g("overlays", "Overlay files on the storage node (running sessions and persistent disks).", func(s bootv1.NodeStorage) float64 { return float64(s.Overlays) })
	g("updated_timestamp_seconds", "When the storage agent last measured (Unix time): it writes at least every 10 minutes while it runs.", func(s bootv1.NodeStorage) float64 {
		return float64(s.Updated.UnixNano()) / 1e9
	})
	return m
}

// leading reports whether this manager is the elected leader (always, with
// leader election off, once the manager started).
func (m *metrics) leading() bool {
	select {
	case <-m.elected:
		return true
	default:
		return false
	}
}

// Describe implements prometheus.Collector.
func (m *metrics) Describe(ch chan<- *prometheus.Desc) {
	ch <- m.sessions
	ch <- m.phaseLongest
	ch <- m.machines
	ch <- m.replicas
	for _, g := range m.storage {
		ch <- g.desc
	}
}

// Collect implements prometheus.Collector: it lists from the cache and
// sends the gauges. A kind whose list fails is left out of this scrape (and
// counted), never failing the whole /metrics.
func (m *metrics) Collect(ch chan<- prometheus.Metric) {
	if !m.leading() {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), listTimeout)
	defer cancel()
	var (
		sessions bootv1.BootSessionList
		machines bootv1.MachineList
		images   bootv1.ImageList
		nodes    corev1.NodeList
	)
	okSessions := m.list(ctx, "bootsession", &sessions)
	okMachines := m.list(ctx, "machine", &machines)
	okImages := m.list(ctx, "image", &images)
	okNodes := m.list(ctx, "node", &nodes)
	d := snapshot(sessions.Items, machines.Items, images.Items, nodes.Items, m.now())
	if d.storageErrors > 0 {
		m.collectErrors.WithLabelValues("node").Add(float64(d.storageErrors))
	}
	if okSessions {
		for k, v := range d.sessions {
			ch <- prometheus.MustNewConstMetric(m.sessions, prometheus.GaugeValue, v, k.namespace, k.phase, k.storageNode, k.image)
		}
		for k, v := range d.phaseLongest {
			ch <- prometheus.MustNewConstMetric(m.phaseLongest, prometheus.GaugeValue, v, k.namespace, k.phase)
		}
	}
	if okMachines && okSessions {
		for k, v := range d.machines {
			ch <- prometheus.MustNewConstMetric(m.machines, prometheus.GaugeValue, v, k.namespace, k.state)
		}
	}
	if okImages {
		for k, v := range d.replicas {
			ch <- prometheus.MustNewConstMetric(m.replicas, prometheus.GaugeValue, v, k.namespace, k.image, k.state)
		}
	}
	if okNodes {
		for node, s := range d.storage {
			for _, g := range m.storage {
				ch <- prometheus.MustNewConstMetric(g.desc, prometheus.GaugeValue, g.value(s), node)
			}
		}
	}
}

// list lists kind from the cache without copying (the objects are only
// read); a failure is counted and logged once per kind.
func (m *metrics) list(ctx context.Context, kind string, l client.ObjectList) bool {
	if err := m.reader.List(ctx, l, client.UnsafeDisableDeepCopy); err != nil {
		m.collectErrors.WithLabelValues(kind).Inc()
		if _, logged := m.errOnce.LoadOrStore(kind, true); !logged {
			m.log.Error(err, "Listing from the cache for the fleet metrics (logged once per kind)", "kind", kind)
		}
		return false
	}
	return true
}

// onUpdate feeds the counter and the histograms from a BootSession update.
func (m *metrics) onUpdate(oldObj, newObj any) {
	old, ok1 := oldObj.(*bootv1.BootSession)
	cur, ok2 := newObj.(*bootv1.BootSession)
	if !ok1 || !ok2 || !m.leading() {
		return
	}
	c := transition(old, cur)
	if c.result != "" {
		m.boots.WithLabelValues(cur.Namespace, cur.Spec.ImageRef.Name, cur.Status.StorageNode, c.result).Inc()
	}
	if c.hasReady {
		m.createToReady.Observe(c.createToReady)
	}
	if c.hasLogin {
		m.dhcpToLogin.Observe(c.dhcpToLogin)
	}
}
