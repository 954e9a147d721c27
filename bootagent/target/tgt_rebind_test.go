package target

import (
	"context"
	"os"
	"os/exec"
	"strconv"
	"testing"

	. "github.com/onsi/gomega"
)

// TestTGTInitiatorChangeInPlace: Ensure with only another initiator name
// changes the target's ACL in place (the storage agent retires a prepared
// session so): the session logged in stays, a new login with the old name is
// refused, and binding the old name again lets it log in.
func TestTGTInitiatorChangeInPlace(t *testing.T) {
	g, tgtd, d := started(t)
	ctx := context.Background()
	a := mutual(sample(t, "r1"))
	g.Expect(d.Ensure(ctx, a)).To(Succeed())
	lun := a.IQN + "/1"
	running := loggedIn(t, d, tgtd.Portal, a)

	retired := a
	retired.InitiatorIQN = a.InitiatorIQN + ":retired"
	g.Expect(d.Ensure(ctx, retired)).To(Succeed())
	list, err := d.List(ctx, prefix)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(list).To(ConsistOf(HaveField("InitiatorIQN", retired.InitiatorIQN)))
	g.Expect(d.Connections(ctx, a.IQN)).To(Equal(running), "the session logged in stays")
	out, err := iscsi("iscsi-inq", loginAs(a), tgtd.Portal, lun)
	g.Expect(err).To(HaveOccurred(), "a new login with the old initiator name is refused: "+out)
	g.Expect(d.Ensure(ctx, retired)).To(Succeed(), "idempotent")

	g.Expect(d.Ensure(ctx, a)).To(Succeed())
	g.Expect(d.Connections(ctx, a.IQN)).To(Equal(running), "the session logged in stays")
	out, err = iscsi("iscsi-inq", loginAs(a), tgtd.Portal, lun)
	g.Expect(err).NotTo(HaveOccurred(), "the initiator bound again logs in: "+out)
}

// loggedIn keeps a libiscsi initiator logged in to a's target with a's
// credentials (iscsi-perf, reading) until the test ends, and returns its
// connection once tgtd lists it.
func loggedIn(t *testing.T, d *TGT, portal string, a Target) []Connection {
	g := NewWithT(t)
	perf := exec.Command("iscsi-perf", "-i", a.InitiatorIQN, "-t", "60", "iscsi://"+portal+"/"+a.IQN+"/1")
	perf.Env = append(os.Environ(), "LIBISCSI_CHAP_USERNAME="+a.CHAPUser, "LIBISCSI_CHAP_PASSWORD="+a.CHAPPassword)
	if a.TargetUser != "" {
		perf.Env = append(perf.Env, "LIBISCSI_CHAP_TARGET_USERNAME="+a.TargetUser, "LIBISCSI_CHAP_TARGET_PASSWORD="+a.TargetPassword)
	}
	g.Expect(perf.Start()).To(Succeed())
	t.Cleanup(func() { _ = perf.Process.Kill(); _ = perf.Wait() })
	var running []Connection
	g.Eventually(func() ([]Connection, error) {
		var err error
		running, err = d.Connections(context.Background(), a.IQN)
		return running, err
	}, "10s").Should(HaveLen(1))
	return running
}

