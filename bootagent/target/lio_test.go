package target

import (
	"context"
	"errors"
	"strings"
	"testing"

	. "github.com/onsi/gomega"

	"github.com/ggnet/ggnet/bootagent/target/configfstest"
)

// The LIO driver against configfstest, a configfs double that keeps the
// kernel's rules (see its package comment). Its mount is a path that does
// not exist: a driver call that bypassed the double would fail.
const doubleMount = "/nonexistent/configfs-double"

func lioDouble() (*LIO, *configfstest.FS) {
	f := configfstest.New(doubleMount)
	return &LIO{Root: doubleMount, Portal: "10.20.0.5:3260", FS: f}, f
}

func credentials(t Target) configfstest.Credentials {
	return configfstest.Credentials{Initiator: t.InitiatorIQN, User: t.CHAPUser, Password: t.CHAPPassword,
		TargetUser: t.TargetUser, TargetPassword: t.TargetPassword, Address: "10.20.0.31"}
}

func TestLIO(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	d, f := lioDouble()
	a := mutual(sample(t, "s1"))
	g.Expect(d.Ensure(ctx, a)).To(Succeed())

	bs := "target/core/fileio_0/" + backstoreName(a.IQN) + "/"
	tpg := "target/iscsi/" + a.IQN + "/tpgt_1/"
	acl := tpg + "acls/" + a.InitiatorIQN + "/"
	g.Expect(f.Tree()).To(gstruct(map[string]string{
		bs + "udev_path":                       a.Path,
		bs + "enable":                          "1",
		bs + "control":                         "(write-only)",
		tpg + "lun/lun_1/ggnet":                "-> target/core/fileio_0/" + backstoreName(a.IQN),
		tpg + "attrib/authentication":          "1",
		tpg + "attrib/generate_node_acls":      "0",
		tpg + "attrib/demo_mode_write_protect": "0",
		acl + "lun_1/ggnet":                    "-> " + tpg + "lun/lun_1",
		acl + "auth/userid":                    a.CHAPUser,
		acl + "auth/password":                  a.CHAPPassword,
		acl + "auth/userid_mutual":             a.TargetUser,
		acl + "auth/password_mutual":           a.TargetPassword,
		acl + "auth/authenticate_target":       "1",
		tpg + "enable":                         "1",
	}))
	g.Expect(f.Groups()).To(Equal([]string{
		"target/core/fileio_0",
		"target/core/fileio_0/" + backstoreName(a.IQN),
		"target/iscsi",
		"target/iscsi/" + a.IQN,
		"target/iscsi/" + a.IQN + "/tpgt_1",
		"target/iscsi/" + a.IQN + "/tpgt_1/acls/" + a.InitiatorIQN,
		"target/iscsi/" + a.IQN + "/tpgt_1/acls/" + a.InitiatorIQN + "/lun_1",
		"target/iscsi/" + a.IQN + "/tpgt_1/lun/lun_1",
		"target/iscsi/" + a.IQN + "/tpgt_1/np/10.20.0.5:3260",
	}))

	list, err := d.List(ctx, prefix)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(list).To(Equal([]Target{{IQN: a.IQN, LUN: 1, Path: a.Path, InitiatorIQN: a.InitiatorIQN, CHAPUser: a.CHAPUser, TargetUser: a.TargetUser}}))
	g.Expect(d.List(ctx, "iqn.2000-01.other:")).To(BeEmpty())

	// The PC logs in with exactly the secrets of its Secret: what the driver
	// stored is byte for byte what CHAP compares.
	conns, err := d.Connections(ctx, a.IQN)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(conns).To(BeEmpty())
	wrong := credentials(a)
	wrong.Password = "WrongSecret12345"
	g.Expect(f.Login(a.IQN, wrong)).To(MatchError(configfstest.ErrLoginRefused))
	g.Expect(f.Login(a.IQN, credentials(a))).To(Succeed())
	conns, err = d.Connections(ctx, a.IQN)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(conns).To(Equal([]Connection{{Initiator: a.InitiatorIQN, Address: "10.20.0.31", Session: "1", CID: "0"}}))

	// Another initiator: the target is made again for it.
	b := a
	b.InitiatorIQN = prefix + "initiator:cafe:seat-2"
	g.Expect(d.Ensure(ctx, b)).To(Succeed())
	list, _ = d.List(ctx, prefix)
	g.Expect(list[0].InitiatorIQN).To(Equal(b.InitiatorIQN))
	g.Expect(f.LoggedIn(a.IQN, a.InitiatorIQN)).To(BeFalse())

	g.Expect(d.Remove(ctx, a.IQN)).To(Succeed())
	g.Expect(d.Remove(ctx, a.IQN)).To(Succeed(), "a missing target is no error")
	g.Expect(f.Groups()).To(Equal([]string{"target/core/fileio_0", "target/iscsi"}), "nothing of the target is left")
	g.Expect(d.List(ctx, prefix)).To(BeEmpty())
}

