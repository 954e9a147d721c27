package testfs

import (
	"fmt"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"
)

// Cold writes the file's dirty pages out and drops its pages from the page
// cache, so that the next read comes from the device: benchmarks start each
// step from it, so that no step reads from memory what another read from
// the disk.
func Cold(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		return fmt.Errorf("writing %s out: %w", path, err)
	}
	if err := unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED); err != nil {
		return fmt.Errorf("dropping the page cache of %s: %w", path, err)
	}
	return nil
}

// SyncFS writes out the dirty pages of the file system that holds path's
// directory and returns how long that took.
func SyncFS(path string) (time.Duration, error) {
	f, err := os.Open(filepath.Dir(path))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	t := time.Now()
	if err := unix.Syncfs(int(f.Fd())); err != nil {
		return 0, fmt.Errorf("syncfs of %s: %w", filepath.Dir(path), err)
	}
	return time.Since(t), nil
}
