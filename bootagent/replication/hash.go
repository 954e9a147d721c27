package replication

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// follower computes the sha256 of the partial file from its start while the
// transfer writes it, never past what is final (safe): the bytes below safe
// are on their way to disk and never written again. It reads the file as
// images.Checksum does (the data extents from the file, each hole hashed as
// the zeros it reads as), so the sum is of what the file holds, and most of
// it, the holes above all, is done by the time the last byte arrives. On a
// resumed transfer it starts with the prefix already on disk.
type follower struct {
	f    *os.File
	size int64
	safe atomic.Int64
	wake chan struct{}
	done chan struct{}
	sum  string
	err  error
}

// follow starts hashing f (size bytes), the bytes below safe final.
func follow(ctx context.Context, f *os.File, size, safe int64) *follower {
	fl := &follower{f: f, size: size, wake: make(chan struct{}, 1), done: make(chan struct{})}
	fl.safe.Store(safe)
	go fl.run(ctx)
	return fl
}

// advance says the bytes below off are final.
func (fl *follower) advance(off int64) {
	if off > fl.safe.Load() {
		fl.safe.Store(off)
		select {
		case fl.wake <- struct{}{}:
		default:
		}
	}
}

// wait returns the sum once the whole file is hashed (advance(size)), or the
// error that stopped it (its context ended).
func (fl *follower) wait() (string, error) {
	<-fl.done
	return fl.sum, fl.err
}

const hashChunk = 1 << 20

func (fl *follower) run(ctx context.Context) {
	defer close(fl.done)
	h := sha256.New()
	buf := make([]byte, hashChunk)
	zeros := make([]byte, hashChunk)
	fd := int(fl.f.Fd())
	for off := int64(0); off < fl.size; {
		if err := ctx.Err(); err != nil {
			fl.err = err
			return
		}
		safe := fl.safe.Load()
		if safe <= off {
			select {
			case <-ctx.Done():
			case <-fl.wake:
			}
			continue
		}
		data, err := unix.Seek(fd, off, unix.SEEK_DATA)
		switch {
		case errors.Is(err, unix.ENXIO):
			data = fl.size // no data after off
		case err != nil:
			data = off // no SEEK_DATA: all of it is data
		}
		if data > off {
			n := min(data, safe, off+hashChunk) - off
			h.Write(zeros[:n])
			off += n
			continue
		}
		hole, err := unix.Seek(fd, off, unix.SEEK_HOLE)
		if err != nil || hole <= off {
			hole = safe
		}
		n := min(hole, safe, off+hashChunk) - off
		if _, err := fl.f.ReadAt(buf[:n], off); err != nil {
			fl.err = fmt.Errorf("reading the partial file back: %w", err)
			return
		}
		h.Write(buf[:n])
		off += n
	}
	fl.sum = hex.EncodeToString(h.Sum(nil))
}
