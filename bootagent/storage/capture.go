package storage

// Capture: an Image whose source is writeback (spec.source.writeback) is
// the persistent disk of a stopped Persist session. The storage node that
// holds the disk (the session's status.storageNode) places its replica as a
// reflink clone of the disk (instant, no block copied) and checksums the
// clone; the disk stays the Machine's own, untouched. Every other selected
// node replicates the replica from a node where it is Ready
// (capture_replication.go).
//
// The clone is made under the Machine's disk lock (the one a new session's
// setup, a reset and a deletion take), after checking that no unfinished
// session and no target uses the disk: the capture is of a disk no PC
// writes to. A capture never changes, moves or deletes the disk. The disk is
// the Machine's: when a later session of the Machine ran on it before the
// capture, the capture holds that session's writes too (it waits while
// that session runs, saying so).

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	bootv1 "github.com/ggnet/ggnet/api/v1alpha1"
	"github.com/ggnet/ggnet/bootagent/images"
)

// imageSessionField indexes Images by the BootSession their writeback
// source names.
const imageSessionField = ".spec.source.writeback.sessionRef.name"

func imageSession(o client.Object) []string {
	img, ok := o.(*bootv1.Image)
	if !ok || img.Spec.Source.Writeback == nil {
		return nil
	}
	return []string{img.Spec.Source.Writeback.SessionRef.Name}
}

// sessionImages maps a BootSession to the writeback Images that capture it.
func (r *imageReconciler) sessionImages(ctx context.Context, o client.Object) []reconcile.Request {
	var list bootv1.ImageList
	if err := r.List(ctx, &list, client.InNamespace(o.GetNamespace()), client.MatchingFields{imageSessionField: o.GetName()}); err != nil {
		r.log.Error(err, "Listing the Images that capture a session", "BootSession", o.GetNamespace()+"/"+o.GetName())
		return nil
	}
	out := make([]reconcile.Request, 0, len(list.Items))
	for _, img := range list.Items {
		out = append(out, reconcile.Request{NamespacedName: client.ObjectKeyFromObject(&img)})
	}
	return out
}

// sessionMoved passes the changes of a session that a capture waits for:
// its phase, node, disk, finalizers (the teardown), writeback, deletion.
var sessionMoved = predicate.Funcs{UpdateFunc: func(e event.UpdateEvent) bool {
	a, okA := e.ObjectOld.(*bootv1.BootSession)
	b, okB := e.ObjectNew.(*bootv1.BootSession)
	if !okA || !okB {
		return true
	}
	return a.Status.Phase != b.Status.Phase || a.Status.StorageNode != b.Status.StorageNode ||
		a.Status.OverlayPath != b.Status.OverlayPath || len(a.Finalizers) != len(b.Finalizers) ||
		a.Spec.Writeback != b.Spec.Writeback || !a.DeletionTimestamp.Equal(b.DeletionTimestamp)
}}

// watchSessions makes a writeback Image reconcile again when its session
// moves on (it stops, its teardown ends).
func (r *imageReconciler) watchSessions(b *builder.Builder) *builder.Builder {
	return b.Watches(&bootv1.BootSession{}, handler.EnqueueRequestsFromMapFunc(r.sessionImages), builder.WithPredicates(sessionMoved))
}

// replicaWait is why this node's replica is not placed (yet): Pending while
// it waits for something that will come, Failed when the source is wrong.
type replicaWait struct {
	state       bootv1.ReplicaState
	reason, msg string
}

func pending(reason, format string, a ...any) *replicaWait {
	return &replicaWait{state: bootv1.ReplicaPending, reason: reason, msg: fmt.Sprintf(format, a...)}
}

func invalid(format string, a ...any) *replicaWait {
	return &replicaWait{state: bootv1.ReplicaFailed, reason: bootv1.InvalidCaptureSourceReason, msg: fmt.Sprintf(format, a...)}
}

// placementKind is what a replica job does.
type placementKind int

const (
	// placeSource downloads or adopts the Image's http or path source.
	placeSource placementKind = iota
	// placeCapture clones a session's persistent disk on this node.
	placeCapture
	// placeReplication copies a Ready replica from another storage node.
	placeReplication
)

// placement is how this node places an Image's replica.
type placement struct {
	kind placementKind
	src  images.Source
	// session is the captured session (placeCapture); sourceNode the node
	// replicated from (placeReplication).
	session, sourceNode string
}