// gstruct matches a tree that holds at least want.
func gstruct(want map[string]string) OmegaMatcher {
	var ms []OmegaMatcher
	for k, v := range want {
		ms = append(ms, HaveKeyWithValue(k, v))
	}
	return And(ms...)
}

// TestLIOResyncWritesNothing: Ensure of a live target writes nothing — no
// attribute, no link, no group — from the same driver or from a new one
// (a restarted agent), and its logged-in PC is never disturbed. The kernel
// refuses to enable an enabled TPG; configfs answers readlink with a path of
// its own, which a driver comparing link strings would take for a wrong
// link and unlink, taking the LUN from under the PC.
func TestLIOResyncWritesNothing(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	d, f := lioDouble()
	for _, x := range []Target{sample(t, "r1"), mutual(sample(t, "r2"))} {
		g.Expect(d.Ensure(ctx, x)).To(Succeed())
		g.Expect(f.Login(x.IQN, credentials(x))).To(Succeed())
		f.ResetOps()
		g.Expect(d.Ensure(ctx, x)).To(Succeed())
		g.Expect(f.Ops()).To(BeEmpty(), "a resync writes nothing")
		restarted := &LIO{Root: d.Root, Portal: d.Portal, FS: f}
		g.Expect(restarted.Ensure(ctx, x)).To(Succeed())
		g.Expect(f.Ops()).To(BeEmpty(), "nor does a new agent's first Ensure")
		g.Expect(f.LoggedIn(x.IQN, x.InitiatorIQN)).To(BeTrue())
	}
	g.Expect(f.Disruptions()).To(BeEmpty())
}

// TestLIOSecretChangeWritesOnlyAuth: new secrets rewrite only the auth
// attributes that changed, under a logged-in PC that stays logged in;
// dropping mutual CHAP clears the target's credentials the kernel's way,
// and stays cleared without writes.
func TestLIOSecretChangeWritesOnlyAuth(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	d, f := lioDouble()
	a := mutual(sample(t, "w1"))
	g.Expect(d.Ensure(ctx, a)).To(Succeed())
	g.Expect(f.Login(a.IQN, credentials(a))).To(Succeed())
	auth := "target/iscsi/" + a.IQN + "/tpgt_1/acls/" + a.InitiatorIQN + "/auth/"

	b := a
	b.TargetPassword = "NewTarget9876543"
	f.ResetOps()
	g.Expect(d.Ensure(ctx, b)).To(Succeed())
	g.Expect(f.Ops()).To(Equal([]string{"write " + auth + "password_mutual"}))
	g.Expect(f.Tree()).To(HaveKeyWithValue(auth+"password_mutual", b.TargetPassword))

	c := b
	c.CHAPPassword = "NewInitiator1234"
	f.ResetOps()
	g.Expect(d.Ensure(ctx, c)).To(Succeed())
	g.Expect(f.Ops()).To(Equal([]string{"write " + auth + "password"}))

	e := c
	e.TargetUser, e.TargetPassword = "", ""
	f.ResetOps()
	g.Expect(d.Ensure(ctx, e)).To(Succeed())
	g.Expect(f.Ops()).To(Equal([]string{"write " + auth + "userid_mutual", "write " + auth + "password_mutual"}))
	tree := f.Tree()
	g.Expect(tree).To(HaveKeyWithValue(auth+"userid_mutual", "NULL"))
	g.Expect(tree).To(HaveKeyWithValue(auth+"password_mutual", "NULL"))
	g.Expect(tree).To(HaveKeyWithValue(auth+"authenticate_target", "0"))
	g.Expect(tree).To(HaveKeyWithValue(auth+"password", c.CHAPPassword), "the initiator's secret stays")
	list, _ := d.List(ctx, prefix)
	g.Expect(list[0].TargetUser).To(BeEmpty())
	f.ResetOps()
	g.Expect(d.Ensure(ctx, e)).To(Succeed())
	g.Expect(f.Ops()).To(BeEmpty(), "cleared stays cleared without writes")

	g.Expect(f.LoggedIn(a.IQN, a.InitiatorIQN)).To(BeTrue(), "secrets apply at the next login")
	g.Expect(f.Disruptions()).To(BeEmpty())
	f.Logout(a.IQN, a.InitiatorIQN)
	g.Expect(f.Login(a.IQN, credentials(a))).To(MatchError(configfstest.ErrLoginRefused), "the old secrets are gone")
	g.Expect(f.Login(a.IQN, credentials(e))).To(Succeed())
}

