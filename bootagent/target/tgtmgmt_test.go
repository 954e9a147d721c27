package target

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	. "github.com/onsi/gomega"
)

// fakeTGTD listens where TGT{Socket: prefix, ControlPort: 7} dials and
// answers each request with answer(header, params).
type fakeTGTD struct {
	prefix string
	mu     sync.Mutex
	reqs   [][]byte
}

func startFakeTGTD(t *testing.T, answer func(mode tgtMode, op tgtOp, params string) (code uint32, text string)) *fakeTGTD {
	dir := t.TempDir()
	f := &fakeTGTD{prefix: filepath.Join(dir, "socket")}
	l, err := net.Listen("unix", f.prefix+".7")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			hdr := make([]byte, tgtReqSize)
			if _, err := io.ReadFull(c, hdr); err != nil {
				c.Close()
				continue
			}
			n := binary.NativeEndian.Uint32(hdr[72:])
			body := make([]byte, int(n)-tgtReqSize)
			_, _ = io.ReadFull(c, body)
			req := append(hdr, body...)
			f.mu.Lock()
			f.reqs = append(f.reqs, req)
			f.mu.Unlock()
			code, text := answer(tgtMode(binary.NativeEndian.Uint32(hdr)), tgtOp(binary.NativeEndian.Uint32(hdr[4:])), string(bytes.TrimRight(body, "\x00")))
			rsp := make([]byte, tgtRspSize)
			binary.NativeEndian.PutUint32(rsp, code)
			if code == 0 && text != "" {
				text += "\x00"
				binary.NativeEndian.PutUint32(rsp[4:], uint32(tgtRspSize+len(text)))
				rsp = append(rsp, text...)
			} else {
				binary.NativeEndian.PutUint32(rsp[4:], tgtRspSize)
			}
			_, _ = c.Write(rsp)
			c.Close()
		}
	}()
	return f
}

func (f *fakeTGTD) requests() [][]byte {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([][]byte(nil), f.reqs...)
}

// TestTGTWireMatchesTgtadm: the requests the driver sends are byte for byte
// those of Debian's tgtadm (tgt 1.0.85) for the same operations.
func TestTGTWireMatchesTgtadm(t *testing.T) {
	g := NewWithT(t)
	if _, err := exec.LookPath("tgtadm"); err != nil {
		t.Fatal("tgtadm (Debian package tgt) is the reference this test compares with: ", err)
	}
	f := startFakeTGTD(t, func(tgtMode, tgtOp, string) (uint32, string) { return 0, "" })
	c := tgtClient{path: f.prefix + ".7"}
	ctx := context.Background()
	const pw = "NotASecret-wire" // a test value: it is on tgtadm's command line below
	for _, tc := range []struct {
		args []string
		req  tgtRequest
	}{
		{[]string{"--mode", "target", "--op", "show"}, tgtRequest{mode: modeTarget, op: opShow}},
		{[]string{"--mode", "target", "--op", "new", "--tid", "3", "--targetname", "iqn.2026-11.io.ggnet:a"},
			tgtRequest{mode: modeTarget, op: opNew, tid: 3, params: []tgtParam{{name: "targetname", value: "iqn.2026-11.io.ggnet:a"}}}},
		{[]string{"--mode", "logicalunit", "--op", "new", "--tid", "3", "--lun", "1", "--backing-store", "/x/y.raw"},
			tgtRequest{mode: modeDevice, op: opNew, tid: 3, lun: 1, params: []tgtParam{{name: "path", value: "/x/y.raw"}}}},
		{[]string{"--mode", "target", "--op", "bind", "--tid", "3", "--initiator-name", "iqn.2026-11.io.ggnet:i"},
			tgtRequest{mode: modeTarget, op: opBind, tid: 3, params: []tgtParam{{name: "initiator-name", value: "iqn.2026-11.io.ggnet:i"}}}},
		{[]string{"--mode", "account", "--op", "new", "--user", "u1", "--password", pw},
			tgtRequest{mode: modeAccount, op: opNew, params: []tgtParam{{name: "user", value: "u1"}, {name: "password", value: pw, secret: true}}}},
		{[]string{"--mode", "account", "--op", "bind", "--tid", "3", "--user", "u1"},
			tgtRequest{mode: modeAccount, op: opBind, tid: 3, params: []tgtParam{{name: "user", value: "u1"}}}},
		{[]string{"--mode", "account", "--op", "bind", "--tid", "3", "--user", "u2", "--outgoing"},
			tgtRequest{mode: modeAccount, op: opBind, tid: 3, outgoing: true, params: []tgtParam{{name: "user", value: "u2"}}}},
		{[]string{"--mode", "account", "--op", "delete", "--user", "u1"},
			tgtRequest{mode: modeAccount, op: opDelete, params: []tgtParam{{name: "user", value: "u1"}}}},
		{[]string{"--mode", "account", "--op", "show"}, tgtRequest{mode: modeAccount, op: opShow}},
		{[]string{"--mode", "conn", "--op", "delete", "--tid", "3", "--sid", "7", "--cid", "2"},
			tgtRequest{mode: modeConnection, op: opDelete, tid: 3, sid: 7, cid: 2}},
		{[]string{"--mode", "target", "--op", "delete", "--force", "--tid", "3"},
			tgtRequest{mode: modeTarget, op: opDelete, tid: 3, force: true}},
	} {
		name := strings.Join(tc.args, " ")
		before := len(f.requests())
		cmd := exec.Command("tgtadm", append([]string{"-C", "7", "--lld", "iscsi"}, tc.args...)...)
		cmd.Env = append(os.Environ(), "TGT_IPC_SOCKET="+f.prefix)
		out, err := cmd.CombinedOutput()
		g.Expect(err).NotTo(HaveOccurred(), name+": "+string(out))
		_, err = c.do(ctx, tc.req)
		g.Expect(err).NotTo(HaveOccurred(), name)
		reqs := f.requests()
		g.Expect(reqs).To(HaveLen(before+2), name)
		g.Expect(reqs[before+1]).To(Equal(reqs[before]), name)
	}
}

