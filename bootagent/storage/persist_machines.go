package storage

import (
	"context"
	"errors"
	"os"
	"strconv"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/controller-runtime/pkg/source"

	bootv1 "github.com/ggnet/ggnet/api/v1alpha1"
	bootac "github.com/ggnet/ggnet/api/v1alpha1/applyconfiguration/api/v1alpha1"
)

// persistReconciler keeps the persistent disks of each Machine on this
// node: their entries in status.persistentDisks, their reset when
// resetGeneration grows, their deletion with a Machine whose onDelete is
// Delete, and this node's finalizer on such a Machine.
type persistReconciler struct {
	*Role
	client.Client
}

func (r *persistReconciler) setup(mgr ctrl.Manager) error {
	mine := predicate.NewPredicateFuncs(func(o client.Object) bool {
		s, ok := o.(*bootv1.BootSession)
		return ok && s.Status.StorageNode == r.cfg.NodeName && s.Spec.Writeback == bootv1.WritebackPersist
	})
	return ctrl.NewControllerManagedBy(mgr).Named("storage-persist").
		For(&bootv1.Machine{}).
		// A session that starts or stops using a disk.
		Watches(&bootv1.BootSession{}, handler.EnqueueRequestsFromMapFunc(func(_ context.Context, o client.Object) []reconcile.Request {
			s := o.(*bootv1.BootSession)
			return []reconcile.Request{{NamespacedName: types.NamespacedName{Namespace: s.Namespace, Name: s.Spec.MachineRef.Name}}}
		}), builder.WithPredicates(mine)).
		// An Image that comes or goes (its disks are orphaned).
		Watches(&bootv1.Image{}, handler.EnqueueRequestsFromMapFunc(r.machinesWithDisks)).
		// The orphan scanner adopted a disk of the old layout.
		WatchesRawSource(source.Channel(r.persist.machines, &handler.EnqueueRequestForObject{})).
		WithOptions(controller.Options{MaxConcurrentReconciles: 2}).
		Complete(r)
}

// machinesWithDisks maps an Image to the Machines of its namespace that list
// a disk on this node.
func (r *persistReconciler) machinesWithDisks(ctx context.Context, o client.Object) []reconcile.Request {
	var list bootv1.MachineList
	if err := r.List(ctx, &list, client.InNamespace(o.GetNamespace())); err != nil {
		return nil
	}
	var out []reconcile.Request
	for _, m := range list.Items {
		for _, d := range m.Status.PersistentDisks {
			if d.Node == r.cfg.NodeName {
				out = append(out, reconcile.Request{NamespacedName: client.ObjectKeyFromObject(&m)})
				break
			}
		}
	}
	return out
}

