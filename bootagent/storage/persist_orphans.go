package storage

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	corev1ac "k8s.io/client-go/applyconfigurations/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/metrics"

	bootv1 "github.com/ggnet/ggnet/api/v1alpha1"
)

// Metrics of the persistent disks on this node, by namespace only (no
// names, no paths).
var (
	persistentDisksGauge = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "ggnet_storage_persistent_disks",
		Help: "Persistent disk files on this storage node, orphans included.",
	}, []string{"namespace"})
	orphanedDisksGauge = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "ggnet_storage_orphaned_persistent_disks",
		Help: "Persistent disks on this storage node whose Machine or Image no longer exists, and disks of the old layout " +
			"that could not be adopted; they are never removed automatically (the storage Node's condition lists them).",
	}, []string{"namespace"})
)

func init() {
	metrics.Registry.MustRegister(persistentDisksGauge, orphanedDisksGauge)
}

// orphan is one reported file.
type orphan struct{ path, why string }

// scanOrphans counts the persistent disks of each namespace this agent
// watches, adopts the old layout's files that it can, and reports the rest
// of the orphans: the gauges, the Node's condition, and a Warning Event on
// the Node when new ones appear. It never removes a file.
func (r *Role) scanOrphans(ctx context.Context) error {
	namespaces, err := r.persistNamespaces()
	if err != nil {
		return err
	}
	c := r.mgr.GetClient()
	var machines bootv1.MachineList
	if err := c.List(ctx, &machines); err != nil {
		return err
	}
	var images bootv1.ImageList
	if err := c.List(ctx, &images); err != nil {
		return err
	}
	machineUIDs, imageUIDs := map[types.UID]bool{}, map[types.UID]bool{}
	for _, m := range machines.Items {
		machineUIDs[m.UID] = true
	}
	for _, i := range images.Items {
		imageUIDs[i.UID] = true
	}

	var orphans []orphan
	total, orphaned := map[string]int{}, map[string]int{}
	for _, ns := range namespaces {
		disks, unknown, err := r.listDisks(ns)
		if err != nil {
			return err
		}
		var found []orphan
		for _, d := range disks {
			switch {
			case !machineUIDs[d.MachineUID]:
				found = append(found, orphan{d.Path, "Machine gone"})
			case !imageUIDs[d.ImageUID]:
				found = append(found, orphan{d.Path, "Image gone"})
			}
		}
		for _, u := range unknown {
			found = append(found, orphan{u, "not a disk name"})
		}
		legacy, err := filepath.Glob(filepath.Join(r.overlays.Dir(), ns, legacyPrefix+"*.raw"))
		if err != nil {
			return err
		}
		for _, p := range legacy {
			if !isLegacy(filepath.Base(p)) || !regularFile(p) {
				continue
			}
			adopted, err := r.adoptOrphan(ctx, ns, p)
			if err != nil {
				r.log.Error(err, "Adopting a persistent disk of the old layout", "path", p)
			}
			if !adopted {
				found = append(found, orphan{p, "old layout"})
			}
		}
		total[ns] = len(disks) + len(unknown) + len(legacy)
		orphaned[ns] = len(found)
		orphans = append(orphans, found...)
	}
	r.gaugeDisks(total, orphaned)
	return r.reportOrphans(ctx, orphans)
}

// persistNamespaces are the namespaces whose disks this agent judges: the
// one it watches, or every namespace directory of the data directory.
func (r *Role) persistNamespaces() ([]string, error) {
	if r.cfg.Namespace != "" {
		return []string{r.cfg.Namespace}, nil
	}
	entries, err := os.ReadDir(r.overlays.Dir())
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range entries {
		if e.IsDir() && !strings.HasPrefix(e.Name(), ".") {
			out = append(out, e.Name())
		}
	}
	return out, nil
}

// adoptOrphan adopts a file of the old layout when its name maps to exactly
// one existing (Machine, Image) pair, the Machine is not being deleted, the
// pair has no disk yet, and no session or target uses the file (see the
// package comment in persist.go). It reports whether it did.
func (r *Role) adoptOrphan(ctx context.Context, namespace, path string) (bool, error) {
	pairs, err := r.legacyPairs(ctx, namespace, filepath.Base(path))
	if err != nil || len(pairs) != 1 {
		return false, err
	}
	c := r.mgr.GetClient()
	m, img := &bootv1.Machine{}, &bootv1.Image{}
	if err := c.Get(ctx, types.NamespacedName{Namespace: namespace, Name: pairs[0][0]}, m); err != nil {
		return false, client.IgnoreNotFound(err)
	}
	if err := c.Get(ctx, types.NamespacedName{Namespace: namespace, Name: pairs[0][1]}, img); err != nil {
		return false, client.IgnoreNotFound(err)
	}
	if m.DeletionTimestamp != nil || !validUID.MatchString(string(m.UID)) || !validUID.MatchString(string(img.UID)) {
		return false, nil
	}
	unlock := r.lockMachine(namespace, m.UID)
	defer unlock()
	disks, err := r.machineDisks(namespace, m.UID)
	if err != nil {
		return false, err
	}
	for _, d := range disks {
		if d.ImageUID == img.UID {
			return false, nil // the pair has a disk: the old file is not it
		}
	}
	users, err := r.users(ctx, c, namespace, true)
	if err != nil {
		return false, err
	}
	if who := users.userOf(map[string]bool{path: true}, m.Name, "", ""); who != "" {
		return false, nil // adopted after that session ends
	}
	if m.Spec.PersistentDisks.OnDeleteOrDefault() == bootv1.PersistentDiskDelete {
		if err := r.machineFinalizer(ctx, m, true); errors.Is(err, errMachineDeleting) {
			return false, nil
		} else if err != nil {
			return false, err
		}
	}
	to, err := r.adoptLegacy(m, img, path, m.Spec.PersistentDisks.ResetGenerationOrZero())
	if err != nil || to == "" {
		return false, err
	}
	select {
	case r.persist.machines <- event.GenericEvent{Object: m}:
	default: // the reconciler is busy; it sees the disk at its next event
	}
	return true, nil
}