// writebackPlan decides how this node places the replica of a writeback
// Image: the capture on the session's storage node, a replication
// elsewhere, or a wait. attempt counts the failed placements before this
// one.
func (r *imageReconciler) writebackPlan(ctx context.Context, img *bootv1.Image, attempt int) (placement, *replicaWait, error) {
	name := img.Spec.Source.Writeback.SessionRef.Name
	if f := img.Spec.Format; f != "" && f != bootv1.ImageFormatRaw {
		return placement{}, &replicaWait{state: bootv1.ReplicaFailed, reason: images.ReasonUnsupportedFormat,
			msg: fmt.Sprintf("a captured disk is raw; format %s does not apply to a writeback Image", f)}, nil
	}
	s := &bootv1.BootSession{}
	if err := r.Get(ctx, types.NamespacedName{Namespace: img.Namespace, Name: name}, s); apierrors.IsNotFound(err) {
		s = nil
	} else if err != nil {
		return placement{}, nil, err
	}
	if s != nil && s.Spec.Writeback != bootv1.WritebackPersist {
		return placement{}, invalid("BootSession %s uses writeback %s: only a Persist session keeps a disk to capture", name, s.Spec.Writeback), nil
	}
	if s != nil && s.Status.StorageNode == r.cfg.NodeName && !readyElsewhere(img, r.cfg.NodeName) {
		return r.capturePlan(ctx, img, s)
	}
	// Once another node holds a Ready replica, that is the Image: the node
	// with the disk copies it like any other rather than clone the disk
	// again (the Machine may have written to it since).
	return r.replicationPlan(ctx, img, s, attempt)
}

// readyElsewhere reports whether a node other than node reports a Ready
// replica of img, with its checksum.
func readyElsewhere(img *bootv1.Image, node string) bool {
	for _, rep := range img.Status.Replicas {
		if rep.Node != node && rep.State == bootv1.ReplicaReady && rep.SHA256 != "" {
			return true
		}
	}
	return false
}

// capturedSHA256 is the checksum an Image captured before has (the status's,
// or a Ready replica's): a capture made again (this node's replica went
// meanwhile) must find the same content, or the Image would hold one thing
// here and another elsewhere. Empty: never captured.
func capturedSHA256(img *bootv1.Image) string {
	if img.Status.SHA256 != "" {
		return img.Status.SHA256
	}
	for _, rep := range img.Status.Replicas {
		if rep.State == bootv1.ReplicaReady && rep.SHA256 != "" {
			return rep.SHA256
		}
	}
	return ""
}

// capturePlan places the replica of a writeback Image on the node that
// holds its session's disk: it waits while the session runs or something
// uses the disk, refuses a failed session and a disk that is gone.
func (r *imageReconciler) capturePlan(ctx context.Context, img *bootv1.Image, s *bootv1.BootSession) (placement, *replicaWait, error) {
	switch s.Status.Phase {
	case bootv1.SessionStopped:
	case bootv1.SessionFailed:
		return placement{}, invalid("BootSession %s failed: only a session that stopped is captured", s.Name), nil
	default:
		phase := s.Status.Phase
		if phase == "" {
			phase = bootv1.SessionPending
		}
		return placement{}, pending(bootv1.SessionNotStoppedReason,
			"waiting for BootSession %s to stop (phase %s): its disk is captured once no PC writes to it (kubectl ggnet stop %s)", s.Name, phase, s.Name), nil
	}
	disk, w, err := r.sessionDisk(ctx, s)
	if err != nil || w != nil {
		return placement{}, w, err
	}
	users, err := r.users(ctx, r.Client, s.Namespace, true)
	if err != nil {
		return placement{}, nil, err
	}
	if who := users.userOf(map[string]bool{disk.path: true}, s.Spec.MachineRef.Name, "", ""); who != "" {
		return placement{}, pending(bootv1.PersistentDiskInUseReason,
			"the disk of BootSession %s (Machine %s) is in use by %s; the capture waits until it is released, and then holds what that session wrote too",
			s.Name, s.Spec.MachineRef.Name, who), nil
	}
	// Captured before (this node's replica went since): the same content
	// or none.
	src := images.Source{Format: string(bootv1.ImageFormatRaw), SHA256: capturedSHA256(img), Fill: r.captureFill(s, disk)}
	if q := img.Spec.MaxVirtualSize; q != nil {
		src.MaxVirtualSize = q.Value()
	}
	return placement{kind: placeCapture, src: src, session: s.Name}, nil, nil
}

// sessionDiskRef is a session's persistent disk and the Machine UID whose
// lock guards it.
type sessionDiskRef struct {
	path    string
	machine types.UID
}

