// Package configfstest is an in-memory configfs with the kernel's iSCSI
// target (LIO) loaded, for testing the LIO driver without a kernel that has
// one. It keeps the rules of configfs (fs/configfs) and of LIO's groups
// (drivers/target/target_core_configfs.c, target_core_fabric_configfs.c,
// iscsi/iscsi_target_configfs.c, iscsi_target_tpg.c) where a driver can
// break them:
//
//   - a group made by mkdir comes with its attributes and default groups, as
//     the kernel makes them; a name the subsystem does not take is refused
//     (EINVAL), and a group that makes no children refuses mkdir (EPERM);
//   - attributes cannot be created (ENOENT on a write to an unknown name),
//     unlinked (EPERM) or read when write-only (EACCES), and writes go
//     through the kernel's store rules: rewriting `enable` of a configured
//     backstore (EEXIST) or of an enabled or disabled TPG (EINVAL, as every
//     kernel before 5.17 answers; later ones accept a same-value write),
//     values out of range (EINVAL), a backstore's block_size while a LUN
//     exports it (EINVAL);
//   - rmdir of a default group is refused (EPERM), of a group holding a
//     group or a link made by the user, directly or inside its default
//     groups, too (ENOTEMPTY);
//   - links are allowed only where LIO takes them — a TPG LUN to a configured
//     backstore, once (ENODEV, EEXIST); an ACL's mapped LUN to a LUN of the
//     same TPG that has a backstore — and readlink answers as configfs does,
//     "../" up to the root and the target's path from there, not the path
//     the link was made with;
//   - an initiator can log in (Login); a change that drops a logged-in
//     initiator's session or LUN is recorded as a disruption.
//
// It is stricter than the kernel in one place, said where it is: removing a
// backstore or a TPG LUN that a link still points to is refused (EBUSY)
// where the kernel would tear the mappings down behind the link.
//
// Every mutating call is logged (Ops), failed ones included, so that tests
// can count what a driver wrote.
package configfstest

import (
	"io/fs"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"
)

// FS is a configfs mounted at a path of its own; it touches no real file.
type FS struct {
	mount string

	mu          sync.Mutex
	root        *node
	ops         []string
	disruptions []string
	hook        func(op, rel string) error
	nextSID     int
}

// New returns a configfs mounted at mount (an absolute path that need not
// exist) with target_core_mod and iscsi_target_mod loaded: target/ and
// target/core/ exist, target/iscsi/ is made by the first mkdir as on a real
// system.
func New(mount string) *FS {
	f := &FS{mount: filepath.Clean(mount)}
	f.root = &node{kind: kindGroup, children: map[string]*node{}}
	f.root.add(f.targetSubsystem())
	return f
}

type kind int

const (
	kindGroup kind = iota
	kindAttr
	kindLink
)

// node is a configfs entry: a group (directory), an attribute or a link.
type node struct {
	name     string
	kind     kind
	parent   *node
	children map[string]*node

	// Groups. A default group is made and removed with its parent.
	dflt bool
	// mkdir makes a child group; nil: the group makes none (EPERM).
	mkdir func(name string) (*node, error)
	// rmdir runs before the group goes: an error refuses the rmdir.
	rmdir func() error
	// allowLink and dropLink are LIO's allow_link and drop_link; nil
	// allowLink: no links here (EPERM).
	allowLink func(target *node) error
	dropLink  func(target *node)
	// linkedBy counts the links that point to this group.
	linkedBy int
	// state is the kernel object behind the group (LIO's device, tpg, lun,
	// ...), for the rules that look across groups.
	state any

	// Attributes: show prints the value (nil: write-only), store takes a
	// write (nil: read-only).
	show  func() string
	store func(string) error

	// Links.
	target *node
}

func group(name string) *node {
	return &node{name: name, kind: kindGroup, children: map[string]*node{}}
}

// defaults adds default groups.
func (n *node) defaults(groups ...*node) *node {
	for _, g := range groups {
		g.dflt = true
		n.add(g)
	}
	return n
}

func (n *node) add(c *node) *node {
	c.parent = n
	n.children[c.name] = c
	return c
}

// attr adds an attribute.
func (n *node) attr(name string, show func() string, store func(string) error) *node {
	n.add(&node{name: name, kind: kindAttr, show: show, store: store})
	return n
}

// value adds a read-write attribute that shows what it holds followed by a
// newline; check vets a write and returns what to hold.
func (n *node) value(name, initial string, check func(string) (string, error)) *node {
	v := initial
	return n.attr(name, func() string { return v + "\n" }, func(s string) error {
		nv, err := check(s)
		if err == nil {
			v = nv
		}
		return err
	})
}

// ro adds a read-only attribute.
func (n *node) ro(name string, show func() string) *node { return n.attr(name, show, nil) }