// gaugeDisks sets the gauges of the namespaces scanned and drops those of
// namespaces no longer there.
func (r *Role) gaugeDisks(total, orphaned map[string]int) {
	r.persist.mu.Lock()
	defer r.persist.mu.Unlock()
	for ns := range r.persist.gaugedNS {
		if _, ok := total[ns]; !ok {
			persistentDisksGauge.DeleteLabelValues(ns)
			orphanedDisksGauge.DeleteLabelValues(ns)
			delete(r.persist.gaugedNS, ns)
		}
	}
	for ns, n := range total {
		persistentDisksGauge.WithLabelValues(ns).Set(float64(n))
		orphanedDisksGauge.WithLabelValues(ns).Set(float64(orphaned[ns]))
		r.persist.gaugedNS[ns] = true
	}
}

// orphanCondition is the Node condition type this agent owns: one per
// namespace for an agent limited to one, so that two GGnet installations
// serving different namespaces on one node do not overwrite each other's.
func (r *Role) orphanCondition() corev1.NodeConditionType {
	if r.cfg.Namespace != "" {
		return corev1.NodeConditionType(bootv1.OrphanedPersistentDisksCondition + "." + r.cfg.Namespace)
	}
	return bootv1.OrphanedPersistentDisksCondition
}

// maxListed is how many orphan paths the condition and the Event name.
const maxListed = 10

// reportOrphans applies this agent's condition on its Node (the one
// condition of its apply: the kubelet's and others' are left alone) when it
// changed, and records a Warning Event on the Node for orphans not reported
// before by this process.
func (r *Role) reportOrphans(ctx context.Context, orphans []orphan) error {
	sort.Slice(orphans, func(i, j int) bool { return orphans[i].path < orphans[j].path })
	status, reason := corev1.ConditionFalse, bootv1.NoOrphanedPersistentDisksReason
	msg := "no orphaned persistent disks"
	if len(orphans) > 0 {
		status, reason = corev1.ConditionTrue, bootv1.OrphanedPersistentDisksReason
		msg = fmt.Sprintf("%d orphaned persistent disk(s) on this node, kept until an operator removes them: %s",
			len(orphans), listOrphans(orphans))
	}
	node := &corev1.Node{}
	if err := r.mgr.GetClient().Get(ctx, types.NamespacedName{Name: r.cfg.NodeName}, node); err != nil {
		return client.IgnoreNotFound(err)
	}

	r.persist.mu.Lock()
	var fresh []orphan
	now := map[string]bool{}
	for _, o := range orphans {
		now[o.path] = true
		if !r.persist.reported[o.path] {
			fresh = append(fresh, o)
		}
	}
	r.persist.reported = now
	r.persist.mu.Unlock()
	if len(fresh) > 0 {
		r.log.Info("Found orphaned persistent disks; they are kept", "count", len(fresh))
	}
	// An Event about a Node lives in the default namespace, which an agent
	// limited to one namespace may not write to: it has the condition.
	if len(fresh) > 0 && r.cfg.Namespace == "" {
		r.persist.recorder.Eventf(node, corev1.EventTypeWarning, bootv1.OrphanedPersistentDisksReason,
			"%d newly found orphaned persistent disk(s), kept until an operator removes them: %s", len(fresh), listOrphans(fresh))
	}

	typ := r.orphanCondition()
	var cur *corev1.NodeCondition
	for i := range node.Status.Conditions {
		if node.Status.Conditions[i].Type == typ {
			cur = &node.Status.Conditions[i]
		}
	}
	if cur != nil && cur.Status == status && cur.Reason == reason && cur.Message == msg {
		return nil
	}
	stamp := metav1.NewTime(time.Now().Truncate(time.Second))
	ltt := stamp
	if cur != nil && cur.Status == status {
		ltt = cur.LastTransitionTime
	}
	cond := corev1ac.NodeCondition().WithType(typ).WithStatus(status).WithReason(reason).WithMessage(msg).
		WithLastTransitionTime(ltt).WithLastHeartbeatTime(stamp)
	return client.IgnoreNotFound(r.applyStatus(ctx, corev1ac.Node(r.cfg.NodeName).WithStatus(corev1ac.NodeStatus().WithConditions(cond)), r.nodeFieldOwner()))
}

func listOrphans(orphans []orphan) string {
	var b strings.Builder
	for i, o := range orphans {
		if i == maxListed {
			fmt.Fprintf(&b, " and %d more", len(orphans)-maxListed)
			break
		}
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "%s (%s)", o.path, o.why)
	}
	return b.String()
}