// Reconcile judges each disk of the Machine on this node, in this order: the
// Machine is being deleted with onDelete: Delete (delete the disk once
// unused; DeletePending meanwhile), the disk is older than resetGeneration
// (delete once unused; ResetPending meanwhile), its Image is gone
// (Orphaned), a session uses it (InUse), or Available. "Unused" means no
// Persist session on this node holds it or may be about to (see users) and
// no target is backed by it; when the target daemon cannot be asked nothing
// is deleted. Then it sets this node's finalizer (held while the Machine
// has onDelete: Delete and disks here) and applies the node's entries of
// status.persistentDisks. Events: PersistentDiskResetPending,
// PersistentDiskReset, PersistentDiskDeletePending, PersistentDiskDeleted,
// PersistentDiskOrphaned.
func (r *persistReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	m := &bootv1.Machine{}
	if err := r.Get(ctx, req.NamespacedName, m); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	fin := bootv1.NodeFinalizer(r.cfg.NodeName)
	prev := map[string]bootv1.PersistentDisk{}
	for _, d := range m.Status.PersistentDisks {
		if d.Node == r.cfg.NodeName {
			prev[d.ImageUID] = d
		}
	}
	unlock := r.lockMachine(m.Namespace, m.UID)
	defer unlock()
	disks, err := r.machineDisks(m.Namespace, m.UID)
	if err != nil {
		return ctrl.Result{}, err
	}
	if len(disks) == 0 && len(prev) == 0 && !controllerutil.ContainsFinalizer(m, fin) {
		return ctrl.Result{}, nil // most Machines: nothing of theirs here
	}
	log := r.log.WithValues("Machine", req.String())
	deleting := m.DeletionTimestamp != nil && m.Spec.PersistentDisks.OnDeleteOrDefault() == bootv1.PersistentDiskDelete
	resetGen := m.Spec.PersistentDisks.ResetGenerationOrZero()
	judge := false // is any disk to be deleted?
	for _, d := range disks {
		judge = judge || deleting || d.Generation < resetGen
	}
	users, err := r.users(ctx, r.Client, m.Namespace, judge)
	if err != nil {
		return ctrl.Result{}, err
	}
	var images bootv1.ImageList
	if err := r.List(ctx, &images, client.InNamespace(m.Namespace)); err != nil {
		return ctrl.Result{}, err
	}
	imageByUID := map[types.UID]*bootv1.Image{}
	for i := range images.Items {
		imageByUID[images.Items[i].UID] = &images.Items[i]
	}

	entries := map[string]bootv1.PersistentDisk{}
	pending := false
	for _, d := range disks {
		inUse := users.userOf(map[string]bool{d.Path: true}, m.Name, "", "")
		img := imageByUID[d.ImageUID]
		old, hadEntry := prev[string(d.ImageUID)]
		imageName := old.Image
		if img != nil {
			imageName = img.Name
		}
		var state bootv1.PersistentDiskState
		switch {
		case deleting || d.Generation < resetGen:
			why, pendingState, pendingReason, doneReason := "the Machine is being deleted with onDelete: Delete",
				bootv1.PersistentDiskDeletePending, bootv1.PersistentDiskDeletePendingReason, bootv1.PersistentDiskDeletedReason
			if !deleting {
				why, pendingState, pendingReason, doneReason = "resetGeneration is "+itoa(resetGen)+", the disk's generation "+itoa(d.Generation),
					bootv1.PersistentDiskResetPending, bootv1.PersistentDiskResetPendingReason, bootv1.PersistentDiskResetReason
			}
			if inUse != "" {
				state, pending = pendingState, true
				if old.State != pendingState {
					r.persist.recorder.Eventf(m, corev1.EventTypeNormal, pendingReason,
						"The persistent disk for Image %s on node %s is deleted when %s releases it (%s)", imageName, r.cfg.NodeName, inUse, why)
				}
				break
			}
			log.Info("Deleting a persistent disk", "path", d.Path, "why", why)
			if err := r.overlays.Remove(d.Path); err != nil {
				return ctrl.Result{}, err
			}
			r.persist.recorder.Eventf(m, corev1.EventTypeNormal, doneReason,
				"Deleted the persistent disk for Image %s on node %s (%s)", imageName, r.cfg.NodeName, why)
			continue
		case img == nil:
			state = bootv1.PersistentDiskOrphaned
			if old.State != state {
				r.persist.recorder.Eventf(m, corev1.EventTypeWarning, bootv1.PersistentDiskOrphanedReason,
					"Image %s (UID %s) no longer exists; its persistent disk on node %s is kept at %s until an operator removes it or resets the machine's disks",
					imageName, d.ImageUID, r.cfg.NodeName, d.Path)
			}
		case inUse != "":
			state = bootv1.PersistentDiskInUse
		default:
			state = bootv1.PersistentDiskAvailable
		}
		e := bootv1.PersistentDisk{Node: r.cfg.NodeName, Image: imageName, ImageUID: string(d.ImageUID), Path: d.Path,
			Generation: d.Generation, State: state}
		fi, err := os.Stat(d.Path)
		if err != nil {
			return ctrl.Result{}, err
		}
		e.SizeBytes = fi.Size()
		e.LastUsed = lastUsed(old, hadEntry && old.Path == d.Path, state, fi.ModTime())
		if cur, dup := entries[e.ImageUID]; dup && cur.Generation > e.Generation {
			continue // one entry per image: the newest disk
		}
		entries[e.ImageUID] = e
	}

	if remaining := len(entries) > 0; m.Spec.PersistentDisks.OnDeleteOrDefault() == bootv1.PersistentDiskDelete && remaining {
		if err := r.machineFinalizer(ctx, m, true); err != nil && !errors.Is(err, errMachineDeleting) {
			return ctrl.Result{}, err
		}
	} else if controllerutil.ContainsFinalizer(m, fin) {
		log.Info("Releasing this node's finalizer", "disks", len(entries))
		if err := r.machineFinalizer(ctx, m, false); err != nil {
			return ctrl.Result{}, err
		}
	}
	if err := r.applyDisks(ctx, m, prev, entries); err != nil {
		return ctrl.Result{}, err
	}
	if pending {
		return ctrl.Result{RequeueAfter: r.cfg.Resync}, nil
	}
	return ctrl.Result{}, nil
}

// lastUsed is when a session last started or stopped using the disk: kept
// from the previous entry of the same file, stamped now when the disk goes
// in or out of use, and the file's modification time when nothing is
// known (the status was lost).
func lastUsed(old bootv1.PersistentDisk, same bool, state bootv1.PersistentDiskState, mtime time.Time) *metav1.Time {
	used := func(s bootv1.PersistentDiskState) bool {
		return s == bootv1.PersistentDiskInUse || s == bootv1.PersistentDiskResetPending || s == bootv1.PersistentDiskDeletePending
	}
	now := metav1.NewTime(time.Now().Truncate(time.Second))
	switch {
	case !same || old.LastUsed == nil:
		if used(state) {
			return &now
		}
		t := metav1.NewTime(mtime.Truncate(time.Second))
		return &t
	case used(old.State) != used(state):
		return &now
	default:
		return old.LastUsed
	}
}

// applyDisks applies this node's entries of status.persistentDisks (with
// this node's field manager: other nodes' entries and the manager's fields
// are left alone) unless they already say so.
func (r *persistReconciler) applyDisks(ctx context.Context, m *bootv1.Machine, prev, entries map[string]bootv1.PersistentDisk) error {
	same := len(prev) == len(entries)
	for k, e := range entries {
		p, ok := prev[k]
		same = same && ok && p.Image == e.Image && p.Path == e.Path && p.SizeBytes == e.SizeBytes &&
			p.Generation == e.Generation && p.State == e.State && p.LastUsed.Equal(e.LastUsed)
	}
	if same {
		return nil
	}
	status := bootac.MachineStatus()
	for _, e := range entries {
		d := bootac.PersistentDisk().WithNode(e.Node).WithImageUID(e.ImageUID).WithPath(e.Path).WithSizeBytes(e.SizeBytes).
			WithGeneration(e.Generation).WithState(e.State)
		if e.Image != "" {
			d.WithImage(e.Image)
		}
		if e.LastUsed != nil {
			d.WithLastUsed(*e.LastUsed)
		}
		status.WithPersistentDisks(d)
	}
	return client.IgnoreNotFound(r.applyStatus(ctx, bootac.Machine(m.Name, m.Namespace).WithStatus(status)))
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }
