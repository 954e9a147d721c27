// Command replication measures the replication of a Ready replica from one
// storage agent to another (bootagent/replication) over loopback: the
// source's Server on a real socket, the destination's Client.Fill through
// the images store (partial file, record, sha256 of the result, rename), as
// the storage agent runs it. The image is sparse (data in 8 MiB runs spread
// over it, the rest holes). Baselines in the same run, from the same
// source file: a plain HTTP GET of the whole file (net/http's FileServer,
// written out with its sha256 computed on the way, as an HTTP download of
// the image would be placed) and `cp --sparse=always` on the same file
// system (no network, no checksum: a floor). Root (an XFS with reflink on a
// loop device).
//
//	go run ./test/benchmark/replication -size-gib 10 -data-gib 2
package main

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"flag"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"github.com/go-logr/logr"
	"golang.org/x/sys/unix"

	"github.com/ggnet/ggnet/bootagent/images"
	"github.com/ggnet/ggnet/bootagent/replication"
	"github.com/ggnet/ggnet/internal/testbin"
	"github.com/ggnet/ggnet/internal/testfs"
)

var tt = &testbin.Program{}

const (
	ns   = "bench"
	name = "games"
	uid  = "00000000-0000-0000-0000-000000000016"
)

func main() {
	sizeGiB := flag.Int64("size-gib", 10, "Size of the image, GiB.")
	dataGiB := flag.Float64("data-gib", 2, "Data in the image, GiB, in 8 MiB runs spread over it; the rest are holes.")
	bandwidth := flag.Int64("bandwidth", 0, "The client's bandwidth limit, bytes/s (0: unlimited).")
	chunkMiB := flag.Int64("chunk-mib", replication.DefaultChunkSize>>20, "Bytes fetched per request and fsynced before the record moves on, MiB.")
	flag.Parse()
	defer tt.Done()
	ctx := context.Background()
	size := *sizeGiB << 30
	data := int64(*dataGiB * (1 << 30))

	// Room for the source, the replica, cp's copy and the full download.
	mnt := testfs.XFS(tt, size+3*data+(4<<30))
	src := images.New(filepath.Join(mnt, "src"), logr.Discard())
	dst := images.New(filepath.Join(mnt, "dst"), logr.Discard())
	fmt.Printf("image: %s, %s of data in 8 MiB runs, the rest holes; XFS (reflink=1) on a loop device; loopback TCP; "+
		"each step starts with the source out of the page cache\n", gib(size), gib(data))
	path, sum := writeReplica(ctx, src, size, data)

	// GGnet: Server on loopback, Client.Fill through the store.
	key := &replication.Key{}
	k := make([]byte, 32)
	_, _ = rand.Read(k)
	key.Set(k)
	endpoint, stop := serve(&replication.Server{Store: src, Key: key, Log: logr.Discard()})
	defer stop()
	c := replication.NewClient(key, *bandwidth, logr.Discard())
	c.ChunkSize = *chunkMiB << 20
	cold(path)
	var moved time.Time // when the last data byte arrived
	t0 := time.Now()
	res, err := dst.Ensure(ctx, ns, name, uid, images.Source{Format: "raw", SHA256: sum, Fill: c.Fill(endpoint, ns, name, uid, sum)},
		func(p images.Progress) {
			if p.Total > 0 && p.Done == p.Total && moved.IsZero() {
				moved = time.Now()
			}
		})
	check(err)
	total := time.Since(t0)
	transfer := moved.Sub(t0)
	var st unix.Stat_t
	check(unix.Stat(res.Path, &st))
	if res.SHA256 != sum {
		tt.Fatalf("sha256 %s, want %s", res.SHA256, sum)
	}

	// Baseline: a plain HTTP GET of the whole file, sha256 on the way.
	fs, stopFS := serve(http.FileServer(http.Dir(filepath.Dir(path))))
	defer stopFS()
	get := filepath.Join(mnt, "get.raw")
	cold(path)
	t0 = time.Now()
	getSum := download("http://"+fs+"/"+filepath.Base(path), get)
	getTook := time.Since(t0)
	if getSum != sum {
		tt.Fatalf("GET: sha256 %s, want %s", getSum, sum)
	}
	var getSt unix.Stat_t
	check(unix.Stat(get, &getSt))
	check(os.Remove(get))

	// Floor: cp --sparse=always on the same file system.
	cp := filepath.Join(mnt, "cp.raw")
	cold(path)
	t0 = time.Now()
	run("cp", "--reflink=never", "--sparse=always", path, cp)
	syncFS(cp)
	cpTook := time.Since(t0)

	mibps := func(n int64, d time.Duration) float64 { return float64(n) / (1 << 20) / d.Seconds() }
	fmt.Printf("%-58s %10s  %12s  %s\n", "step", "time", "data MiB/s", "blocks used")
	fmt.Printf("%-58s %10s  %12.0f  %s\n", "GGnet: data extents over HTTP (signed), fsynced", transfer.Round(time.Millisecond), mibps(data, transfer), gib(st.Blocks*512))
	fmt.Printf("%-58s %10s  %12.0f\n", "GGnet: whole Fill (+ sha256 of the result, rename)", total.Round(time.Millisecond), mibps(data, total))
	fmt.Printf("%-58s %10s  %12.0f  %s\n", "baseline: HTTP GET of the whole file, sha256 on the way", getTook.Round(time.Millisecond), mibps(data, getTook), gib(getSt.Blocks*512))
	fmt.Printf("%-58s %10s  %12.0f\n", "floor: cp --reflink=never --sparse=always, then syncfs", cpTook.Round(time.Millisecond), mibps(data, cpTook))
	fmt.Printf("GGnet whole Fill vs plain GET: %.2fx the time (%.1fx faster); vs cp: %.2fx the time\n",
		total.Seconds()/getTook.Seconds(), getTook.Seconds()/total.Seconds(), total.Seconds()/cpTook.Seconds())
	fmt.Printf("sha256 %s (all agree)\n", sum)
}

