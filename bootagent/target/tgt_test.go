package target

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
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

// mutual gives t the target's own credentials.
func mutual(t Target) Target {
	t.TargetUser, t.TargetPassword = t.CHAPUser+"-target", "Tq7Lm2Zx9Wc4Rb8N"
	return t
}

// started starts a tgtd of the test's own and returns the driver on it.
func started(t *testing.T) (*WithT, *testtgt.TGTD, *TGT) {
	tgtd := testtgt.Start(t)
	return NewWithT(t), tgtd, &TGT{ControlPort: tgtd.ControlPort}
}

// login is what a libiscsi tool logs in with: the initiator's name and
// CHAP credentials and, for mutual CHAP, the target's it expects.
type login struct {
	initiator, user, password, targetUser, targetPassword string
}

func loginAs(t Target) login {
	return login{t.InitiatorIQN, t.CHAPUser, t.CHAPPassword, t.TargetUser, t.TargetPassword}
}

// iscsi runs a libiscsi tool against the target, from outside GGnet. The
// credentials go in the environment (libiscsi lib/init.c reads
// LIBISCSI_CHAP_USERNAME, _PASSWORD, _TARGET_USERNAME, _TARGET_PASSWORD),
// not in the URL: no command line carries a secret, the tests' own neither.
func iscsi(tool string, l login, portal, path string) (string, error) {
	cmd := exec.Command(tool, "-i", l.initiator, "iscsi://"+portal+"/"+path)
	cmd.Env = os.Environ()
	if l.user != "" { // no user: a login without CHAP
		cmd.Env = append(cmd.Env, "LIBISCSI_CHAP_USERNAME="+l.user, "LIBISCSI_CHAP_PASSWORD="+l.password)
	}
	if l.targetUser != "" {
		cmd.Env = append(cmd.Env, "LIBISCSI_CHAP_TARGET_USERNAME="+l.targetUser, "LIBISCSI_CHAP_TARGET_PASSWORD="+l.targetPassword)
	}
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func TestTGT(t *testing.T) {
	g, tgtd, d := started(t)
	ctx := context.Background()
	a := sample(t, "s1")
	g.Expect(d.Ensure(ctx, a)).To(Succeed())
	g.Expect(d.Ensure(ctx, a)).To(Succeed(), "idempotent")

	list, err := d.List(ctx, prefix)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(list).To(Equal([]Target{{IQN: a.IQN, LUN: 1, Path: a.Path, InitiatorIQN: a.InitiatorIQN, CHAPUser: a.CHAPUser}}))

	// Checked from outside with libiscsi's tools.
	out, err := iscsi("iscsi-ls", loginAs(a), tgtd.Portal, "")
	g.Expect(err).NotTo(HaveOccurred(), out)
	g.Expect(out).To(ContainSubstring("Target:" + a.IQN))
	out, err = iscsi("iscsi-readcapacity16", loginAs(a), tgtd.Portal, a.IQN+"/1")
	g.Expect(err).NotTo(HaveOccurred(), out)
	g.Expect(out).To(ContainSubstring("Total size:67108864"), "the LUN has the backing file's size")
	out, err = iscsi("iscsi-inq", loginAs(a), tgtd.Portal, a.IQN+"/1")
	g.Expect(err).NotTo(HaveOccurred(), out)

	wrong := loginAs(a)
	wrong.password = "WrongSecret1234"
	_, err = iscsi("iscsi-readcapacity16", wrong, tgtd.Portal, a.IQN+"/1")
	g.Expect(err).To(HaveOccurred(), "a wrong CHAP secret is refused")
	other := loginAs(a)
	other.initiator = prefix + "initiator:cafe:other"
	_, err = iscsi("iscsi-readcapacity16", other, tgtd.Portal, a.IQN+"/1")
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
	_, err = iscsi("iscsi-readcapacity16", loginAs(a), tgtd.Portal, a.IQN+"/1")
	g.Expect(err).To(HaveOccurred(), "the removed target is gone")

	// tgtd restarts empty; Ensure rebuilds.
	tgtd.Restart(t)
	list, _ = d.List(ctx, prefix)
	g.Expect(list).To(BeEmpty())
	g.Expect(d.Ensure(ctx, c)).To(Succeed())
	out, err = iscsi("iscsi-readcapacity16", loginAs(c), tgtd.Portal, c.IQN+"/1")
	g.Expect(err).NotTo(HaveOccurred(), out)
}

// TestTGTMutualCHAP: the target proves itself with its own secret, and only
// the right pair of secrets logs in.
func TestTGTMutualCHAP(t *testing.T) {
	g, tgtd, d := started(t)
	ctx := context.Background()
	a := mutual(sample(t, "m1"))
	g.Expect(d.Ensure(ctx, a)).To(Succeed())
	g.Expect(d.Ensure(ctx, a)).To(Succeed(), "idempotent")
	list, err := d.List(ctx, prefix)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(list).To(Equal([]Target{{IQN: a.IQN, LUN: 1, Path: a.Path, InitiatorIQN: a.InitiatorIQN,
		CHAPUser: a.CHAPUser, TargetUser: a.TargetUser}}))

	lun := a.IQN + "/1"
	out, err := iscsi("iscsi-inq", loginAs(a), tgtd.Portal, lun)
	g.Expect(err).NotTo(HaveOccurred(), "the right secrets both ways: "+out)
	out, err = iscsi("iscsi-readcapacity16", loginAs(a), tgtd.Portal, lun)
	g.Expect(err).NotTo(HaveOccurred(), out)
	g.Expect(out).To(ContainSubstring("Total size:67108864"))

	for name, l := range map[string]login{
		"a wrong initiator secret": {a.InitiatorIQN, a.CHAPUser, "WrongSecret1234", a.TargetUser, a.TargetPassword},
		// The initiator's own credentials are right: only the target's
		// answer can fail, so the target did authenticate itself.
		"a target that does not know the secret the initiator expects": {a.InitiatorIQN, a.CHAPUser, a.CHAPPassword, a.TargetUser, "OtherTarget12345"},
		"a target with another name than the initiator expects":        {a.InitiatorIQN, a.CHAPUser, a.CHAPPassword, "someone-else", a.TargetPassword},
	} {
		out, err := iscsi("iscsi-inq", l, tgtd.Portal, lun)
		g.Expect(err).To(HaveOccurred(), name+" is refused: "+out)
	}

	// New secrets (a Secret rotated) take effect without remaking the target.
	b := a
	b.TargetPassword = "NewTarget9876543"
	g.Expect(d.Ensure(ctx, b)).To(Succeed())
	_, err = iscsi("iscsi-inq", loginAs(a), tgtd.Portal, lun)
	g.Expect(err).To(HaveOccurred(), "the old target secret no longer answers")
	out, err = iscsi("iscsi-inq", loginAs(b), tgtd.Portal, lun)
	g.Expect(err).NotTo(HaveOccurred(), out)

	// Dropping mutual CHAP: TestTGTAccountsChangeInPlace.
	g.Expect(d.Remove(ctx, a.IQN)).To(Succeed())
	accounts, err := d.client().do(ctx, tgtRequest{mode: modeAccount, op: opShow})
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(accounts).To(BeEmpty(), "Remove deletes the target's accounts")
}

// TestTGTNoSecretOnCommandLines: while targets with CHAP are ensured, no
// process on the machine shows a secret in its command line: not tgtd, not a
// session in flight, not a helper run meanwhile (tgtadm would carry them as
// --password: shims on PATH catch any run), and none seen while Ensure runs.
func TestTGTNoSecretOnCommandLines(t *testing.T) {
	g := NewWithT(t)
	tgtd := testtgt.Start(t)
	ctx := context.Background()
	a := mutual(sample(t, "c1"))
	g.Expect((&TGT{ControlPort: tgtd.ControlPort}).Ensure(ctx, a)).To(Succeed())
	// A session in flight, too.
	perf := exec.Command("iscsi-perf", "-i", a.InitiatorIQN, "-t", "30", "iscsi://"+tgtd.Portal+"/"+a.IQN+"/1")
	perf.Env = append(os.Environ(), "LIBISCSI_CHAP_USERNAME="+a.CHAPUser, "LIBISCSI_CHAP_PASSWORD="+a.CHAPPassword,
		"LIBISCSI_CHAP_TARGET_USERNAME="+a.TargetUser, "LIBISCSI_CHAP_TARGET_PASSWORD="+a.TargetPassword)
	g.Expect(perf.Start()).To(Succeed())
	t.Cleanup(func() { _ = perf.Process.Kill(); _ = perf.Wait() })
	g.Eventually(func() ([]Connection, error) {
		return (&TGT{ControlPort: tgtd.ControlPort}).Connections(ctx, a.IQN)
	}, "10s").ShouldNot(BeEmpty())

	// Shims for the tools a driver could run record any call.
	shims := t.TempDir()
	calls := filepath.Join(shims, "calls")
	for _, tool := range []string{"tgtadm", "tgt-admin", "targetcli"} {
		g.Expect(os.WriteFile(filepath.Join(shims, tool), []byte("#!/bin/sh\necho \"$0 $*\" >> "+calls+"\nexit 1\n"), 0o755)).To(Succeed())
	}
	t.Setenv("PATH", shims+":"+os.Getenv("PATH"))

	scan := func() (seen int, tgtdSeen bool) {
		cmdlines, _ := filepath.Glob("/proc/[0-9]*/cmdline")
		for _, p := range cmdlines {
			b, err := os.ReadFile(p)
			if err != nil {
				continue // gone meanwhile
			}
			seen++
			s := string(b)
			g.Expect(s).NotTo(ContainSubstring(a.CHAPPassword), p)
			g.Expect(s).NotTo(ContainSubstring(a.TargetPassword), p)
			tgtdSeen = tgtdSeen || filepath.Base(filepath.Dir(p)) == strconv.Itoa(tgtd.Pid())
		}
		return seen, tgtdSeen
	}
	// Secrets applied again and again (each new driver, as after an agent
	// restart, re-makes the accounts) while the process table is read.
	done := make(chan struct{})
	go func() {
		defer close(done)
		for range 20 {
			if err := (&TGT{ControlPort: tgtd.ControlPort}).Ensure(ctx, a); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	for running := true; running; {
		select {
		case <-done:
			running = false
		default:
			scan()
		}
	}
	seen, tgtdSeen := scan()
	g.Expect(seen).To(BeNumerically(">", 3))
	g.Expect(tgtdSeen).To(BeTrue(), "tgtd's own command line was among those read")
	_, err := os.Stat(calls)
	g.Expect(os.IsNotExist(err)).To(BeTrue(), "no tool was run")
	out, err := iscsi("iscsi-inq", loginAs(a), tgtd.Portal, a.IQN+"/1")
	g.Expect(err).NotTo(HaveOccurred(), out)
}

// TestTGTAccountCollision: tgt keeps one account list per tgtd. A target
// whose CHAP user name is already bound to another target (as when the
// manager named sessions pc1 and pc1-target of one namespace cafe-pc1 and
// cafe-pc1-target) is refused, and the other target keeps both its accounts:
// it still refuses a login without CHAP, and its running session is not
// torn down by the resyncs that follow.
func TestTGTAccountCollision(t *testing.T) {
	tgtd := testtgt.Start(t)
	ctx := context.Background()
	d := &TGT{ControlPort: tgtd.ControlPort}
	a := mutual(sample(t, "pc1")) // users cafe-pc1, cafe-pc1-target
	g := NewWithT(t)
	g.Expect(d.Ensure(ctx, a)).To(Succeed())
	lun := a.IQN + "/1"

	// A disk in use: its session must survive everything below.
	perf := exec.Command("iscsi-perf", "-i", a.InitiatorIQN, "-t", "60", "iscsi://"+tgtd.Portal+"/"+lun)
	perf.Env = append(os.Environ(), "LIBISCSI_CHAP_USERNAME="+a.CHAPUser, "LIBISCSI_CHAP_PASSWORD="+a.CHAPPassword,
		"LIBISCSI_CHAP_TARGET_USERNAME="+a.TargetUser, "LIBISCSI_CHAP_TARGET_PASSWORD="+a.TargetPassword)
	g.Expect(perf.Start()).To(Succeed())
	t.Cleanup(func() { _ = perf.Process.Kill(); _ = perf.Wait() })
	var running []Connection
	g.Eventually(func() ([]Connection, error) {
		var err error
		running, err = d.Connections(ctx, a.IQN)
		return running, err
	}, "10s").Should(HaveLen(1))

	other := func(name, user, targetUser string) Target {
		b := sample(t, name)
		b.InitiatorIQN = prefix + "initiator:cafe:" + name
		b.CHAPUser, b.CHAPPassword = user, "Bq3Wv8Nk1Zr5Ty7P"
		b.TargetUser, b.TargetPassword = targetUser, "Dm6Hc2Jx4Lp9Fs3G"
		return b
	}
	for name, b := range map[string]Target{
		"its initiator's user is the first target's outgoing one": other("pc1-target", a.TargetUser, a.TargetUser+"-target"),
		"its initiator's user is the first target's initiator's":  other("pc1-b", a.CHAPUser, "cafe-pc1-b-target"),
		"its own user is the first target's initiator's":          other("pc1-c", "cafe-pc1-c", a.CHAPUser),
		"its own user is the first target's own":                  other("pc1-d", "cafe-pc1-d", a.TargetUser),
	} {
		t.Run(name, func(t *testing.T) {
			g := NewWithT(t)
			ensureErr := d.Ensure(ctx, b)
			list, err := d.List(ctx, prefix)
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(list).To(Equal([]Target{{IQN: a.IQN, LUN: 1, Path: a.Path, InitiatorIQN: a.InitiatorIQN,
				CHAPUser: a.CHAPUser, TargetUser: a.TargetUser}}), "the first target keeps its incoming and outgoing accounts; the second is not made")
			// The resync of both, as the storage loop runs it every few seconds.
			g.Expect(d.Ensure(ctx, a)).To(Succeed())
			g.Expect(d.Connections(ctx, a.IQN)).To(Equal(running), "the running session was not torn down")
			g.Expect(d.Ensure(ctx, b)).NotTo(Succeed())

			g.Expect(ensureErr).To(MatchError(And(ContainSubstring(b.IQN), ContainSubstring(a.IQN), ContainSubstring("already bound"))))
			for _, secret := range []string{a.CHAPPassword, a.TargetPassword, b.CHAPPassword, b.TargetPassword} {
				g.Expect(ensureErr.Error()).NotTo(ContainSubstring(secret), "no secret in the error")
			}
			g.Expect(d.Remove(ctx, b.IQN)).To(Succeed(), "b was never made")
			g.Expect(d.List(ctx, prefix)).To(Equal(list), "removing b leaves the first target's accounts")

			out, err := iscsi("iscsi-inq", login{initiator: a.InitiatorIQN}, tgtd.Portal, lun)
			g.Expect(err).To(HaveOccurred(), "a login without CHAP is refused: "+out)
			out, err = iscsi("iscsi-inq", loginAs(a), tgtd.Portal, lun)
			g.Expect(err).NotTo(HaveOccurred(), "the first target's own secrets, both ways: "+out)
			bAsA := loginAs(a)
			bAsA.password, bAsA.targetPassword = b.CHAPPassword, b.TargetPassword
			_, err = iscsi("iscsi-inq", bAsA, tgtd.Portal, lun)
			g.Expect(err).To(HaveOccurred(), "the second target's secrets do not open the first")
		})
	}
	g.Expect(perf.ProcessState).To(BeNil(), "the disk's user is still running")
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
        cafe-s1-target (outgoing)
    ACL information:
        iqn.2026-11.io.ggnet:initiator:cafe:seat-1
`
	list := parseShow(out)
	g.Expect(list).To(HaveLen(1))
	g.Expect(list[0].tid).To(Equal(3))
	g.Expect(list[0].luns).To(Equal(map[int]string{1: "/data/overlays/cafe/s1.raw"}))
	g.Expect(list[0].nexus).To(Equal([]Connection{{Initiator: "iqn.2026-11.io.ggnet:initiator:cafe:seat-1", Address: "10.20.0.31", Session: "7", CID: "0"}}))
	g.Expect(list[0].accounts).To(Equal([]string{"cafe-s1"}))
	g.Expect(list[0].outgoing).To(Equal("cafe-s1-target"))
	g.Expect(list[0].acls).To(Equal([]string{"iqn.2026-11.io.ggnet:initiator:cafe:seat-1"}))
}

// TestTGTSessions: one initiator logged in twice to a real tgtd (two
// libiscsi sessions, each with an ISID of its own, as a firmware's and then
// an OS's login) is two sessions with distinct ids; when one ends, the
// other stays.
func TestTGTSessions(t *testing.T) {
	g, tgtd, d := started(t)
	ctx := context.Background()
	a, b := sample(t, "s1"), sample(t, "s2")
	g.Expect(d.Ensure(ctx, a)).To(Succeed())
	g.Expect(d.Ensure(ctx, b)).To(Succeed())
	g.Expect(d.Sessions(ctx, prefix)).To(BeEmpty())

	perf := func() *exec.Cmd {
		cmd := exec.Command("iscsi-perf", "-i", a.InitiatorIQN, "-t", "60", "iscsi://"+tgtd.Portal+"/"+a.IQN+"/1")
		cmd.Env = append(os.Environ(), "LIBISCSI_CHAP_USERNAME="+a.CHAPUser, "LIBISCSI_CHAP_PASSWORD="+a.CHAPPassword)
		g.Expect(cmd.Start()).To(Succeed())
		t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
		return cmd
	}
	first := perf()
	g.Eventually(func() (map[string][]Connection, error) { return d.Sessions(ctx, prefix) }, "10s").Should(HaveKey(a.IQN))
	perf()
	g.Eventually(func() ([]Connection, error) {
		all, err := d.Sessions(ctx, prefix)
		return all[a.IQN], err
	}, "10s").Should(HaveLen(2))
	all, _ := d.Sessions(ctx, prefix)
	g.Expect(all).NotTo(HaveKey(b.IQN), "nobody is logged in to the other target")
	s := all[a.IQN]
	g.Expect(s[0].Session).NotTo(Equal(s[1].Session))
	for _, c := range s {
		g.Expect(c.Initiator).To(Equal(a.InitiatorIQN))
		g.Expect(c.Address).To(Equal("127.0.0.1"))
		g.Expect(c.Session).NotTo(BeEmpty())
	}
	g.Expect(d.Connections(ctx, a.IQN)).To(Equal(s), "as Connections shows them")

	_ = first.Process.Kill()
	_ = first.Wait()
	g.Eventually(func() ([]Connection, error) {
		all, err := d.Sessions(ctx, prefix)
		return all[a.IQN], err
	}, "10s").Should(HaveLen(1))
}

// BenchmarkTGTSessions: the login watcher's sample (one target show) on a
// real tgtd holding many targets, one initiator logged in to one of them.
// b.N samples; the number of targets is GGNET_BENCH_TARGETS (default 500).
func BenchmarkTGTSessions(b *testing.B) {
	n := 500
	if v, err := strconv.Atoi(os.Getenv("GGNET_BENCH_TARGETS")); err == nil && v > 0 {
		n = v
	}
	tgtd := testtgt.Start(b)
	ctx := context.Background()
	d := &TGT{ControlPort: tgtd.ControlPort}
	dir := b.TempDir()
	path := filepath.Join(dir, "disk.raw")
	if err := os.WriteFile(path, make([]byte, 1<<20), 0o644); err != nil {
		b.Fatal(err)
	}
	for i := range n {
		t := Target{IQN: prefix + "bench:s" + strconv.Itoa(i), LUN: 1, Path: path,
			InitiatorIQN: prefix + "initiator:bench:seat-" + strconv.Itoa(i), CHAPUser: "bench-s" + strconv.Itoa(i), CHAPPassword: "Xk2p9QvL0aB7cD4e"}
		if err := d.Ensure(ctx, t); err != nil {
			b.Fatal(err)
		}
	}
	b.ResetTimer()
	for range b.N {
		if _, err := d.Sessions(ctx, prefix); err != nil {
			b.Fatal(err)
		}
	}
}
