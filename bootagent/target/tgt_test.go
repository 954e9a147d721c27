package target

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	. "github.com/onsi/gomega"

	"github.com/ggnet/ggnet/internal/testtgt"
)

const prefix = "iqn.2026-11.io.ggnet:"

func sample(t *testing.T, name string) Target {
	path := filepath.Join(t.TempDir(), name+".raw")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(64 << 20); err != nil {
		t.Fatal(err)
	}
	f.Close()
	return Target{IQN: prefix + "cafe:" + name, LUN: 1, Path: path, InitiatorIQN: prefix + "initiator:cafe:seat-1",
		CHAPUser: "cafe-" + name, CHAPPassword: "Xk2p9QvL0aB7cD4e"}
}

// iscsi runs a libiscsi tool against the target, from outside GGnet.
func iscsi(tool, initiator, user, password, portal, path string) (string, error) {
	url := fmt.Sprintf("iscsi://%s%%%s@%s/%s", user, password, portal, path)
	out, err := exec.Command(tool, "-i", initiator, url).CombinedOutput()
	return string(out), err
}

func TestTGT(t *testing.T) {
	g := NewWithT(t)
	tgtd := testtgt.Start(t)
	ctx := context.Background()
	d := &TGT{ControlPort: tgtd.ControlPort}
	a := sample(t, "s1")
	g.Expect(d.Ensure(ctx, a)).To(Succeed())
	g.Expect(d.Ensure(ctx, a)).To(Succeed(), "idempotent")

	list, err := d.List(ctx, prefix)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(list).To(Equal([]Target{{IQN: a.IQN, LUN: 1, Path: a.Path, InitiatorIQN: a.InitiatorIQN, CHAPUser: a.CHAPUser}}))

	// Checked from outside with libiscsi's tools.
	out, err := iscsi("iscsi-ls", a.InitiatorIQN, a.CHAPUser, a.CHAPPassword, tgtd.Portal, "")
	g.Expect(err).NotTo(HaveOccurred(), out)
	g.Expect(out).To(ContainSubstring("Target:" + a.IQN))
	out, err = iscsi("iscsi-readcapacity16", a.InitiatorIQN, a.CHAPUser, a.CHAPPassword, tgtd.Portal, a.IQN+"/1")
	g.Expect(err).NotTo(HaveOccurred(), out)
	g.Expect(out).To(ContainSubstring("Total size:67108864"), "the LUN has the backing file's size")
	out, err = iscsi("iscsi-inq", a.InitiatorIQN, a.CHAPUser, a.CHAPPassword, tgtd.Portal, a.IQN+"/1")
	g.Expect(err).NotTo(HaveOccurred(), out)

	_, err = iscsi("iscsi-readcapacity16", a.InitiatorIQN, a.CHAPUser, "WrongSecret1234", tgtd.Portal, a.IQN+"/1")
	g.Expect(err).To(HaveOccurred(), "a wrong CHAP secret is refused")
	_, err = iscsi("iscsi-readcapacity16", prefix+"initiator:cafe:other", a.CHAPUser, a.CHAPPassword, tgtd.Portal, a.IQN+"/1")
	g.Expect(err).To(HaveOccurred(), "a wrong initiator IQN is refused")

	// A changed backing file makes the target again.
	b := a
	b.Path = sample(t, "s1b").Path
	g.Expect(d.Ensure(ctx, b)).To(Succeed())
	list, _ = d.List(ctx, prefix)
	g.Expect(list).To(HaveLen(1))
	g.Expect(list[0].Path).To(Equal(b.Path))

	// A second target gets its own tid and account.
	c := sample(t, "s2")
	g.Expect(d.Ensure(ctx, c)).To(Succeed())
	list, _ = d.List(ctx, prefix)
	g.Expect(list).To(HaveLen(2))

	g.Expect(d.Remove(ctx, a.IQN)).To(Succeed())
	g.Expect(d.Remove(ctx, a.IQN)).To(Succeed(), "removing twice is fine")
	list, _ = d.List(ctx, prefix)
	g.Expect(list).To(HaveLen(1))
	g.Expect(list[0].IQN).To(Equal(c.IQN))
	_, err = iscsi("iscsi-readcapacity16", a.InitiatorIQN, a.CHAPUser, a.CHAPPassword, tgtd.Portal, a.IQN+"/1")
	g.Expect(err).To(HaveOccurred(), "the removed target is gone")

	// tgtd restarts empty; Ensure rebuilds.
	tgtd.Restart(t)
	list, _ = d.List(ctx, prefix)
	g.Expect(list).To(BeEmpty())
	g.Expect(d.Ensure(ctx, c)).To(Succeed())
	out, err = iscsi("iscsi-readcapacity16", c.InitiatorIQN, c.CHAPUser, c.CHAPPassword, tgtd.Portal, c.IQN+"/1")
	g.Expect(err).NotTo(HaveOccurred(), out)
}