// TestTGTErrorsRedacted: when tgtd refuses a request that carries a secret,
// the error names the request but not the secret.
func TestTGTErrorsRedacted(t *testing.T) {
	g := NewWithT(t)
	f := startFakeTGTD(t, func(mode tgtMode, op tgtOp, _ string) (uint32, string) {
		if mode == modeAccount && op == opNew {
			return 17, "" // invalid request
		}
		return 0, ""
	})
	d := &TGT{Socket: f.prefix, ControlPort: 7}
	a := mutual(sample(t, "r1"))
	err := d.Ensure(context.Background(), a)
	g.Expect(err).To(MatchError(ContainSubstring("tgtd account new user=" + a.CHAPUser + ": invalid request")))
	g.Expect(err.Error()).NotTo(ContainSubstring(a.CHAPPassword))
	g.Expect(err.Error()).NotTo(ContainSubstring(a.TargetPassword))
	sent := false
	for _, r := range f.requests() {
		sent = sent || bytes.Contains(r, []byte(",password="+a.CHAPPassword+"\x00"))
	}
	g.Expect(sent).To(BeTrue(), "the secret did travel, on the socket only")

	// The outgoing account's turn.
	f2 := startFakeTGTD(t, func(mode tgtMode, op tgtOp, params string) (uint32, string) {
		if mode == modeAccount && op == opBind && strings.Contains(params, a.TargetUser) {
			return 18, ""
		}
		return 0, ""
	})
	d = &TGT{Socket: f2.prefix, ControlPort: 7}
	err = d.Ensure(context.Background(), a)
	g.Expect(err).To(MatchError(ContainSubstring("outgoing: this target already has an outgoing account")))
	g.Expect(err.Error()).NotTo(ContainSubstring(a.TargetPassword))

	// A message that quotes a secret (a driver's error wrapping what a
	// daemon said) is scrubbed.
	g.Expect(redact(io.ErrUnexpectedEOF, a)).To(Equal(io.ErrUnexpectedEOF), "errors without secrets are kept as they are")
	err = redact(&os.PathError{Op: "write", Path: "x", Err: &TGTError{Mode: "m", Op: "o", Detail: "password=" + a.TargetPassword}}, a)
	g.Expect(err.Error()).To(Equal("write x: tgtd m o password=[redacted]: success"))
}

// TestTGTNoTgtd: a tgtd that is not running is an error naming the socket.
func TestTGTNoTgtd(t *testing.T) {
	g := NewWithT(t)
	d := &TGT{Socket: filepath.Join(t.TempDir(), "socket"), ControlPort: 7}
	_, err := d.List(context.Background(), "")
	g.Expect(err).To(MatchError(ContainSubstring("socket.7")))
	g.Expect(d.Ping(context.Background())).NotTo(Succeed())
}

// TestTGTSessionsOneRequest: the sessions of every target come from one
// target show, whatever the number of targets; targets of another prefix
// and targets nobody is logged in to are left out; each I_T nexus is one
// session.
func TestTGTSessionsOneRequest(t *testing.T) {
	g := NewWithT(t)
	show := ""
	for i, name := range []string{"cafe:s1", "cafe:s2", "cafe:s3"} {
		show += fmt.Sprintf("Target %d: %s%s\n    System information:\n        Driver: iscsi\n        State: ready\n    I_T nexus information:\n", i+1, prefix, name)
		if name == "cafe:s1" {
			show += "        I_T nexus: 7\n            Initiator: " + prefix + "initiator:cafe:seat-1 alias: none\n            Connection: 0\n                IP Address: 10.20.0.31\n" +
				"        I_T nexus: 9\n            Initiator: " + prefix + "initiator:cafe:seat-1 alias: seat-1\n            Connection: 1\n                IP Address: 10.20.0.31\n"
		}
		if name == "cafe:s3" {
			show += "        I_T nexus: 12\n            Initiator: " + prefix + "initiator:cafe:seat-3 alias: none\n            Connection: 0\n                IP Address: 10.20.0.33\n"
		}
		show += "    LUN information:\n        LUN: 0\n            Type: controller\n    Account information:\n    ACL information:\n"
	}
	show += "Target 4: iqn.2000-01.other:x\n    I_T nexus information:\n        I_T nexus: 1\n            Initiator: iqn.2000-01.other:i alias: none\n            Connection: 0\n                IP Address: 10.0.0.1\n"
	f := startFakeTGTD(t, func(mode tgtMode, op tgtOp, _ string) (uint32, string) {
		if mode == modeTarget && op == opShow {
			return 0, show
		}
		return 22, ""
	})
	d := &TGT{Socket: f.prefix, ControlPort: 7}
	got, err := d.Sessions(context.Background(), prefix)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(f.requests()).To(HaveLen(1), "one request for all targets")
	g.Expect(got).To(Equal(map[string][]Connection{
		prefix + "cafe:s1": {
			{Initiator: prefix + "initiator:cafe:seat-1", Address: "10.20.0.31", Session: "7", CID: "0"},
			{Initiator: prefix + "initiator:cafe:seat-1", Address: "10.20.0.31", Session: "9", CID: "1"},
		},
		prefix + "cafe:s3": {{Initiator: prefix + "initiator:cafe:seat-3", Address: "10.20.0.33", Session: "12", CID: "0"}},
	}))
}
