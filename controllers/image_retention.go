package controllers

import (
	"context"
	"fmt"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	"sigs.k8s.io/controller-runtime/pkg/client"
	logf "sigs.k8s.io/controller-runtime/pkg/log"

	bootv1 "github.com/ggnet/ggnet/api/v1alpha1"
)

// retentionCandidates are the Images of a family (its members, listed) that
// retention may delete, oldest first: with keep > 0 Ready versions kept
// (the newest keep Ready ones, and every version newer than the oldest of
// them), the versions older than that that are Ready or Failed, not being
// deleted and not annotated bootv1.KeepAnnotation "true". None when the family has keep Ready
// versions or fewer.
func retentionCandidates(family []bootv1.Image, keep int) []*bootv1.Image {
	if keep <= 0 {
		return nil
	}
	var ready []int64
	for i := range family {
		x := &family[i]
		if x.DeletionTimestamp == nil && x.Status.Version > 0 && meta.IsStatusConditionTrue(x.Status.Conditions, bootv1.ReadyCondition) {
			ready = append(ready, x.Status.Version)
		}
	}
	if len(ready) <= keep {
		return nil
	}
	slices.Sort(ready)
	oldestKept := ready[len(ready)-keep]
	var out []*bootv1.Image
	for i := range family {
		x := &family[i]
		// Only a version that is Ready or has Failed: one still on its way
		// (a capture waiting for its session, a download) is someone's
		// request in progress, never collected under them.
		settled := meta.IsStatusConditionTrue(x.Status.Conditions, bootv1.ReadyCondition) || x.Status.Phase == bootv1.ImageFailed
		if settled && x.DeletionTimestamp == nil && x.Status.Version > 0 && x.Status.Version < oldestKept && x.Annotations[bootv1.KeepAnnotation] != "true" {
			out = append(out, x)
		}
	}
	slices.SortFunc(out, func(a, b *bootv1.Image) int { return int(a.Status.Version - b.Status.Version) })
	return out
}

// imageUsers says what uses an Image, so that retention keeps it: Machines
// that pin it or resolve to it, Machines with a persistent disk made from
// it, unfinished sessions of it, and writeback Images still being captured
// from a session of it. Empty when nothing does.
type imageUsers struct {
	machines []bootv1.Machine
	// images are the namespace's Images (for the writeback ones).
	images []bootv1.Image
	// sessions returns the sessions of an Image, and session one by name.
	sessions func(image string) ([]bootv1.BootSession, error)
	session  func(name string) (*bootv1.BootSession, error)
}

// of returns what uses img, in words ("Machine seat-1 pins it"), or nil.
func (u *imageUsers) of(img *bootv1.Image) ([]string, error) {
	var out []string
	for i := range u.machines {
		m := &u.machines[i]
		switch {
		case m.Spec.ImageRef != nil && m.Spec.ImageRef.Name == img.Name:
			out = append(out, "Machine "+m.Name+" pins it")
		case m.Status.Image == img.Name:
			out = append(out, "Machine "+m.Name+" boots it")
		}
		for _, d := range m.Status.PersistentDisks {
			if d.ImageUID == string(img.UID) {
				out = append(out, "Machine "+m.Name+" has a persistent disk made from it on "+d.Node)
			}
		}
	}
	sessions, err := u.sessions(img.Name)
	if err != nil {
		return nil, err
	}
	for i := range sessions {
		if !finished(&sessions[i]) {
			out = append(out, "BootSession "+sessions[i].Name+" uses it")
		}
	}
	for i := range u.images {
		w := &u.images[i]
		if w.Spec.Source.Writeback == nil || w.DeletionTimestamp != nil || w.Status.Phase == bootv1.ImageReady || w.Status.Phase == bootv1.ImageFailed {
			continue
		}
		s, err := u.session(w.Spec.Source.Writeback.SessionRef.Name)
		if err != nil {
			return nil, err
		}
		if s != nil && s.Spec.ImageRef.Name == img.Name {
			out = append(out, "Image "+w.Name+" is being captured from a session of it")
		}
	}
	return out, nil
}

// reconcileRetention deletes the old versions of the Image's family that
// nothing uses (retentionCandidates, imageUsers), when retention is on
// (--image-retention): each through its finalizer, like any deletion, with
// a Normal Event Retention on it. It sets no condition.
func (r *ImageReconciler) reconcileRetention(ctx context.Context, sc *imageScope) (bool, error) {
	img := sc.image
	family := img.Labels[bootv1.FamilyLabel]
	if r.Retention <= 0 || family == "" {
		return true, nil
	}
	var all bootv1.ImageList
	if err := r.List(ctx, &all, client.InNamespace(img.Namespace)); err != nil {
		return false, err
	}
	var members []bootv1.Image
	for _, x := range all.Items {
		if x.Labels[bootv1.FamilyLabel] == family {
			members = append(members, x)
		}
	}
	candidates := retentionCandidates(members, r.Retention)
	if len(candidates) == 0 {
		return true, nil
	}
	var machines bootv1.MachineList
	if err := r.List(ctx, &machines, client.InNamespace(img.Namespace)); err != nil {
		return false, err
	}
	u := &imageUsers{machines: machines.Items, images: all.Items,
		sessions: func(image string) ([]bootv1.BootSession, error) {
			var l bootv1.BootSessionList
			err := r.List(ctx, &l, client.InNamespace(img.Namespace), client.MatchingFields{indexSessionImage: image})
			return l.Items, err
		},
		session: func(name string) (*bootv1.BootSession, error) {
			s := &bootv1.BootSession{}
			if err := r.Get(ctx, client.ObjectKey{Namespace: img.Namespace, Name: name}, s); err != nil {
				return nil, client.IgnoreNotFound(err)
			}
			return s, nil
		}}
	log := logf.FromContext(ctx)
	for _, c := range candidates {
		users, err := u.of(c)
		if err != nil {
			return false, err
		}
		if len(users) > 0 {
			log.V(1).Info("Keeping an old version in use", "family", family, "version", c.Status.Version, "oldImage", c.Name, "users", strings.Join(users, "; "))
			continue
		}
		log.Info("Deleting an old version nothing uses", "family", family, "version", c.Status.Version, "oldImage", c.Name)
		uid := c.UID
		if err := r.Delete(ctx, c, client.Preconditions{UID: &uid}); client.IgnoreNotFound(err) != nil {
			return false, err
		}
		r.Recorder.Event(c, corev1.EventTypeNormal, bootv1.RetentionReason,
			fmt.Sprintf("Deleting version %d of family %s: the newest %d Ready versions are kept and nothing uses this one", c.Status.Version, family, r.Retention))
	}
	return true, nil
}
