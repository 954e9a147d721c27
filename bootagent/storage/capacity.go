package storage

import (
	"context"
	"errors"
	"io/fs"
	"path/filepath"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"golang.org/x/sys/unix"

	bootv1 "github.com/ggnet/ggnet/api/v1alpha1"
)

// Every CapacityInterval the role measures its data directory, sets its
// gauges, and writes the measure on its Node (bootv1.StorageAnnotation) when
// it changed noticeably — an overlay or a replica came or went, the free
// space moved by more than storageFreeStep — or storageHeartbeat passed:
// the Node is not rewritten every 30 s on a busy node.
const (
	storageHeartbeat = 10 * time.Minute
	storageFreeStep  = 1 << 30
)

// storageMetrics are the storage role's own gauges, in a registry of the
// role's (two roles in one process never collide). No label: the node is
// the scrape target.
type storageMetrics struct {
	registry                                                *prometheus.Registry
	capacity, free, reserve, replicaBytes, overlayBytes, ov prometheus.Gauge
}

func newStorageMetrics(r *Role) *storageMetrics {
	g := func(name, help string) prometheus.Gauge {
		return prometheus.NewGauge(prometheus.GaugeOpts{Name: "ggnet_storage_" + name, Help: help})
	}
	m := &storageMetrics{
		registry:     prometheus.NewRegistry(),
		capacity:     g("capacity_bytes", "Size of the data directory's file system."),
		free:         g("free_bytes", "Free space of the data directory's file system."),
		reserve:      g("reserve_bytes", "Free space kept for running sessions' writes (--reserve-mib): new overlays and replicas are refused below it."),
		replicaBytes: g("replica_bytes", "Space the image replicas take."),
		overlayBytes: g("overlay_bytes", "Space the overlays' own writes take: the used space less the replicas."),
		ov:           g("overlays", "Overlay files on the node (running sessions and persistent disks)."),
	}
	m.registry.MustRegister(m.capacity, m.free, m.reserve, m.replicaBytes, m.overlayBytes, m.ov,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "ggnet_storage_replicas_placing", Help: "Image replicas being downloaded, copied or converted."},
			func() float64 { return float64(r.jobs.running()) }))
	return m
}

// measure reads the data directory's capacity and use.
func (r *Role) measure() (bootv1.NodeStorage, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(r.cfg.DataDir, &st); err != nil {
		return bootv1.NodeStorage{}, err
	}
	bs := int64(st.Bsize)
	ns := bootv1.NodeStorage{
		CapacityBytes: int64(st.Blocks) * bs,
		FreeBytes:     int64(st.Bavail) * bs,
		ReserveBytes:  int64(r.cfg.Reserve),
		Updated:       metav1.Now(),
	}
	used := int64(st.Blocks-st.Bfree) * bs
	// Replicas: the placed files (allocated blocks), not temporary ones.
	_ = filepath.WalkDir(r.images.Dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() || strings.HasPrefix(d.Name(), ".") || filepath.Ext(p) != ".raw" {
			return nil
		}
		var s unix.Stat_t
		if unix.Stat(p, &s) == nil {
			ns.ReplicaBytes += s.Blocks * 512
		}
		return nil
	})
	files, err := r.overlays.List()
	if err != nil {
		return bootv1.NodeStorage{}, err
	}
	ns.Overlays = len(files)
	ns.OverlayBytes = max(used-ns.ReplicaBytes, 0)
	return ns, nil
}

// reportCapacityOnce measures the data directory and reports it (run every
// CapacityInterval).
func (r *Role) reportCapacityOnce(ctx context.Context) error {
	ns, err := r.measure()
	if err != nil {
		return err
	}
	m := r.metrics
	m.capacity.Set(float64(ns.CapacityBytes))
	m.free.Set(float64(ns.FreeBytes))
	m.reserve.Set(float64(ns.ReserveBytes))
	m.replicaBytes.Set(float64(ns.ReplicaBytes))
	m.overlayBytes.Set(float64(ns.OverlayBytes))
	m.ov.Set(float64(ns.Overlays))
	r.node.mu.Lock()
	defer r.node.mu.Unlock()
	if !noticeable(r.node.storage, ns) {
		return nil
	}
	if err := r.applyNodeMeta(ctx, r.node.portal, ns); err != nil {
		if errors.Is(err, errNoNode) {
			return nil
		}
		return err
	}
	r.node.storage = ns
	return nil
}

// noticeable reports whether cur differs enough from what the Node says
// (last) to write it.
func noticeable(last, cur bootv1.NodeStorage) bool {
	d := cur.FreeBytes - last.FreeBytes
	return last.Updated.IsZero() || cur.Updated.Sub(last.Updated.Time) >= storageHeartbeat ||
		cur.Overlays != last.Overlays || cur.ReplicaBytes != last.ReplicaBytes ||
		cur.CapacityBytes != last.CapacityBytes || cur.ReserveBytes != last.ReserveBytes ||
		d >= storageFreeStep || -d >= storageFreeStep
}