// sessionDisk finds a stopped Persist session's disk: its
// status.overlayPath when that names a persistent disk of the session's
// namespace on this node (any other path is refused: whoever may patch
// bootsessions/status must not make the agent capture another file), or,
// for a disk of the old layout adopted since, the Machine's one disk for
// the session's Image.
func (r *imageReconciler) sessionDisk(ctx context.Context, s *bootv1.BootSession) (sessionDiskRef, *replicaWait, error) {
	p := s.Status.OverlayPath
	if p == "" || filepath.Clean(p) != p {
		return sessionDiskRef{}, invalid("BootSession %s never had a disk on node %s (its status names none)", s.Name, r.cfg.NodeName), nil
	}
	gone := invalid("the disk of BootSession %s is gone from node %s (the Machine's disks were reset or deleted since): there is nothing to capture",
		s.Name, r.cfg.NodeName)
	dir, name := filepath.Split(p)
	switch filepath.Clean(dir) {
	case r.persistPath(s.Namespace):
		d, ok := parseDisk(dir, name)
		if !ok {
			break
		}
		if !regularFile(p) {
			return sessionDiskRef{}, gone, nil
		}
		return sessionDiskRef{path: p, machine: d.MachineUID}, nil, nil
	case filepath.Join(r.overlays.Dir(), s.Namespace):
		if !isLegacy(name) {
			break
		}
		var m bootv1.Machine
		if err := r.Get(ctx, types.NamespacedName{Namespace: s.Namespace, Name: s.Spec.MachineRef.Name}, &m); apierrors.IsNotFound(err) {
			return sessionDiskRef{}, invalid("the disk of BootSession %s is of the old layout and its Machine %s is gone: capture it by hand",
				s.Name, s.Spec.MachineRef.Name), nil
		} else if err != nil {
			return sessionDiskRef{}, nil, err
		}
		if regularFile(p) {
			return sessionDiskRef{path: p, machine: m.UID}, nil, nil
		}
		// Adopted into the UID-keyed layout since.
		var img bootv1.Image
		if err := r.Get(ctx, types.NamespacedName{Namespace: s.Namespace, Name: s.Spec.ImageRef.Name}, &img); apierrors.IsNotFound(err) {
			return sessionDiskRef{}, gone, nil
		} else if err != nil {
			return sessionDiskRef{}, nil, err
		}
		disks, err := r.machineDisks(s.Namespace, m.UID)
		if err != nil {
			return sessionDiskRef{}, nil, err
		}
		var found []diskFile
		for _, d := range disks {
			if d.ImageUID == img.UID {
				found = append(found, d)
			}
		}
		if len(found) != 1 {
			return sessionDiskRef{}, gone, nil
		}
		return sessionDiskRef{path: found[0].Path, machine: m.UID}, nil, nil
	}
	return sessionDiskRef{}, invalid("status.overlayPath of BootSession %s is not a persistent disk of namespace %s on node %s",
		s.Name, s.Namespace, r.cfg.NodeName), nil
}

// captureFill clones the session's disk into the replica's file under the
// Machine's disk lock, once more sure that nothing uses it, then checksums
// the clone (the lock is released by then: the clone is the replica's own
// file).
func (r *imageReconciler) captureFill(s *bootv1.BootSession, disk sessionDiskRef) func(context.Context, *os.File, func(images.Progress)) (string, error) {
	ns, machine, session := s.Namespace, s.Spec.MachineRef.Name, s.Name
	return func(ctx context.Context, dst *os.File, progress func(images.Progress)) (string, error) {
		progress(images.Progress{State: bootv1.ReplicaPending})
		if err := r.cloneDisk(ctx, ns, machine, session, disk, dst); err != nil {
			return "", err
		}
		st, err := dst.Stat()
		if err != nil {
			return "", err
		}
		r.log.Info("Captured a session's disk by reflink; checksumming it", "BootSession", ns+"/"+session, "path", disk.path, "size", st.Size())
		return images.Checksum(ctx, dst, st.Size(), func(done, total int64) {
			progress(images.Progress{State: bootv1.ReplicaPending, Done: done, Total: total})
		})
	}
}

// cloneDisk makes dst a reflink clone of the disk, holding the Machine's
// lock.
func (r *imageReconciler) cloneDisk(ctx context.Context, ns, machine, session string, disk sessionDiskRef, dst *os.File) error {
	unlock := r.lockMachine(ns, disk.machine)
	defer unlock()
	users, err := r.users(ctx, r.Client, ns, true)
	if err != nil {
		return err
	}
	if who := users.userOf(map[string]bool{disk.path: true}, machine, "", ""); who != "" {
		return &images.Error{Reason: bootv1.PersistentDiskInUseReason,
			Err: fmt.Errorf("the disk of BootSession %s (Machine %s) is in use by %s; the capture waits until it is released", session, machine, who)}
	}
	src, err := os.OpenFile(disk.path, os.O_RDONLY|unix.O_NOFOLLOW, 0)
	if errors.Is(err, os.ErrNotExist) {
		return &images.Error{Reason: bootv1.InvalidCaptureSourceReason,
			Err: fmt.Errorf("the disk of BootSession %s is gone from this node: there is nothing to capture", session)}
	}
	if err != nil {
		return err
	}
	defer src.Close()
	if st, err := src.Stat(); err != nil || !st.Mode().IsRegular() {
		return &images.Error{Reason: bootv1.InvalidCaptureSourceReason, Err: fmt.Errorf("the disk of BootSession %s is not a regular file", session)}
	}
	return images.Reflink(dst, src)
}
