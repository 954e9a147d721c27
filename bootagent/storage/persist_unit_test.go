package storage

import (
	"sync"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	bootv1 "github.com/ggnet/ggnet/api/v1alpha1"
	"github.com/ggnet/ggnet/bootagent/overlay"
	"github.com/ggnet/ggnet/internal/testfs"
)

const (
	uidA = "5f0c3a4e-1b2c-4d5e-8f90-0123456789ab"
	uidB = "6a1b2c3d-4e5f-4a6b-8c7d-0123456789ab"
)

func TestParseDisk(t *testing.T) {
	for _, tc := range []struct {
		name string
		ok   bool
		gen  int64
	}{
		{uidA + "-" + uidB + "-g0.raw", true, 0},
		{uidA + "-" + uidB + "-g42.raw", true, 42},
		{uidA + "-" + uidB + ".raw", false, 0},
		{uidA + "-" + uidB + "-g-1.raw", false, 0},
		{uidA + "-" + uidB + "-g0.raw.bak", false, 0},
		{"." + uidA + "-" + uidB + "-g0.raw", false, 0},
		{"persist-a-b-c.raw", false, 0},
		{uidA + "-" + uidB + "-g99999999999999999999.raw", false, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := NewWithT(t)
			d, ok := parseDisk("/d", tc.name)
			g.Expect(ok).To(Equal(tc.ok))
			if ok {
				g.Expect(d).To(Equal(diskFile{Path: "/d/" + tc.name, MachineUID: uidA, ImageUID: uidB, Generation: tc.gen}))
			}
		})
	}
}

// TestPaths: the names that made machines a-b/c and a/b-c share one file
// now give two disks, a recreated Image or a reset another; a running
// session keeps only a path that is one of its namespace's disks. The
// overlay store needs a file system with reflink (root: an XFS on a loop
// device).
func TestPaths(t *testing.T) {
	ov, err := overlay.Open(testfs.XFS(t, 512<<20), 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Run("disks", func(t *testing.T) { testDiskPaths(t, &Role{overlays: ov}) })
	t.Run("running", func(t *testing.T) { testRunningPath(t, &sessionReconciler{Role: &Role{overlays: ov}}) })
}

func testDiskPaths(t *testing.T, r *Role) {
	g := NewWithT(t)
	g.Expect(r.legacyPath("cafe", "a-b", "c")).To(Equal(r.legacyPath("cafe", "a", "b-c")), "the old layout's collision")
	g.Expect(r.diskPath("cafe", uidA, uidB, 0)).NotTo(Equal(r.diskPath("cafe", uidB, uidA, 0)))
	g.Expect(r.diskPath("cafe", uidA, uidB, 0)).NotTo(Equal(r.diskPath("cafe", uidA, uidB, 1)))
	d, ok := parseDisk(r.persistPath("cafe"), "x")
	g.Expect(ok).To(BeFalse(), "%v", d)
}

func TestUserOf(t *testing.T) {
	session := func(name, machine, path string, uid types.UID) *bootv1.BootSession {
		s := &bootv1.BootSession{}
		s.Name, s.UID, s.Spec.MachineRef.Name, s.Status.OverlayPath = name, uid, machine, path
		return s
	}
	u := &diskUsers{
		sessions: []*bootv1.BootSession{
			session("running", "seat-1", "/p/disk-1.raw", "u1"),
			session("starting", "seat-2", "", "u2"),
		},
		targets: map[string]string{"/p/disk-3.raw": "iqn.x:cafe:old"},
	}
	for _, tc := range []struct {
		name      string
		paths     []string
		machine   string
		except    types.UID
		exceptIQN string
		want      string
	}{
		{"a session on the disk", []string{"/p/disk-1.raw"}, "seat-9", "", "", "session running"},
		{"the session itself", []string{"/p/disk-1.raw"}, "seat-1", "u1", "", ""},
		{"a session of the machine without a disk yet", []string{"/p/disk-2.raw"}, "seat-2", "", "", "session starting"},
		{"a target on the disk", []string{"/p/disk-3.raw"}, "seat-3", "", "", "target iqn.x:cafe:old"},
		{"the session's own target", []string{"/p/disk-3.raw"}, "seat-3", "", "iqn.x:cafe:old", ""},
		{"nobody", []string{"/p/disk-4.raw"}, "seat-4", "", "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			paths := map[string]bool{}
			for _, p := range tc.paths {
				paths[p] = true
			}
			NewWithT(t).Expect(u.userOf(paths, tc.machine, tc.except, tc.exceptIQN)).To(Equal(tc.want))
		})
	}
}

