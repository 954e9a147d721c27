package configfstest

import (
	"io/fs"
	"syscall"
	"testing"

	. "github.com/onsi/gomega"
)

// The double's rules, each as the kernel has it (see the package comment
// for the sources).

const (
	m      = "/cfs"
	devDir = m + "/target/core/fileio_0/disk"
	wwnDir = m + "/target/iscsi/iqn.2026-11.io.ggnet:cafe:s1"
	tpgDir = wwnDir + "/tpgt_1"
	aclDir = tpgDir + "/acls/iqn.2026-11.io.ggnet:initiator:seat-1"
)

func names(g *WithT, f *FS, dir string) []string {
	es, err := f.ReadDir(dir)
	g.Expect(err).NotTo(HaveOccurred())
	var out []string
	for _, e := range es {
		n := e.Name()
		switch {
		case e.IsDir():
			n += "/"
		case e.Type()&fs.ModeSymlink != 0:
			n += "@"
		}
		out = append(out, n)
	}
	return out
}

func mkdirs(g *WithT, f *FS, dirs ...string) {
	for _, d := range dirs {
		g.Expect(f.Mkdir(d)).To(Succeed(), d)
	}
}

func write(g *WithT, f *FS, name, value string) {
	g.Expect(f.WriteFile(name, []byte(value))).To(Succeed(), name)
}

func read(g *WithT, f *FS, name string) string {
	b, err := f.ReadFile(name)
	g.Expect(err).NotTo(HaveOccurred(), name)
	return string(b)
}

// configured makes a configured backstore, a TPG with LUN 1 linked to it
// and an ACL with mapped LUN 1 linked to that.
func configured(g *WithT) *FS {
	f := New(m)
	mkdirs(g, f, m+"/target/core/fileio_0", devDir)
	write(g, f, devDir+"/control", "fd_dev_name=/srv/disk.raw,fd_dev_size=1048576")
	write(g, f, devDir+"/enable", "1")
	mkdirs(g, f, m+"/target/iscsi", wwnDir, tpgDir, tpgDir+"/lun/lun_1", tpgDir+"/np/10.0.0.1:3260", aclDir, aclDir+"/lun_1")
	g.Expect(f.Symlink("../../../../../../target/core/fileio_0/disk", tpgDir+"/lun/lun_1/x")).To(Succeed())
	g.Expect(f.Symlink("../../../lun/lun_1", aclDir+"/lun_1/y")).To(Succeed())
	return f
}

func TestGroupsComeWithTheirAttributes(t *testing.T) {
	g := NewWithT(t)
	f := configured(g)
	g.Expect(names(g, f, m+"/target")).To(Equal([]string{"core/", "dbroot", "iscsi/", "version"}))
	g.Expect(names(g, f, devDir)).To(Equal([]string{"alias", "alua/", "alua_lu_gp", "attrib/", "control", "enable", "info",
		"lba_map", "pr/", "statistics/", "udev_path", "wwn/"}))
	g.Expect(names(g, f, tpgDir)).To(Equal([]string{"acls/", "attrib/", "auth/", "dynamic_sessions", "enable", "lun/", "np/", "param/"}))
	g.Expect(names(g, f, tpgDir+"/attrib")).To(ContainElements("authentication", "generate_node_acls", "demo_mode_write_protect",
		"cache_dynamic_acls", "login_timeout", "default_cmdsn_depth"))
	g.Expect(names(g, f, tpgDir+"/lun/lun_1")).To(Equal([]string{"alua_tg_pt_gp", "alua_tg_pt_offline", "alua_tg_pt_status",
		"alua_tg_pt_write_md", "statistics/", "x@"}))
	g.Expect(names(g, f, aclDir)).To(Equal([]string{"attrib/", "auth/", "cmdsn_depth", "fabric_statistics/", "info", "lun_1/", "param/", "tag"}))
	g.Expect(names(g, f, aclDir+"/auth")).To(Equal([]string{"authenticate_target", "password", "password_mutual", "userid", "userid_mutual"}))

	// The kernel's defaults, each shown with a newline.
	g.Expect(read(g, f, tpgDir+"/attrib/authentication")).To(Equal("1\n"))
	g.Expect(read(g, f, tpgDir+"/attrib/generate_node_acls")).To(Equal("0\n"))
	g.Expect(read(g, f, tpgDir+"/attrib/demo_mode_write_protect")).To(Equal("1\n"))
	g.Expect(read(g, f, tpgDir+"/enable")).To(Equal("0\n"))
	g.Expect(read(g, f, devDir+"/enable")).To(Equal("1\n"))
	g.Expect(read(g, f, aclDir+"/auth/userid")).To(Equal("\n"))
	g.Expect(read(g, f, aclDir+"/info")).To(Equal("No active iSCSI Session for Initiator Endpoint: iqn.2026-11.io.ggnet:initiator:seat-1\n"))
	g.Expect(read(g, f, m+"/target/core/fileio_0/disk/udev_path")).To(BeEmpty(), "unset: shows nothing")
	write(g, f, devDir+"/udev_path", "/srv/disk.raw\n")
	g.Expect(read(g, f, devDir+"/udev_path")).To(Equal("/srv/disk.raw\n"), "the newline is dropped and shown again")
}

