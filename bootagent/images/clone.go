package images

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// Reflink makes dst (opened for writing, empty) a reflink clone of src
// (FICLONE): instant, and no block is copied until one of the two files is
// written. It fails when the file system cannot clone (or the two are on
// different file systems); there is no fallback copy.
func Reflink(dst, src *os.File) error {
	if err := unix.IoctlFileClone(int(dst.Fd()), int(src.Fd())); err != nil {
		return fmt.Errorf("cloning %s by reflink: %w", src.Name(), err)
	}
	return nil
}

// checksumChunk is how much Checksum reads at once; checksumReport how
// often it calls progress.
const (
	checksumChunk  = 1 << 20
	checksumReport = 64 << 20
)

// Checksum returns the sha256 of f's first size bytes, calling progress
// (done, size) as it goes (nil: not called). It reads only the data
// extents (SEEK_DATA, SEEK_HOLE): a hole is hashed as the zeros it reads as,
// without asking the kernel for them, so a sparse 10 GiB disk with 2 GiB
// written reads 2 GiB.
func Checksum(ctx context.Context, f *os.File, size int64, progress func(done, total int64)) (string, error) {
	if progress == nil {
		progress = func(int64, int64) {}
	}
	h := sha256.New()
	buf := make([]byte, checksumChunk)
	zeros := make([]byte, checksumChunk)
	fd := int(f.Fd())
	var off, reported int64
	progress(0, size)
	for off < size {
		data, err := unix.Seek(fd, off, unix.SEEK_DATA)
		switch {
		case errors.Is(err, unix.ENXIO):
			data = size // no data after off
		case err != nil:
			// A file system without SEEK_DATA: all of it is data.
			data = off
		}
		data = min(data, size)
		hole := size
		if data < size {
			if hole, err = unix.Seek(fd, data, unix.SEEK_HOLE); err != nil {
				hole = size
			}
			hole = min(hole, size)
		}
		// [off, data) is a hole, [data, hole) data.
		for off < hole {
			if err := ctx.Err(); err != nil {
				return "", err
			}
			n := int(min(int64(len(buf)), hole-off))
			if off < data {
				n = int(min(int64(n), data-off))
				h.Write(zeros[:n])
			} else {
				if _, err := f.ReadAt(buf[:n], off); err != nil {
					return "", fmt.Errorf("reading %s: %w", f.Name(), err)
				}
				h.Write(buf[:n])
			}
			off += int64(n)
			if off-reported >= checksumReport {
				reported = off
				progress(off, size)
			}
		}
	}
	progress(size, size)
	return hex.EncodeToString(h.Sum(nil)), nil
}
