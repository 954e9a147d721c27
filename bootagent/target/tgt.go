package target

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
)

// TGT drives tgtd over its management socket (see tgtmgmt.go): no tgtadm
// process, so no command line ever carries a CHAP secret. tgtd keeps its
// targets in memory only: after tgtd restarts the list is empty and the
// storage loop rebuilds every target from the desired state.
type TGT struct {
	// ControlPort selects tgtd's management socket (tgtd -C), so that
	// several tgtd can run on one machine (tests).
	ControlPort int
	// Socket is the socket path before ".<ControlPort>" (default
	// $TGT_IPC_SOCKET, else /var/run/tgtd/socket, as tgtadm).
	Socket string

	mu sync.Mutex
	// applied remembers the CHAP secrets set on each target's accounts:
	// tgtd cannot show them, and re-making the accounts at every resync
	// would refuse logins that land in between.
	applied map[string]secrets
	// unprotected, when set (tests), runs where Ensure's accounts are
	// weakest: the initiator's account deleted, not yet made again.
	unprotected func()
	// dropped, when set (tests), runs after each account dropAccounts took
	// off a target, where another goroutine's show may come.
	dropped func()
}

// secrets are a target's CHAP secrets as last set.
type secrets struct{ in, out string }

func (d *TGT) client() tgtClient { return newTGTClient(d.Socket, d.ControlPort) }

// tgtTarget is a target as tgtd shows it.
type tgtTarget struct {
	tid      int
	iqn      string
	luns     map[int]string
	accounts []string
	// outgoing is the account the target proves itself with (mutual CHAP).
	outgoing string
	acls     []string
	nexus    []Connection
}

// parseShow reads the answer to a target show (tgtadm --mode target --op
// show prints it as is; tgt usr/target.c tgt_target_show_all).
func parseShow(out string) []tgtTarget {
	var (
		list    []tgtTarget
		cur     *tgtTarget
		section string
		lun     = -1
		conn    *Connection
	)
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		line := sc.Text()
		trim := strings.TrimSpace(line)
		switch {
		case strings.HasPrefix(line, "Target "):
			rest := strings.TrimPrefix(line, "Target ")
			num, iqn, _ := strings.Cut(rest, ": ")
			tid, _ := strconv.Atoi(num)
			list = append(list, tgtTarget{tid: tid, iqn: strings.TrimSpace(iqn), luns: map[int]string{}})
			cur, section, lun, conn = &list[len(list)-1], "", -1, nil
		case cur == nil:
		case strings.HasSuffix(trim, "information:") && strings.HasPrefix(line, "    ") && !strings.HasPrefix(line, "     "):
			section = trim
		case section == "LUN information:" && strings.HasPrefix(trim, "LUN: "):
			lun, _ = strconv.Atoi(strings.TrimPrefix(trim, "LUN: "))
		case section == "LUN information:" && strings.HasPrefix(trim, "Backing store path: ") && lun > 0:
			cur.luns[lun] = strings.TrimPrefix(trim, "Backing store path: ")
		case section == "Account information:" && strings.HasSuffix(trim, " (outgoing)"):
			cur.outgoing = strings.TrimSuffix(trim, " (outgoing)")
		case section == "Account information:" && trim != "":
			cur.accounts = append(cur.accounts, strings.Fields(trim)[0])
		case section == "ACL information:" && trim != "":
			cur.acls = append(cur.acls, trim)
		case section == "I_T nexus information:" && strings.HasPrefix(trim, "I_T nexus: "):
			cur.nexus = append(cur.nexus, Connection{Session: strings.TrimPrefix(trim, "I_T nexus: ")})
			conn = &cur.nexus[len(cur.nexus)-1]
		case section == "I_T nexus information:" && conn != nil && strings.HasPrefix(trim, "Initiator: "):
			conn.Initiator = strings.Fields(strings.TrimPrefix(trim, "Initiator: "))[0]
		case section == "I_T nexus information:" && conn != nil && strings.HasPrefix(trim, "Connection: "):
			conn.CID = strings.TrimPrefix(trim, "Connection: ")
		case section == "I_T nexus information:" && conn != nil && strings.HasPrefix(trim, "IP Address: "):
			conn.Address = strings.TrimPrefix(trim, "IP Address: ")
		}
	}
	return list
}

func (d *TGT) show(ctx context.Context) ([]tgtTarget, error) {
	out, err := d.client().do(ctx, tgtRequest{mode: modeTarget, op: opShow})
	if err != nil {
		return nil, err
	}
	return parseShow(out), nil
}

