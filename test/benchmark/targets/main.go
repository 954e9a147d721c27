// Command targets measures the storage role's data path on one node: create
// and remove N session targets with reflink overlays of a sparse image (XFS
// with reflink on a loop device, a real tgtd), and the read throughput of one
// LUN through tgt with iscsi-perf against reading the file directly. Root.
//
//	go run ./test/benchmark/targets -n 500 -image-gib 10
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/ggnet/ggnet/bootagent/overlay"
	"github.com/ggnet/ggnet/bootagent/target"
	"github.com/ggnet/ggnet/internal/testbin"
	"github.com/ggnet/ggnet/internal/testfs"
	"github.com/ggnet/ggnet/internal/testtgt"
)

var tt = &testbin.Program{}

func main() {
	n := flag.Int("n", 500, "Targets to create and remove.")
	gib := flag.Int64("image-gib", 10, "Size of the sparse image in GiB.")
	readMiB := flag.Int64("read-mib", 1024, "Data written into the image for the read test, MiB.")
	flag.Parse()
	defer tt.Done()
	ctx := context.Background()

	data := testfs.XFS(tt, (*gib+4)<<30)
	tgtd := testtgt.Start(tt)
	store, err := overlay.Open(data, 0)
	check(err)
	image := filepath.Join(data, "image.raw")
	f, err := os.Create(image)
	check(err)
	check(f.Truncate(*gib << 30))
	f.Close()
	d := &target.TGT{ControlPort: tgtd.ControlPort}

	create := make([]time.Duration, 0, *n)
	remove := make([]time.Duration, 0, *n)
	tgts := make([]target.Target, *n)
	for i := range *n {
		tgts[i] = target.Target{IQN: fmt.Sprintf("iqn.2026-11.io.ggnet:bench:s%04d", i), LUN: 1,
			Path: store.Path("bench", fmt.Sprintf("s%04d", i)), InitiatorIQN: fmt.Sprintf("iqn.2026-11.io.ggnet:initiator:bench:m%04d", i),
			CHAPUser: fmt.Sprintf("bench-s%04d", i), CHAPPassword: "0123456789abcdef"}
		t0 := time.Now()
		_, err := store.Ensure(tgts[i].Path, image)
		check(err)
		check(d.Ensure(ctx, tgts[i]))
		create = append(create, time.Since(t0))
	}
	// An agent restart: a driver that did not set the accounts (tgtd
	// cannot show their secrets) adopts every target, remaking its
	// accounts in place with its ACL off meanwhile; then a resync of the
	// same driver, which changes nothing.
	restarted := &target.TGT{ControlPort: tgtd.ControlPort}
	adopt := make([]time.Duration, 0, *n)
	resync := make([]time.Duration, 0, *n)
	for _, list := range []*[]time.Duration{&adopt, &resync} {
		for i := range *n {
			t0 := time.Now()
			check(restarted.Ensure(ctx, tgts[i]))
			*list = append(*list, time.Since(t0))
		}
	}
	for i := range *n {
		t0 := time.Now()
		check(d.Remove(ctx, tgts[i].IQN))
		check(store.Remove(tgts[i].Path))
		remove = append(remove, time.Since(t0))
	}
	report("create (overlay + target)", create)
	report("adopt after an agent restart (accounts remade in place)", adopt)
	report("resync (nothing to change)", resync)
	report("remove (target + overlay)", remove)

	// Read throughput: the image with real data, one LUN.
	out, err := exec.Command("dd", "if=/dev/urandom", "of="+image, "bs=1M", fmt.Sprintf("count=%d", *readMiB), "conv=notrunc,fsync", "status=none").CombinedOutput()
	check(errOut(err, out))
	check(os.Truncate(image, *readMiB<<20))
	one := tgts[0]
	one.Path = image
	check(d.Ensure(ctx, one))
	direct := ddRead(image)
	// libiscsi reads CHAP from its environment: no secret on a command line.
	cmd := exec.Command("iscsi-perf", "-i", one.InitiatorIQN, "-t", "10", "-m", "32", "-b", "256",
		"iscsi://"+tgtd.Portal+"/"+one.IQN+"/1")
	cmd.Env = append(os.Environ(), "LIBISCSI_CHAP_USERNAME="+one.CHAPUser, "LIBISCSI_CHAP_PASSWORD="+one.CHAPPassword)
	if one.TargetUser != "" {
		cmd.Env = append(cmd.Env, "LIBISCSI_CHAP_TARGET_USERNAME="+one.TargetUser, "LIBISCSI_CHAP_TARGET_PASSWORD="+one.TargetPassword)
	}
	perf, err := cmd.CombinedOutput()
	fmt.Printf("read, file directly (dd bs=1M, page cache warm): %s\n", direct)
	fmt.Printf("read, one LUN through tgt (iscsi-perf -m 32 -b 256, 10 s):\n%s\n", lastLines(string(perf), 3))
	_ = err
}

func ddRead(path string) string {
	_, _ = exec.Command("dd", "if="+path, "of=/dev/null", "bs=1M", "status=none").CombinedOutput() // warm
	out, _ := exec.Command("dd", "if="+path, "of=/dev/null", "bs=1M").CombinedOutput()
	return lastLines(string(out), 1)
}

func report(name string, d []time.Duration) {
	slices.Sort(d)
	p := func(q float64) time.Duration {
		return d[min(len(d)-1, int(float64(len(d))*q))].Round(100 * time.Microsecond)
	}
	fmt.Printf("%s, %d: p50 %s, p99 %s, max %s\n", name, len(d), p(0.5), p(0.99), d[len(d)-1].Round(100*time.Microsecond))
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

func errOut(err error, out []byte) error {
	if err != nil {
		return fmt.Errorf("%w: %s", err, out)
	}
	return nil
}

func check(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, "targets:", err)
		tt.Done()
		os.Exit(1)
	}
}
