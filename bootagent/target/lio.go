package target

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
)

// LIO drives the kernel iSCSI target through configfs: a fileio backstore
// per session, a target with one TPG, one LUN, a portal, and an ACL for the
// session's initiator with CHAP. Root is /sys/kernel/config in production; the
// tests point it at a directory laid out like configfs.
type LIO struct {
	// Root is the configfs mount (default /sys/kernel/config).
	Root string
	// Portal is ip:port the TPG listens on.
	Portal string

	mu sync.Mutex
}

func (d *LIO) root() string {
	if d.Root == "" {
		return "/sys/kernel/config"
	}
	return d.Root
}

// backstoreName is a target's fileio backstore: one per target, named after
// the IQN's last part with the characters configfs refuses replaced.
func backstoreName(iqn string) string {
	return "ggnet-" + strings.NewReplacer(":", "-", ".", "-").Replace(iqn[strings.LastIndex(iqn, ":")+1:]) +
		"-" + strconv.FormatUint(uint64(fnv32(iqn)), 16)
}

func fnv32(s string) uint32 {
	h := uint32(2166136261)
	for i := 0; i < len(s); i++ {
		h ^= uint32(s[i])
		h *= 16777619
	}
	return h
}

func (d *LIO) paths(t Target) (core, tpg string) {
	core = filepath.Join(d.root(), "target", "core", "fileio_0", backstoreName(t.IQN))
	tpg = filepath.Join(d.root(), "target", "iscsi", t.IQN, "tpgt_1")
	return core, tpg
}

// write sets a configfs attribute unless it already reads value: the kernel
// refuses some writes to a live object (a backstore's enable, an enabled
// TPG's enable), and a resync must not disturb a running session. Values go
// without a trailing newline: the auth attributes keep what they are given,
// newline included.
func write(path, value string) error {
	if readValue(path) == value {
		return nil
	}
	// configfs makes attribute directories (attrib, auth) itself; a plain
	// directory standing in for it needs them made.
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("configfs %s: %w", path, err)
	}
	if err := os.WriteFile(path, []byte(value), 0o600); err != nil {
		return fmt.Errorf("configfs %s: %w", path, err)
	}
	return nil
}

// lioUnset is what the kernel's auth attributes take to be cleared (and
// show once cleared).
const lioUnset = "NULL"

// unset clears an auth attribute unless it is already clear.
func unset(path string) error {
	if v := readValue(path); v == "" || v == lioUnset {
		return nil
	}
	return write(path, lioUnset)
}

func mkdir(path string) error {
	if err := os.MkdirAll(path, 0o755); err != nil {
		return fmt.Errorf("configfs %s: %w", path, err)
	}
	return nil
}

func symlink(target, link string) error {
	if cur, err := os.Readlink(link); err == nil && cur == target {
		return nil
	}
	_ = os.Remove(link)
	if err := os.Symlink(target, link); err != nil {
		return fmt.Errorf("configfs %s: %w", link, err)
	}
	return nil
}

// Ensure implements Driver: it reads the tree and writes only what differs.
// The ACL carries the initiator's CHAP credentials (auth/userid, password)
// and, for mutual CHAP, the target's (auth/userid_mutual, password_mutual:
// the kernel's names, drivers/target/iscsi/iscsi_target_configfs.c). Its
// errors never carry a secret.
func (d *LIO) Ensure(_ context.Context, t Target) error {
	if err := t.Validate(); err != nil {
		return err
	}
	return redact(d.ensure(t), t)
}