// Ensure implements Driver. tgtd has no transactions: Ensure makes each
// missing part. Another initiator name or other accounts (users, secrets)
// are changed in place, so that a PC logged in keeps its connection, and
// never leave the target open to a login without CHAP; only another file
// deletes the target and makes it again. tgt keeps one list of accounts per
// tgtd: when a user name t needs is bound to another target, Ensure fails
// and changes nothing, so that it never takes another target's account
// (which would leave that target without CHAP). Its errors never carry a
// secret.
func (d *TGT) Ensure(ctx context.Context, t Target) error {
	if err := t.Validate(); err != nil {
		return err
	}
	return redact(d.ensure(ctx, t), t)
}

func (d *TGT) ensure(ctx context.Context, t Target) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	all, err := d.show(ctx)
	if err != nil {
		return err
	}
	if err := accountsFree(all, t); err != nil {
		return err
	}
	var cur *tgtTarget
	maxTid := 0
	for i := range all {
		maxTid = max(maxTid, all[i].tid)
		if all[i].iqn == t.IQN {
			cur = &all[i]
		}
	}
	if cur != nil {
		if cur.luns[t.LUN] == t.Path && len(cur.luns) == 1 {
			// The same disk: whatever else differs is changed in place, so
			// that whoever is logged in stays (tgtd checks the ACL and the
			// accounts at login only). Only another disk remakes the target.
			if equal(cur.accounts, t.CHAPUser) && cur.outgoing == t.TargetUser &&
				d.applied[t.IQN] == (secrets{t.CHAPPassword, t.TargetPassword}) {
				if equal(cur.acls, t.InitiatorIQN) {
					return nil
				}
				// Only the initiator differs. The storage agent retires a
				// prepared session this way: the target refuses new logins
				// while it looks for one, and gets its initiator back if it
				// finds one.
				return d.rebind(ctx, cur, t.InitiatorIQN)
			}
			// Not set by this process (a restart), new secrets, or accounts
			// changed under it (by hand, with tgtadm). tgtd asks for CHAP
			// only while an incoming account is bound to the target (tgt
			// usr/iscsi/iscsid.c, account_available): while the accounts
			// are remade the target has no ACL, which lets nobody log in
			// (usr/iscsi/target.c, ip_acl and iqn_acl), and it gets its
			// initiator back once they are.
			if err := d.unbindACLs(ctx, cur); err != nil {
				return err
			}
			if err := d.dropAccounts(ctx, cur, all, t); err != nil {
				return err
			}
			if err := d.accounts(ctx, t, cur.tid); err != nil {
				return err
			}
			_, err := d.client().do(ctx, tgtRequest{mode: modeTarget, op: opBind, tid: cur.tid,
				params: []tgtParam{{name: "initiator-name", value: t.InitiatorIQN}}})
			return err
		}
		if err := d.removeLocked(ctx, cur, all); err != nil {
			return err
		}
	}
	tid := maxTid + 1
	c := d.client()
	undo := func() {
		_, _ = c.do(ctx, tgtRequest{mode: modeTarget, op: opDelete, tid: tid, force: true})
	}
	for _, s := range []tgtRequest{
		{mode: modeTarget, op: opNew, tid: tid, params: []tgtParam{{name: "targetname", value: t.IQN}}},
		{mode: modeDevice, op: opNew, tid: tid, lun: uint64(t.LUN), params: []tgtParam{{name: "path", value: t.Path}}},
	} {
		if _, err := c.do(ctx, s); err != nil {
			undo()
			return err
		}
	}
	// The accounts before the ACL: until the ACL names the initiator
	// nobody can log in, and from then on CHAP is asked for.
	if err := d.accounts(ctx, t, tid); err != nil {
		undo()
		return err
	}
	if _, err := c.do(ctx, tgtRequest{mode: modeTarget, op: opBind, tid: tid,
		params: []tgtParam{{name: "initiator-name", value: t.InitiatorIQN}}}); err != nil {
		undo()
		return err
	}
	return nil
}

// rebind binds initiator to the target and then unbinds every other ACL
// entry (initiator name or address), without touching its sessions.
func (d *TGT) rebind(ctx context.Context, cur *tgtTarget, initiator string) error {
	c := d.client()
	if !slices.Contains(cur.acls, initiator) {
		if _, err := c.do(ctx, tgtRequest{mode: modeTarget, op: opBind, tid: cur.tid,
			params: []tgtParam{{name: "initiator-name", value: initiator}}}); err != nil {
			return err
		}
	}
	for _, a := range cur.acls {
		if a == initiator {
			continue
		}
		if err := d.unbindACL(ctx, cur.tid, a); err != nil {
			return err
		}
	}
	return nil
}

