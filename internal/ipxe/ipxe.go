// Package ipxe renders, validates and parses the iPXE scripts GGnet serves:
// the session script that sanboots a machine's iSCSI overlay, and the
// fallback scripts for machines without a session. The controller renders,
// the agent serves, and the tests parse back, all through this package.
package ipxe

import (
	"fmt"
	"net"
	"strconv"
	"strings"
)

// DefaultISCSIPort is the iSCSI port when a portal has none.
const DefaultISCSIPort = 3260

// Session is what a session script needs.
type Session struct {
	// Name is namespace/name of the BootSession, shown on screen.
	Name string
	// Image is the Image's name, shown on screen.
	Image string
	// Portal is the iSCSI portal, "ip" or "ip:port".
	Portal string
	// TargetIQN is the target's name.
	TargetIQN string
	// LUN is the logical unit of the disk.
	LUN int32
	// InitiatorIQN is the name the machine logs in with; the target's ACL
	// admits only it.
	InitiatorIQN string
	// Credentials are the session's CHAP credentials. Nil renders the
	// preview kept in BootSession.status.script: the same script without
	// any credential, which the boot agent completes when it serves it.
	Credentials *Credentials
	// Retries is how many times a failed sanboot is retried (default 3).
	Retries int
	// RetryDelay is the pause between retries in seconds (default 5).
	RetryDelay int
	// OnFailure is what happens when every attempt failed.
	OnFailure Failure
}

// Credentials are a session's CHAP credentials. Only Secrets hold them;
// they never appear in a custom resource, an Event or a log line.
type Credentials struct {
	// Username and Password prove the machine (the initiator) to the target.
	Username, Password string
	// TargetUsername and TargetPassword, when TargetUsername is set, prove
	// the target to the machine (mutual CHAP); TargetPassword must differ
	// from Password.
	TargetUsername, TargetPassword string
}

// CredentialsComment is the line a preview script has where a served script
// has its credentials.
const CredentialsComment = "# CHAP credentials are added by the boot agent when it serves this script"

// Failure says what a script does when it cannot boot.
type Failure string

const (
	// FailureExit returns to the firmware, which tries its next boot device.
	FailureExit Failure = "exit"
	// FailureReboot restarts the machine.
	FailureReboot Failure = "reboot"
	// FailureRetry (fallback scripts only) waits and fetches the script again.
	FailureRetry Failure = "retry"
)

// ReportURL is how a session script reports a failed sanboot: the script's
// own URL with the iPXE error number, which the agent records on the session.
const ReportURL = "${filename}?failed=${errno}"

// Info is what Parse reads back from a session script.
type Info struct {
	Server       string
	Port         int
	LUN          int32
	TargetIQN    string
	InitiatorIQN string
	// Username, Password, TargetUsername and TargetPassword are empty when
	// the script is a preview.
	Username       string
	Password       string
	TargetUsername string
	TargetPassword string
}

// SANURI returns the iPXE iSCSI URI iscsi:<server>::<port>:<lun>:<iqn>.
func SANURI(portal string, lun int32, iqn string) (string, error) {
	host, port, err := splitPortal(portal)
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("iscsi:%s::%d:%d:%s", host, port, lun, iqn), nil
}

