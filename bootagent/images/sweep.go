package images

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Sweep removes the temporary files a crashed agent left in the store
// (.download-*, .convert-*, .sha256-*: only names this package makes), last
// modified before before — the agent's start, so that nothing this agent
// writes is touched. With namespace set it looks only in that namespace's
// directory: an agent watching one namespace may share the node with
// another GGnet's agent watching another, whose files are not its own. One
// agent per node (a DaemonSet) owns the rest. It returns what it removed.
func (s *Store) Sweep(before time.Time, namespace string) ([]string, error) {
	return sweep(s.Dir, namespace, before, tmpDownload, tmpConvert, tmpSum)
}

// sweep removes the regular files under dir (or dir/namespace) whose names
// start with one of prefixes and that were last modified before before.
func sweep(dir, namespace string, before time.Time, prefixes ...string) ([]string, error) {
	if namespace != "" {
		dir = filepath.Join(dir, namespace)
	}
	var removed []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		if !d.Type().IsRegular() || !hasPrefix(d.Name(), prefixes) {
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

func hasPrefix(name string, prefixes []string) bool {
	for _, p := range prefixes {
		if strings.HasPrefix(name, p) {
			return true
		}
	}
	return false
}
