// Package overlay makes writeback overlays: a reflink clone (FICLONE) of an
// image replica per session — instant and copy-on-write — on XFS with
// reflink=1 or btrfs. A data directory without reflink support is refused
// with a clear message; nothing ever falls back to a full copy.
package overlay

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// ErrNoReflink says the data directory's file system cannot clone files.
var ErrNoReflink = errors.New("the data directory does not support reflinks")

// ErrLowSpace says making an overlay would cut into the reserved space.
var ErrLowSpace = errors.New("free space is below the reserve")

// Store makes and removes overlays under <dataDir>/overlays.
type Store struct {
	dir string
	// Reserve is the free space, in bytes, below which new overlays are
	// refused so that running sessions can still write.
	Reserve uint64
}

// Open checks that dataDir supports reflinks (by cloning a probe file) and
// returns a store. It refuses with ErrNoReflink and how to fix it.
func Open(dataDir string, reserve uint64) (*Store, error) {
	dir := filepath.Join(dataDir, "overlays")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	if err := probe(dir); err != nil {
		return nil, err
	}
	return &Store{dir: dir, Reserve: reserve}, nil
}

// probe clones a file in dir. Both files are unnamed (O_TMPFILE): a crash
// leaves nothing behind, and nothing another agent's sweep could take.
func probe(dir string) error {
	src, err := tmpfile(dir)
	if err != nil {
		return err
	}
	defer src.Close()
	if _, err := src.Write(make([]byte, 4096)); err != nil {
		return err
	}
	dst, err := tmpfile(dir)
	if err != nil {
		return err
	}
	defer dst.Close()
	if err := unix.IoctlFileClone(int(dst.Fd()), int(src.Fd())); err != nil {
		return noReflink(dir, err)
	}
	return nil
}

// tmpfile opens an unnamed file in dir. A file system without them
// (O_TMPFILE) has no reflinks either.
func tmpfile(dir string) (*os.File, error) {
	f, err := os.OpenFile(dir, unix.O_TMPFILE|os.O_RDWR, 0o600)
	if errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.EISDIR) {
		return nil, noReflink(dir, err)
	}
	return f, err
}

func noReflink(dir string, err error) error {
	return fmt.Errorf("%w: cloning a file in %s failed (%v). GGnet never falls back to full copies. "+
		"Put the data directory on XFS made with reflink (mkfs.xfs -m reflink=1, the default since xfsprogs 5.1) or on btrfs", ErrNoReflink, dir, err)
}

// Temporary names this package makes: an overlay being made, and the
// reflink probe of older versions (now unnamed).
const (
	tmpOverlay = ".tmp-"
	tmpProbe   = ".reflink-probe-"
)

// Sweep removes the temporary files a crashed agent left among the
// overlays (only names this package makes), last modified before before —
// the agent's start, so that nothing this agent writes is touched. With
// namespace set it looks only in that namespace's directory: an agent
// watching one namespace may share the node with another GGnet's agent
// watching another. It returns what it removed; overlays are never touched.
func (s *Store) Sweep(before time.Time, namespace string) ([]string, error) {
	root := s.dir
	if namespace != "" {
		root = filepath.Join(s.dir, namespace)
	}
	var removed []string
	err := filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		name := d.Name()
		litter := strings.HasPrefix(name, tmpOverlay) || (strings.HasPrefix(name, tmpProbe) && filepath.Dir(p) == s.dir)
		if !d.Type().IsRegular() || !litter {
			return nil
		}
		info, err := d.Info()
		if err != nil || !info.ModTime().Before(before) {
			return nil
		}
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		removed = append(removed, p)
		return nil
	})
	return removed, err
}

// Dir is the directory of all overlays.
func (s *Store) Dir() string { return s.dir }

// Path is where the overlay named name of a namespace lives.
func (s *Store) Path(namespace, name string) string {
	return filepath.Join(s.dir, namespace, name+".raw")
}

// Ensure makes the overlay at path as a reflink clone of image unless it
// exists (a restart finds it and keeps it). The clone is made under a
// temporary name and renamed, so a crash never leaves a half overlay.
func (s *Store) Ensure(path, image string) (created bool, err error) {
	if _, err := os.Stat(path); err == nil {
		return false, nil
	}
	var st unix.Statfs_t
	if err := unix.Statfs(s.dir, &st); err != nil {
		return false, err
	}
	if free := st.Bavail * uint64(st.Bsize); free < s.Reserve {
		return false, fmt.Errorf("%w: %d MiB free, %d MiB reserved for running sessions", ErrLowSpace, free>>20, s.Reserve>>20)
	}
	src, err := os.Open(image)
	if err != nil {
		return false, fmt.Errorf("opening the image replica: %w", err)
	}
	defer src.Close()
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return false, err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), tmpOverlay+filepath.Base(path)+"-*")
	if err != nil {
		return false, err
	}
	defer os.Remove(tmp.Name()) // no-op after the rename
	if err := unix.IoctlFileClone(int(tmp.Fd()), int(src.Fd())); err != nil {
		tmp.Close()
		return false, fmt.Errorf("%w: cloning %s: %v", ErrNoReflink, image, err)
	}
	if err := tmp.Close(); err != nil {
		return false, err
	}
	// Never over an existing file: an overlay that appeared meanwhile may
	// be under a running PC, and is kept.
	if err := unix.Renameat2(unix.AT_FDCWD, tmp.Name(), unix.AT_FDCWD, path, unix.RENAME_NOREPLACE); err != nil {
		if errors.Is(err, unix.EEXIST) {
			return false, nil
		}
		return false, err
	}
	return true, nil
}

// Remove deletes an overlay; a missing one is not an error.
func (s *Store) Remove(path string) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// List returns the overlay files (namespace/name.raw, relative to the store).
func (s *Store) List() ([]string, error) {
	var out []string
	err := filepath.WalkDir(s.dir, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() && filepath.Ext(p) == ".raw" && filepath.Base(p)[0] != '.' {
			rel, _ := filepath.Rel(s.dir, p)
			out = append(out, rel)
		}
		return nil
	})
	return out, err
}
