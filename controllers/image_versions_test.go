package controllers

import (
	"fmt"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	bootv1 "github.com/ggnet/ggnet/api/v1alpha1"
)

// member is an Image of family "games" created at second sec with version v
// (0: none yet); ready says whether its Ready condition is True.
func member(name string, sec int, v int64, ready bool) bootv1.Image {
	img := bootv1.Image{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name, UID: types.UID("uid-" + name),
		CreationTimestamp: metav1.NewTime(time.Unix(int64(1_800_000_000+sec), 0)), Labels: map[string]string{bootv1.FamilyLabel: "games"}}}
	img.Status.Version = v
	if ready {
		img.Status.Conditions = []metav1.Condition{{Type: bootv1.ReadyCondition, Status: metav1.ConditionTrue, Reason: bootv1.SucceededReason}}
	}
	return img
}

func TestFamilyVersions(t *testing.T) {
	g := NewWithT(t)
	f := newFamilyVersions()
	// Three new Images, two created in the same second: c is reconciled
	// first, yet a and b, created before it, take 3 and 4.
	family := []bootv1.Image{member("old", 0, 2, true), member("c", 2, 0, false), member("b", 1, 0, false), member("a", 1, 0, false)}
	g.Expect(f.version(&family[1], family)).To(Equal(int64(5)))
	g.Expect(f.version(&family[3], family)).To(Equal(int64(3)))
	g.Expect(f.version(&family[2], family)).To(Equal(int64(4)))
	// A stale list (the status writes not in the cache yet) gives the same.
	g.Expect(f.version(&family[1], family)).To(Equal(int64(5)))
	// The cache shows them; a new one takes 6, one gone is forgotten.
	family[1].Status.Version, family[2].Status.Version, family[3].Status.Version = 5, 4, 3
	d := member("d", 3, 0, false)
	family = append(family, d)
	g.Expect(f.version(&family[4], family)).To(Equal(int64(6)))
	g.Expect(f.version(&family[4], family[1:])).To(Equal(int64(6)), "a version given is kept even when the list lacks another member")
	// An Image with a version keeps it.
	g.Expect(f.version(&family[0], family)).To(Equal(int64(2)))
	// An Image the cache has not listed yet is numbered after the others.
	e := member("e", 0, 0, false)
	g.Expect(f.version(&e, family)).To(Equal(int64(7)))
}

func TestLatestReady(t *testing.T) {
	g := NewWithT(t)
	gone := member("v4", 4, 4, true)
	now := metav1.Now()
	gone.DeletionTimestamp = &now
	family := []bootv1.Image{member("v1", 1, 1, true), member("v3", 3, 3, true), member("v2", 2, 2, true), gone, member("v5", 5, 5, false)}
	g.Expect(latestReady(family).Name).To(Equal("v3"))
	g.Expect(latestReady(family[4:])).To(BeNil())
	g.Expect(latestReady(nil)).To(BeNil())
	// Two Images sharing a version (one relabelled into the family): the
	// same one wins whatever the order.
	tie := []bootv1.Image{member("x", 1, 9, true), member("y", 2, 9, true)}
	g.Expect(latestReady(tie).Name).To(Equal("y"))
	g.Expect(latestReady([]bootv1.Image{tie[1], tie[0]}).Name).To(Equal("y"))
}

func TestRetentionCandidates(t *testing.T) {
	kept := member("v2", 2, 2, false)
	kept.Annotations = map[string]string{bootv1.KeepAnnotation: "true"}
	names := func(imgs []*bootv1.Image) []string {
		var out []string
		for _, x := range imgs {
			out = append(out, x.Name)
		}
		return out
	}
	// v1..v6: v2 keep-annotated and not Ready, v3 Failed, v5 still on its
	// way (a capture waiting for its session: never collected), v1, v4, v6
	// Ready.
	failed := member("v3", 3, 3, false)
	failed.Status.Phase = bootv1.ImageFailed
	family := []bootv1.Image{member("v6", 6, 6, true), member("v1", 1, 1, true), kept, failed,
		member("v4", 4, 4, true), member("v5", 5, 5, false), member("nover", 0, 0, true)}
	for keep, want := range map[int][]string{
		0: nil,
		1: {"v1", "v3", "v4"},
		2: {"v1", "v3"},
		3: nil,
		9: nil,
	} {
		t.Run(fmt.Sprint(keep), func(t *testing.T) {
			NewWithT(t).Expect(names(retentionCandidates(family, keep))).To(Equal(want))
		})
	}
}

func TestProgressSummary(t *testing.T) {
	for name, tc := range map[string]struct {
		replicas []bootv1.ImageReplica
		want     string
	}{
		"none":  {nil, ""},
		"ready": {[]bootv1.ImageReplica{{Node: "a", State: bootv1.ReplicaReady, BytesDone: 5, BytesTotal: 5}}, ""},
		"one": {[]bootv1.ImageReplica{{Node: "a", State: bootv1.ReplicaReady},
			{Node: "node-b", State: bootv1.ReplicaDownloading, BytesDone: 3435973837, BytesTotal: 10 << 30, BytesPerSecond: 110 << 20}},
			"node-b 3.2 GiB/10 GiB at 110 MiB/s"},
		"two, no rate yet, size unknown skipped": {[]bootv1.ImageReplica{
			{Node: "b", State: bootv1.ReplicaConverting, BytesDone: 512, BytesTotal: 1 << 20},
			{Node: "c", State: bootv1.ReplicaPending},
			{Node: "d", State: bootv1.ReplicaDownloading, BytesDone: 0, BytesTotal: 1536, BytesPerSecond: 1 << 40}},
			"b 512 B/1 MiB, d 0 B/1.5 KiB at 1 TiB/s"},
		"failed": {[]bootv1.ImageReplica{{Node: "a", State: bootv1.ReplicaFailed, BytesDone: 1, BytesTotal: 5}}, ""},
	} {
		t.Run(name, func(t *testing.T) {
			NewWithT(t).Expect(progressSummary(tc.replicas)).To(Equal(tc.want))
		})
	}
}