// TestLIORemoveOrder: Remove of a target with a LUN, an ACL with a mapped
// LUN, a portal and a logged-in PC disables the TPG first (the PC is
// dropped at once, and only then), then takes it apart children first, in
// the order configfs accepts; attributes and default groups go with their
// group. A second Remove does nothing.
func TestLIORemoveOrder(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	d, f := lioDouble()
	a := mutual(sample(t, "d1"))
	keep := sample(t, "d2")
	g.Expect(d.Ensure(ctx, a)).To(Succeed())
	g.Expect(d.Ensure(ctx, keep)).To(Succeed())
	g.Expect(f.Login(a.IQN, credentials(a))).To(Succeed())
	g.Expect(f.Login(keep.IQN, credentials(keep))).To(Succeed())

	f.ResetOps()
	g.Expect(d.Remove(ctx, a.IQN)).To(Succeed())
	tpg := "target/iscsi/" + a.IQN + "/tpgt_1"
	acl := tpg + "/acls/" + a.InitiatorIQN
	g.Expect(f.Ops()).To(Equal([]string{
		"write " + tpg + "/enable",
		"unlink " + acl + "/lun_1/ggnet",
		"rmdir " + acl + "/lun_1",
		"rmdir " + acl,
		"unlink " + tpg + "/lun/lun_1/ggnet",
		"rmdir " + tpg + "/lun/lun_1",
		"rmdir " + tpg + "/np/10.20.0.5:3260",
		"rmdir " + tpg,
		"rmdir target/iscsi/" + a.IQN,
		"rmdir target/core/fileio_0/" + backstoreName(a.IQN),
	}))
	g.Expect(f.Disruptions()).To(Equal([]string{"TPG " + a.IQN + "/tpgt_1 disabled: session of " + a.InitiatorIQN + " dropped"}))
	for _, grp := range f.Groups() {
		g.Expect(grp).NotTo(Or(ContainSubstring(a.IQN), ContainSubstring(backstoreName(a.IQN))))
	}
	f.ResetOps()
	g.Expect(d.Remove(ctx, a.IQN)).To(Succeed())
	g.Expect(f.Ops()).To(BeEmpty())

	// The other target and its PC are untouched; its portal is its own.
	g.Expect(f.LoggedIn(keep.IQN, keep.InitiatorIQN)).To(BeTrue())
	list, err := d.List(ctx, prefix)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(list).To(HaveLen(1))
	g.Expect(list[0].IQN).To(Equal(keep.IQN))
	g.Expect(d.Remove(ctx, keep.IQN)).To(Succeed())
	g.Expect(f.Groups()).To(Equal([]string{"target/core/fileio_0", "target/iscsi"}))
}

// TestLIOAdoptsForeignLinkNames: a LUN linked under another name (as
// targetcli names links) is adopted, not made again.
func TestLIOAdoptsForeignLinkNames(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	d, f := lioDouble()
	a := sample(t, "l1")
	g.Expect(d.Ensure(ctx, a)).To(Succeed())
	lun := doubleMount + "/target/iscsi/" + a.IQN + "/tpgt_1/acls/" + a.InitiatorIQN + "/lun_1"
	g.Expect(f.Remove(lun + "/ggnet")).To(Succeed())
	g.Expect(f.Symlink("../../../lun/lun_1", lun+"/1a2b3c4d5e")).To(Succeed())
	f.ResetOps()
	g.Expect(d.Ensure(ctx, a)).To(Succeed())
	g.Expect(f.Ops()).To(BeEmpty())
}

// TestLIOReplacesWhatDiffers: a target on another file, or a backstore of
// another file left behind, is made again; a LUN linked to another
// backstore is relinked.
func TestLIOReplacesWhatDiffers(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	d, f := lioDouble()
	a := sample(t, "p1")
	g.Expect(d.Ensure(ctx, a)).To(Succeed())
	b := a
	b.Path = sample(t, "p2").Path
	g.Expect(d.Ensure(ctx, b)).To(Succeed())
	list, _ := d.List(ctx, prefix)
	g.Expect(list).To(HaveLen(1))
	g.Expect(list[0].Path).To(Equal(b.Path))
	g.Expect(f.Tree()).To(HaveKeyWithValue("target/core/fileio_0/"+backstoreName(a.IQN)+"/udev_path", b.Path))

	// A backstore of another file with no target (a removal cut short).
	g.Expect(d.Remove(ctx, a.IQN)).To(Succeed())
	core, _ := d.paths(a)
	g.Expect(f.Mkdir(core)).To(Succeed())
	g.Expect(f.WriteFile(core+"/control", []byte("fd_dev_name="+b.Path+",fd_dev_size=67108864"))).To(Succeed())
	g.Expect(f.WriteFile(core+"/udev_path", []byte(b.Path))).To(Succeed())
	g.Expect(f.WriteFile(core+"/enable", []byte("1"))).To(Succeed())
	g.Expect(d.Ensure(ctx, a)).To(Succeed())
	g.Expect(f.Tree()).To(HaveKeyWithValue("target/core/fileio_0/"+backstoreName(a.IQN)+"/udev_path", a.Path))
	g.Expect(f.Login(a.IQN, credentials(a))).To(Succeed())
}

