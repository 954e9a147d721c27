package configfstest

import (
	"fmt"
	"sort"
	"strings"
)

// What tests look at: the calls made, the disruptions, the tree.

// Ops returns the mutating calls made so far (write, mkdir, rmdir, symlink,
// unlink, each with its path from the configfs root), failed ones included.
func (f *FS) Ops() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.ops...)
}

// ResetOps forgets the calls made so far.
func (f *FS) ResetOps() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.ops = nil
}

// Disruptions returns what dropped a logged-in initiator's session or took
// a LUN from under it, in order.
func (f *FS) Disruptions() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.disruptions...)
}

func (f *FS) disrupt(format string, args ...any) {
	f.disruptions = append(f.disruptions, fmt.Sprintf(format, args...))
}

// Hook runs h before each mutating call (op is write, mkdir, rmdir,
// symlink or unlink; rel the path from the configfs root): an error it
// returns fails the call, as the kernel would. nil removes the hook.
func (f *FS) Hook(h func(op, rel string) error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.hook = h
}

// Tree lists every attribute with what it shows (trimmed) and every link
// with what it points to ("-> " and the target's path from the root), by
// path from the root; write-only attributes show as "(write-only)".
func (f *FS) Tree() map[string]string {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := map[string]string{}
	var walk func(n *node)
	walk = func(n *node) {
		for _, c := range n.children {
			switch c.kind {
			case kindGroup:
				walk(c)
			case kindLink:
				out[c.rel()] = "-> " + c.target.rel()
			case kindAttr:
				if c.show == nil {
					out[c.rel()] = "(write-only)"
				} else {
					out[c.rel()] = strings.TrimSpace(c.show())
				}
			}
		}
	}
	walk(f.root)
	return out
}

// Groups lists the groups the user made (not default groups), by path from
// the root, sorted.
func (f *FS) Groups() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	var walk func(n *node)
	walk = func(n *node) {
		for _, c := range n.children {
			if c.kind == kindGroup {
				if !c.dflt && c.mkdirMade() {
					out = append(out, c.rel())
				}
				walk(c)
			}
		}
	}
	walk(f.root)
	sort.Strings(out)
	return out
}

// mkdirMade tells a group made by mkdir from the subsystem's own top
// groups (target/), which are not default groups of anything either.
func (n *node) mkdirMade() bool { return n.parent != nil && n.parent.mkdir != nil }
