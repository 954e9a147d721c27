package ipxe

import (
	"strings"
	"testing"

	. "github.com/onsi/gomega"
)

func session() Session {
	return Session{
		Name: "cafe/seat-031-evening", Image: "win11-games",
		Portal: "10.20.0.5", TargetIQN: "iqn.2026-11.io.ggnet:cafe:seat-031-evening", LUN: 1,
		InitiatorIQN: "iqn.2026-11.io.ggnet:initiator:cafe:seat-031",
		Credentials: &Credentials{
			Username: "seat-031-evening", Password: "Xk2p9QvL0aB7cD4e",
			TargetUsername: "ggnet-target", TargetPassword: "Pq8rT3uVw5yZa1Bc",
		},
	}
}

func TestRenderParsesBack(t *testing.T) {
	g := NewWithT(t)
	script, err := Render(session())
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(script).To(HavePrefix("#!ipxe\n"))
	g.Expect(script).To(ContainSubstring("sanboot iscsi:10.20.0.5::3260:1:iqn.2026-11.io.ggnet:cafe:seat-031-evening || goto failed1"))
	g.Expect(strings.Count(script, "sanboot ")).To(Equal(4), "three retries after the first attempt")
	g.Expect(script).To(ContainSubstring("exit 1"))
	g.Expect(script).To(ContainSubstring("chain --replace --autofree ${filename}?failed=${errno} ||\n"), "a failed boot is reported")
	info, err := Parse(script)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(info).To(Equal(Info{
		Server: "10.20.0.5", Port: 3260, LUN: 1, TargetIQN: "iqn.2026-11.io.ggnet:cafe:seat-031-evening",
		InitiatorIQN: "iqn.2026-11.io.ggnet:initiator:cafe:seat-031", Username: "seat-031-evening", Password: "Xk2p9QvL0aB7cD4e",
		TargetUsername: "ggnet-target", TargetPassword: "Pq8rT3uVw5yZa1Bc",
	}))
}

func TestRenderCredentials(t *testing.T) {
	for name, tc := range map[string]struct {
		creds *Credentials
		want  []string
		not   []string
	}{
		"preview": {
			creds: nil,
			want:  []string{"set initiator-iqn iqn.2026-11.io.ggnet:initiator:cafe:seat-031\n" + CredentialsComment + "\nset san-retries 20\n"},
			not:   []string{"set username", "set password", "set reverse-"},
		},
		"one-way CHAP": {
			creds: &Credentials{Username: "u", Password: "Xk2p9QvL0aB7cD4e"},
			want:  []string{"\nset username u\nset password Xk2p9QvL0aB7cD4e\nset san-retries 20\n"},
			not:   []string{"set reverse-", CredentialsComment},
		},
		"mutual CHAP": {
			creds: &Credentials{Username: "u", Password: "Xk2p9QvL0aB7cD4e", TargetUsername: "t", TargetPassword: "Pq8rT3uVw5yZa1Bc"},
			want:  []string{"\nset username u\nset password Xk2p9QvL0aB7cD4e\nset reverse-username t\nset reverse-password Pq8rT3uVw5yZa1Bc\nset san-retries 20\n"},
			not:   []string{CredentialsComment},
		},
	} {
		t.Run(name, func(t *testing.T) {
			g := NewWithT(t)
			s := session()
			s.Credentials = tc.creds
			script, err := Render(s)
			g.Expect(err).NotTo(HaveOccurred())
			for _, w := range tc.want {
				g.Expect(script).To(ContainSubstring(w))
			}
			for _, n := range tc.not {
				g.Expect(script).NotTo(ContainSubstring(n))
			}
			info, err := Parse(script)
			g.Expect(err).NotTo(HaveOccurred())
			want := Credentials{}
			if tc.creds != nil {
				want = *tc.creds
			}
			g.Expect(Credentials{info.Username, info.Password, info.TargetUsername, info.TargetPassword}).To(Equal(want))
		})
	}
}

