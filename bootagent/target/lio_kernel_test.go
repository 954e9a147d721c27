package target

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	. "github.com/onsi/gomega"
)

// countingFS records the mutating calls made through a ConfigFS.
type countingFS struct {
	ConfigFS
	mu  sync.Mutex
	ops []string
}

func (c *countingFS) note(op, name string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.ops = append(c.ops, op+" "+name)
}

func (c *countingFS) take() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	ops := c.ops
	c.ops = nil
	return ops
}

func (c *countingFS) WriteFile(name string, data []byte) error {
	c.note("write", name)
	return c.ConfigFS.WriteFile(name, data)
}
func (c *countingFS) Mkdir(name string) error { c.note("mkdir", name); return c.ConfigFS.Mkdir(name) }
func (c *countingFS) Rmdir(name string) error { c.note("rmdir", name); return c.ConfigFS.Rmdir(name) }
func (c *countingFS) Remove(name string) error {
	c.note("unlink", name)
	return c.ConfigFS.Remove(name)
}
func (c *countingFS) Symlink(oldname, newname string) error {
	c.note("symlink", newname)
	return c.ConfigFS.Symlink(oldname, newname)
}

// kernelLIO makes the kernel's LIO reachable under root the way a storage
// node has it (iscsi_target_mod loaded, configfs mounted) and returns ""
// when it is, or why not.
func kernelLIO(root string) string {
	if os.Geteuid() != 0 {
		return "needs root"
	}
	if _, err := os.Stat(filepath.Join(root, "target")); err == nil {
		return ""
	}
	var tried []string
	if out, err := exec.Command("modprobe", "iscsi_target_mod").CombinedOutput(); err != nil {
		tried = append(tried, fmt.Sprintf("modprobe iscsi_target_mod: %v %s", err, bytes.TrimSpace(out)))
	}
	if b, _ := os.ReadFile("/proc/filesystems"); !bytes.Contains(b, []byte("configfs")) {
		tried = append(tried, "no configfs in /proc/filesystems (CONFIG_CONFIGFS_FS)")
	} else if _, err := os.Stat(filepath.Join(root, "target")); err != nil {
		if err := os.MkdirAll(root, 0o755); err == nil {
			if out, err := exec.Command("mount", "-t", "configfs", "configfs", root).CombinedOutput(); err != nil {
				tried = append(tried, fmt.Sprintf("mount -t configfs: %v %s", err, bytes.TrimSpace(out)))
			}
		}
	}
	if _, err := os.Stat(filepath.Join(root, "target")); err == nil {
		return ""
	}
	release, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	if b, err := exec.Command("sh", "-c", "zcat /proc/config.gz 2>/dev/null | grep -E '^(# )?CONFIG_TARGET_CORE[ =]'").Output(); err == nil && len(b) > 0 {
		tried = append(tried, string(bytes.TrimSpace(b)))
	}
	return fmt.Sprintf("the kernel's iSCSI target (LIO) cannot be loaded on Linux %s: %s; the configfs double's tests cover the driver",
		bytes.TrimSpace(release), strings.Join(tried, "; "))
}

// TestLIOKernel runs the driver against the kernel's LIO where the kernel
// has it: a target a PC logs in to with CHAP (libiscsi's iscsi-ls, from
// outside), a resync and a new driver's Ensure that write nothing, a secret
// change that writes only its attribute, and a Remove the kernel accepts,
// leaving nothing.
func TestLIOKernel(t *testing.T) {
	const root = "/sys/kernel/config"
	if why := kernelLIO(root); why != "" {
		t.Skip(why)
	}
	if _, err := exec.LookPath("iscsi-ls"); err != nil {
		t.Fatalf("iscsi-ls (Debian libiscsi-bin, hack/deps.sh): %v", err)
	}
	g := NewWithT(t)
	ctx := context.Background()
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	g.Expect(err).NotTo(HaveOccurred())
	portal := l.Addr().String()
	l.Close()
	fsys := &countingFS{ConfigFS: OSConfigFS{}}
	d := &LIO{Root: root, Portal: portal, FS: fsys}
	a := mutual(sample(t, fmt.Sprintf("kernel-%d", os.Getpid())))
	t.Cleanup(func() { _ = d.Remove(ctx, a.IQN) })

	g.Expect(d.Ensure(ctx, a)).To(Succeed())
	fsys.take()
	g.Expect(d.Ensure(ctx, a)).To(Succeed())
	g.Expect((&LIO{Root: root, Portal: portal, FS: fsys}).Ensure(ctx, a)).To(Succeed())
	g.Expect(fsys.take()).To(BeEmpty(), "a resync and a new agent write nothing")

	out, err := iscsi("iscsi-ls", loginAs(a), portal, "")
	g.Expect(err).NotTo(HaveOccurred(), out)
	g.Expect(out).To(ContainSubstring("Target:" + a.IQN))
	out, err = iscsi("iscsi-readcapacity16", loginAs(a), portal, a.IQN+"/1")
	g.Expect(err).NotTo(HaveOccurred(), out)
	g.Expect(out).To(ContainSubstring("Total size:67108864"), "the LUN has the backing file's size")
	bad := loginAs(a)
	bad.password = "WrongSecret12345"
	_, err = iscsi("iscsi-readcapacity16", bad, portal, a.IQN+"/1")
	g.Expect(err).To(HaveOccurred(), "a wrong secret is refused")

	b := a
	b.CHAPPassword = "NewInitiator1234"
	g.Expect(d.Ensure(ctx, b)).To(Succeed())
	g.Expect(fsys.take()).To(Equal([]string{"write " + filepath.Join(root, "target/iscsi", a.IQN, "tpgt_1/acls", a.InitiatorIQN, "auth/password")}))
	out, err = iscsi("iscsi-readcapacity16", loginAs(b), portal, b.IQN+"/1")
	g.Expect(err).NotTo(HaveOccurred(), out)

	g.Expect(d.Remove(ctx, a.IQN)).To(Succeed())
	core, _ := d.paths(a)
	for _, p := range []string{filepath.Join(root, "target/iscsi", a.IQN), core} {
		_, err := os.Lstat(p)
		g.Expect(os.IsNotExist(err)).To(BeTrue(), p)
	}
	g.Expect(d.List(ctx, a.IQN)).To(BeEmpty())
}