// TestTGTAccountsChangeInPlace: when the target's accounts differ from what
// Ensure wants (one deleted or added by hand with tgtadm, mutual CHAP
// dropped), Ensure changes them in place: the PC logged in keeps its
// connection and the target keeps its tid, where it was deleted and made
// again before (which cut the PC off).
func TestTGTAccountsChangeInPlace(t *testing.T) {
	g, tgtd, d := started(t)
	ctx := context.Background()
	a := mutual(sample(t, "a1"))
	g.Expect(d.Ensure(ctx, a)).To(Succeed())
	lun := a.IQN + "/1"
	tid := func() int {
		all, err := d.show(ctx)
		g.Expect(err).NotTo(HaveOccurred())
		g.Expect(all).To(HaveLen(1))
		return all[0].tid
	}
	first := tid()
	running := loggedIn(t, d, tgtd.Portal, a)
	accounts := func() string {
		out, err := d.client().do(ctx, tgtRequest{mode: modeAccount, op: opShow})
		g.Expect(err).NotTo(HaveOccurred())
		return out
	}
	tgtadm := func(args ...string) {
		out, err := exec.Command("tgtadm", append([]string{"-C", strconv.Itoa(tgtd.ControlPort), "--lld", "iscsi", "--mode", "account"}, args...)...).CombinedOutput()
		g.Expect(err).NotTo(HaveOccurred(), string(out))
	}

	// The target's outgoing account deleted by hand.
	tgtadm("--op", "delete", "--user", a.TargetUser)
	g.Expect(d.Ensure(ctx, a)).To(Succeed())
	g.Expect(d.Connections(ctx, a.IQN)).To(Equal(running), "the session logged in stays")
	g.Expect(tid()).To(Equal(first), "the same target, not one made again")
	out, err := iscsi("iscsi-inq", loginAs(a), tgtd.Portal, lun)
	g.Expect(err).NotTo(HaveOccurred(), "the target proves itself again: "+out)

	// Another account bound to the target by hand.
	tgtadm("--op", "new", "--user", "intruder", "--password", "Intruder12345678")
	tgtadm("--op", "bind", "--tid", strconv.Itoa(first), "--user", "intruder")
	out, err = iscsi("iscsi-inq", login{a.InitiatorIQN, "intruder", "Intruder12345678", "", ""}, tgtd.Portal, lun)
	g.Expect(err).NotTo(HaveOccurred(), "the check below can fail: the account bound by hand lets its user in: "+out)
	g.Expect(d.Ensure(ctx, a)).To(Succeed())
	out, err = iscsi("iscsi-inq", login{a.InitiatorIQN, "intruder", "Intruder12345678", "", ""}, tgtd.Portal, lun)
	g.Expect(err).To(HaveOccurred(), "the account bound by hand is taken away: "+out)
	g.Expect(accounts()).NotTo(ContainSubstring("intruder"), "and deleted: no other target has it")
	g.Expect(d.Connections(ctx, a.IQN)).To(Equal(running), "the session logged in stays")
	g.Expect(tid()).To(Equal(first))

	// The session's account bound by hand above another one: tgt keeps
	// incoming accounts in slots, and one emptied below the last makes
	// tgtd's show crash; Ensure takes them off from the last slot down.
	tgtadm("--op", "delete", "--user", a.CHAPUser)
	tgtadm("--op", "new", "--user", "other", "--password", "Other12345678901")
	tgtadm("--op", "bind", "--tid", strconv.Itoa(first), "--user", "other")
	tgtadm("--op", "new", "--user", a.CHAPUser, "--password", a.CHAPPassword)
	tgtadm("--op", "bind", "--tid", strconv.Itoa(first), "--user", a.CHAPUser)
	shows := 0
	d.dropped = func() {
		// The login watcher and the collector show without Ensure's lock.
		_, err := d.show(ctx)
		g.Expect(err).NotTo(HaveOccurred(), "tgtd answers a show while the accounts are taken off (it crashes on an empty slot below the last)")
		shows++
	}
	g.Expect(d.Ensure(ctx, a)).To(Succeed())
	d.dropped = nil
	g.Expect(shows).To(Equal(3), "other, the session's and the target's account")
	g.Expect(tid()).To(Equal(first), "tgtd answers its show: it did not crash")
	g.Expect(accounts()).NotTo(ContainSubstring("other"))
	g.Expect(d.Connections(ctx, a.IQN)).To(Equal(running), "the session logged in stays")
	out, err = iscsi("iscsi-inq", loginAs(a), tgtd.Portal, lun)
	g.Expect(err).NotTo(HaveOccurred(), "the session's account is where logins look: "+out)

	// An address bound by hand (ALL lets any initiator name in).
	out, err = iscsi("iscsi-inq", login{"iqn.2026-11.example:laptop", a.CHAPUser, a.CHAPPassword, a.TargetUser, a.TargetPassword}, tgtd.Portal, lun)
	g.Expect(err).To(HaveOccurred(), "another initiator name is refused: "+out)
	target := func(args ...string) {
		out, err := exec.Command("tgtadm", append([]string{"-C", strconv.Itoa(tgtd.ControlPort), "--lld", "iscsi", "--mode", "target", "--tid", strconv.Itoa(first)}, args...)...).CombinedOutput()
		g.Expect(err).NotTo(HaveOccurred(), string(out))
	}
	target("--op", "bind", "--initiator-address", "ALL")
	out, err = iscsi("iscsi-inq", login{"iqn.2026-11.example:laptop", a.CHAPUser, a.CHAPPassword, a.TargetUser, a.TargetPassword}, tgtd.Portal, lun)
	g.Expect(err).NotTo(HaveOccurred(), "the check below can fail: ALL lets another initiator name in: "+out)
	g.Expect(d.Ensure(ctx, a)).To(Succeed())
	out, err = iscsi("iscsi-inq", login{"iqn.2026-11.example:laptop", a.CHAPUser, a.CHAPPassword, a.TargetUser, a.TargetPassword}, tgtd.Portal, lun)
	g.Expect(err).To(HaveOccurred(), "the address bound by hand is unbound: "+out)
	g.Expect(d.Connections(ctx, a.IQN)).To(Equal(running), "the session logged in stays")

	// Mutual CHAP dropped: the target's account goes, in place.
	c := a
	c.TargetUser, c.TargetPassword = "", ""
	g.Expect(d.Ensure(ctx, c)).To(Succeed())
	g.Expect(d.Connections(ctx, a.IQN)).To(Equal(running), "the session logged in stays")
	g.Expect(tid()).To(Equal(first))
	g.Expect(accounts()).NotTo(ContainSubstring(a.TargetUser), "the target's account is deleted")
	_, err = iscsi("iscsi-inq", loginAs(a), tgtd.Portal, lun)
	g.Expect(err).To(HaveOccurred(), "an initiator asking the target to prove itself is refused when it cannot")
	out, err = iscsi("iscsi-inq", loginAs(c), tgtd.Portal, lun)
	g.Expect(err).NotTo(HaveOccurred(), out)
}