func TestLastUsed(t *testing.T) {
	g := NewWithT(t)
	before := metav1.NewTime(time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC))
	mtime := time.Date(2025, 6, 7, 8, 9, 10, 0, time.UTC)
	recent := func(tm *metav1.Time) bool { return time.Since(tm.Time) < time.Minute }

	g.Expect(lastUsed(bootv1.PersistentDisk{}, false, bootv1.PersistentDiskAvailable, mtime).Time).To(Equal(mtime), "unknown: the file's time")
	g.Expect(recent(lastUsed(bootv1.PersistentDisk{}, false, bootv1.PersistentDiskInUse, mtime))).To(BeTrue(), "unknown and in use: now")
	old := bootv1.PersistentDisk{LastUsed: &before, State: bootv1.PersistentDiskAvailable}
	g.Expect(lastUsed(old, true, bootv1.PersistentDiskAvailable, mtime)).To(Equal(&before), "no change: kept")
	g.Expect(recent(lastUsed(old, true, bootv1.PersistentDiskInUse, mtime))).To(BeTrue(), "a session starts: now")
	inUse := bootv1.PersistentDisk{LastUsed: &before, State: bootv1.PersistentDiskInUse}
	g.Expect(lastUsed(inUse, true, bootv1.PersistentDiskResetPending, mtime)).To(Equal(&before), "still in use: kept")
	g.Expect(recent(lastUsed(inUse, true, bootv1.PersistentDiskAvailable, mtime))).To(BeTrue(), "the session stops: now")
	g.Expect(lastUsed(old, false, bootv1.PersistentDiskAvailable, mtime).Time).To(Equal(mtime), "another file: its own time")
}

func testRunningPath(t *testing.T, r *sessionReconciler) {
	disk := r.diskPath("cafe", uidA, uidB, 3)
	for _, tc := range []struct {
		name, wb, status, want string
	}{
		{"Discard: its own, whatever the status says", "Discard", disk, r.overlays.Path("cafe", "s1-"+uidA)},
		{"Persist: its disk", "Persist", disk, disk},
		{"Persist: a disk of the old layout it runs on", "Persist", r.legacyPath("cafe", "seat", "win11"), r.legacyPath("cafe", "seat", "win11")},
		{"Persist: another namespace's disk", "Persist", r.diskPath("other", uidA, uidB, 3), ""},
		{"Persist: not a disk", "Persist", r.overlays.Path("cafe", "s2-"+uidB), ""},
		{"Persist: out of the data directory", "Persist", "/etc/shadow", ""},
		{"Persist: climbing out", "Persist", r.persistPath("cafe") + "/../../../../etc/x.raw", ""},
		{"Persist: unknown", "Persist", "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := &bootv1.BootSession{}
			s.Namespace, s.Name, s.UID = "cafe", "s1", uidA
			s.Spec.Writeback, s.Status.OverlayPath = bootv1.WritebackPolicy(tc.wb), tc.status
			NewWithT(t).Expect(r.runningPath(s)).To(Equal(tc.want))
		})
	}
}

func TestListOrphans(t *testing.T) {
	g := NewWithT(t)
	var many []orphan
	for i := range 12 {
		many = append(many, orphan{path: "/d/" + string(rune('a'+i)), why: "Machine gone"})
	}
	got := listOrphans(many)
	g.Expect(got).To(HavePrefix("/d/a (Machine gone), /d/b (Machine gone)"))
	g.Expect(got).To(ContainSubstring("/d/j (Machine gone) and 2 more"))
	g.Expect(got).NotTo(ContainSubstring("/d/k"))
}

func TestKeyedMutex(t *testing.T) {
	g := NewWithT(t)
	var k keyedMutex
	var wg sync.WaitGroup
	n := 0
	for range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			unlock := k.lock("m")
			defer unlock()
			n++
		}()
	}
	wg.Wait()
	g.Expect(n).To(Equal(50))
	unlock := k.lock("m")
	other := k.lock("n") // another key does not wait
	other()
	unlock()
	unlock() // idempotent
	g.Expect(k.m).To(BeEmpty(), "unused keys are dropped")
}
