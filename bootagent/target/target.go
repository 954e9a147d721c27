// Package target drives iSCSI targets through one small interface with two
// drivers: tgt (userspace tgtd, driven over its management socket) and LIO
// (the kernel target, driven through configfs).
package target

import (
	"context"
	"errors"
	"fmt"
	"strings"
)

// Target is one session's iSCSI target: one LUN backed by a file, one
// initiator allowed, CHAP required and, when TargetUser is set, mutual CHAP.
type Target struct {
	IQN          string
	LUN          int
	Path         string
	InitiatorIQN string
	// CHAPUser and CHAPPassword are the initiator's credentials: the PC
	// proves itself to the target with them.
	CHAPUser     string
	CHAPPassword string
	// TargetUser and TargetPassword are the target's own credentials
	// (mutual CHAP): the target proves itself to the PC with them. Both
	// empty: the target does not authenticate itself.
	TargetUser     string
	TargetPassword string
}

// Connection is one initiator logged in to a target: one iSCSI session
// (tgtd shows one row per I_T nexus, with its last connection).
type Connection struct {
	// Initiator is the initiator's iSCSI name.
	Initiator string
	// Address is the initiator's IP address, without the port.
	Address string
	// Session is the target's id of the session (tgtd's I_T nexus id, LIO's
	// session id): it tells two sessions of one initiator apart (the
	// firmware's and the OS's) and changes with every new login.
	Session string
	// CID is the connection's id within the session.
	CID string
}

// Driver manages the targets of one storage node. No error of a driver
// carries a CHAP secret.
type Driver interface {
	// Ensure makes t exist exactly as given, fixing whatever differs.
	Ensure(ctx context.Context, t Target) error
	// Remove deletes a target (closing its connections); a missing one is
	// not an error.
	Remove(ctx context.Context, iqn string) error
	// List returns the targets whose IQN starts with prefix, without
	// their secrets.
	List(ctx context.Context, prefix string) ([]Target, error)
	// Sessions lists who is logged in to every target whose IQN starts
	// with prefix, by target IQN (a target nobody is logged in to may be
	// missing), in one request to the target daemon whatever the number of
	// targets: it is sampled about twice a second.
	Sessions(ctx context.Context, prefix string) (map[string][]Connection, error)
}

// CHAP secret lengths the Windows initiator accepts (bytes).
const (
	MinSecretLen = 12
	MaxSecretLen = 16
)

// maxIQNLen is RFC 3720's limit on an iSCSI name (3.2.6.1).
const maxIQNLen = 223

// Validate checks a target before any request is built from it. Its errors
// name fields, never their secret values.
func (t Target) Validate() error {
	if err := ValidIQN(t.IQN); err != nil {
		return fmt.Errorf("target: %w", err)
	}
	if err := ValidIQN(t.InitiatorIQN); err != nil {
		return fmt.Errorf("target %s: initiator: %w", t.IQN, err)
	}
	fields := []struct{ name, value string }{
		{"path", t.Path}, {"CHAP user", t.CHAPUser}, {"CHAP secret", t.CHAPPassword},
	}
	if t.TargetUser != "" || t.TargetPassword != "" {
		fields = append(fields, struct{ name, value string }{"target CHAP user", t.TargetUser},
			struct{ name, value string }{"target CHAP secret", t.TargetPassword})
	}
	for _, f := range fields {
		if f.value == "" || strings.ContainsAny(f.value, " \t\r\n\x00\"'`$\\,=") {
			return fmt.Errorf("target %s: %s: empty field or one with spaces, quotes or separators", t.IQN, f.name)
		}
	}
	if t.LUN < 1 || t.LUN > 255 {
		return fmt.Errorf("target %s: LUN %d: want 1 to 255 (LUN 0 is the controller)", t.IQN, t.LUN)
	}
	if l := len(t.CHAPPassword); l < MinSecretLen || l > MaxSecretLen {
		return fmt.Errorf("target %s: CHAP secrets must be 12 to 16 characters (the Windows initiator's limits)", t.IQN)
	}
	if t.TargetUser == "" {
		return nil
	}
	if l := len(t.TargetPassword); l < MinSecretLen || l > MaxSecretLen {
		return fmt.Errorf("target %s: target CHAP secrets must be 12 to 16 characters (the Windows initiator's limits)", t.IQN)
	}
	if t.TargetPassword == t.CHAPPassword {
		return fmt.Errorf("target %s: the target CHAP secret must differ from the initiator's", t.IQN)
	}
	if t.TargetUser == t.CHAPUser {
		return fmt.Errorf("target %s: the target CHAP user must differ from the initiator's (tgt's accounts are one list)", t.IQN)
	}
	return nil
}

// ValidIQN checks an iqn.-format iSCSI name against RFC 3720 (3.2.6.3.1):
// "iqn." yyyy-mm "." reversed domain name, then optionally ":" and a unique
// string; only a-z, 0-9, '.', '-' and ':' (names are compared after
// lowercasing, so GGnet takes only the lowercase form); at most 223 bytes.
func ValidIQN(s string) error {
	bad := func(why string) error { return fmt.Errorf("iSCSI name %q: %s", s, why) }
	if len(s) > maxIQNLen {
		return fmt.Errorf("iSCSI name of %d bytes: at most %d", len(s), maxIQNLen)
	}
	if !strings.HasPrefix(s, "iqn.") {
		return bad("want iqn. names (iqn.yyyy-mm.reversed.domain[:unique])")
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '.' || c == '-' || c == ':') {
			return bad("only lowercase a-z, 0-9, '.', '-' and ':' are allowed")
		}
	}
	rest := s[len("iqn."):]
	if len(rest) < len("yyyy-mm.") || !digits(rest[0:4]) || rest[4] != '-' || !digits(rest[5:7]) || rest[7] != '.' ||
		rest[5:7] < "01" || rest[5:7] > "12" {
		return bad("want the date as yyyy-mm after iqn.")
	}
	domain, unique, hasUnique := strings.Cut(rest[len("yyyy-mm."):], ":")
	if domain == "" {
		return bad("want a reversed domain name after the date")
	}
	for _, label := range strings.Split(domain, ".") {
		if label == "" || label[0] == '-' || label[len(label)-1] == '-' {
			return bad("the naming authority is not a reversed domain name")
		}
	}
	if hasUnique && unique == "" {
		return bad("empty unique string after ':'")
	}
	return nil
}

func digits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return s != ""
}

// redact keeps t's secrets out of err: a driver's errors may quote what the
// kernel or tgtd said, and none of it may reach a log or a condition.
func redact(err error, t Target) error {
	if err == nil {
		return nil
	}
	msg := err.Error()
	out := msg
	for _, s := range []string{t.CHAPPassword, t.TargetPassword} {
		if s != "" {
			out = strings.ReplaceAll(out, s, "[redacted]")
		}
	}
	if out == msg {
		return err
	}
	return errors.New(out)
}
