package tftp

import (
	"net"
	"strings"

	"github.com/ggnet/ggnet/internal/ipxe"
)

// Route kinds, used as the metrics' file label for scripts so that per-MAC
// names do not make a label per machine.
const (
	RouteScript = "script"
	RouteFile   = "file"
)

// scriptDir is the script namespace (ipxe.ScriptDir): every name under it is
// a script route, never a file, so a token-shaped name never reaches the file
// system.
const scriptDir = ipxe.ScriptDir

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
// Script names are read by ipxe.ParseScriptPath: the MAC has six bytes
// written with ':' or '-', either case, the token ipxe.ValidToken's form. It
// is pure: no
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
		mac, token, err := ipxe.ParseScriptPath(name)
		if err != nil {
			return Resolved{}, ErrBadName
		}
		return Resolved{Kind: RouteScript, MAC: mac, Token: token}, nil
	}
	// "<mac>.ipxe" reads as "boot/<mac>.ipxe": one parser for script names.
	if strings.HasSuffix(name, ".ipxe") && !strings.Contains(name, "/") {
		if mac, token, err := ipxe.ParseScriptPath(scriptDir + name); err == nil && token == "" {
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
	return ipxe.LogScriptPath(r.MAC, r.Token)
}