// accountsFree fails when a CHAP user name t needs (incoming or outgoing) is
// bound to a target other than t.IQN, naming both targets. Only user names
// and IQNs are in the error, never a secret.
func accountsFree(all []tgtTarget, t Target) error {
	users := []string{t.CHAPUser}
	if t.TargetUser != "" {
		users = append(users, t.TargetUser)
	}
	for _, u := range users {
		if other := boundElsewhere(all, t.IQN, u); other != "" {
			return fmt.Errorf("target %s: CHAP user %s is already bound to target %s: "+
				"refusing to take it (tgt's accounts are one list per tgtd); both targets are left as they are",
				t.IQN, u, other)
		}
	}
	return nil
}

// accounts (re)makes the target's CHAP accounts and binds them: the
// initiator's (incoming) and, for mutual CHAP, the target's own (outgoing).
// tgt's accounts are global and their secrets cannot be read back. The
// caller checked with accountsFree that no other target has them: deleting
// an account unbinds it from every target.
func (d *TGT) accounts(ctx context.Context, t Target, tid int) error {
	c := d.client()
	type account struct {
		user, password string
		outgoing       bool
	}
	list := []account{{t.CHAPUser, t.CHAPPassword, false}}
	if t.TargetUser != "" {
		list = append(list, account{t.TargetUser, t.TargetPassword, true})
	}
	for _, a := range list {
		// Deleting an account also unbinds it from every target.
		if err := d.deleteAccount(ctx, a.user); err != nil {
			return err
		}
		if d.unprotected != nil && !a.outgoing {
			d.unprotected()
		}
		if _, err := c.do(ctx, tgtRequest{mode: modeAccount, op: opNew, params: []tgtParam{
			{name: "user", value: a.user}, {name: "password", value: a.password, secret: true}}}); err != nil {
			return err
		}
		if _, err := c.do(ctx, tgtRequest{mode: modeAccount, op: opBind, tid: tid, outgoing: a.outgoing,
			params: []tgtParam{{name: "user", value: a.user}}}); err != nil {
			return err
		}
	}
	if d.applied == nil {
		d.applied = map[string]secrets{}
	}
	d.applied[t.IQN] = secrets{t.CHAPPassword, t.TargetPassword}
	return nil
}

// unbindACLs unbinds every ACL entry of the target cur, names and addresses
// (unbindACL fails unless each is gone): nobody can log in to it then, and
// whoever is logged in stays. No second show checks it: a show lists every
// target of the tgtd and costs as much as the rest of a remake (the targets
// benchmark in docs/benchmarks.md), and only this driver, under its lock,
// binds ACL entries.
func (d *TGT) unbindACLs(ctx context.Context, cur *tgtTarget) error {
	for _, a := range cur.acls {
		if err := d.unbindACL(ctx, cur.tid, a); err != nil {
			return err
		}
	}
	return nil
}

// unbindACL unbinds one entry of the target tid's ACL, an initiator name or
// an address (tgtd shows both in one list, addresses first: usr/target.c
// tgt_target_show_all); one that is not there is no error. An address entry
// is never GGnet's, but one made by hand (ALL) lets any initiator name in.
func (d *TGT) unbindACL(ctx context.Context, tid int, entry string) error {
	for _, kind := range []string{"initiator-name", "initiator-address"} {
		_, err := d.client().do(ctx, tgtRequest{mode: modeTarget, op: opUnbind, tid: tid,
			params: []tgtParam{{name: kind, value: entry}}})
		if tgtCode(err) != tgtErrNoACL {
			return err
		}
	}
	return nil
}

// dropAccounts takes every account off the target cur, for accounts to make
// t's again: deleted, unless it is not t's and another target of all has it
// too, where it is only unbound from cur. The incoming ones go from tgt's
// last slot down: tgt keeps them in an array whose first nr_inaccount slots
// its show and its login read (usr/target.c tgt_target_show_all,
// account_lookup), so a slot emptied below that count makes tgtd's show
// crash on a NULL account and hides the accounts above it from logins.
func (d *TGT) dropAccounts(ctx context.Context, cur *tgtTarget, all []tgtTarget, t Target) error {
	drop := func(user string, outgoing bool) error {
		var err error
		if user == t.CHAPUser || user == t.TargetUser || boundElsewhere(all, cur.iqn, user) == "" {
			err = d.deleteAccount(ctx, user)
		} else if _, err = d.client().do(ctx, tgtRequest{mode: modeAccount, op: opUnbind, tid: cur.tid, outgoing: outgoing,
			params: []tgtParam{{name: "user", value: user}}}); tgtCode(err) == tgtErrNoUser {
			err = nil
		}
		if err == nil && d.dropped != nil {
			d.dropped()
		}
		return err
	}
	for i := len(cur.accounts) - 1; i >= 0; i-- {
		if err := drop(cur.accounts[i], false); err != nil {
			return err
		}
	}
	if cur.outgoing != "" {
		return drop(cur.outgoing, true)
	}
	return nil
}

