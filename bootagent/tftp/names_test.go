package tftp

import (
	"net"
	"path/filepath"
	"strings"
	"testing"

	. "github.com/onsi/gomega"

	"github.com/ggnet/ggnet/internal/ipxe"
)

func TestResolve(t *testing.T) {
	for _, tc := range []struct {
		name string
		want Resolved // MAC compared by its string form
	}{
		{name: "52:54:00:AB:cd:ef.ipxe", want: Resolved{Kind: RouteScript, MAC: mustMAC("52:54:00:ab:cd:ef")}},
		{name: "52-54-00-ab-cd-ef.ipxe", want: Resolved{Kind: RouteScript, MAC: mustMAC("52:54:00:ab:cd:ef")}},
		{name: "boot/52:54:00:ab:cd:ef.ipxe", want: Resolved{Kind: RouteScript, MAC: mustMAC("52:54:00:ab:cd:ef")}},
		{name: "boot/" + token + "/52-54-00-AB-CD-EF.ipxe", want: Resolved{Kind: RouteScript, MAC: mustMAC("52:54:00:ab:cd:ef"), Token: token}},
		{name: "efi/ipxe.efi", want: Resolved{Kind: RouteFile, Path: "efi/ipxe.efi"}},
		{name: "x/52:54:00:ab:cd:ef.ipxe", want: Resolved{Kind: RouteFile, Path: "x/52:54:00:ab:cd:ef.ipxe"}},
		// Not a six-byte MAC in the colon or dash form: a file name.
		{name: "5254.00ab.cdef.ipxe", want: Resolved{Kind: RouteFile, Path: "5254.00ab.cdef.ipxe"}},
		{name: "52:54:00:ab:cd:ef:01:02.ipxe", want: Resolved{Kind: RouteFile, Path: "52:54:00:ab:cd:ef:01:02.ipxe"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := NewWithT(t)
			r, err := Resolve(tc.name)
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(r.Kind).To(Equal(tc.want.Kind))
			g.Expect(r.MAC.String()).To(Equal(tc.want.MAC.String()))
			g.Expect(r.Token).To(Equal(tc.want.Token))
			g.Expect(r.Path).To(Equal(tc.want.Path))
		})
	}
	for _, bad := range []string{
		"", "..", "a/../b", "/abs", "a//b", "a/", "a b", "a\x00", `a\b`, strings.Repeat("a", 256),
		// The script namespace holds script names only.
		"boot/ipxe.efi", "boot/" + token, "boot/" + token + "/", "boot/" + token + "/x.ipxe",
		"boot/" + token[:31] + "/52:54:00:ab:cd:ef.ipxe", "boot/" + token + "1/52:54:00:ab:cd:ef.ipxe",
		"boot/" + strings.ToUpper(token) + "/52:54:00:ab:cd:ef.ipxe", "boot/a/b/52:54:00:ab:cd:ef.ipxe",
		"boot/52:54:00:ab:cd-ef.ipxe", "boot/52:54:00:ab:cd:ef.IPXE", "/boot/52:54:00:ab:cd:ef.ipxe",
		"boot/../52:54:00:ab:cd:ef.ipxe", "boot/" + token + "/../52:54:00:ab:cd:ef.ipxe",
	} {
		_, err := Resolve(bad)
		NewWithT(t).Expect(err).To(MatchError(ErrBadName), "%q", bad)
	}
}

func TestLogNameHidesTokens(t *testing.T) {
	for _, tc := range []struct{ name, want string }{
		{"ipxe.efi", "ipxe.efi"},
		{"52-54-00-ab-cd-ef.ipxe", "52-54-00-ab-cd-ef.ipxe"},
		{"boot/52-54-00-ab-cd-ef.ipxe", "boot/52:54:00:ab:cd:ef.ipxe"},
		{"boot/" + token + "/52:54:00:ab:cd:ef.ipxe", "boot/(token)/52:54:00:ab:cd:ef.ipxe"},
		{"boot/" + token + "/52:54:00:ab:cd:ef.ipxe/", "boot/(invalid)"},
		{"boot/" + token, "boot/(invalid)"},
		{"/boot/" + token + "/52:54:00:ab:cd:ef.ipxe", "boot/(invalid)"},
		{"x/boot/" + token + "/52:54:00:ab:cd:ef.ipxe", "boot/(invalid)"},
		{"../secret", "../secret"},
		{"boot/" + token[:31] + "/52:54:00:ab:cd:ef.ipxe", "boot/(invalid)"},
	} {
		r, err := Resolve(tc.name)
		NewWithT(t).Expect(logName(tc.name, r, err)).To(Equal(tc.want), "%q", tc.name)
	}
}

func mustMAC(s string) net.HardwareAddr {
	m, err := net.ParseMAC(s)
	if err != nil {
		panic(err)
	}
	return m
}

func FuzzResolve(f *testing.F) {
	for _, s := range []string{
		"ipxe.efi", "../x", "52:54:00:12:34:56.ipxe", "a/b/c", "/x",
		"boot/" + token + "/52:54:00:12:34:56.ipxe", "boot/52-54-00-12-34-56.ipxe",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		r, err := Resolve(name)
		if err != nil {
			if ln := logName(name, r, err); strings.Contains(name, scriptDir) && ln != scriptDir+"(invalid)" && ln != name {
				t.Fatalf("%q logged as %q", name, ln)
			}
			return
		}
		switch r.Kind {
		case RouteFile:
			if !filepath.IsLocal(r.Path) || filepath.Clean(r.Path) != r.Path {
				t.Fatalf("%q resolved to a path outside the root or not clean: %q", name, r.Path)
			}
			if strings.HasPrefix(r.Path, scriptDir) {
				t.Fatalf("%q resolved to a file in the script namespace", name)
			}
		case RouteScript:
			if len(r.MAC) != 6 || r.Token != "" && !ipxe.ValidToken(r.Token) {
				t.Fatalf("%q resolved to a script with MAC %v, token of length %d", name, r.MAC, len(r.Token))
			}
			if r.Token != "" && strings.Contains(logName(name, r, nil), r.Token) {
				t.Fatalf("%q: the log name shows the token", name)
			}
		default:
			t.Fatalf("%q: kind %q", name, r.Kind)
		}
	})
}