// TestLIOErrorsRedacted: a failing Ensure names the attribute, never the
// secret, whatever the kernel said.
func TestLIOErrorsRedacted(t *testing.T) {
	g := NewWithT(t)
	d, f := lioDouble()
	a := mutual(sample(t, "e1"))
	g.Expect(d.Ensure(context.Background(), a)).To(Succeed())
	a.CHAPPassword, a.TargetPassword = "NewInitiator1234", "NewTarget9876543"
	for _, attr := range []string{"password", "password_mutual"} {
		f.Hook(func(op, rel string) error {
			if op == "write" && strings.HasSuffix(rel, "/auth/"+attr) {
				return errors.New("refused " + a.CHAPPassword + " and " + a.TargetPassword)
			}
			return nil
		})
		err := d.Ensure(context.Background(), a)
		g.Expect(err).To(MatchError(ContainSubstring("auth/" + attr)))
		g.Expect(err.Error()).NotTo(ContainSubstring(a.CHAPPassword))
		g.Expect(err.Error()).NotTo(ContainSubstring(a.TargetPassword))
	}
	f.Hook(nil)
	g.Expect(d.Ensure(context.Background(), a)).To(Succeed())
}

func TestParseLIOInfo(t *testing.T) {
	g := NewWithT(t)
	g.Expect(parseLIOInfo("iqn.x:i", "No active iSCSI Session for Initiator Endpoint: iqn.x:i\n")).To(BeEmpty())
	g.Expect(parseLIOInfo("iqn.x:i", "")).To(BeEmpty())
	info := "InitiatorName: iqn.x:i\nInitiatorAlias: seat\nLIO Session ID: 7   ISID: 0x23 3d 00 00 00 00  TSIH: 7  SessionType: Normal\n" +
		"Session State: TARG_SESS_STATE_LOGGED_IN\n----------------------[iSCSI Connections]-------------------------\n" +
		"CID: 0  Connection State: TARG_CONN_STATE_LOGGED_IN\n   Address 10.0.0.9 TCP  StatSN: 0x00000002\n" +
		"CID: 1  Connection State: TARG_CONN_STATE_LOGGED_IN\n   Address 10.0.1.9 TCP  StatSN: 0x00000003\n"
	g.Expect(parseLIOInfo("iqn.x:i", info)).To(Equal([]Connection{
		{Initiator: "iqn.x:i", Session: "7", CID: "0", Address: "10.0.0.9"},
		{Initiator: "iqn.x:i", Session: "7", CID: "1", Address: "10.0.1.9"},
	}))
	g.Expect(parseLIOInfo("iqn.x:i", "InitiatorName: iqn.x:i\nsomething new\n")).To(Equal([]Connection{{Initiator: "iqn.x:i"}}),
		"an info the parser does not know still says someone is logged in")
}

// TestLIOSessions: the sessions of every target of the prefix, from their
// ACLs' info; a target nobody is logged in to is left out.
func TestLIOSessions(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	d, f := lioDouble()
	a, b := mutual(sample(t, "s1")), sample(t, "s2")
	b.InitiatorIQN = prefix + "initiator:cafe:seat-2"
	g.Expect(d.Ensure(ctx, a)).To(Succeed())
	g.Expect(d.Ensure(ctx, b)).To(Succeed())
	g.Expect(d.Sessions(ctx, prefix)).To(BeEmpty())
	g.Expect(f.Login(a.IQN, credentials(a))).To(Succeed())
	got, err := d.Sessions(ctx, prefix)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(got).To(Equal(map[string][]Connection{a.IQN: {{Initiator: a.InitiatorIQN, Address: "10.20.0.31", Session: "1", CID: "0"}}}))
	g.Expect(d.Sessions(ctx, "iqn.2000-01.other:")).To(BeEmpty())
}