func (d *TGT) deleteAccount(ctx context.Context, user string) error {
	_, err := d.client().do(ctx, tgtRequest{mode: modeAccount, op: opDelete, params: []tgtParam{{name: "user", value: user}}})
	if tgtCode(err) == tgtErrNoUser {
		return nil
	}
	return err
}

// boundElsewhere returns the IQN of a target of all other than iqn that
// user is bound to (incoming or outgoing), or "".
func boundElsewhere(all []tgtTarget, iqn, user string) string {
	for _, o := range all {
		if o.iqn != iqn && (slices.Contains(o.accounts, user) || o.outgoing == user) {
			return o.iqn
		}
	}
	return ""
}

func equal(list []string, one string) bool { return len(list) == 1 && list[0] == one }

// Remove implements Driver.
func (d *TGT) Remove(ctx context.Context, iqn string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	all, err := d.show(ctx)
	if err != nil {
		return err
	}
	for i := range all {
		if all[i].iqn == iqn {
			return d.removeLocked(ctx, &all[i], all)
		}
	}
	return nil
}

// removeLocked deletes the target and its accounts, except an account that
// is also bound to another target of all (deleting it would unbind it there).
func (d *TGT) removeLocked(ctx context.Context, t *tgtTarget, all []tgtTarget) error {
	c := d.client()
	// Close the initiator's connections first, so that it notices at once.
	for _, n := range t.nexus {
		sid, err1 := strconv.ParseUint(n.Session, 10, 64)
		cid, err2 := strconv.ParseUint(n.CID, 10, 32)
		if err1 == nil && err2 == nil {
			_, _ = c.do(ctx, tgtRequest{mode: modeConnection, op: opDelete, tid: t.tid, sid: sid, cid: uint32(cid)})
		}
	}
	_, err := c.do(ctx, tgtRequest{mode: modeTarget, op: opDelete, tid: t.tid, force: true})
	if err != nil && tgtCode(err) != tgtErrNoTarget {
		return err
	}
	delete(d.applied, t.iqn)
	var errs []error
	users := t.accounts
	if t.outgoing != "" {
		users = append(users, t.outgoing)
	}
	for _, u := range users {
		if boundElsewhere(all, t.iqn, u) != "" {
			continue
		}
		errs = append(errs, d.deleteAccount(ctx, u))
	}
	return errors.Join(errs...)
}

// List implements Driver. CHAP secrets cannot be read back from tgtd and
// are left empty.
func (d *TGT) List(ctx context.Context, prefix string) ([]Target, error) {
	all, err := d.show(ctx)
	if err != nil {
		return nil, err
	}
	var out []Target
	for _, t := range all {
		if !strings.HasPrefix(t.iqn, prefix) {
			continue
		}
		x := Target{IQN: t.iqn, TargetUser: t.outgoing}
		luns := make([]int, 0, len(t.luns))
		for l := range t.luns {
			luns = append(luns, l)
		}
		sort.Ints(luns)
		if len(luns) > 0 {
			x.LUN, x.Path = luns[0], t.luns[luns[0]]
		}
		if len(t.acls) > 0 {
			x.InitiatorIQN = t.acls[0]
		}
		if len(t.accounts) > 0 {
			x.CHAPUser = t.accounts[0]
		}
		out = append(out, x)
	}
	return out, nil
}

// Connections lists who is logged in to one target (Sessions for one IQN;
// the tests' view).
func (d *TGT) Connections(ctx context.Context, iqn string) ([]Connection, error) {
	all, err := d.Sessions(ctx, iqn)
	if err != nil {
		return nil, err
	}
	return all[iqn], nil
}

// Sessions implements Driver with one target show for every target at
// once.
func (d *TGT) Sessions(ctx context.Context, prefix string) (map[string][]Connection, error) {
	all, err := d.show(ctx)
	if err != nil {
		return nil, err
	}
	out := map[string][]Connection{}
	for _, t := range all {
		if len(t.nexus) > 0 && strings.HasPrefix(t.iqn, prefix) {
			out[t.iqn] = t.nexus
		}
	}
	return out, nil
}

// Ping asks tgtd for its targets: nil when tgtd answers on its socket.
func (d *TGT) Ping(ctx context.Context) error {
	_, err := d.show(ctx)
	return err
}