func TestValidate(t *testing.T) {
	g := NewWithT(t)
	good := Target{IQN: prefix + "a", LUN: 1, Path: "/x", InitiatorIQN: prefix + "b", CHAPUser: "u", CHAPPassword: "0123456789ab"}
	g.Expect(good.Validate()).To(Succeed())
	for name, tc := range map[string]struct {
		f    func(*Target)
		says string
	}{
		"short secret":   {func(t *Target) { t.CHAPPassword = "short" }, "12 to 16 characters"},
		"long secret":    {func(t *Target) { t.CHAPPassword = "0123456789abcdefg" }, "12 to 16 characters"},
		"LUN 0":          {func(t *Target) { t.LUN = 0 }, "LUN 0 is the controller"},
		"LUN 256":        {func(t *Target) { t.LUN = 256 }, "want 1 to 255"},
		"space":          {func(t *Target) { t.Path = "/a b" }, "spaces, quotes or separators"},
		"not iqn":        {func(t *Target) { t.IQN = "eui.1" }, "want iqn. names"},
		"initiator eui":  {func(t *Target) { t.InitiatorIQN = "eui.1" }, "want iqn. names"},
		"comma":          {func(t *Target) { t.CHAPUser = "a,b" }, "spaces, quotes or separators"},
		"empty password": {func(t *Target) { t.CHAPPassword = "" }, "empty field"},
	} {
		x := good
		tc.f(&x)
		g.Expect(x.Validate()).To(MatchError(ContainSubstring(tc.says)), name)
	}
}

func TestParseShowConnections(t *testing.T) {
	g := NewWithT(t)
	out := `Target 3: iqn.2026-11.io.ggnet:cafe:s1
    System information:
        Driver: iscsi
        State: ready
    I_T nexus information:
        I_T nexus: 7
            Initiator: iqn.2026-11.io.ggnet:initiator:cafe:seat-1 alias: seat-1
            Connection: 0
                IP Address: 10.20.0.31
    LUN information:
        LUN: 0
            Type: controller
            Backing store path: None
        LUN: 1
            Type: disk
            Backing store path: /data/overlays/cafe/s1.raw
    Account information:
        cafe-s1
    ACL information:
        iqn.2026-11.io.ggnet:initiator:cafe:seat-1
`
	list := parseShow(out)
	g.Expect(list).To(HaveLen(1))
	g.Expect(list[0].tid).To(Equal(3))
	g.Expect(list[0].luns).To(Equal(map[int]string{1: "/data/overlays/cafe/s1.raw"}))
	g.Expect(list[0].nexus).To(Equal([]Connection{{Initiator: "iqn.2026-11.io.ggnet:initiator:cafe:seat-1", Address: "10.20.0.31", Session: "7", CID: "0"}}))
	g.Expect(list[0].accounts).To(Equal([]string{"cafe-s1"}))
	g.Expect(list[0].acls).To(Equal([]string{"iqn.2026-11.io.ggnet:initiator:cafe:seat-1"}))
}
