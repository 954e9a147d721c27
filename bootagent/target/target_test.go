package target

import (
	"strings"
	"testing"

	. "github.com/onsi/gomega"
)

func TestValidate(t *testing.T) {
	good := Target{IQN: prefix + "a", LUN: 1, Path: "/x", InitiatorIQN: prefix + "b", CHAPUser: "u", CHAPPassword: "0123456789ab",
		TargetUser: "t", TargetPassword: "ba9876543210"}
	NewWithT(t).Expect(good.Validate()).To(Succeed())
	for _, tc := range []struct {
		name string
		f    func(*Target)
		says string // "" when valid
	}{
		{"short secret", func(t *Target) { t.CHAPPassword = "short" }, "CHAP secrets must be 12 to 16 characters"},
		{"long secret", func(t *Target) { t.CHAPPassword = "0123456789abcdefg" }, "CHAP secrets must be 12 to 16 characters"},
		{"16 characters", func(t *Target) { t.CHAPPassword = "0123456789abcdef" }, ""},
		{"LUN 0", func(t *Target) { t.LUN = 0 }, "LUN 0 is the controller"},
		{"LUN 256", func(t *Target) { t.LUN = 256 }, "want 1 to 255"},
		{"space", func(t *Target) { t.Path = "/a b" }, "path: empty field or one with spaces, quotes or separators"},
		{"comma", func(t *Target) { t.CHAPUser = "a,b" }, "CHAP user: empty field or one with spaces"},
		{"empty password", func(t *Target) { t.CHAPPassword = "" }, "CHAP secret: empty field"},
		{"not iqn", func(t *Target) { t.IQN = "eui.1" }, "want iqn. names"},
		{"initiator eui", func(t *Target) { t.InitiatorIQN = "eui.1" }, "initiator: iSCSI name \"eui.1\": want iqn. names"},
		{"initiator uppercase", func(t *Target) { t.InitiatorIQN = prefix + "Seat-1" }, "initiator: iSCSI name"},
		{"no mutual CHAP", func(t *Target) { t.TargetUser, t.TargetPassword = "", "" }, ""},
		{"target user without secret", func(t *Target) { t.TargetPassword = "" }, "target CHAP secret: empty field"},
		{"target secret without user", func(t *Target) { t.TargetUser = "" }, "target CHAP user: empty field"},
		{"short target secret", func(t *Target) { t.TargetPassword = "01234567890" }, "target CHAP secrets must be 12 to 16 characters"},
		{"long target secret", func(t *Target) { t.TargetPassword = "0123456789abcdefX" }, "target CHAP secrets must be 12 to 16 characters"},
		{"target secret with a quote", func(t *Target) { t.TargetPassword = "0123456789'b" }, "target CHAP secret: empty field or one with spaces, quotes"},
		{"same secret both ways", func(t *Target) { t.TargetPassword = t.CHAPPassword }, "must differ from the initiator's"},
		{"same user both ways", func(t *Target) { t.TargetUser = t.CHAPUser }, "target CHAP user must differ"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := NewWithT(t)
			x := good
			tc.f(&x)
			err := x.Validate()
			if tc.says == "" {
				g.Expect(err).NotTo(HaveOccurred())
				return
			}
			g.Expect(err).To(MatchError(ContainSubstring(tc.says)))
			for _, s := range []string{x.CHAPPassword, x.TargetPassword} {
				if len(s) > 3 {
					g.Expect(err.Error()).NotTo(ContainSubstring(s), "no secret in the error")
				}
			}
		})
	}
}

func TestValidIQN(t *testing.T) {
	long := "iqn.2026-11.io.ggnet:" + strings.Repeat("a", 223-len("iqn.2026-11.io.ggnet:"))
	for _, tc := range []struct {
		iqn  string
		says string // "" when valid
	}{
		{"iqn.2026-11.io.ggnet:cafe:seat-1", ""},
		{"iqn.1991-05.com.microsoft:desktop-7h2k", ""},
		{"iqn.2001-04.com.example", ""},
		{"iqn.2001-04.com.example:storage.disk2.sys1.xyz", ""},
		{"iqn.2010-10.org.ipxe:00000000-0000-0000-0000-000000000000", ""},
		{long, ""},
		{long + "a", "224 bytes: at most 223"},
		{"", "want iqn. names"},
		{"eui.02004567a425678d", "want iqn. names"},
		{"naa.52004567ba64678d", "want iqn. names"},
		{"IQN.2026-11.io.ggnet:a", "want iqn. names"},
		{"iqn.2026-11.io.ggnet:Seat", "only lowercase"},
		{"iqn.2026-11.io.ggnet:seat 1", "only lowercase"},
		{"iqn.2026-11.io.ggnet:seat_1", "only lowercase"},
		{"iqn.2026-11.io.ggnet:seat,1", "only lowercase"},
		{"iqn.2026-11.io.ggnet:s\u00e9at", "only lowercase"},
		{"iqn.2026-13.io.ggnet:a", "yyyy-mm"},
		{"iqn.2026-00.io.ggnet:a", "yyyy-mm"},
		{"iqn.26-11.io.ggnet:a", "yyyy-mm"},
		{"iqn.2026-1.io.ggnet:a", "yyyy-mm"},
		{"iqn.2026-11", "yyyy-mm"},
		{"iqn.2026-11io.ggnet", "yyyy-mm"},
		{"iqn.2026-11.", "reversed domain name after the date"},
		{"iqn.2026-11.:a", "reversed domain name after the date"},
		{"iqn.2026-11.io..ggnet:a", "not a reversed domain name"},
		{"iqn.2026-11.io.ggnet.:a", "not a reversed domain name"},
		{"iqn.2026-11.-io.ggnet:a", "not a reversed domain name"},
		{"iqn.2026-11.io.ggnet:", "empty unique string"},
	} {
		t.Run(tc.iqn, func(t *testing.T) {
			g := NewWithT(t)
			err := ValidIQN(tc.iqn)
			if tc.says == "" {
				g.Expect(err).NotTo(HaveOccurred())
				return
			}
			g.Expect(err).To(MatchError(ContainSubstring(tc.says)))
		})
	}
}
