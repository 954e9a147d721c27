package ipxe

import (
	"fmt"
	"strconv"
	"strings"
)

// allowed lists the commands GGnet scripts use, with their argument bounds.
var allowed = map[string]struct{ min, max int }{
	"echo":    {0, 64},
	"set":     {2, 2},
	"sanboot": {1, 2},
	"sleep":   {1, 1},
	"goto":    {1, 1},
	"exit":    {0, 1},
	"reboot":  {0, 0},
	"chain":   {1, 3},
}

// Validate checks that script is something GGnet emits: the #!ipxe header,
// then labels, comments and the allowed commands, each optionally followed by
// "|| goto <label>"; every goto names a label that exists; sanboot takes an
// iscsi: URI.
func Validate(script string) error {
	lines := strings.Split(strings.TrimRight(script, "\n"), "\n")
	if len(lines) == 0 || lines[0] != "#!ipxe" {
		return fmt.Errorf("line 1: want #!ipxe")
	}
	labels := map[string]bool{}
	type jump struct {
		line  int
		label string
	}
	var gotos []jump
	for i, raw := range lines[1:] {
		n := i + 2
		line := strings.TrimSpace(raw)
		switch {
		case line == "" || strings.HasPrefix(line, "#"):
			continue
		case strings.HasPrefix(line, ":"):
			l := line[1:]
			if !isLabel(l) {
				return fmt.Errorf("line %d: bad label %q", n, l)
			}
			if labels[l] {
				return fmt.Errorf("line %d: label %q defined twice", n, l)
			}
			labels[l] = true
			continue
		}
		cmd, orGoto, hasOr := strings.Cut(line, "||")
		if hasOr && strings.TrimSpace(orGoto) == "" {
			// "cmd ||": go on whatever cmd did.
		} else if hasOr {
			f := strings.Fields(orGoto)
			if len(f) != 2 || f[0] != "goto" {
				return fmt.Errorf("line %d: only \"|| goto <label>\" may follow a command", n)
			}
			gotos = append(gotos, jump{n, f[1]})
		}
		if strings.Contains(cmd, "&&") {
			return fmt.Errorf("line %d: && is not used in GGnet scripts", n)
		}
		f := strings.Fields(cmd)
		if len(f) == 0 {
			return fmt.Errorf("line %d: empty command", n)
		}
		bounds, ok := allowed[f[0]]
		if !ok {
			return fmt.Errorf("line %d: command %q is not one GGnet emits", n, f[0])
		}
		args := f[1:]
		if len(args) < bounds.min || len(args) > bounds.max {
			return fmt.Errorf("line %d: %s takes %d to %d arguments, got %d", n, f[0], bounds.min, bounds.max, len(args))
		}
		switch f[0] {
		case "goto":
			gotos = append(gotos, jump{n, args[0]})
		case "sleep":
			if v, err := strconv.Atoi(args[0]); err != nil || v < 0 || v > 3600 {
				return fmt.Errorf("line %d: sleep wants 0 to 3600 seconds", n)
			}
		case "sanboot":
			uri := args[len(args)-1]
			if _, err := parseSANURI(uri); err != nil {
				return fmt.Errorf("line %d: %w", n, err)
			}
			if len(args) == 2 && args[0] != "--keep" {
				return fmt.Errorf("line %d: sanboot option %q is not used", n, args[0])
			}
		case "set":
			if !isSettingName(args[0]) {
				return fmt.Errorf("line %d: bad setting name %q", n, args[0])
			}
		case "chain":
			url := args[len(args)-1]
			if url != ReportURL && !safeURL(url) {
				return fmt.Errorf("line %d: chain wants an http(s) or tftp URL", n)
			}
			for _, o := range args[:len(args)-1] {
				if o != "--replace" && o != "--autofree" {
					return fmt.Errorf("line %d: chain option %q is not used", n, o)
				}
			}
		}
	}
	for _, g := range gotos {
		if !labels[g.label] {
			return fmt.Errorf("line %d: goto %q: no such label", g.line, g.label)
		}
	}
	return nil
}

// Parse reads the iSCSI target, initiator and CHAP credentials back from a
// session script.
func Parse(script string) (Info, error) {
	if err := Validate(script); err != nil {
		return Info{}, err
	}
	var info Info
	found := false
	for _, raw := range strings.Split(script, "\n") {
		cmd, _, _ := strings.Cut(raw, "||") // as Validate reads it
		f := strings.Fields(strings.TrimSpace(cmd))
		if len(f) == 0 {
			continue
		}
		switch {
		case f[0] == "set" && len(f) == 3:
			switch f[1] {
			case "initiator-iqn":
				info.InitiatorIQN = f[2]
			case "username":
				info.Username = f[2]
			case "password":
				info.Password = f[2]
			case "reverse-username":
				info.TargetUsername = f[2]
			case "reverse-password":
				info.TargetPassword = f[2]
			}
		case f[0] == "sanboot" && !found:
			for _, a := range f[1:] {
				if t, err := parseSANURI(a); err == nil {
					info.Server, info.Port, info.LUN, info.TargetIQN = t.Server, t.Port, t.LUN, t.TargetIQN
					found = true
				}
			}
		}
	}
	if !found {
		return Info{}, fmt.Errorf("no sanboot command")
	}
	return info, nil
}

// parseSANURI parses iscsi:<server>:<protocol>:<port>:<lun>:<iqn>.
func parseSANURI(uri string) (Info, error) {
	rest, ok := strings.CutPrefix(uri, "iscsi:")
	if !ok {
		return Info{}, fmt.Errorf("sanboot wants an iscsi: URI, got %q", uri)
	}
	parts := strings.SplitN(rest, ":", 5)
	if len(parts) != 5 {
		return Info{}, fmt.Errorf("iSCSI URI %q: want iscsi:<server>:<protocol>:<port>:<lun>:<iqn>", uri)
	}
	info := Info{Server: parts[0], Port: DefaultISCSIPort, TargetIQN: parts[4]}
	if _, _, err := splitPortal(parts[0]); err != nil {
		return Info{}, fmt.Errorf("iSCSI URI %q: %w", uri, err)
	}
	if parts[1] != "" && parts[1] != "6" {
		return Info{}, fmt.Errorf("iSCSI URI %q: protocol must be empty or 6 (TCP)", uri)
	}
	if parts[2] != "" {
		p, err := strconv.Atoi(parts[2])
		if err != nil || p < 1 || p > 65535 {
			return Info{}, fmt.Errorf("iSCSI URI %q: bad port", uri)
		}
		info.Port = p
	}
	if parts[3] != "" {
		l, err := strconv.ParseInt(parts[3], 10, 32)
		if err != nil || l < 0 {
			return Info{}, fmt.Errorf("iSCSI URI %q: bad LUN", uri)
		}
		info.LUN = int32(l)
	}
	if !validIQN(info.TargetIQN) {
		return Info{}, fmt.Errorf("iSCSI URI %q: bad target IQN", uri)
	}
	return info, nil
}

func isLabel(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

func isSettingName(s string) bool {
	switch s {
	case "initiator-iqn", "username", "password", "reverse-username", "reverse-password", "san-retries":
		return true
	}
	return false
}
