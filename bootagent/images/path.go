package images

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	bootv1 "github.com/ggnet/ggnet/api/v1alpha1"
)

// openPath opens a path source: an absolute path under the store's
// PathRoot, opened through os.Root (a symbolic link or ".." leading out of
// the root is refused by the kernel walk, not by a string check), and only
// a regular file: a device, a FIFO, a socket or a directory is refused
// before it is opened, and again on the open descriptor (fstat), so a swap
// between the two is caught too. The open never blocks (O_NONBLOCK) and
// never takes a terminal.
func (s *Store) openPath(path string) (*os.File, int64, error) {
	if s.PathRoot == "" {
		return nil, 0, fail(ReasonPathNotAllowed, "path sources are off on this node: its storage agent has no image path root "+
			"(--image-path-root, chart value agent.storage.imagePathRoot)")
	}
	if !filepath.IsAbs(path) {
		return nil, 0, fail(ReasonPathNotAllowed, "%s is not an absolute path", path)
	}
	rel, err := filepath.Rel(s.PathRoot, filepath.Clean(path))
	if err != nil || rel == "." || rel == ".." || strings.HasPrefix(rel, ".."+string(filepath.Separator)) {
		return nil, 0, fail(ReasonPathNotAllowed, "%s is not under the image path root %s", path, s.PathRoot)
	}
	root, err := os.OpenRoot(s.PathRoot)
	if err != nil {
		return nil, 0, fail(ReasonSourceMissing, "the image path root: %v", err)
	}
	defer root.Close()
	st, err := root.Stat(rel)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil, 0, fail(ReasonSourceMissing, "%s does not exist under the image path root %s", path, s.PathRoot)
	case err != nil:
		return nil, 0, fail(ReasonPathNotAllowed, "%s: %v", path, unwrapPath(err))
	case !st.Mode().IsRegular():
		return nil, 0, fail(ReasonPathNotAllowed, "%s is %s, not a regular file", path, kind(st.Mode()))
	}
	f, err := root.OpenFile(rel, os.O_RDONLY|syscall.O_NONBLOCK|syscall.O_NOCTTY, 0)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, 0, fail(ReasonSourceMissing, "%s does not exist under the image path root %s", path, s.PathRoot)
		}
		return nil, 0, fail(ReasonPathNotAllowed, "%s: %v", path, unwrapPath(err))
	}
	st, err = f.Stat()
	if err == nil && !st.Mode().IsRegular() {
		err = fail(ReasonPathNotAllowed, "%s is %s, not a regular file", path, kind(st.Mode()))
	}
	if err != nil {
		f.Close()
		return nil, 0, err
	}
	return f, st.Size(), nil
}

// unwrapPath drops the os.Root's relative name from an error (the message
// names the Image's path already).
func unwrapPath(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

func kind(m fs.FileMode) string {
	switch {
	case m.IsDir():
		return "a directory"
	case m&fs.ModeNamedPipe != 0:
		return "a named pipe (FIFO)"
	case m&fs.ModeSocket != 0:
		return "a socket"
	case m&fs.ModeDevice != 0:
		return "a device"
	case m&fs.ModeSymlink != 0:
		return "a symbolic link"
	default:
		return "not a regular file (" + m.Type().String() + ")"
	}
}

// adopt copies a path source into dst: a reflink clone when it is on the
// data directory's file system (instant, no space used), else a copy under
// the space guard; it returns the sha256.
func (s *Store) adopt(ctx context.Context, src Source, dst *os.File, maxBytes int64, guard *spaceGuard, progress func(Progress)) (string, error) {
	f, size, err := s.openPath(src.Path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	if size > maxBytes {
		return "", fail(ReasonTooLarge, "%s is %s, over the %s this Image accepts (maxVirtualSize)", src.Path, gib(size), gib(maxBytes))
	}
	progress(Progress{State: bootv1.ReplicaPending, Total: size})
	h := sha256.New()
	if unix.IoctlFileClone(int(dst.Fd()), int(f.Fd())) == nil {
		// The checksum is of the clone: what was placed, even if the
		// source changes meanwhile.
		st, err := dst.Stat()
		if err != nil {
			return "", err
		}
		if st.Size() > maxBytes {
			return "", fail(ReasonTooLarge, "%s grew over the %s this Image accepts (maxVirtualSize)", src.Path, gib(maxBytes))
		}
		if _, err := io.Copy(h, &ctxReader{ctx: ctx, r: io.NewSectionReader(dst, 0, st.Size())}); err != nil {
			return "", err
		}
		return hex.EncodeToString(h.Sum(nil)), nil
	}
	r := io.LimitReader(&ctxReader{ctx: ctx, r: f}, maxBytes+1)
	if err := guard.need(size); err != nil {
		return "", err
	}
	w := &guardedWriter{w: io.MultiWriter(dst, h), guard: guard, progress: progress, state: bootv1.ReplicaPending, total: size}
	n, err := io.Copy(w, r)
	if err != nil {
		var ie *Error
		if errors.As(err, &ie) || ctx.Err() != nil {
			return "", err
		}
		return "", diskErr(err)
	}
	if n > maxBytes {
		return "", fail(ReasonTooLarge, "%s grew over the %s this Image accepts (maxVirtualSize)", src.Path, gib(maxBytes))
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// ctxReader stops reading when its context ends.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c *ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}
