package controllers

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	bootv1 "github.com/ggnet/ggnet/api/v1alpha1"
)

// familyVersions hands out the versions of the Image families
// (bootv1.FamilyLabel) within one manager. A family's versions are given
// under its own lock, so two reconciles of new Images of one family never
// take the same number; the versions given but not yet seen in the cache
// (the status write is on its way) are remembered until it shows them.
type familyVersions struct {
	mu    sync.Mutex
	locks map[string]*sync.Mutex
	// given holds, per family key, the versions given by UID and not yet
	// seen in the cache.
	given map[string]map[types.UID]int64
}

func newFamilyVersions() *familyVersions {
	return &familyVersions{locks: map[string]*sync.Mutex{}, given: map[string]map[types.UID]int64{}}
}

// lock takes the family's lock and returns its unlock.
func (f *familyVersions) lock(key string) func() {
	f.mu.Lock()
	l := f.locks[key]
	if l == nil {
		l = &sync.Mutex{}
		f.locks[key] = l
	}
	f.mu.Unlock()
	l.Lock()
	return l.Unlock
}

// familyKey is the lock and record key of an Image's family: namespace and
// family name.
func familyKey(namespace, family string) string { return namespace + "/" + family }

// version returns the version of img, a member of its family's Images
// (the cache's list, made under the family's lock, which the caller
// holds): the one it has, the one given to it
// before, or a new one. New ones are given to every Image of the family
// still without one, in creation order (creationTimestamp, then name), up
// to img: 1 + the highest version of the family's Images.
func (f *familyVersions) version(img *bootv1.Image, family []bootv1.Image) int64 {
	key := familyKey(img.Namespace, img.Labels[bootv1.FamilyLabel])
	f.mu.Lock()
	defer f.mu.Unlock()
	given := f.given[key]
	if given == nil {
		given = map[types.UID]int64{}
		f.given[key] = given
	}
	// What the cache shows replaces what was given; Images gone are
	// forgotten.
	seen := map[types.UID]bool{}
	var highest int64
	var unnumbered []*bootv1.Image
	for i := range family {
		x := &family[i]
		seen[x.UID] = true
		v := x.Status.Version
		if x.UID == img.UID && img.Status.Version > 0 {
			v = img.Status.Version
		}
		if v > 0 {
			delete(given, x.UID)
		} else if g, ok := given[x.UID]; ok {
			v = g
		} else {
			unnumbered = append(unnumbered, x)
		}
		highest = max(highest, v)
	}
	for uid := range given {
		if !seen[uid] {
			delete(given, uid)
		}
	}
	if img.Status.Version > 0 {
		return img.Status.Version
	}
	if v, ok := given[img.UID]; ok {
		return v
	}
	if !seen[img.UID] {
		// The cache has not seen img yet: it is numbered with the others.
		unnumbered = append(unnumbered, img)
	}
	slices.SortFunc(unnumbered, func(a, b *bootv1.Image) int {
		if c := a.CreationTimestamp.Compare(b.CreationTimestamp.Time); c != 0 {
			return c
		}
		return strings.Compare(a.Name, b.Name)
	})
	for _, x := range unnumbered {
		highest++
		given[x.UID] = highest
		if x.UID == img.UID {
			break
		}
	}
	return given[img.UID]
}

// versionSettle is how long after its creationTimestamp (whole seconds)
// an Image waits for its version: long enough for the Images created in
// the same second to reach the manager's cache, so that Images created
// together are numbered in (creationTimestamp, name) order rather than in
// the order the manager happened to see them.
const versionSettle = 2 * time.Second

// reconcileVersion gives an Image with a family its status.version
// (familyVersions.version), once, versionSettle after its creation; an
// Image without a family has none.
func (r *ImageReconciler) reconcileVersion(ctx context.Context, sc *imageScope) (bool, error) {
	img := sc.image
	family := img.Labels[bootv1.FamilyLabel]
	if family == "" || img.Status.Version > 0 {
		return true, nil
	}
	if wait := time.Until(img.CreationTimestamp.Add(versionSettle)); wait > 0 {
		sc.requeueAfter = wait
		return true, nil
	}
	// The list is made under the lock too: a list made before another
	// reconcile's could miss a version that reconcile saw and forgot.
	defer r.versions.lock(familyKey(img.Namespace, family))()
	var list bootv1.ImageList
	if err := r.List(ctx, &list, client.InNamespace(img.Namespace), client.MatchingLabels{bootv1.FamilyLabel: family}); err != nil {
		return false, err
	}
	img.Status.Version = r.versions.version(img, list.Items)
	return true, nil
}

// latestReady is the Ready Image of a family (its members, listed) with the
// highest version that is not being deleted, or nil.
func latestReady(family []bootv1.Image) *bootv1.Image {
	var best *bootv1.Image
	for i := range family {
		x := &family[i]
		if x.DeletionTimestamp != nil || x.Status.Version == 0 || !meta.IsStatusConditionTrue(x.Status.Conditions, bootv1.ReadyCondition) {
			continue
		}
		// Two Images may share a version (one relabelled into the family):
		// the choice must not flip between reconciles, so ties go to the
		// name that sorts last.
		if best == nil || x.Status.Version > best.Status.Version || (x.Status.Version == best.Status.Version && x.Name > best.Name) {
			best = x
		}
	}
	return best
}

// progressSummary is status.progress: each replica on its way with a known
// size, as "node done/total at rate", in the order of the replicas; empty
// when none is.
func progressSummary(replicas []bootv1.ImageReplica) string {
	var parts []string
	for _, r := range replicas {
		if r.State == bootv1.ReplicaReady || r.State == bootv1.ReplicaFailed || r.State == bootv1.ReplicaDeleting || r.BytesTotal <= 0 {
			continue
		}
		p := fmt.Sprintf("%s %s/%s", r.Node, iec(r.BytesDone), iec(r.BytesTotal))
		if r.BytesPerSecond > 0 {
			p += " at " + iec(r.BytesPerSecond) + "/s"
		}
		parts = append(parts, p)
	}
	s := strings.Join(parts, ", ")
	if len(s) > 1024 {
		s = s[:1020] + " ..."
	}
	return s
}

// iec writes n bytes in IEC units, with one decimal below 10 of a unit and
// none from 10 up: 512 B, 3.2 GiB, 110 MiB.
func iec(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	f, i := float64(n), -1
	for f >= unit && i < 5 {
		f /= unit
		i++
	}
	suffix := []string{"KiB", "MiB", "GiB", "TiB", "PiB", "EiB"}[i]
	if f < 10 {
		return strings.TrimSuffix(fmt.Sprintf("%.1f", f), ".0") + " " + suffix
	}
	return fmt.Sprintf("%.0f %s", f, suffix)
}