func TestMkdirRules(t *testing.T) {
	g := NewWithT(t)
	f := configured(g)
	for dir, errno := range map[string]syscall.Errno{
		m + "/target/vhost-user":        syscall.EINVAL, // no such fabric
		m + "/target/core/disk":         syscall.EINVAL, // not <plugin>_<id>
		tpgDir + "/lun/one":             syscall.EINVAL, // not lun_<n>
		aclDir + "/lun_x":               syscall.EINVAL,
		wwnDir + "/tpg1":                syscall.EINVAL, // not tpgt_<n>
		tpgDir + "/np/10.0.0.1":         syscall.EINVAL, // no port
		tpgDir + "/extra":               syscall.EPERM,  // a TPG makes no groups of its own
		tpgDir + "/attrib/x":            syscall.EPERM,
		tpgDir + "/lun/lun_1":           syscall.EEXIST,
		tpgDir + "/lun/lun_1/statistic": syscall.EPERM,
		m + "/target/missing/x":         syscall.ENOENT,
		tpgDir + "/enable/x":            syscall.ENOTDIR,
	} {
		g.Expect(f.Mkdir(dir)).To(MatchError(errno), dir)
	}
	// One portal per target: not on a second TPG of the same IQN.
	mkdirs(g, f, wwnDir+"/tpgt_2")
	g.Expect(f.Mkdir(wwnDir + "/tpgt_2/np/10.0.0.1:3260")).To(MatchError(syscall.EEXIST))
	mkdirs(g, f, wwnDir+"/tpgt_2/np/10.0.0.1:3261")
}

func TestAttributeRules(t *testing.T) {
	g := NewWithT(t)
	f := configured(g)
	g.Expect(f.WriteFile(tpgDir+"/attrib/no_such_attribute", []byte("1"))).To(MatchError(syscall.ENOENT), "attributes cannot be made")
	_, err := f.ReadFile(devDir + "/control")
	g.Expect(err).To(MatchError(syscall.EACCES), "control is write-only")
	g.Expect(f.WriteFile(aclDir+"/info", []byte("x"))).To(MatchError(syscall.EACCES), "info is read-only")
	g.Expect(f.WriteFile(tpgDir+"/attrib", []byte("1"))).To(MatchError(syscall.EISDIR))
	g.Expect(f.Remove(tpgDir+"/enable")).To(MatchError(syscall.EPERM), "attributes cannot be unlinked")
	g.Expect(f.Remove(tpgDir + "/attrib")).To(MatchError(syscall.EISDIR))

	for name, value := range map[string]string{
		"authentication": "2", "login_timeout": "4", "default_erl": "3", "generate_node_acls": "yes",
		"demo_mode_write_protect": "-1", "default_cmdsn_depth": "0",
	} {
		g.Expect(f.WriteFile(tpgDir+"/attrib/"+name, []byte(value))).To(MatchError(syscall.EINVAL), name+"="+value)
	}
	write(g, f, tpgDir+"/attrib/demo_mode_write_protect", "0\n")
	g.Expect(read(g, f, tpgDir+"/attrib/demo_mode_write_protect")).To(Equal("0\n"))
	write(g, f, tpgDir+"/attrib/login_timeout", "0x10")
	g.Expect(read(g, f, tpgDir+"/attrib/login_timeout")).To(Equal("16\n"), "kstrtou32, base 0")

	// A backstore's block size cannot change while a LUN exports it.
	g.Expect(f.WriteFile(devDir+"/attrib/block_size", []byte("4096"))).To(MatchError(syscall.EINVAL))

	// CHAP values are kept as written, newline included; NULL clears.
	write(g, f, aclDir+"/auth/password", "Secret0123456\n")
	g.Expect(read(g, f, aclDir+"/auth/password")).To(Equal("Secret0123456\n\n"))
	write(g, f, aclDir+"/auth/userid_mutual", "t")
	write(g, f, aclDir+"/auth/password_mutual", "Mutual01234567")
	g.Expect(read(g, f, aclDir+"/auth/authenticate_target")).To(Equal("1\n"))
	write(g, f, aclDir+"/auth/userid_mutual", "NULL")
	g.Expect(read(g, f, aclDir+"/auth/authenticate_target")).To(Equal("0\n"))
}

