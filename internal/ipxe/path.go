package ipxe

import (
	"errors"
	"net"
	"strings"
)

// TokenLength is the length of a script token: the base32 form ([a-z2-7],
// no padding) of 20 random bytes.
const TokenLength = 32

// ScriptDir is the script namespace, relative to the agent's HTTP base and
// the TFTP root: every name under it is a script route, never a file.
const ScriptDir = "boot/"

// ScriptPath is the one home of a machine's script path, relative to the
// agent's HTTP base and the TFTP root: "boot/<token>/<mac>.ipxe", or
// "boot/<mac>.ipxe" when token is empty. The MAC is in lowercase colon form.
func ScriptPath(mac net.HardwareAddr, token string) string {
	var buf [len(ScriptDir) + TokenLength + len("/xx:xx:xx:xx:xx:xx.ipxe")]byte
	return string(AppendScriptPath(buf[:0], mac, token))
}

// AppendScriptPath appends ScriptPath(mac, token) to dst. It allocates
// nothing when dst has room, for the DHCP path.
func AppendScriptPath(dst []byte, mac net.HardwareAddr, token string) []byte {
	dst = append(dst, ScriptDir...)
	if token != "" {
		dst = append(dst, token...)
		dst = append(dst, '/')
	}
	dst = AppendMAC(dst, mac)
	return append(dst, ".ipxe"...)
}

// ScriptURL is the machine's script URL on the agent: base (its trailing
// "/" dropped) + "/" + ScriptPath(mac, token).
func ScriptURL(base string, mac net.HardwareAddr, token string) string {
	return string(AppendScriptURL(nil, base, mac, token))
}

// AppendScriptURL appends ScriptURL(base, mac, token) to dst. It allocates
// nothing when dst has room, for the DHCP path.
func AppendScriptURL(dst []byte, base string, mac net.HardwareAddr, token string) []byte {
	dst = append(dst, strings.TrimRight(base, "/")...)
	dst = append(dst, '/')
	return AppendScriptPath(dst, mac, token)
}

// LogScriptPath is ScriptPath as it may appear in logs: a token is written
// "(token)" (it is a credential).
func LogScriptPath(mac net.HardwareAddr, token string) string {
	if token != "" {
		token = "(token)"
	}
	return string(AppendScriptPath(nil, mac, token))
}

// AppendMAC appends mac in lowercase colon form (xx:xx:xx:xx:xx:xx for six
// bytes, as net.HardwareAddr.String and the Machine API write it) to dst,
// allocating nothing when dst has room.
func AppendMAC(dst []byte, mac net.HardwareAddr) []byte {
	const hex = "0123456789abcdef"
	for i, b := range mac {
		if i > 0 {
			dst = append(dst, ':')
		}
		dst = append(dst, hex[b>>4], hex[b&0xf])
	}
	return dst
}

// ErrBadScriptPath is what ParseScriptPath returns for a path that is not a
// script path.
var ErrBadScriptPath = errors.New("want boot/<token>/<mac>.ipxe or boot/<mac>.ipxe")

// ParseScriptPath reads a script path back: "boot/<token>/<mac>.ipxe" or
// "boot/<mac>.ipxe", either with a leading "/", the MAC (six bytes) written
// with ':' or '-'. token is "" for a path without one. The error never
// contains the path, which may carry a token.
func ParseScriptPath(p string) (mac net.HardwareAddr, token string, err error) {
	p = strings.TrimPrefix(p, "/")
	rest, ok := strings.CutPrefix(p, ScriptDir)
	if !ok {
		return nil, "", ErrBadScriptPath
	}
	base, ok := strings.CutSuffix(rest, ".ipxe")
	if !ok {
		return nil, "", ErrBadScriptPath
	}
	if i := strings.IndexByte(base, '/'); i >= 0 {
		token, base = base[:i], base[i+1:]
		if !ValidToken(token) {
			return nil, "", ErrBadScriptPath
		}
	}
	mac, ok = ParseMAC(base)
	if !ok {
		return nil, "", ErrBadScriptPath
	}
	return mac, token, nil
}

// ParseMAC parses a six-byte MAC written xx:xx:xx:xx:xx:xx or
// xx-xx-xx-xx-xx-xx, either case: script paths, and the Machine API's MAC
// (lowercase colon form).
func ParseMAC(s string) (net.HardwareAddr, bool) {
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

// ValidToken reports whether s has a script token's form: TokenLength
// characters of [a-z2-7].
func ValidToken(s string) bool {
	if len(s) != TokenLength {
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
