// Package target drives iSCSI targets through one small interface with two
// drivers: tgt (userspace tgtd, driven by tgtadm) and LIO (the kernel target,
// driven through configfs).
package target

import (
	"context"
	"fmt"
	"strings"
)

// Target is one session's iSCSI target: one LUN backed by a file, one
// initiator allowed, CHAP required.
type Target struct {
	IQN          string
	LUN          int
	Path         string
	InitiatorIQN string
	CHAPUser     string
	CHAPPassword string
}

// Connection is one initiator logged in to a target.
type Connection struct {
	Initiator string
	Address   string
	Session   string
	CID       string
}

// Driver manages the targets of one storage node.
type Driver interface {
	// Ensure makes t exist exactly as given, fixing whatever differs.
	Ensure(ctx context.Context, t Target) error
	// Remove deletes a target (closing its connections); a missing one is
	// not an error.
	Remove(ctx context.Context, iqn string) error
	// List returns the targets whose IQN starts with prefix.
	List(ctx context.Context, prefix string) ([]Target, error)
	// Connections lists who is logged in to a target.
	Connections(ctx context.Context, iqn string) ([]Connection, error)
}

// Validate checks a target before any command is built from it.
func (t Target) Validate() error {
	if !strings.HasPrefix(t.IQN, "iqn.") || !strings.HasPrefix(t.InitiatorIQN, "iqn.") {
		return fmt.Errorf("target %q, initiator %q: want iqn. names", t.IQN, t.InitiatorIQN)
	}
	for _, s := range []string{t.IQN, t.InitiatorIQN, t.CHAPUser, t.CHAPPassword, t.Path} {
		if s == "" || strings.ContainsAny(s, " \t\n\"'`$\\,=") {
			return fmt.Errorf("target %s: empty field or one with spaces, quotes or separators", t.IQN)
		}
	}
	if t.LUN < 1 || t.LUN > 255 {
		return fmt.Errorf("target %s: LUN %d: want 1 to 255 (LUN 0 is the controller)", t.IQN, t.LUN)
	}
	if l := len(t.CHAPPassword); l < 12 || l > 16 {
		return fmt.Errorf("target %s: CHAP secrets must be 12 to 16 characters (the Windows initiator's limits)", t.IQN)
	}
	return nil
}
