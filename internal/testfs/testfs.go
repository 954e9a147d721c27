// Package testfs makes file systems for tests that need them: an XFS with
// reflink on a loop device, a tmpfs without. Both need root.
package testfs

import (
	"os"
	"os/exec"
	"path/filepath"
)

// XFS mounts a fresh XFS (reflink=1) of size bytes on a loop device and
// returns its mount point; it is unmounted when the test ends.
func XFS(t T, size int64) string {
	t.Helper()
	dir := t.TempDir()
	img := filepath.Join(dir, "xfs.img")
	mnt := filepath.Join(dir, "mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(img)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	f.Close()
	run(t, "mkfs.xfs", "-q", "-m", "reflink=1", img)
	run(t, "mount", "-o", "loop", img, mnt)
	t.Cleanup(func() { _ = exec.Command("umount", "-l", mnt).Run() })
	return mnt
}

// Tmpfs mounts a tmpfs (no reflink support) and returns its mount point.
func Tmpfs(t T) string {
	t.Helper()
	mnt := t.TempDir()
	run(t, "mount", "-t", "tmpfs", "-o", "size=64m", "ggnet-test", mnt)
	t.Cleanup(func() { _ = exec.Command("umount", "-l", mnt).Run() })
	return mnt
}

func run(t T, name string, args ...string) {
	t.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %v (the storage tests run as root with xfsprogs installed): %v\n%s", name, args, err, out)
	}
}

// T is what the test helpers (testfs, testtgt, testbin, the e2e lab) need of
// a test: *testing.T, GinkgoT() or, in the demo, a testbin.Program. It is
// not testing.TB, which GinkgoT() and Program cannot implement (its private
// method).
type T interface {
	Helper()
	Fatal(args ...any)
	Fatalf(format string, args ...any)
	Cleanup(func())
	TempDir() string
}