func TestEnableRules(t *testing.T) {
	g := NewWithT(t)
	f := New(m)
	mkdirs(g, f, m+"/target/core/fileio_0", devDir)
	g.Expect(f.WriteFile(devDir+"/enable", []byte("1"))).To(MatchError(syscall.EINVAL), "no fd_dev_name= yet")
	write(g, f, devDir+"/control", "fd_dev_name=/srv/disk.raw,fd_dev_size=1048576")
	g.Expect(f.WriteFile(devDir+"/enable", []byte("0"))).To(MatchError(syscall.EINVAL), "only 1")
	write(g, f, devDir+"/enable", "1")
	g.Expect(f.WriteFile(devDir+"/enable", []byte("1"))).To(MatchError(syscall.EEXIST), "configured once")

	mkdirs(g, f, m+"/target/iscsi", wwnDir, tpgDir)
	g.Expect(f.WriteFile(tpgDir+"/enable", []byte("0"))).To(MatchError(syscall.EINVAL), "already disabled")
	write(g, f, tpgDir+"/enable", "1\n")
	g.Expect(f.WriteFile(tpgDir+"/enable", []byte("1"))).To(MatchError(syscall.EINVAL), "already enabled")
	g.Expect(f.WriteFile(tpgDir+"/enable", []byte("2"))).To(MatchError(syscall.EINVAL))
	write(g, f, tpgDir+"/enable", "0")
	g.Expect(read(g, f, tpgDir+"/enable")).To(Equal("0\n"))
}

func TestRmdirRules(t *testing.T) {
	g := NewWithT(t)
	f := configured(g)
	for dir, errno := range map[string]syscall.Errno{
		tpgDir:                      syscall.ENOTEMPTY, // its lun/ holds lun_1: default groups are looked into
		tpgDir + "/lun/lun_1":       syscall.ENOTEMPTY, // a link
		aclDir:                      syscall.ENOTEMPTY, // a mapped LUN
		tpgDir + "/attrib":          syscall.EPERM,     // a default group
		tpgDir + "/lun/lun_1/stats": syscall.ENOENT,
		tpgDir + "/enable":          syscall.ENOTDIR,
		m + "/target":               syscall.EPERM,
		m + "/target/core":          syscall.EPERM,
		devDir:                      syscall.EBUSY, // a LUN links it (stricter than the kernel)
	} {
		g.Expect(f.Rmdir(dir)).To(MatchError(errno), dir)
	}
	// Children first: then each goes.
	g.Expect(f.Remove(aclDir + "/lun_1/y")).To(Succeed())
	for _, dir := range []string{aclDir + "/lun_1", aclDir} {
		g.Expect(f.Rmdir(dir)).To(Succeed(), dir)
	}
	g.Expect(f.Remove(tpgDir + "/lun/lun_1/x")).To(Succeed())
	for _, dir := range []string{tpgDir + "/lun/lun_1", tpgDir + "/np/10.0.0.1:3260", tpgDir, wwnDir, devDir} {
		g.Expect(f.Rmdir(dir)).To(Succeed(), dir)
	}
	g.Expect(f.Groups()).To(Equal([]string{"target/core/fileio_0", "target/iscsi"}))
}

