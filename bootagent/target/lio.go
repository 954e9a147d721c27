package target

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
)

// LIO drives the kernel iSCSI target through configfs: a fileio backstore
// per session, a target with one TPG, one LUN, a portal, and an ACL for the
// session's initiator with CHAP. Root is /sys/kernel/config in production.
//
// configfs is not a file system to write blindly: the kernel refuses to
// configure a backstore twice and (before Linux 5.17) to enable an enabled
// TPG, an unlink of a LUN's link takes the disk away from a logged-in PC,
// attributes cannot be created or removed, and groups go only when emptied
// of what was made in them, children first. Ensure therefore reads first and
// writes only what differs; Remove takes the target apart in the order the
// kernel accepts. The tests hold it to those rules with a double of
// configfs (package configfstest) and, where the kernel has LIO, with the
// kernel.
type LIO struct {
	// Root is the configfs mount (default /sys/kernel/config).
	Root string
	// Portal is ip:port the TPG listens on.
	Portal string
	// FS is how configfs is reached (default OSConfigFS).
	FS ConfigFS

	mu sync.Mutex
}

func (d *LIO) root() string {
	if d.Root == "" {
		return "/sys/kernel/config"
	}
	return d.Root
}

func (d *LIO) fs() ConfigFS {
	if d.FS == nil {
		return OSConfigFS{}
	}
	return d.FS
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

// lioUnset is what the kernel's auth attributes take to be cleared (and
// show once cleared).
const lioUnset = "NULL"

// Ensure implements Driver: it reads the tree and writes only what differs,
// so a resync of a live target writes nothing. The ACL carries the
// initiator's CHAP credentials (auth/userid, password) and, for mutual CHAP,
// the target's (auth/userid_mutual, password_mutual: the kernel's names,
// drivers/target/iscsi/iscsi_target_configfs.c). Its errors never carry a
// secret.
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
	if cur, err := d.readTarget(t.IQN); err == nil && (cur.Path != t.Path || cur.InitiatorIQN != t.InitiatorIQN || cur.LUN != t.LUN) {
		if err := d.removeLocked(t.IQN); err != nil {
			return err
		}
	}
	core, tpg := d.paths(t)
	lun := "lun_" + strconv.Itoa(t.LUN)
	acl := filepath.Join(tpg, "acls", t.InitiatorIQN)
	auth := func(name string) string { return filepath.Join(acl, "auth", name) }
	mutual := func(name, value string) func() error {
		if t.TargetUser == "" {
			return func() error { return d.unset(auth(name)) }
		}
		return func() error { return d.set(auth(name), value) }
	}
	steps := []func() error{
		func() error { return d.backstore(core, t.Path, st.Size()) },
		func() error { return d.mkdirs(tpg) },
		// Before the TPG is enabled: CHAP required, no ACL made up for
		// unknown initiators, the LUN writable.
		func() error { return d.set(filepath.Join(tpg, "attrib", "authentication"), "1") },
		func() error { return d.set(filepath.Join(tpg, "attrib", "generate_node_acls"), "0") },
		func() error { return d.set(filepath.Join(tpg, "attrib", "demo_mode_write_protect"), "0") },
		func() error { return d.mkdirs(filepath.Join(tpg, "lun", lun)) },
		func() error { return d.link(filepath.Join(tpg, "lun", lun), "ggnet", core) },
		func() error { return d.mkdirs(filepath.Join(tpg, "np", d.Portal)) },
		func() error { return d.mkdirs(filepath.Join(acl, lun)) },
		func() error { return d.link(filepath.Join(acl, lun), "ggnet", filepath.Join(tpg, "lun", lun)) },
		func() error { return d.set(auth("userid"), t.CHAPUser) },
		func() error { return d.set(auth("password"), t.CHAPPassword) },
		mutual("userid_mutual", t.TargetUser),
		mutual("password_mutual", t.TargetPassword),
		// Written only when it differs: the kernel refuses to enable an
		// enabled TPG (EINVAL before Linux 5.17).
		func() error { return d.set(filepath.Join(tpg, "enable"), "1") },
	}
	for _, step := range steps {
		if err := step(); err != nil {
			return err
		}
	}
	return nil
}

// backstore makes the target's fileio backstore for path, once: the kernel
// refuses fd_dev_name and enable on a configured one (EEXIST). A configured
// backstore of another file (left by a target removed halfway) is removed
// first; nothing links it, or removeLocked would have unlinked it.
func (d *LIO) backstore(core, path string, size int64) error {
	if d.read(filepath.Join(core, "enable")) == "1" {
		if d.read(filepath.Join(core, "udev_path")) == path {
			return nil
		}
		if err := d.rmdir(core); err != nil {
			return err
		}
	}
	if err := d.mkdirs(core); err != nil {
		return err
	}
	// control is write-only: it cannot be compared, and is written only
	// while the backstore is not configured.
	if err := d.write(filepath.Join(core, "control"), fmt.Sprintf("fd_dev_name=%s,fd_dev_size=%d", path, size)); err != nil {
		return err
	}
	if err := d.set(filepath.Join(core, "udev_path"), path); err != nil {
		return err
	}
	return d.write(filepath.Join(core, "enable"), "1")
}

// Remove implements Driver: it disables the TPG (which drops the
// initiator's connections at once), then takes the target apart children
// first, as configfs requires: each ACL's mapped LUN links and groups, the
// ACLs, the LUN links and groups, the portals, the TPG, the target, and last
// the backstore. Attributes and default groups go with their group.
func (d *LIO) Remove(_ context.Context, iqn string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.removeLocked(iqn)
}

