package main

import (
	"context"
	"fmt"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"
	"sigs.k8s.io/controller-runtime/pkg/client"

	bootv1 "github.com/ggnet/ggnet/api/v1alpha1"
	"github.com/ggnet/ggnet/internal/lab"
)

// overlays lists the sessions' overlay files.
func overlays(ctx context.Context, l *lab.Lab) ([]string, error) {
	var list bootv1.BootSessionList
	if err := l.Client.List(ctx, &list, client.InNamespace(lab.Namespace)); err != nil {
		return nil, err
	}
	var out []string
	for _, s := range list.Items {
		if s.Status.OverlayPath != "" {
			out = append(out, s.Status.OverlayPath)
		}
	}
	return out, nil
}

// diskFloor reads the first n bytes of every overlay at once, straight from
// the storage nodes' file systems in chunk-sized preads (what tgtd does for
// the PCs, without iSCSI or the network), and returns the time it took:
// the floor under the storm's read stage on this machine. The files' pages
// are dropped from the page cache before and after, so the storm reads
// them cold as this did.
func diskFloor(paths []string, n int64, chunk int) (time.Duration, error) {
	if err := dropCache(paths); err != nil {
		return 0, err
	}
	start := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, len(paths))
	for _, p := range paths {
		wg.Add(1)
		go func() {
			defer wg.Done()
			f, err := os.Open(p)
			if err != nil {
				errs <- err
				return
			}
			defer f.Close()
			buf := make([]byte, chunk)
			for off := int64(0); off < n; off += int64(chunk) {
				if _, err := f.ReadAt(buf, off); err != nil {
					errs <- fmt.Errorf("%s: %w", p, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	d := time.Since(start)
	close(errs)
	if err := <-errs; err != nil {
		return d, err
	}
	return d, dropCache(paths)
}

// dropCache drops the files' clean pages from the page cache.
func dropCache(paths []string) error {
	for _, p := range paths {
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		err = unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED)
		f.Close()
		if err != nil {
			return fmt.Errorf("dropping the page cache of %s: %w", p, err)
		}
	}
	return nil
}
