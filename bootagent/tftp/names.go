package tftp

import (
	"net"
	"strings"
)

// Route kinds, used as the metrics' file label for scripts so that per-MAC
// names do not make a label per machine.
const (
	RouteScript = "script"
	RouteFile   = "file"
)

// scriptDir is the script namespace: every name under it is a script route,
// never a file, so a token-shaped name never reaches the file system.
const scriptDir = "boot/"

// Resolved is where a request name leads.
type Resolved struct {
	Kind string
	// MAC is set for scripts.
	MAC net.HardwareAddr
	// Token is the script token in the name, "" for the tokenless forms. It is
	// a credential: never log it.
	Token string
	// Path is the cleaned path inside the root for files.
	Path string
}

// Resolve maps a requested name to a route, first match wins:
//
//   - "boot/<token>/<mac>.ipxe" and "boot/<mac>.ipxe": a script (token "" for
//     the second); any other name under "boot/" is refused;
//   - "<mac>.ipxe": a script without a token (the older name, kept);
//   - anything else: a file under the root.
//
// The MAC has six bytes written with ':' or '-', either case. It is pure: no
// file-system access. A leading "/" is refused (it would mean an absolute
// path on other servers), as are "..", backslashes, NUL and control
// characters.
func Resolve(name string) (Resolved, error) {
	if name == "" || len(name) > 255 {
		return Resolved{}, ErrBadName
	}
	for _, c := range name {
		if c < 0x21 || c == 0x7f || c == '\\' {
			return Resolved{}, ErrBadName
		}
	}
	if strings.HasPrefix(name, "/") {
		return Resolved{}, ErrBadName
	}
	for _, part := range strings.Split(name, "/") {
		if part == "" || part == "." || part == ".." {
			return Resolved{}, ErrBadName
		}
	}
	if strings.HasPrefix(name, scriptDir) {
		mac, token, ok := parseScriptPath(name)
		if !ok {
			return Resolved{}, ErrBadName
		}
		return Resolved{Kind: RouteScript, MAC: mac, Token: token}, nil
	}
	if base, ok := strings.CutSuffix(name, ".ipxe"); ok {
		if mac, ok := parseMAC(base); ok {
			return Resolved{Kind: RouteScript, MAC: mac}, nil
		}
	}
	return Resolved{Kind: RouteFile, Path: name}, nil
}

// logName is name as it may appear in logs: a script name's token is
// replaced, and a refused name that looks like a script name ("boot/"
// anywhere in it) is not shown at all: it may hold a token.
func logName(name string, r Resolved, err error) string {
	if err != nil || r.Kind != RouteScript {
		if strings.HasPrefix(strings.TrimLeft(name, "/"), scriptDir) || strings.Contains(name, "/"+scriptDir) {
			return scriptDir + "(invalid)"
		}
		return name
	}
	if !strings.HasPrefix(name, scriptDir) {
		return name // "<mac>.ipxe"
	}
	if r.Token == "" {
		return scriptDir + r.MAC.String() + ".ipxe"
	}
	return scriptDir + "(token)/" + r.MAC.String() + ".ipxe"
}

// parseScriptPath reads "boot/<token>/<mac>.ipxe" or "boot/<mac>.ipxe".
//
// TODO(issue 11): replace with ipxe.ParseScriptPath once internal/ipxe's
// path.go is committed; this follows the contract's rules for it (token
// [a-z2-7]{32}, six-byte MAC with ':' or '-'), minus the leading "/" that
// Resolve refuses anyway.
func parseScriptPath(name string) (mac net.HardwareAddr, token string, ok bool) {
	rest, ok := strings.CutPrefix(name, scriptDir)
	if !ok {
		return nil, "", false
	}
	base, ok := strings.CutSuffix(rest, ".ipxe")
	if !ok {
		return nil, "", false
	}
	if i := strings.IndexByte(base, '/'); i >= 0 {
		token, base = base[:i], base[i+1:]
		if !validToken(token) {
			return nil, "", false
		}
	}
	mac, ok = parseMAC(base)
	if !ok {
		return nil, "", false
	}
	return mac, token, true
}

// tokenLength is the length of a script token: base32 ([a-z2-7], no
// padding) of 20 random bytes.
const tokenLength = 32

func validToken(s string) bool {
	if len(s) != tokenLength {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= '2' && c <= '7') {
			return false
		}
	}
	return true
}

// parseMAC parses a six-byte MAC written xx:xx:xx:xx:xx:xx or
// xx-xx-xx-xx-xx-xx, either case.
func parseMAC(s string) (net.HardwareAddr, bool) {
	if len(s) != 17 {
		return nil, false
	}
	sep := s[2]
	if sep != ':' && sep != '-' {
		return nil, false
	}
	mac := make(net.HardwareAddr, 6)
	for i := range mac {
		if i > 0 && s[3*i-1] != sep {
			return nil, false
		}
		hi, ok1 := fromHex(s[3*i])
		lo, ok2 := fromHex(s[3*i+1])
		if !ok1 || !ok2 {
			return nil, false
		}
		mac[i] = hi<<4 | lo
	}
	return mac, true
}

func fromHex(c byte) (byte, bool) {
	switch {
	case c >= '0' && c <= '9':
		return c - '0', true
	case c >= 'a' && c <= 'f':
		return c - 'a' + 10, true
	case c >= 'A' && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}
