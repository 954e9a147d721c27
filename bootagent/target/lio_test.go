package target

import (
	"context"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	. "github.com/onsi/gomega"
)

// tree lists every file and link under root with its content or target.
func tree(t *testing.T, root string) map[string]string {
	out := map[string]string{}
	_ = filepath.Walk(root, func(p string, info os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		switch {
		case info.Mode()&os.ModeSymlink != 0:
			l, _ := os.Readlink(p)
			out[rel] = "-> " + l
		case info.Mode().IsRegular():
			b, _ := os.ReadFile(p)
			out[rel] = strings.TrimSpace(string(b))
		}
		return nil
	})
	return out
}

func TestLIO(t *testing.T) {
	g := NewWithT(t)
	root := t.TempDir()
	ctx := context.Background()
	d := &LIO{Root: root, Portal: "10.20.0.5:3260"}
	a := mutual(sample(t, "s1"))
	g.Expect(d.Ensure(ctx, a)).To(Succeed())
	g.Expect(d.Ensure(ctx, a)).To(Succeed(), "idempotent")

	bs := backstoreName(a.IQN)
	tpg := "target/iscsi/" + a.IQN + "/tpgt_1/"
	acl := tpg + "acls/" + a.InitiatorIQN + "/"
	got := tree(t, root)
	want := map[string]string{
		"target/core/fileio_0/" + bs + "/control":   "fd_dev_name=" + a.Path + ",fd_dev_size=67108864",
		"target/core/fileio_0/" + bs + "/udev_path": a.Path,
		"target/core/fileio_0/" + bs + "/enable":    "1",
		tpg + "lun/lun_1/ggnet":                     "-> ../../../../../core/fileio_0/" + bs,
		tpg + "attrib/authentication":               "1",
		tpg + "attrib/generate_node_acls":           "0",
		tpg + "attrib/demo_mode_write_protect":      "0",
		acl + "lun_1/ggnet":                         "-> ../../../lun/lun_1",
		acl + "auth/userid":                         a.CHAPUser,
		acl + "auth/password":                       a.CHAPPassword,
		acl + "auth/userid_mutual":                  a.TargetUser,
		acl + "auth/password_mutual":                a.TargetPassword,
		tpg + "enable":                              "1",
	}
	g.Expect(got).To(Equal(want))
	_, err := os.Stat(filepath.Join(root, tpg, "np", "10.20.0.5:3260"))
	g.Expect(err).NotTo(HaveOccurred(), "the portal")
	// The links resolve inside the tree.
	_, err = os.Stat(filepath.Join(root, tpg, "lun/lun_1/ggnet"))
	g.Expect(err).NotTo(HaveOccurred())
	_, err = os.Stat(filepath.Join(root, acl, "lun_1/ggnet"))
	g.Expect(err).NotTo(HaveOccurred())

	list, err := d.List(ctx, prefix)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(list).To(Equal([]Target{{IQN: a.IQN, LUN: 1, Path: a.Path, InitiatorIQN: a.InitiatorIQN, CHAPUser: a.CHAPUser, TargetUser: a.TargetUser}}))
	conns, err := d.Connections(ctx, a.IQN)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(conns).To(BeEmpty())
	g.Expect(os.WriteFile(filepath.Join(root, acl, "info"), []byte("InitiatorName: "+a.InitiatorIQN+"\n"), 0o600)).To(Succeed())
	conns, _ = d.Connections(ctx, a.IQN)
	g.Expect(conns).To(HaveLen(1))

	// Another initiator replaces the ACL.
	b := a
	b.InitiatorIQN = prefix + "initiator:cafe:seat-2"
	g.Expect(d.Ensure(ctx, b)).To(Succeed())
	list, _ = d.List(ctx, prefix)
	g.Expect(list[0].InitiatorIQN).To(Equal(b.InitiatorIQN))

	g.Expect(d.Remove(ctx, a.IQN)).To(Succeed())
	g.Expect(d.Remove(ctx, a.IQN)).To(Succeed())
	left := tree(t, root)
	keys := make([]string, 0, len(left))
	for k := range left {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	g.Expect(keys).To(BeEmpty(), "nothing of the target is left")
}

// mtimes lists every file's modification time under root.
func mtimes(root string) map[string]time.Time {
	out := map[string]time.Time{}
	_ = filepath.Walk(root, func(p string, info os.FileInfo, err error) error {
		if err == nil && info.Mode().IsRegular() {
			out[p] = info.ModTime()
		}
		return nil
	})
	return out
}

// TestLIOWritesOnlyWhatDiffers: a resync writes nothing (the kernel refuses
// enable on a live backstore or TPG), new secrets rewrite only themselves,
// and dropping mutual CHAP clears the target's credentials the kernel's way.
func TestLIOWritesOnlyWhatDiffers(t *testing.T) {
	g := NewWithT(t)
	root := t.TempDir()
	ctx := context.Background()
	d := &LIO{Root: root, Portal: "10.20.0.5:3260"}
	a := mutual(sample(t, "w1"))
	g.Expect(d.Ensure(ctx, a)).To(Succeed())
	old := time.Now().Add(-time.Hour).Truncate(time.Second)
	for p := range mtimes(root) {
		g.Expect(os.Chtimes(p, old, old)).To(Succeed())
	}
	unchanged := func() []string {
		var changed []string
		for p, m := range mtimes(root) {
			if !m.Equal(old) {
				rel, _ := filepath.Rel(root, p)
				changed = append(changed, rel)
			}
		}
		sort.Strings(changed)
		return changed
	}
	g.Expect(d.Ensure(ctx, a)).To(Succeed())
	g.Expect(unchanged()).To(BeEmpty(), "a resync writes nothing")

	acl := "target/iscsi/" + a.IQN + "/tpgt_1/acls/" + a.InitiatorIQN + "/auth/"
	b := a
	b.TargetPassword = "NewTarget9876543"
	g.Expect(d.Ensure(ctx, b)).To(Succeed())
	g.Expect(unchanged()).To(Equal([]string{acl + "password_mutual"}))
	g.Expect(tree(t, root)[acl+"password_mutual"]).To(Equal(b.TargetPassword))

	c := b
	c.TargetUser, c.TargetPassword = "", ""
	g.Expect(d.Ensure(ctx, c)).To(Succeed())
	got := tree(t, root)
	g.Expect(got[acl+"userid_mutual"]).To(Equal("NULL"))
	g.Expect(got[acl+"password_mutual"]).To(Equal("NULL"))
	g.Expect(got[acl+"password"]).To(Equal(a.CHAPPassword), "the initiator's secret stays")
	list, _ := d.List(ctx, prefix)
	g.Expect(list[0].TargetUser).To(BeEmpty())
	for p := range mtimes(root) {
		g.Expect(os.Chtimes(p, old, old)).To(Succeed())
	}
	g.Expect(d.Ensure(ctx, c)).To(Succeed())
	g.Expect(unchanged()).To(BeEmpty(), "cleared stays cleared without writes")
}

// TestLIOErrorsRedacted: a failing Ensure names the attribute, never the
// secret.
func TestLIOErrorsRedacted(t *testing.T) {
	g := NewWithT(t)
	root := t.TempDir()
	d := &LIO{Root: root, Portal: "10.20.0.5:3260"}
	a := mutual(sample(t, "e1"))
	g.Expect(d.Ensure(context.Background(), a)).To(Succeed())
	a.CHAPPassword, a.TargetPassword = "NewInitiator1234", "NewTarget9876543"
	auth := filepath.Join(root, "target/iscsi", a.IQN, "tpgt_1/acls", a.InitiatorIQN, "auth")
	for _, f := range []string{"password", "password_mutual"} {
		g.Expect(os.RemoveAll(filepath.Join(auth, f))).To(Succeed())
		g.Expect(os.MkdirAll(filepath.Join(auth, f), 0o755)).To(Succeed(), "a directory where the attribute goes: writing it fails")
		err := d.Ensure(context.Background(), a)
		g.Expect(err).To(MatchError(ContainSubstring("auth/" + f)))
		g.Expect(err.Error()).NotTo(ContainSubstring(a.CHAPPassword))
		g.Expect(err.Error()).NotTo(ContainSubstring(a.TargetPassword))
		g.Expect(os.RemoveAll(filepath.Join(auth, f))).To(Succeed())
	}
	g.Expect(d.Ensure(context.Background(), a)).To(Succeed())
}
