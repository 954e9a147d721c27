package ipxe

import (
	"net"
	"strings"
	"testing"

	. "github.com/onsi/gomega"
)

const token = "abcdefghijklmnopqrstuvwxyz234567"

func TestScriptPath(t *testing.T) {
	mac := net.HardwareAddr{0x52, 0x54, 0x00, 0xAB, 0xcd, 0x0f}
	for name, tc := range map[string]struct {
		token string
		want  string
	}{
		"with token":    {token, "boot/abcdefghijklmnopqrstuvwxyz234567/52:54:00:ab:cd:0f.ipxe"},
		"without token": {"", "boot/52:54:00:ab:cd:0f.ipxe"},
	} {
		t.Run(name, func(t *testing.T) {
			g := NewWithT(t)
			g.Expect(ScriptPath(mac, tc.token)).To(Equal(tc.want))
			g.Expect(string(AppendScriptPath([]byte("http://10.0.0.2:8880/"), mac, tc.token))).To(Equal("http://10.0.0.2:8880/" + tc.want))
			gotMAC, gotToken, err := ParseScriptPath(tc.want)
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(gotMAC).To(Equal(mac))
			g.Expect(gotToken).To(Equal(tc.token))
			upper := strings.Replace(tc.want, "ab:cd:0f", "AB-CD-0F", 1)
			upper = strings.ReplaceAll(upper, ":", "-")
			gotMAC, _, err = ParseScriptPath("/" + upper)
			g.Expect(err).NotTo(HaveOccurred(), "upper case, dashes, leading slash")
			g.Expect(gotMAC).To(Equal(mac))
		})
	}
}

func TestAppendScriptPathAllocates(t *testing.T) {
	mac := net.HardwareAddr{0x52, 0x54, 0x00, 0x12, 0x34, 0x56}
	buf := make([]byte, 0, 256)
	allocs := testing.AllocsPerRun(1000, func() {
		buf = AppendScriptPath(buf[:0], mac, token)
	})
	NewWithT(t).Expect(allocs).To(BeZero())
	NewWithT(t).Expect(string(buf)).To(Equal("boot/" + token + "/52:54:00:12:34:56.ipxe"))
}

func TestScriptURL(t *testing.T) {
	g := NewWithT(t)
	mac := net.HardwareAddr{0x52, 0x54, 0x00, 0x12, 0x34, 0x56}
	for _, base := range []string{"http://10.0.0.2:8880", "http://10.0.0.2:8880/", "http://10.0.0.2:8880//"} {
		g.Expect(ScriptURL(base, mac, token)).To(Equal("http://10.0.0.2:8880/boot/"+token+"/52:54:00:12:34:56.ipxe"), base)
	}
	g.Expect(ScriptURL("http://h", mac, "")).To(Equal("http://h/boot/52:54:00:12:34:56.ipxe"))
	buf := make([]byte, 0, 256)
	g.Expect(testing.AllocsPerRun(1000, func() { buf = AppendScriptURL(buf[:0], "http://10.0.0.2:8880/", mac, token) })).To(BeZero())
	g.Expect(LogScriptPath(mac, token)).To(Equal("boot/(token)/52:54:00:12:34:56.ipxe"))
	g.Expect(LogScriptPath(mac, "")).To(Equal("boot/52:54:00:12:34:56.ipxe"))
}

func TestMAC(t *testing.T) {
	g := NewWithT(t)
	mac := net.HardwareAddr{0x52, 0x54, 0x00, 0xab, 0xcd, 0x0f}
	g.Expect(string(AppendMAC(nil, mac))).To(Equal(mac.String()), "the form net.HardwareAddr.String and the API write")
	for _, s := range []string{"52:54:00:ab:cd:0f", "52-54-00-AB-CD-0F", "52:54:00:Ab:cD:0f"} {
		got, ok := ParseMAC(s)
		g.Expect(ok).To(BeTrue(), s)
		g.Expect(got).To(Equal(mac), s)
	}
	for _, s := range []string{"", "52:54:00:ab:cd", "52:54:00:ab:cd:0f:00", "52:54-00:ab:cd:0f", "5254.00ab.cd0f", "52:54:00:ab:cd:0g", " 52:54:00:ab:cd:0f"} {
		_, ok := ParseMAC(s)
		g.Expect(ok).To(BeFalse(), s)
	}
}