// TestTGTNoLoginWithoutCHAP: while Ensure makes or remakes a target's
// accounts, no login without CHAP gets in: tgtd asks for CHAP only while an
// incoming account is bound to the target, which the test shows first so
// that it can fail. Ensure binds the initiator's name only after the
// accounts when it makes a target, and unbinds it while it remakes them.
func TestTGTNoLoginWithoutCHAP(t *testing.T) {
	g, tgtd, d := started(t)
	ctx := context.Background()
	a := sample(t, "n1")
	lun := a.IQN + "/1"
	noCHAP := login{initiator: a.InitiatorIQN}
	var tried []string
	d.unprotected = func() {
		out, err := iscsi("iscsi-inq", noCHAP, tgtd.Portal, lun)
		g.Expect(err).To(HaveOccurred(), "a login without CHAP while the accounts are made: "+out)
		tried = append(tried, out)
	}
	g.Expect(d.Ensure(ctx, a)).To(Succeed(), "made")
	g.Expect(tried).To(HaveLen(1))

	d.unprotected = nil
	out, err := iscsi("iscsi-inq", noCHAP, tgtd.Portal, lun)
	g.Expect(err).To(HaveOccurred(), "CHAP is asked for: "+out)
	g.Expect(d.deleteAccount(ctx, a.CHAPUser)).To(Succeed())
	out, err = iscsi("iscsi-inq", noCHAP, tgtd.Portal, lun)
	g.Expect(err).NotTo(HaveOccurred(), "tgtd lets the initiator in without CHAP once no account is bound: "+out)

	// An address bound by hand too (ALL): while the accounts are remade it
	// would let any initiator name in without CHAP.
	all, err := d.show(ctx)
	g.Expect(err).NotTo(HaveOccurred())
	bound, err := exec.Command("tgtadm", "-C", strconv.Itoa(tgtd.ControlPort), "--lld", "iscsi", "--mode", "target", "--op", "bind",
		"--tid", strconv.Itoa(all[0].tid), "--initiator-address", "ALL").CombinedOutput()
	g.Expect(err).NotTo(HaveOccurred(), string(bound))
	d.unprotected = func() {
		for _, l := range []login{noCHAP, {initiator: "iqn.2026-11.example:laptop"}} {
			out, err := iscsi("iscsi-inq", l, tgtd.Portal, lun)
			g.Expect(err).To(HaveOccurred(), "a login without CHAP while the accounts are remade: "+out)
		}
		tried = append(tried, "")
	}
	g.Expect(d.Ensure(ctx, a)).To(Succeed(), "the deleted account made again")
	b := a
	b.CHAPPassword = "Rotated987654321"
	g.Expect(d.Ensure(ctx, b)).To(Succeed(), "a new secret")
	g.Expect(tried).To(HaveLen(3))
	d.unprotected = nil
	out, err = iscsi("iscsi-inq", noCHAP, tgtd.Portal, lun)
	g.Expect(err).To(HaveOccurred(), out)
	out, err = iscsi("iscsi-inq", loginAs(b), tgtd.Portal, lun)
	g.Expect(err).NotTo(HaveOccurred(), out)
}