// rel is n's path from the configfs root.
func (n *node) rel() string {
	var parts []string
	for p := n; p.parent != nil; p = p.parent {
		parts = append(parts, p.name)
	}
	for i, j := 0, len(parts)-1; i < j; i, j = i+1, j-1 {
		parts[i], parts[j] = parts[j], parts[i]
	}
	return strings.Join(parts, "/")
}

// depth is how many groups n is below the root.
func (n *node) depth() int {
	d := 0
	for p := n; p.parent != nil; p = p.parent {
		d++
	}
	return d
}

// busy reports a group configfs will not rmdir: one holding a group or a
// link the user made, directly or inside its default groups
// (configfs_detach_prep).
func (n *node) busy() bool {
	for _, c := range n.children {
		switch {
		case c.kind == kindLink:
			return true
		case c.kind == kindGroup && !c.dflt:
			return true
		case c.kind == kindGroup && c.busy():
			return true
		}
	}
	return false
}

func perr(op, name string, errno syscall.Errno) error {
	return &fs.PathError{Op: op, Path: name, Err: errno}
}

// wrap puts what a store or a hook returned into a path error.
func wrap(op, name string, err error) error {
	if err == nil {
		return nil
	}
	if _, ok := err.(*fs.PathError); ok {
		return err
	}
	return &fs.PathError{Op: op, Path: name, Err: err}
}

// relPath turns an absolute name under the mount into a path from the
// configfs root; ok is false for a name elsewhere.
func (f *FS) relPath(name string) (string, bool) {
	name = filepath.Clean(name)
	if name == f.mount {
		return "", true
	}
	rest, ok := strings.CutPrefix(name, f.mount+"/")
	return rest, ok && filepath.IsAbs(name)
}

// lookup walks rel from the root, following links on the way and, with
// follow, the last one too.
func (f *FS) lookup(op, name string, follow bool) (*node, error) {
	rel, ok := f.relPath(name)
	if !ok {
		return nil, perr(op, name, syscall.ENOENT)
	}
	n := f.root
	if rel == "" {
		return n, nil
	}
	parts := strings.Split(rel, "/")
	for i, p := range parts {
		if n.kind == kindLink {
			n = n.target
		}
		if n.kind != kindGroup {
			return nil, perr(op, name, syscall.ENOTDIR)
		}
		c, ok := n.children[p]
		if !ok {
			return nil, perr(op, name, syscall.ENOENT)
		}
		n = c
		if i == len(parts)-1 && follow && n.kind == kindLink {
			n = n.target
		}
	}
	return n, nil
}

// parentOf looks up the group name would be made in.
func (f *FS) parentOf(op, name string) (*node, string, error) {
	dir, base := filepath.Split(filepath.Clean(name))
	if base == "" {
		return nil, "", perr(op, name, syscall.EEXIST)
	}
	p, err := f.lookup(op, filepath.Clean(dir), true)
	if err != nil {
		return nil, "", err
	}
	if p.kind != kindGroup {
		return nil, "", perr(op, name, syscall.ENOTDIR)
	}
	return p, base, nil
}

// begin logs a mutating call and runs the test's hook.
func (f *FS) begin(op, name string) error {
	rel, _ := f.relPath(name)
	f.ops = append(f.ops, op+" "+rel)
	if f.hook != nil {
		return wrap(op, name, f.hook(op, rel))
	}
	return nil
}

// ReadFile reads an attribute.
func (f *FS) ReadFile(name string) ([]byte, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	n, err := f.lookup("open", name, true)
	switch {
	case err != nil:
		return nil, err
	case n.kind == kindGroup:
		return nil, perr("read", name, syscall.EISDIR)
	case n.show == nil:
		return nil, perr("open", name, syscall.EACCES)
	}
	return []byte(n.show()), nil
}

// WriteFile writes an existing attribute in one write, as an open without
// O_CREAT and one write(2) do.
func (f *FS) WriteFile(name string, data []byte) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.begin("write", name); err != nil {
		return err
	}
	n, err := f.lookup("open", name, true)
	switch {
	case err != nil:
		return err
	case n.kind == kindGroup:
		return perr("open", name, syscall.EISDIR)
	case n.store == nil:
		return perr("open", name, syscall.EACCES)
	}
	return wrap("write", name, n.store(string(data)))
}

// Mkdir makes a group where the subsystem makes one of that name.
func (f *FS) Mkdir(name string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.begin("mkdir", name); err != nil {
		return err
	}
	p, base, err := f.parentOf("mkdir", name)
	if err != nil {
		return err
	}
	if _, ok := p.children[base]; ok {
		return perr("mkdir", name, syscall.EEXIST)
	}
	if p.mkdir == nil {
		return perr("mkdir", name, syscall.EPERM)
	}
	c, err := p.mkdir(base)
	if err != nil {
		return wrap("mkdir", name, err)
	}
	c.name = base
	p.add(c)
	return nil
}