func TestLinkRules(t *testing.T) {
	g := NewWithT(t)
	f := configured(g)
	// configfs answers readlink with its own path: up to the root, then down.
	g.Expect(f.Readlink(tpgDir + "/lun/lun_1/x")).To(Equal("../../../../../../target/core/fileio_0/disk"))
	g.Expect(f.Readlink(aclDir + "/lun_1/y")).To(Equal("../../../../../../../target/iscsi/iqn.2026-11.io.ggnet:cafe:s1/tpgt_1/lun/lun_1"))
	_, err := f.Readlink(tpgDir + "/enable")
	g.Expect(err).To(MatchError(syscall.EINVAL))

	g.Expect(f.Symlink(devDir, tpgDir+"/lun/lun_1/again")).To(MatchError(syscall.EEXIST), "one backstore per LUN")
	g.Expect(f.Symlink(devDir, tpgDir+"/attrib/x")).To(MatchError(syscall.EPERM), "no links there")
	g.Expect(f.Symlink(devDir, tpgDir+"/x")).To(MatchError(syscall.EPERM))
	g.Expect(f.Symlink("/srv/disk.raw", tpgDir+"/lun/lun_1/y")).To(MatchError(syscall.EPERM), "not configfs")
	g.Expect(f.Symlink(devDir+"/enable", tpgDir+"/lun/lun_1/y")).To(MatchError(syscall.ENOTDIR))
	g.Expect(f.Symlink(m+"/target/core/fileio_0/none", tpgDir+"/lun/lun_1/y")).To(MatchError(syscall.ENOENT))

	mkdirs(g, f, tpgDir+"/lun/lun_2", m+"/target/core/fileio_0/cold")
	g.Expect(f.Symlink(m+"/target/core/fileio_0/cold", tpgDir+"/lun/lun_2/x")).To(MatchError(syscall.ENODEV), "not configured")
	g.Expect(f.Symlink(tpgDir+"/lun/lun_1", tpgDir+"/lun/lun_2/x")).To(MatchError(syscall.EFAULT), "not a backstore")
	mkdirs(g, f, aclDir+"/lun_2")
	g.Expect(f.Symlink(tpgDir+"/lun/lun_2", aclDir+"/lun_2/y")).To(MatchError(syscall.EINVAL), "a LUN with no backstore")
	mkdirs(g, f, wwnDir+"/tpgt_2", wwnDir+"/tpgt_2/lun/lun_1")
	g.Expect(f.Symlink(devDir, wwnDir+"/tpgt_2/lun/lun_1/x")).To(Succeed())
	g.Expect(f.Symlink(wwnDir+"/tpgt_2/lun/lun_1", aclDir+"/lun_2/y")).To(MatchError(syscall.EINVAL), "another TPG's LUN")
	g.Expect(f.Symlink(devDir, aclDir+"/lun_2/y")).To(MatchError(syscall.EFAULT), "not a LUN")
	g.Expect(f.Symlink(tpgDir+"/lun/lun_1", aclDir+"/lun_1/z")).To(MatchError(syscall.EEXIST))
}

func TestLoginAndDisruptions(t *testing.T) {
	g := NewWithT(t)
	f := configured(g)
	iqn := "iqn.2026-11.io.ggnet:cafe:s1"
	c := Credentials{Initiator: "iqn.2026-11.io.ggnet:initiator:seat-1", User: "seat", Password: "Secret0123456", Address: "10.0.0.9"}
	g.Expect(f.Login(iqn, c)).To(MatchError(ErrLoginRefused), "TPG not enabled")
	write(g, f, tpgDir+"/enable", "1")
	g.Expect(f.Login(iqn, c)).To(MatchError(ErrLoginRefused), "no CHAP set")
	write(g, f, aclDir+"/auth/userid", "seat")
	write(g, f, aclDir+"/auth/password", "Secret0123456\n")
	g.Expect(f.Login(iqn, c)).To(MatchError(ErrLoginRefused), "a secret stored with its newline is another secret")
	write(g, f, aclDir+"/auth/password", "Secret0123456")
	other := c
	other.Initiator = "iqn.2026-11.io.ggnet:initiator:seat-2"
	g.Expect(f.Login(iqn, other)).To(MatchError(ErrLoginRefused), "no ACL")
	g.Expect(f.Login(iqn, c)).To(Succeed())
	g.Expect(read(g, f, aclDir+"/info")).To(ContainSubstring("LIO Session ID: 1 "))
	g.Expect(read(g, f, aclDir+"/info")).To(ContainSubstring("Address 10.0.0.9 TCP"))
	g.Expect(f.Disruptions()).To(BeEmpty())

	f.ResetOps()
	g.Expect(f.Remove(tpgDir + "/lun/lun_1/x")).To(Succeed())
	g.Expect(f.Disruptions()).To(HaveLen(1))
	g.Expect(f.Disruptions()[0]).To(ContainSubstring("unlinked from its backstore under the session"))
	g.Expect(f.Ops()).To(Equal([]string{"unlink target/iscsi/iqn.2026-11.io.ggnet:cafe:s1/tpgt_1/lun/lun_1/x"}))
	write(g, f, tpgDir+"/enable", "0")
	g.Expect(f.Disruptions()).To(HaveLen(2))
	g.Expect(f.LoggedIn(iqn, c.Initiator)).To(BeFalse())
}
