package configfstest

import (
	"errors"
	"fmt"
	"strings"
)

// info is what an ACL's info shows (lio_target_nacl_info_show).
func (a *acl) info() string {
	if a.session == nil {
		return "No active iSCSI Session for Initiator Endpoint: " + a.initiator + "\n"
	}
	var b strings.Builder
	fmt.Fprintf(&b, "InitiatorName: %s\nInitiatorAlias: \n", a.initiator)
	fmt.Fprintf(&b, "LIO Session ID: %d   ISID: 0x23 3d 00 00 00 00  TSIH: %d  SessionType: Normal\n", a.session.sid, a.session.sid)
	b.WriteString("Session State: TARG_SESS_STATE_LOGGED_IN\n")
	b.WriteString("---------------------[iSCSI Session Values]-----------------------\n")
	b.WriteString("  CmdSN/WR  :  CmdSN/WC  :  ExpCmdSN  :  MaxCmdSN  :     ITT    :     TTT\n")
	b.WriteString(" 0x00000040   0x00000040   0x00000001   0x00000040   0x00000000   0xffffffff\n")
	b.WriteString("----------------------[iSCSI Connections]-------------------------\n")
	fmt.Fprintf(&b, "CID: 0  Connection State: TARG_CONN_STATE_LOGGED_IN\n")
	fmt.Fprintf(&b, "   Address %s TCP  StatSN: 0x00000001\n", a.session.addr)
	return b.String()
}

// Credentials are what an initiator logs in with.
type Credentials struct {
	Initiator string
	// User and Password are the initiator's CHAP credentials.
	User, Password string
	// TargetUser and TargetPassword are what the initiator expects the
	// target to prove itself with (mutual CHAP); empty: it expects nothing.
	TargetUser, TargetPassword string
	// Address is the initiator's IP address.
	Address string
}

// ErrLoginRefused is a refused login.
var ErrLoginRefused = errors.New("iSCSI login refused")

// Login logs an initiator in to target iqn as LIO would let it: an enabled
// TPG with a portal, an ACL for the initiator with a LUN mapped to a
// backstore, and, with authentication on, CHAP secrets equal to what the
// ACL holds — byte for byte, so a secret stored with a newline fails — and
// both ways when either side asks for mutual CHAP.
func (f *FS) Login(iqn string, c Credentials) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	fabric := f.root.children["target"].children["iscsi"]
	if fabric == nil || fabric.children[iqn] == nil {
		return fmt.Errorf("%w: no target %s", ErrLoginRefused, iqn)
	}
	for _, tn := range fabric.children[iqn].children {
		t, ok := tn.state.(*tpg)
		if !ok || !t.enabled || len(tn.children["np"].children) == 0 {
			continue
		}
		a := t.acls[c.Initiator]
		if a == nil {
			return fmt.Errorf("%w: no ACL for %s", ErrLoginRefused, c.Initiator)
		}
		if t.attrib["authentication"] == 1 {
			if a.auth["userid"] != c.User || a.auth["password"] != c.Password || c.User == "" {
				return fmt.Errorf("%w: CHAP failed for %s", ErrLoginRefused, c.Initiator)
			}
			mutual := a.auth["userid_mutual"] != "" && !strings.HasPrefix(a.auth["userid_mutual"], "NULL")
			if (c.TargetUser != "") != mutual ||
				mutual && (a.auth["userid_mutual"] != c.TargetUser || a.auth["password_mutual"] != c.TargetPassword) {
				return fmt.Errorf("%w: mutual CHAP failed for %s", ErrLoginRefused, c.Initiator)
			}
		}
		mapped := false
		for _, m := range a.mapped {
			mapped = mapped || m.lun != nil && m.lun.dev != nil
		}
		if !mapped {
			return fmt.Errorf("%w: no LUN for %s", ErrLoginRefused, c.Initiator)
		}
		f.nextSID++
		a.session = &session{sid: f.nextSID, addr: c.Address}
		return nil
	}
	return fmt.Errorf("%w: no enabled TPG with a portal on %s", ErrLoginRefused, iqn)
}

// Logout ends the initiator's session on target iqn, if any.
func (f *FS) Logout(iqn, initiator string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fabric := f.root.children["target"].children["iscsi"]
	if fabric == nil || fabric.children[iqn] == nil {
		return
	}
	for _, tn := range fabric.children[iqn].children {
		if t, ok := tn.state.(*tpg); ok && t.acls[initiator] != nil {
			t.acls[initiator].session = nil
		}
	}
}

// LoggedIn reports whether the initiator has a session on target iqn.
func (f *FS) LoggedIn(iqn, initiator string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	fabric := f.root.children["target"].children["iscsi"]
	if fabric == nil || fabric.children[iqn] == nil {
		return false
	}
	for _, tn := range fabric.children[iqn].children {
		if t, ok := tn.state.(*tpg); ok && t.acls[initiator] != nil && t.acls[initiator].session != nil {
			return true
		}
	}
	return false
}