func splitPortal(portal string) (string, int, error) {
	host, portStr, err := net.SplitHostPort(portal)
	if err != nil {
		host, portStr = portal, strconv.Itoa(DefaultISCSIPort)
	}
	if ip := net.ParseIP(host); ip == nil || ip.To4() == nil {
		return "", 0, fmt.Errorf("portal %q: want an IPv4 address, optionally with :port", portal)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil || port < 1 || port > 65535 {
		return "", 0, fmt.Errorf("portal %q: bad port", portal)
	}
	return host, port, nil
}

// Render returns the session script; it fails on anything that would make a
// script iPXE cannot run or that could inject commands.
func Render(s Session) (string, error) {
	if s.Retries <= 0 {
		s.Retries = 3
	}
	if s.RetryDelay <= 0 {
		s.RetryDelay = 5
	}
	if s.OnFailure == "" {
		s.OnFailure = FailureExit
	}
	if s.OnFailure != FailureExit && s.OnFailure != FailureReboot {
		return "", fmt.Errorf("on failure %q: want exit or reboot", s.OnFailure)
	}
	for name, v := range map[string]string{"target IQN": s.TargetIQN, "initiator IQN": s.InitiatorIQN} {
		if !validIQN(v) {
			return "", fmt.Errorf("%s %q: want iqn.YYYY-MM.reverse.domain[:name] in lowercase", name, v)
		}
	}
	for name, v := range map[string]string{"session name": s.Name, "image name": s.Image} {
		if !safeWord(v) {
			return "", fmt.Errorf("%s: must be non-empty and contain only letters, digits and . _ - / :", name)
		}
	}
	creds, err := credentialLines(s.Credentials)
	if err != nil {
		return "", err
	}
	uri, err := SANURI(s.Portal, s.LUN, s.TargetIQN)
	if err != nil {
		return "", err
	}
	var b strings.Builder
	w := func(format string, a ...any) { fmt.Fprintf(&b, format+"\n", a...) }
	w("#!ipxe")
	w("# GGnet session %s", s.Name)
	w("echo GGnet: booting %s from image %s", s.Name, s.Image)
	w("set initiator-iqn %s", s.InitiatorIQN)
	b.WriteString(creds)
	// san-retries counts the reopens (about 5 s apart) of a SAN device
	// whose command failed after it was attached: 20 carry a target outage
	// of about 100 s (tgtd restarting, the agent rebuilding the target)
	// inside the disk call, so that a boot loader reading through iPXE's
	// INT 13h sees no error. The first login of sanboot is not retried by
	// it: a wrong secret or an unreachable portal fails at once, and this
	// script has its own retries with a message each.
	w("set san-retries %d", SANRetries)
	for i := 1; i <= s.Retries+1; i++ {
		w(":attempt%d", i)
		w("sanboot %s || goto failed%d", uri, i)
		w(":failed%d", i)
		if i <= s.Retries {
			w("echo GGnet: iSCSI boot from %s failed (${errno}), retrying in %d s (%d of %d)", s.TargetIQN, s.RetryDelay, i, s.Retries)
			w("sleep %d", s.RetryDelay)
		}
	}
	w("echo GGnet: cannot boot %s from iSCSI target %s at %s (${errno})", s.Name, s.TargetIQN, s.Portal)
	// Tell the agent that served this script (its URL is iPXE's filename);
	// its answer says what to do next. Without an answer, go on below.
	w("chain --replace --autofree %s ||", ReportURL)
	switch s.OnFailure {
	case FailureReboot:
		w("echo GGnet: rebooting in 10 s")
		w("sleep 10")
		w("reboot")
	default:
		w("echo GGnet: returning to the firmware's next boot device in 10 s")
		w("sleep 10")
		w("exit 1")
	}
	out := b.String()
	if err := Validate(out); err != nil {
		return "", fmt.Errorf("rendered script does not validate: %w", err)
	}
	return out, nil
}

// credentialLines returns the lines that set c, or the preview's comment
// line when c is nil. Its errors never contain a credential.
func credentialLines(c *Credentials) (string, error) {
	if c == nil {
		return CredentialsComment + "\n", nil
	}
	fields := []struct{ name, v string }{{"CHAP username", c.Username}, {"CHAP password", c.Password}}
	if c.TargetUsername != "" || c.TargetPassword != "" {
		fields = append(fields, struct{ name, v string }{"mutual CHAP username", c.TargetUsername},
			struct{ name, v string }{"mutual CHAP password", c.TargetPassword})
	}
	for _, f := range fields {
		if !safeWord(f.v) {
			return "", fmt.Errorf("%s: must be non-empty and contain only letters, digits and . _ - / :", f.name)
		}
	}
	if c.TargetPassword != "" && c.TargetPassword == c.Password {
		return "", fmt.Errorf("mutual CHAP password must differ from the CHAP password")
	}
	out := "set username " + c.Username + "\nset password " + c.Password + "\n"
	if c.TargetUsername != "" {
		out += "set reverse-username " + c.TargetUsername + "\nset reverse-password " + c.TargetPassword + "\n"
	}
	return out, nil
}

// AddCredentials completes a preview script (Render with nil Credentials, as
// kept in BootSession.status.script) with c, as the boot agent does when it
// serves the script. It fails if preview is not a valid preview. Its errors
// never contain a credential.
func AddCredentials(preview string, c Credentials) (string, error) {
	if err := Validate(preview); err != nil {
		return "", fmt.Errorf("preview: %w", err)
	}
	marker := "\n" + CredentialsComment + "\n"
	if strings.Count(preview, marker) != 1 {
		return "", fmt.Errorf("preview: want exactly one line %q", CredentialsComment)
	}
	if hasCredentials(preview) {
		return "", fmt.Errorf("preview already sets CHAP credentials")
	}
	lines, err := credentialLines(&c)
	if err != nil {
		return "", err
	}
	out := strings.Replace(preview, marker, "\n"+lines, 1)
	if err := Validate(out); err != nil {
		return "", fmt.Errorf("script with credentials does not validate: %w", err)
	}
	return out, nil
}

// hasCredentials reports whether script sets any CHAP setting.
func hasCredentials(script string) bool {
	for _, raw := range strings.Split(script, "\n") {
		f := strings.Fields(raw)
		if len(f) >= 2 && f[0] == "set" {
			switch f[1] {
			case "username", "password", "reverse-username", "reverse-password":
				return true
			}
		}
	}
	return false
}

// Fallback is the script for a machine that has no session to boot: it says
// why, then exits to local boot, reboots, or waits and fetches its script
// again from retryURL.
func Fallback(reason string, on Failure, delay int, retryURL string) (string, error) {
	if delay <= 0 {
		delay = 10
	}
	if !safeText(reason) {
		return "", fmt.Errorf("reason must be printable text without $, quotes or newlines")
	}
	var b strings.Builder
	w := func(format string, a ...any) { fmt.Fprintf(&b, format+"\n", a...) }
	w("#!ipxe")
	w("echo GGnet: %s", reason)
	switch on {
	case FailureRetry:
		if !safeURL(retryURL) {
			return "", fmt.Errorf("retry URL %q: want an http:// URL without spaces or $", retryURL)
		}
		w("echo GGnet: asking again in %d s", delay)
		w("sleep %d", delay)
		w("chain --replace --autofree %s", retryURL)
	case FailureReboot:
		w("sleep %d", delay)
		w("reboot")
	case FailureExit, "":
		w("echo GGnet: returning to the firmware's next boot device")
		w("exit 1")
	default:
		return "", fmt.Errorf("fallback %q: want exit, reboot or retry", on)
	}
	out := b.String()
	if err := Validate(out); err != nil {
		return "", fmt.Errorf("rendered fallback does not validate: %w", err)
	}
	return out, nil
}

func validIQN(s string) bool {
	if len(s) > 223 || !strings.HasPrefix(s, "iqn.") || len(s) < len("iqn.2026-11.a") {
		return false
	}
	// iqn.YYYY-MM.
	date := s[4:]
	if len(date) < 8 || date[7] != '.' || date[4] != '-' {
		return false
	}
	for i, c := range date[:7] {
		if i == 4 {
			continue
		}
		if c < '0' || c > '9' {
			return false
		}
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '.' || c == '-' || c == ':') {
			return false
		}
	}
	return true
}

func safeWord(s string) bool {
	if s == "" || len(s) > 255 {
		return false
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.ContainsRune("._-/:", c)) {
			return false
		}
	}
	return true
}

func safeText(s string) bool {
	if s == "" || len(s) > 200 {
		return false
	}
	for _, c := range s {
		if c < 0x20 || c > 0x7e || strings.ContainsRune("$\"'`\\|&", c) {
			return false
		}
	}
	return true
}

func safeURL(s string) bool {
	if !(strings.HasPrefix(s, "http://") || strings.HasPrefix(s, "https://") || strings.HasPrefix(s, "tftp://")) {
		return false
	}
	for _, c := range s {
		if c <= 0x20 || c > 0x7e || strings.ContainsRune("$\"'`\\|&", c) {
			return false
		}
	}
	return true
}

// SANRetries is the session script's san-retries.
const SANRetries = 20
