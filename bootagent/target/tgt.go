package target

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"sort"
	"strconv"
	"strings"
	"sync"
)

// TGT drives tgtd with tgtadm. tgtd keeps its targets in memory only: after
// tgtd restarts the list is empty and the storage loop rebuilds every target
// from the desired state.
type TGT struct {
	// ControlPort selects tgtd's control socket (tgtadm -C), so that several
	// tgtd can run on one machine (tests).
	ControlPort int
	// Tgtadm is the tgtadm binary (default "tgtadm").
	Tgtadm string

	mu sync.Mutex
	// applied remembers the CHAP password set on each target's account:
	// tgtd cannot show it, and re-making the account at every resync would
	// refuse logins that land in between.
	applied map[string]string
}

func (d *TGT) run(ctx context.Context, args ...string) (string, error) {
	bin := d.Tgtadm
	if bin == "" {
		bin = "tgtadm"
	}
	full := append([]string{"-C", strconv.Itoa(d.ControlPort), "--lld", "iscsi"}, args...)
	var out, errb bytes.Buffer
	cmd := exec.CommandContext(ctx, bin, full...)
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("tgtadm %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(errb.String()))
	}
	return out.String(), nil
}

// tgtTarget is a target as tgtadm shows it.
type tgtTarget struct {
	tid      int
	iqn      string
	luns     map[int]string
	accounts []string
	acls     []string
	nexus    []Connection
}

// parseShow reads `tgtadm --mode target --op show`.
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
	out, err := d.run(ctx, "--mode", "target", "--op", "show")
	if err != nil {
		return nil, err
	}
	return parseShow(out), nil
}

// Ensure implements Driver. tgtadm has no transactions: Ensure makes each
// missing part and, when a part differs (another file, initiator or user),
// deletes the target and makes it again.
func (d *TGT) Ensure(ctx context.Context, t Target) error {
	if err := t.Validate(); err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	all, err := d.show(ctx)
	if err != nil {
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
		if cur.luns[t.LUN] == t.Path && len(cur.luns) == 1 && equal(cur.acls, t.InitiatorIQN) && equal(cur.accounts, t.CHAPUser) {
			if d.applied[t.IQN] == t.CHAPPassword {
				return nil
			}
			// Not set by this process (a restart), or a new password.
			return d.account(ctx, t, strconv.Itoa(cur.tid))
		}
		if err := d.removeLocked(ctx, cur); err != nil {
			return err
		}
		cur = nil
	}
	tid := strconv.Itoa(maxTid + 1)
	steps := [][]string{
		{"--mode", "target", "--op", "new", "--tid", tid, "--targetname", t.IQN},
		{"--mode", "logicalunit", "--op", "new", "--tid", tid, "--lun", strconv.Itoa(t.LUN), "--backing-store", t.Path},
		{"--mode", "target", "--op", "bind", "--tid", tid, "--initiator-name", t.InitiatorIQN},
	}
	for _, s := range steps {
		if _, err := d.run(ctx, s...); err != nil {
			_, _ = d.run(ctx, "--mode", "target", "--op", "delete", "--force", "--tid", tid)
			return err
		}
	}
	if err := d.account(ctx, t, tid); err != nil {
		_, _ = d.run(ctx, "--mode", "target", "--op", "delete", "--force", "--tid", tid)
		return err
	}
	return nil
}

// account (re)makes the CHAP account and binds it to the target; tgt's
// accounts are global and their passwords cannot be read back.
func (d *TGT) account(ctx context.Context, t Target, tid string) error {
	_, _ = d.run(ctx, "--mode", "account", "--op", "delete", "--user", t.CHAPUser)
	if _, err := d.run(ctx, "--mode", "account", "--op", "new", "--user", t.CHAPUser, "--password", t.CHAPPassword); err != nil {
		return err
	}
	if _, err := d.run(ctx, "--mode", "account", "--op", "bind", "--tid", tid, "--user", t.CHAPUser); err != nil {
		return err
	}
	if d.applied == nil {
		d.applied = map[string]string{}
	}
	d.applied[t.IQN] = t.CHAPPassword
	return nil
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
			return d.removeLocked(ctx, &all[i])
		}
	}
	return nil
}

func (d *TGT) removeLocked(ctx context.Context, t *tgtTarget) error {
	tid := strconv.Itoa(t.tid)
	// Close the initiator's connections first, so that it notices at once.
	for _, c := range t.nexus {
		_, _ = d.run(ctx, "--mode", "conn", "--op", "delete", "--tid", tid, "--sid", c.Session, "--cid", c.CID)
	}
	if _, err := d.run(ctx, "--mode", "target", "--op", "delete", "--force", "--tid", tid); err != nil {
		return err
	}
	delete(d.applied, t.iqn)
	var errs []error
	for _, a := range t.accounts {
		if _, err := d.run(ctx, "--mode", "account", "--op", "delete", "--user", a); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// List implements Driver. CHAP passwords cannot be read back from tgtd and
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
		x := Target{IQN: t.iqn}
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

// Connections implements Driver.
func (d *TGT) Connections(ctx context.Context, iqn string) ([]Connection, error) {
	all, err := d.show(ctx)
	if err != nil {
		return nil, err
	}
	for _, t := range all {
		if t.iqn == iqn {
			return t.nexus, nil
		}
	}
	return nil, nil
}