// writeReplica places a Ready replica of size bytes with data bytes of
// random data in 8 MiB runs spread evenly over it; it returns its path and
// sha256.
func writeReplica(ctx context.Context, store *images.Store, size, data int64) (string, string) {
	path := store.Path(ns, name, uid)
	check(os.MkdirAll(filepath.Dir(path), 0o700))
	f, err := os.Create(path)
	check(err)
	check(f.Truncate(size))
	const run = 8 << 20
	runs := max(data/run, 1)
	stride := size / runs
	buf := make([]byte, run)
	rng := mrand.NewChaCha8([32]byte{'g', 'g', 'n', 'e', 't'})
	for i := range runs {
		_, _ = rng.Read(buf)
		_, err := f.WriteAt(buf, i*stride)
		check(err)
	}
	check(f.Sync())
	sum, err := images.Checksum(ctx, f, size, nil)
	check(err)
	check(f.Close())
	check(os.WriteFile(path+".sha256", []byte(sum+"\n"), 0o600))
	return path, sum
}

// serve serves h on a loopback port.
func serve(h http.Handler) (string, func()) {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	check(err)
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	return ln.Addr().String(), func() { _ = srv.Close() }
}

// download GETs url into path, hashing on the way, and syncs it.
func download(url, path string) string {
	resp, err := http.Get(url)
	check(err)
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		tt.Fatalf("GET %s: %s", url, resp.Status)
	}
	f, err := os.Create(path)
	check(err)
	h := sha256.New()
	_, err = io.CopyBuffer(io.MultiWriter(f, h), resp.Body, make([]byte, 1<<20))
	check(err)
	check(f.Sync())
	check(f.Close())
	return hex.EncodeToString(h.Sum(nil))
}

// cold drops the file's pages from the page cache (testfs.Cold).
func cold(path string) { check(testfs.Cold(path)) }

func run(name string, args ...string) {
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		tt.Fatalf("%s %v: %v\n%s", name, args, err, out)
	}
}

func syncFS(path string) {
	_, err := testfs.SyncFS(path)
	check(err)
}

func gib(n int64) string { return fmt.Sprintf("%.2f GiB", float64(n)/(1<<30)) }

func check(err error) {
	if err != nil {
		tt.Fatal(err)
	}
}