func TestAddCredentials(t *testing.T) {
	g := NewWithT(t)
	full, err := Render(session())
	g.Expect(err).NotTo(HaveOccurred())
	s := session()
	s.Credentials = nil
	preview, err := Render(s)
	g.Expect(err).NotTo(HaveOccurred())
	got, err := AddCredentials(preview, *session().Credentials)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(got).To(Equal(full), "the agent's script is the one Render makes with the credentials")

	for name, tc := range map[string]struct {
		preview string
		creds   Credentials
		want    string
	}{
		"already has credentials": {full, *session().Credentials, "want exactly one line"},
		"both":                    {strings.Replace(preview, CredentialsComment, CredentialsComment+"\nset password x", 1), *session().Credentials, "already sets"},
		"not a script":            {"echo\n", *session().Credentials, "want #!ipxe"},
		"injection":               {preview, Credentials{Username: "u", Password: "p\nshell"}, "CHAP password"},
		"empty password":          {preview, Credentials{Username: "u"}, "CHAP password"},
		"mutual without password": {preview, Credentials{Username: "u", Password: "Xk2p9QvL0aB7cD4e", TargetUsername: "t"}, "mutual CHAP password"},
		"mutual same password":    {preview, Credentials{Username: "u", Password: "Xk2p9QvL0aB7cD4e", TargetUsername: "t", TargetPassword: "Xk2p9QvL0aB7cD4e"}, "must differ"},
	} {
		t.Run(name, func(t *testing.T) {
			g := NewWithT(t)
			_, err := AddCredentials(tc.preview, tc.creds)
			g.Expect(err).To(MatchError(ContainSubstring(tc.want)))
			if tc.creds.Password != "" {
				g.Expect(err.Error()).NotTo(ContainSubstring(tc.creds.Password), "errors never carry a credential")
			}
		})
	}
}

func TestRenderOptions(t *testing.T) {
	g := NewWithT(t)
	s := session()
	s.Portal, s.Retries, s.RetryDelay, s.OnFailure = "10.20.0.5:3261", 1, 2, FailureReboot
	script, err := Render(s)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(strings.Count(script, "sanboot ")).To(Equal(2))
	g.Expect(script).To(ContainSubstring("sleep 2\n"))
	g.Expect(script).To(HaveSuffix("reboot\n"))
	info, err := Parse(script)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(info.Port).To(Equal(3261))
}

func TestRenderRefuses(t *testing.T) {
	for name, tc := range map[string]struct {
		change func(*Session)
		want   string
	}{
		"uppercase target":       {func(s *Session) { s.TargetIQN = "iqn.2026-11.io.ggnet:Cafe" }, "target IQN"},
		"not an IQN":             {func(s *Session) { s.InitiatorIQN = "eui.02004567A425678D" }, "initiator IQN"},
		"bad date":               {func(s *Session) { s.TargetIQN = "iqn.26-11.io.ggnet:a" }, "target IQN"},
		"password injection":     {func(s *Session) { s.Credentials.Password = "x\nshell" }, "CHAP password"},
		"username with space":    {func(s *Session) { s.Credentials.Username = "a b" }, "CHAP username"},
		"empty password":         {func(s *Session) { s.Credentials.Password = "" }, "CHAP password"},
		"mutual injection":       {func(s *Session) { s.Credentials.TargetPassword = "x${y}" }, "mutual CHAP password"},
		"mutual no username":     {func(s *Session) { s.Credentials.TargetUsername = "" }, "mutual CHAP username"},
		"mutual same password":   {func(s *Session) { s.Credentials.TargetPassword = s.Credentials.Password }, "must differ"},
		"hostname portal":        {func(s *Session) { s.Portal = "storage-1" }, "IPv4"},
		"bad port":               {func(s *Session) { s.Portal = "10.0.0.1:99999" }, "bad port"},
		"retry is not a failure": {func(s *Session) { s.OnFailure = FailureRetry }, "exit or reboot"},
	} {
		t.Run(name, func(t *testing.T) {
			g := NewWithT(t)
			s := session()
			tc.change(&s)
			_, err := Render(s)
			g.Expect(err).To(MatchError(ContainSubstring(tc.want)))
		})
	}
}