func (d *LIO) removeLocked(iqn string) error {
	core, _ := d.paths(Target{IQN: iqn})
	top := filepath.Join(d.root(), "target", "iscsi", iqn)
	if d.exists(top) {
		tpgs, err := d.subgroups(top, "tpgt_")
		if err != nil {
			return err
		}
		for _, tpg := range tpgs {
			if err := d.removeTPG(tpg); err != nil {
				return err
			}
		}
		if err := d.rmdir(top); err != nil {
			return err
		}
	}
	if d.exists(core) {
		return d.rmdir(core)
	}
	return nil
}

func (d *LIO) removeTPG(tpg string) error {
	if d.read(filepath.Join(tpg, "enable")) == "1" {
		if err := d.write(filepath.Join(tpg, "enable"), "0"); err != nil {
			return err
		}
	}
	acls, err := d.subgroups(filepath.Join(tpg, "acls"), "")
	if err != nil {
		return err
	}
	for _, acl := range acls {
		mapped, err := d.subgroups(acl, "lun_")
		if err != nil {
			return err
		}
		for _, m := range mapped {
			if err := d.unlinkAll(m); err != nil {
				return err
			}
			if err := d.rmdir(m); err != nil {
				return err
			}
		}
		if err := d.rmdir(acl); err != nil {
			return err
		}
	}
	luns, err := d.subgroups(filepath.Join(tpg, "lun"), "lun_")
	if err != nil {
		return err
	}
	for _, lun := range luns {
		if err := d.unlinkAll(lun); err != nil {
			return err
		}
		if err := d.rmdir(lun); err != nil {
			return err
		}
	}
	nps, err := d.subgroups(filepath.Join(tpg, "np"), "")
	if err != nil {
		return err
	}
	for _, np := range nps {
		if err := d.rmdir(np); err != nil {
			return err
		}
	}
	return d.rmdir(tpg)
}

// readTarget reads a target back (no secrets).
func (d *LIO) readTarget(iqn string) (Target, error) {
	t := Target{IQN: iqn}
	core, tpg := d.paths(t)
	if _, err := d.fs().Lstat(tpg); err != nil {
		return t, err
	}
	t.Path = d.read(filepath.Join(core, "udev_path"))
	luns, _ := d.subgroups(filepath.Join(tpg, "lun"), "lun_")
	for _, l := range luns {
		if n, err := strconv.Atoi(strings.TrimPrefix(filepath.Base(l), "lun_")); err == nil {
			t.LUN = n
			break
		}
	}
	if acls, _ := d.subgroups(filepath.Join(tpg, "acls"), ""); len(acls) > 0 {
		a := acls[0]
		t.InitiatorIQN = filepath.Base(a)
		t.CHAPUser = d.read(filepath.Join(a, "auth", "userid"))
		if u := d.read(filepath.Join(a, "auth", "userid_mutual")); u != lioUnset {
			t.TargetUser = u
		}
	}
	return t, nil
}

// List implements Driver.
func (d *LIO) List(_ context.Context, prefix string) ([]Target, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	dirs, err := d.subgroups(filepath.Join(d.root(), "target", "iscsi"), prefix)
	if err != nil {
		return nil, err
	}
	var out []Target
	for _, dir := range dirs {
		if t, err := d.readTarget(filepath.Base(dir)); err == nil {
			out = append(out, t)
		}
	}
	return out, nil
}

// Connections lists who is logged in to one target (Sessions for one
// IQN; the tests' view), from the ACL's info file
// (lio_target_nacl_info_show): "No active iSCSI Session ..." or the
// session's "LIO Session ID: <sid>" and, per connection, "CID: <cid>" and
// "Address <ip> TCP".
func (d *LIO) Connections(_ context.Context, iqn string) ([]Connection, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.connections(iqn), nil
}

// Sessions implements Driver: the ACL info of every target with the prefix
// (configfs reads, no daemon). LIO's info shows only the initiator's newest
// session (se_nacl->nacl_sess), so an older one still logged in (the
// firmware's, beside the OS's) is not listed.
func (d *LIO) Sessions(_ context.Context, prefix string) (map[string][]Connection, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	dirs, err := d.subgroups(filepath.Join(d.root(), "target", "iscsi"), prefix)
	if err != nil {
		return nil, err
	}
	out := map[string][]Connection{}
	for _, dir := range dirs {
		if c := d.connections(filepath.Base(dir)); len(c) > 0 {
			out[filepath.Base(dir)] = c
		}
	}
	return out, nil
}

// connections reads who is logged in to a target from its ACL's info; d.mu
// is held.
func (d *LIO) connections(iqn string) []Connection {
	t, err := d.readTarget(iqn)
	if err != nil || t.InitiatorIQN == "" {
		return nil
	}
	_, tpg := d.paths(t)
	return parseLIOInfo(t.InitiatorIQN, d.read(filepath.Join(tpg, "acls", t.InitiatorIQN, "info")))
}

func parseLIOInfo(initiator, info string) []Connection {
	if info == "" || strings.Contains(info, "No active iSCSI Session") {
		return nil
	}
	var (
		out []Connection
		sid string
	)
	for _, line := range strings.Split(info, "\n") {
		f := strings.Fields(line)
		switch {
		case len(f) >= 4 && f[0] == "LIO" && f[1] == "Session" && f[2] == "ID:":
			sid = f[3]
		case len(f) >= 2 && f[0] == "CID:":
			out = append(out, Connection{Initiator: initiator, Session: sid, CID: f[1]})
		case len(f) >= 2 && f[0] == "Address" && len(out) > 0:
			out[len(out)-1].Address = f[1]
		}
	}
	if len(out) == 0 {
		out = append(out, Connection{Initiator: initiator, Session: sid})
	}
	return out
}