// Rmdir removes a group the user made, once it holds nothing the user made.
func (f *FS) Rmdir(name string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.begin("rmdir", name); err != nil {
		return err
	}
	n, err := f.lookup("rmdir", name, false)
	switch {
	case err != nil:
		return err
	case n.kind != kindGroup:
		return perr("rmdir", name, syscall.ENOTDIR)
	case n.parent == nil || n.dflt || !n.mkdirMade():
		return perr("rmdir", name, syscall.EPERM)
	case n.busy():
		return perr("rmdir", name, syscall.ENOTEMPTY)
	case n.linkedBy > 0:
		// Stricter than configfs, which lets a link's target go and leaves
		// LIO to tear down what the link set up.
		return perr("rmdir", name, syscall.EBUSY)
	}
	if n.rmdir != nil {
		if err := n.rmdir(); err != nil {
			return wrap("rmdir", name, err)
		}
	}
	delete(n.parent.children, n.name)
	n.parent = nil
	return nil
}

// Symlink links newname to the group oldname names (relative to newname's
// directory, or absolute under the mount), where LIO allows it.
func (f *FS) Symlink(oldname, newname string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.begin("symlink", newname); err != nil {
		return err
	}
	p, base, err := f.parentOf("symlink", newname)
	if err != nil {
		return err
	}
	if _, ok := p.children[base]; ok {
		return perr("symlink", newname, syscall.EEXIST)
	}
	if p.parent == nil || p.allowLink == nil {
		return perr("symlink", newname, syscall.EPERM)
	}
	target := oldname
	if !filepath.IsAbs(target) {
		target = filepath.Join(filepath.Dir(filepath.Clean(newname)), target)
	}
	if _, ok := f.relPath(target); !ok {
		return perr("symlink", newname, syscall.EPERM) // not configfs
	}
	t, err := f.lookup("symlink", target, true)
	if err != nil {
		return err
	}
	if t.kind != kindGroup {
		return perr("symlink", newname, syscall.ENOTDIR)
	}
	if err := p.allowLink(t); err != nil {
		return wrap("symlink", newname, err)
	}
	t.linkedBy++
	p.add(&node{name: base, kind: kindLink, target: t})
	return nil
}

// Readlink answers as configfs does: "../" for each group the link's
// directory is below the root, then the target's path from the root.
func (f *FS) Readlink(name string) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	n, err := f.lookup("readlink", name, false)
	if err != nil {
		return "", err
	}
	if n.kind != kindLink {
		return "", perr("readlink", name, syscall.EINVAL)
	}
	return strings.Repeat("../", n.parent.depth()) + n.target.rel(), nil
}

// ReadDir lists a group by name.
func (f *FS) ReadDir(name string) ([]fs.DirEntry, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	n, err := f.lookup("open", name, true)
	if err != nil {
		return nil, err
	}
	if n.kind != kindGroup {
		return nil, perr("readdirent", name, syscall.ENOTDIR)
	}
	out := make([]fs.DirEntry, 0, len(n.children))
	for _, c := range n.children {
		out = append(out, fs.FileInfoToDirEntry(info{c}))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name() < out[j].Name() })
	return out, nil
}

// Remove unlinks a link; attributes and groups cannot be unlinked.
func (f *FS) Remove(name string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.begin("unlink", name); err != nil {
		return err
	}
	n, err := f.lookup("unlink", name, false)
	switch {
	case err != nil:
		return err
	case n.kind == kindGroup:
		return perr("unlink", name, syscall.EISDIR)
	case n.kind == kindAttr:
		return perr("unlink", name, syscall.EPERM)
	}
	if n.parent.dropLink != nil {
		n.parent.dropLink(n.target)
	}
	n.target.linkedBy--
	delete(n.parent.children, n.name)
	return nil
}

// Lstat describes a name without following a link.
func (f *FS) Lstat(name string) (fs.FileInfo, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	n, err := f.lookup("lstat", name, false)
	if err != nil {
		return nil, err
	}
	return info{n}, nil
}

// info is a node as fs.FileInfo.
type info struct{ n *node }

func (i info) Name() string {
	if i.n.parent == nil {
		return "/"
	}
	return i.n.name
}
func (i info) Size() int64 { return 4096 }
func (i info) Mode() fs.FileMode {
	switch {
	case i.n.kind == kindGroup:
		return fs.ModeDir | 0o755
	case i.n.kind == kindLink:
		return fs.ModeSymlink | 0o777
	case i.n.show == nil:
		return 0o200
	case i.n.store == nil:
		return 0o444
	}
	return 0o644
}
func (i info) ModTime() time.Time { return time.Time{} }
func (i info) IsDir() bool        { return i.n.kind == kindGroup }
func (i info) Sys() any           { return nil }