func (d *LIO) ensure(t Target) error {
	st, err := os.Stat(t.Path)
	if err != nil {
		return fmt.Errorf("backing file: %w", err)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if cur, err := d.read(t.IQN); err == nil && (cur.Path != t.Path || cur.InitiatorIQN != t.InitiatorIQN || cur.LUN != t.LUN) {
		if err := d.removeLocked(t.IQN); err != nil {
			return err
		}
	}
	core, tpg := d.paths(t)
	lun := "lun_" + strconv.Itoa(t.LUN)
	acl := filepath.Join(tpg, "acls", t.InitiatorIQN)
	// A backstore is configured once: the kernel refuses fd_dev_name and
	// enable on an enabled one.
	backstore := readValue(filepath.Join(core, "enable")) == "1"
	mutual := func(name, value string) func() error {
		if t.TargetUser == "" {
			return func() error { return unset(filepath.Join(acl, "auth", name)) }
		}
		return func() error { return write(filepath.Join(acl, "auth", name), value) }
	}
	steps := []func() error{
		func() error { return mkdir(core) },
		func() error {
			if backstore {
				return nil
			}
			return write(filepath.Join(core, "control"), fmt.Sprintf("fd_dev_name=%s,fd_dev_size=%d", t.Path, st.Size()))
		},
		func() error {
			if backstore {
				return nil
			}
			return write(filepath.Join(core, "udev_path"), t.Path)
		},
		func() error { return write(filepath.Join(core, "enable"), "1") },
		func() error { return mkdir(filepath.Join(tpg, "lun", lun)) },
		func() error {
			return symlink(filepath.Join("..", "..", "..", "..", "..", "core", "fileio_0", backstoreName(t.IQN)),
				filepath.Join(tpg, "lun", lun, "ggnet"))
		},
		func() error { return mkdir(filepath.Join(tpg, "np", d.Portal)) },
		func() error { return write(filepath.Join(tpg, "attrib", "authentication"), "1") },
		func() error { return write(filepath.Join(tpg, "attrib", "generate_node_acls"), "0") },
		func() error { return write(filepath.Join(tpg, "attrib", "demo_mode_write_protect"), "0") },
		func() error { return mkdir(filepath.Join(acl, lun)) },
		func() error {
			return symlink(filepath.Join("..", "..", "..", "lun", lun), filepath.Join(acl, lun, "ggnet"))
		},
		func() error { return write(filepath.Join(acl, "auth", "userid"), t.CHAPUser) },
		func() error { return write(filepath.Join(acl, "auth", "password"), t.CHAPPassword) },
		mutual("userid_mutual", t.TargetUser),
		mutual("password_mutual", t.TargetPassword),
		func() error { return write(filepath.Join(tpg, "enable"), "1") },
	}
	for _, step := range steps {
		if err := step(); err != nil {
			return err
		}
	}
	return nil
}

// Remove implements Driver: it disables the TPG (which drops the
// initiator's connections), then removes links and directories depth-first.
func (d *LIO) Remove(_ context.Context, iqn string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.removeLocked(iqn)
}

func (d *LIO) removeLocked(iqn string) error {
	core, _ := d.paths(Target{IQN: iqn})
	top := filepath.Join(d.root(), "target", "iscsi", iqn)
	if _, err := os.Stat(top); errors.Is(err, fs.ErrNotExist) {
		return removeTree(core)
	}
	_ = write(filepath.Join(top, "tpgt_1", "enable"), "0")
	if err := removeTree(top); err != nil {
		return err
	}
	return removeTree(core)
}

// removeTree removes links first, then directories depth-first. In configfs
// attribute files cannot be unlinked and vanish with their directory; in a
// plain directory they are removed first.
func removeTree(dir string) error {
	var dirs []string
	err := filepath.WalkDir(dir, func(p string, e fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		switch {
		case e.Type()&fs.ModeSymlink != 0:
			return os.Remove(p)
		case e.IsDir():
			dirs = append(dirs, p)
		}
		return nil
	})
	if err != nil {
		return err
	}
	sort.Slice(dirs, func(i, j int) bool { return len(dirs[i]) > len(dirs[j]) })
	for _, p := range dirs {
		if err := os.Remove(p); err != nil {
			entries, _ := os.ReadDir(p)
			for _, e := range entries {
				if !e.IsDir() {
					_ = os.Remove(filepath.Join(p, e.Name()))
				}
			}
			if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return fmt.Errorf("configfs: removing %s: %w", p, err)
			}
		}
	}
	return nil
}

func readValue(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

func (d *LIO) read(iqn string) (Target, error) {
	t := Target{IQN: iqn}
	core, tpg := d.paths(t)
	if _, err := os.Stat(tpg); err != nil {
		return t, err
	}
	t.Path = readValue(filepath.Join(core, "udev_path"))
	luns, _ := os.ReadDir(filepath.Join(tpg, "lun"))
	for _, l := range luns {
		if n, err := strconv.Atoi(strings.TrimPrefix(l.Name(), "lun_")); err == nil {
			t.LUN = n
			break
		}
	}
	acls, _ := os.ReadDir(filepath.Join(tpg, "acls"))
	for _, a := range acls {
		t.InitiatorIQN = a.Name()
		t.CHAPUser = readValue(filepath.Join(tpg, "acls", a.Name(), "auth", "userid"))
		if u := readValue(filepath.Join(tpg, "acls", a.Name(), "auth", "userid_mutual")); u != lioUnset {
			t.TargetUser = u
		}
		break
	}
	return t, nil
}

// List implements Driver.
func (d *LIO) List(_ context.Context, prefix string) ([]Target, error) {
	entries, err := os.ReadDir(filepath.Join(d.root(), "target", "iscsi"))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []Target
	for _, e := range entries {
		if !e.IsDir() || !strings.HasPrefix(e.Name(), prefix) {
			continue
		}
		t, err := d.read(e.Name())
		if err == nil {
			out = append(out, t)
		}
	}
	return out, nil
}

// Connections implements Driver from the ACL's info file, which names the
// initiator when it has an active session.
func (d *LIO) Connections(_ context.Context, iqn string) ([]Connection, error) {
	t, err := d.read(iqn)
	if err != nil || t.InitiatorIQN == "" {
		return nil, nil
	}
	_, tpg := d.paths(t)
	info := readValue(filepath.Join(tpg, "acls", t.InitiatorIQN, "info"))
	if info == "" || strings.Contains(info, "No active iSCSI Session") {
		return nil, nil
	}
	return []Connection{{Initiator: t.InitiatorIQN}}, nil
}
