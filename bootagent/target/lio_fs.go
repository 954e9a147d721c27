package target

import (
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"strings"
)

// The LIO driver's configfs steps, each one system call on d.fs() that
// checks first and does nothing when there is nothing to do.

// read returns what an attribute shows, trimmed; "" when it cannot be read.
func (d *LIO) read(path string) string {
	b, err := d.fs().ReadFile(path)
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

// write writes an attribute, without a trailing newline: the auth
// attributes keep what they are given, newline included, and CHAP would then
// compare a different secret.
func (d *LIO) write(path, value string) error {
	if err := d.fs().WriteFile(path, []byte(value)); err != nil {
		return fmt.Errorf("configfs: writing %s: %w", d.relative(path), unwrapPath(err))
	}
	return nil
}

// set writes an attribute unless it already shows value.
func (d *LIO) set(path, value string) error {
	if d.read(path) == value {
		return nil
	}
	return d.write(path, value)
}

// unset clears an auth attribute unless it is clear.
func (d *LIO) unset(path string) error {
	if v := d.read(path); v == "" || v == lioUnset {
		return nil
	}
	return d.write(path, lioUnset)
}

func (d *LIO) exists(path string) bool {
	_, err := d.fs().Lstat(path)
	return err == nil
}

// mkdirs makes the groups of path that are missing, one mkdir each, from
// the root down.
func (d *LIO) mkdirs(path string) error {
	rel, err := filepath.Rel(d.root(), path)
	if err != nil || strings.HasPrefix(rel, "..") {
		return fmt.Errorf("configfs: %s is not under %s", path, d.root())
	}
	cur := d.root()
	for _, part := range strings.Split(rel, string(filepath.Separator)) {
		cur = filepath.Join(cur, part)
		if d.exists(cur) {
			continue
		}
		if err := d.fs().Mkdir(cur); err != nil && !errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("configfs: making %s: %w", d.relative(cur), unwrapPath(err))
		}
	}
	return nil
}

// rmdir removes a group; a missing one is no error.
func (d *LIO) rmdir(path string) error {
	if err := d.fs().Rmdir(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("configfs: removing %s: %w", d.relative(path), unwrapPath(err))
	}
	return nil
}

// links are the links in dir, each with the path it resolves to. configfs
// answers readlink with a path of its own ("../" up to the root, then the
// target's path), not the one the link was made with: links are compared by
// where they lead.
func (d *LIO) links(dir string) (map[string]string, error) {
	entries, err := d.fs().ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("configfs: reading %s: %w", d.relative(dir), unwrapPath(err))
	}
	out := map[string]string{}
	for _, e := range entries {
		if e.Type()&fs.ModeSymlink == 0 {
			continue
		}
		p := filepath.Join(dir, e.Name())
		to, err := d.fs().Readlink(p)
		if err != nil {
			return nil, fmt.Errorf("configfs: reading %s: %w", d.relative(p), unwrapPath(err))
		}
		if !filepath.IsAbs(to) {
			to = filepath.Join(dir, to)
		}
		out[p] = filepath.Clean(to)
	}
	return out, nil
}

// link makes dir hold one link, named name, to target, unless a link in dir
// already leads there. A link that leads elsewhere is removed first (LIO
// takes one per LUN); a right one is never touched: unlinking a LUN takes
// the disk away from the PC using it.
func (d *LIO) link(dir, name, target string) error {
	have, err := d.links(dir)
	if err != nil {
		return err
	}
	for _, to := range have {
		if to == filepath.Clean(target) {
			return nil
		}
	}
	for p := range have {
		if err := d.fs().Remove(p); err != nil {
			return fmt.Errorf("configfs: unlinking %s: %w", d.relative(p), unwrapPath(err))
		}
	}
	rel, err := filepath.Rel(dir, target)
	if err != nil {
		return err
	}
	p := filepath.Join(dir, name)
	if err := d.fs().Symlink(rel, p); err != nil {
		return fmt.Errorf("configfs: linking %s to %s: %w", d.relative(p), d.relative(target), unwrapPath(err))
	}
	return nil
}

// unlinkAll removes every link in dir.
func (d *LIO) unlinkAll(dir string) error {
	have, err := d.links(dir)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		return err
	}
	for p := range have {
		if err := d.fs().Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("configfs: unlinking %s: %w", d.relative(p), unwrapPath(err))
		}
	}
	return nil
}

// subgroups lists the groups in dir whose names start with prefix.
func (d *LIO) subgroups(dir, prefix string) ([]string, error) {
	entries, err := d.fs().ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("configfs: reading %s: %w", d.relative(dir), unwrapPath(err))
	}
	var out []string
	for _, e := range entries {
		if e.IsDir() && strings.HasPrefix(e.Name(), prefix) {
			out = append(out, filepath.Join(dir, e.Name()))
		}
	}
	return out, nil
}

func (d *LIO) relative(path string) string {
	if rel, err := filepath.Rel(d.root(), path); err == nil {
		return rel
	}
	return path
}

// unwrapPath keeps the errno of a path error: the driver's own message names
// the path.
func unwrapPath(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}