func TestParseScriptPath(t *testing.T) {
	mac := net.HardwareAddr{0x52, 0x54, 0x00, 0x12, 0x34, 0x56}
	for name, tc := range map[string]struct {
		path  string
		token string
		ok    bool
	}{
		"token":                 {"boot/" + token + "/52:54:00:12:34:56.ipxe", token, true},
		"token leading slash":   {"/boot/" + token + "/52:54:00:12:34:56.ipxe", token, true},
		"no token":              {"boot/52:54:00:12:34:56.ipxe", "", true},
		"no token slash":        {"/boot/52:54:00:12:34:56.ipxe", "", true},
		"dashes":                {"boot/" + token + "/52-54-00-12-34-56.ipxe", token, true},
		"upper-case MAC":        {"boot/52:54:00:12:34:56.ipxe", "", true},
		"mixed separators":      {"boot/52:54-00:12:34:56.ipxe", "", false},
		"short token":           {"boot/abc/52:54:00:12:34:56.ipxe", "", false},
		"upper-case token":      {"boot/" + strings.ToUpper(token) + "/52:54:00:12:34:56.ipxe", "", false},
		"token with 0":          {"boot/" + token[:31] + "0/52:54:00:12:34:56.ipxe", "", false},
		"empty token":           {"boot//52:54:00:12:34:56.ipxe", "", false},
		"two tokens":            {"boot/" + token + "/" + token + "/52:54:00:12:34:56.ipxe", "", false},
		"dot dot":               {"boot/../52:54:00:12:34:56.ipxe", "", false},
		"no boot":               {"52:54:00:12:34:56.ipxe", "", false},
		"other directory":       {"ipxe/52:54:00:12:34:56.ipxe", "", false},
		"no suffix":             {"boot/52:54:00:12:34:56", "", false},
		"long MAC":              {"boot/52:54:00:12:34:56:78:9a.ipxe", "", false},
		"not hex":               {"boot/52:54:00:12:34:5g.ipxe", "", false},
		"double slash":          {"//boot/52:54:00:12:34:56.ipxe", "", false},
		"query is not stripped": {"boot/52:54:00:12:34:56.ipxe?failed=1", "", false},
	} {
		t.Run(name, func(t *testing.T) {
			g := NewWithT(t)
			gotMAC, gotToken, err := ParseScriptPath(tc.path)
			if !tc.ok {
				g.Expect(err).To(MatchError(ErrBadScriptPath))
				g.Expect(gotMAC).To(BeNil())
				g.Expect(gotToken).To(BeEmpty())
				return
			}
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(gotMAC).To(Equal(mac))
			g.Expect(gotToken).To(Equal(tc.token))
		})
	}
}

func TestValidToken(t *testing.T) {
	for name, tc := range map[string]struct {
		s    string
		want bool
	}{
		"token":      {token, true},
		"empty":      {"", false},
		"short":      {token[:31], false},
		"long":       {token + "a", false},
		"upper case": {"A" + token[1:], false},
		"digit 1":    {"1" + token[1:], false},
		"padding":    {"=" + token[1:], false},
		"slash":      {"/" + token[1:], false},
	} {
		t.Run(name, func(t *testing.T) {
			NewWithT(t).Expect(ValidToken(tc.s)).To(Equal(tc.want))
		})
	}
}

func FuzzParseScriptPath(f *testing.F) {
	f.Add("boot/" + token + "/52:54:00:12:34:56.ipxe")
	f.Add("/boot/52-54-00-12-34-56.ipxe")
	f.Fuzz(func(t *testing.T, p string) {
		mac, tok, err := ParseScriptPath(p)
		if err != nil {
			return
		}
		if len(mac) != 6 || (tok != "" && !ValidToken(tok)) {
			t.Fatalf("parsed %q to a bad MAC %v or token", p, mac)
		}
		// What parses, formats back to its canonical form, which parses to
		// the same.
		mac2, tok2, err := ParseScriptPath(ScriptPath(mac, tok))
		if err != nil || mac2.String() != mac.String() || tok2 != tok {
			t.Fatalf("%q does not round-trip: %v", p, err)
		}
	})
}
