// Command capture measures the capture of a session's persistent disk as a
// writeback Image, the way the storage agent does it (bootagent/storage
// capture.go): a reflink clone (FICLONE) of the disk into the replica's
// file, then its sha256 (sparse-aware: only the data extents are read),
// through the images store's Fill hook (temporary file, checksum file,
// rename). Baselines in the same run, on the same file: `cp --reflink=never
// --sparse=always` (the copy a store without reflinks would make; cp clones
// by default on XFS), `sha256sum`, and Go's sha256 of a plain read of the
// whole file (what Checksum does without skipping the holes). Root (an XFS
// with reflink on a loop device).
//
//	go run ./test/benchmark/capture -disk-gib 10 -written-gib 2
package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/go-logr/logr"
	"golang.org/x/sys/unix"

	"github.com/ggnet/ggnet/bootagent/images"
	"github.com/ggnet/ggnet/internal/testbin"
	"github.com/ggnet/ggnet/internal/testfs"
)

var tt = &testbin.Program{}

func main() {
	diskGiB := flag.Int64("disk-gib", 10, "Virtual size of the session's disk, GiB.")
	writtenGiB := flag.Float64("written-gib", 2, "Data written into the disk, GiB, in 8 MiB runs spread over it.")
	flag.Parse()
	defer tt.Done()
	ctx := context.Background()
	size := *diskGiB << 30
	written := int64(*writtenGiB * (1 << 30))

	data := testfs.XFS(tt, size+3*written+(2<<30))
	disk := filepath.Join(data, "overlays", "bench", "persist", "disk.raw")
	check(os.MkdirAll(filepath.Dir(disk), 0o700))
	fmt.Printf("disk: %s virtual, %s written in 8 MiB runs; XFS (reflink=1) on a loop device; each step starts with the file out of the page cache\n", gib(size), gib(written))
	writeDisk(disk, size, written)

	// GGnet: the capture as the agent runs it.
	cold(disk)
	store := images.New(data, logr.Discard())
	store.MaxVirtualSize = 0
	var cloneTook, sumTook time.Duration
	free0 := freeBytes(data)
	t0 := time.Now()
	res, err := store.Ensure(ctx, "bench", "captured", "00000000-0000-0000-0000-000000000001", images.Source{Format: "raw",
		Fill: func(ctx context.Context, dst *os.File, progress func(images.Progress)) (string, error) {
			src, err := os.Open(disk)
			if err != nil {
				return "", err
			}
			defer src.Close()
			t := time.Now()
			if err := images.Reflink(dst, src); err != nil {
				return "", err
			}
			cloneTook = time.Since(t)
			t = time.Now()
			sum, err := images.Checksum(ctx, dst, size, nil)
			sumTook = time.Since(t)
			return sum, err
		}}, nil)
	check(err)
	total := time.Since(t0)
	cloneUsed := free0 - freeBytes(data)

	// Baselines.
	cp := filepath.Join(data, "copy.raw")
	free1 := freeBytes(data)
	syncFS(cp)
	cold(disk)
	cpTook := run("cp", "--reflink=never", "--sparse=always", disk, cp)
	cpSync := syncFS(cp)
	cpUsed := free1 - freeBytes(data)
	var out strings.Builder
	cold(disk)
	t0 = time.Now()
	c := exec.Command("sha256sum", disk)
	c.Stdout = &out
	check(c.Run())
	shaTook := time.Since(t0)
	cold(disk)
	t0 = time.Now()
	plain := plainSHA256(disk)
	plainTook := time.Since(t0)
	if want := strings.Fields(out.String())[0]; want != res.SHA256 || plain != res.SHA256 {
		tt.Fatalf("sha256 %s, sha256sum says %s", res.SHA256, want)
	}

	fmt.Printf("%-52s %12s  %s\n", "step", "time", "space used")
	fmt.Printf("%-52s %12s  %s\n", "GGnet: reflink clone (FICLONE)", cloneTook.Round(time.Microsecond), gib(cloneUsed))
	fmt.Printf("%-52s %12s\n", "GGnet: sha256 of the clone (data extents only)", sumTook.Round(time.Millisecond))
	fmt.Printf("%-52s %12s\n", "GGnet: the whole capture (Store.Ensure with Fill)", total.Round(time.Millisecond))
	fmt.Printf("%-52s %12s  %s\n", "baseline: cp --reflink=never --sparse=always", cpTook.Round(time.Millisecond), gib(cpUsed))
	fmt.Printf("%-52s %12s\n", "baseline: then syncfs (the copy on disk)", cpSync.Round(time.Millisecond))
	fmt.Printf("%-52s %12s\n", "baseline: sha256sum", shaTook.Round(time.Millisecond))
	fmt.Printf("%-52s %12s\n", "baseline: Go sha256 of a plain read of the file", plainTook.Round(time.Millisecond))
	fmt.Printf("clone vs cp: %.0fx faster; sha256 vs sha256sum: %.2fx the time, vs a plain read: %.2fx; "+
		"whole capture vs cp + sha256sum: %.2fx the time\n",
		(cpTook+cpSync).Seconds()/cloneTook.Seconds(), sumTook.Seconds()/shaTook.Seconds(), sumTook.Seconds()/plainTook.Seconds(),
		total.Seconds()/(cpTook+cpSync+shaTook).Seconds())
	fmt.Printf("sha256 %s (both agree)\n", res.SHA256)
}

// cold drops the file's pages from the page cache (testfs.Cold).
func cold(path string) { check(testfs.Cold(path)) }

// plainSHA256 hashes the whole file, holes read as zeros.
func plainSHA256(path string) string {
	f, err := os.Open(path)
	check(err)
	defer f.Close()
	h := sha256.New()
	_, err = io.CopyBuffer(h, f, make([]byte, 1<<20))
	check(err)
	return hex.EncodeToString(h.Sum(nil))
}

// writeDisk makes a sparse disk of size with written bytes of random data in
// 8 MiB runs spread evenly over it, and syncs it.
func writeDisk(path string, size, written int64) {
	f, err := os.Create(path)
	check(err)
	check(f.Truncate(size))
	const run = 8 << 20
	runs := max(written/run, 1)
	stride := size / runs
	buf := make([]byte, run)
	rng := rand.NewChaCha8([32]byte{'g', 'g', 'n', 'e', 't'})
	for i := range runs {
		_, _ = rng.Read(buf)
		_, err := f.WriteAt(buf, i*stride)
		check(err)
	}
	check(f.Sync())
	check(f.Close())
}

func run(name string, args ...string) time.Duration {
	t := time.Now()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		tt.Fatalf("%s %v: %v\n%s", name, args, err, out)
	}
	return time.Since(t)
}

// syncFS writes the file system of path's dirty pages out and returns how
// long that took (testfs.SyncFS).
func syncFS(path string) time.Duration {
	d, err := testfs.SyncFS(path)
	check(err)
	return d
}

func freeBytes(dir string) int64 {
	var st unix.Statfs_t
	check(unix.Statfs(dir, &st))
	return int64(st.Bavail) * st.Bsize
}

func gib(n int64) string {
	if n < 1<<20 && n > -(1<<20) {
		return fmt.Sprintf("%d KiB", n>>10)
	}
	return fmt.Sprintf("%.2f GiB", float64(n)/(1<<30))
}

func check(err error) {
	if err != nil {
		tt.Fatal(err)
	}
}