func TestFallback(t *testing.T) {
	g := NewWithT(t)
	s, err := Fallback("no boot session for 52:54:00:12:34:56", FailureRetry, 5, "http://10.20.0.2:8880/boot/52:54:00:12:34:56.ipxe")
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(s).To(Equal("#!ipxe\necho GGnet: no boot session for 52:54:00:12:34:56\necho GGnet: asking again in 5 s\nsleep 5\nchain --replace --autofree http://10.20.0.2:8880/boot/52:54:00:12:34:56.ipxe\n"))
	s, err = Fallback("unknown machine", FailureExit, 0, "")
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(s).To(HaveSuffix("exit 1\n"))
	_, err = Fallback("a ${x}", FailureExit, 0, "")
	g.Expect(err).To(HaveOccurred())
	_, err = Fallback("x", FailureRetry, 1, "http://a/b c")
	g.Expect(err).To(HaveOccurred())
	_, err = Parse(s)
	g.Expect(err).To(MatchError("no sanboot command"))
}

func TestValidate(t *testing.T) {
	for name, tc := range map[string]struct {
		script string
		want   string
	}{
		"no header":       {"echo hi\n", "want #!ipxe"},
		"unknown command": {"#!ipxe\nshell\n", `command "shell"`},
		"missing label":   {"#!ipxe\ngoto nowhere\n", `goto "nowhere": no such label`},
		"duplicate label": {"#!ipxe\n:a\n:a\n", "defined twice"},
		"and":             {"#!ipxe\nsleep 1 && reboot\n", "&&"},
		"or not goto":     {"#!ipxe\nsleep 1 || reboot\n", "|| goto"},
		"other variables": {"#!ipxe\nchain ${next-server}/x\n", "chain wants"},
		"http sanboot":    {"#!ipxe\nsanboot http://x/disk.img\n", "iscsi: URI"},
		"bad LUN":         {"#!ipxe\nsanboot iscsi:10.0.0.1::3260:x:iqn.2026-11.io.ggnet:a\n", "bad LUN"},
		"bad protocol":    {"#!ipxe\nsanboot iscsi:10.0.0.1:17:3260:0:iqn.2026-11.io.ggnet:a\n", "protocol"},
		"short URI":       {"#!ipxe\nsanboot iscsi:10.0.0.1:3260\n", "want iscsi:"},
		"bad setting":     {"#!ipxe\nset net0/ip 1.2.3.4\n", "bad setting name"},
		"long sleep":      {"#!ipxe\nsleep 100000\n", "sleep wants"},
		"chain option":    {"#!ipxe\nchain --timeout http://x/\n", "chain option"},
		"set arity":       {"#!ipxe\nset username\n", "takes 2 to 2"},
	} {
		t.Run(name, func(t *testing.T) {
			NewWithT(t).Expect(Validate(tc.script)).To(MatchError(ContainSubstring(tc.want)))
		})
	}
	NewWithT(t).Expect(Validate("#!ipxe\nset reverse-username t\nset reverse-password Pq8rT3uVw5yZa1Bc\n")).To(Succeed(), "mutual CHAP")
	NewWithT(t).Expect(Validate("#!ipxe\n# comment\n\nsanboot --keep iscsi:10.0.0.1::::iqn.2026-11.io.ggnet:a || goto x\n:x\nexit\n")).To(Succeed())
}

func FuzzParse(f *testing.F) {
	s, _ := Render(session())
	f.Add(s)
	p := session()
	p.Credentials = nil
	s, _ = Render(p)
	f.Add(s)
	f.Add("#!ipxe\nsanboot iscsi:10.0.0.1::::iqn.2026-11.io.ggnet:a\n")
	f.Fuzz(func(t *testing.T, script string) {
		info, err := Parse(script)
		if err != nil {
			return
		}
		// Whatever parses must name a valid target.
		if !validIQN(info.TargetIQN) {
			t.Fatalf("parsed a bad IQN %q", info.TargetIQN)
		}
		// Credentials read back are single words.
		for _, v := range []string{info.Username, info.Password, info.TargetUsername, info.TargetPassword} {
			if strings.ContainsAny(v, " \t\n") {
				t.Fatalf("parsed a credential with white space %q", v)
			}
		}
	})
}
