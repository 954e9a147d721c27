package tftp

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/go-logr/logr/funcr"
	. "github.com/onsi/gomega"
	"github.com/pin/tftp/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"golang.org/x/net/ipv4"
)

// fakeScripts is the table's authorization as a map: a MAC's token and bound
// address, and its script ("" for a MAC without a bootable session).
type fakeScripts struct {
	machines     map[string]fakeMachine
	requireToken bool
	fail         error // returned for every request when set
}

type fakeMachine struct {
	token, script string
	addr          netip.Addr
}

func (f fakeScripts) Script(mac net.HardwareAddr, token string, peer netip.Addr) (string, error) {
	if f.fail != nil {
		return "", f.fail
	}
	m, ok := f.machines[mac.String()]
	switch {
	case !ok:
		return "", ErrForbidden
	case token == "" && f.requireToken:
		return "", ErrForbidden
	case token != "" && subtle.ConstantTimeCompare([]byte(token), []byte(m.token)) != 1:
		return "", ErrForbidden
	case peer != m.addr:
		return "", ErrForbidden
	case m.script == "":
		return "", ErrNoScripts
	}
	return m.script, nil
}

const (
	script = "#!ipxe\nsanboot iscsi:10.0.0.1::::iqn.2026-11.io.ggnet:a\n"
	token  = "abcdefghijklmnopqrstuvwxyz234567"
	other  = "bbcdefghijklmnopqrstuvwxyz234567"
	mac31  = "52:54:00:12:34:31"
	mac32  = "52:54:00:12:34:32" // known, no bootable session
)

var (
	loopback  = netip.MustParseAddr("127.0.0.1")
	loopback2 = netip.MustParseAddr("127.0.0.2")
)

func machines() fakeScripts {
	return fakeScripts{requireToken: true, machines: map[string]fakeMachine{
		mac31: {token: token, script: script, addr: loopback},
		mac32: {token: other, addr: loopback},
	}}
}

// serve starts a server on a loopback ephemeral port over a root holding
// ipxe.efi (1 MiB of random bytes) and a symlink that points outside it.
func serve(t *testing.T, scripts Scripts, opts ...Option) (addr string, efi []byte, m *Metrics) {
	t.Helper()
	dir := t.TempDir()
	root := filepath.Join(dir, "root")
	must(t, os.MkdirAll(filepath.Join(root, "sub"), 0o755))
	must(t, os.MkdirAll(filepath.Join(root, "boot", token), 0o755))
	efi = make([]byte, 1<<20+123)
	_, _ = rand.Read(efi)
	must(t, os.WriteFile(filepath.Join(root, "ipxe.efi"), efi, 0o644))
	must(t, os.WriteFile(filepath.Join(root, "sub", "undionly.kpxe"), []byte("kpxe"), 0o644))
	// A file in the script namespace is never served.
	must(t, os.WriteFile(filepath.Join(root, "boot", token, mac31+".ipxe"), []byte("from disk"), 0o644))
	must(t, os.WriteFile(filepath.Join(dir, "secret"), []byte("secret"), 0o600))
	must(t, os.Symlink(filepath.Join(dir, "secret"), filepath.Join(root, "escape")))

	m = NewMetrics(prometheus.NewRegistry())
	s, err := New(root, scripts, append([]Option{WithMetrics(m)}, opts...)...)
	must(t, err)
	conn, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	must(t, err)
	// pin/tftp caps blksize at the receiving interface's MTU, which it learns
	// from IP_PKTINFO; Serve turns that on, and a request queued before it
	// did (the test's first, racing the goroutine) would get 512-byte blocks.
	must(t, ipv4.NewPacketConn(conn).SetControlMessage(ipv4.FlagDst|ipv4.FlagInterface, true))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = s.Serve(ctx, conn); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return conn.LocalAddr().String(), efi, m
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func client(addr string, blksize int) *tftp.Client {
	c, err := tftp.NewClient(addr)
	if err != nil {
		panic(err)
	}
	c.SetTimeout(time.Second)
	c.SetRetries(2)
	if blksize > 0 {
		c.SetBlockSize(blksize)
	}
	c.RequestTSize(true)
	return c
}

func fetch(addr, name string, blksize int) ([]byte, int64, error) {
	wt, err := client(addr, blksize).Receive(name, "octet")
	if err != nil {
		return nil, 0, err
	}
	return finish(wt)
}

func finish(wt io.WriterTo) ([]byte, int64, error) {
	size, _ := wt.(tftp.IncomingTransfer).Size()
	var buf bytes.Buffer
	_, err := wt.WriteTo(&buf)
	return buf.Bytes(), size, err
}

// relay returns an address on 127.0.0.1 that forwards TFTP packets to
// server from 127.0.0.2, so that pin/tftp's client (which binds the
// wildcard address, and the kernel sends to loopback from 127.0.0.1) can be
// a second source. Replies come from the server's transfer port, which the
// relay follows as the client would.
func relay(t *testing.T, server string) string {
	t.Helper()
	front, err := net.ListenUDP("udp4", &net.UDPAddr{IP: loopback.AsSlice()})
	must(t, err)
	back, err := net.ListenUDP("udp4", &net.UDPAddr{IP: loopback2.AsSlice()})
	must(t, err)
	target, err := net.ResolveUDPAddr("udp4", server)
	must(t, err)
	var (
		mu          sync.Mutex
		clientAddr  net.Addr
		replyTarget = target
	)
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		buf := make([]byte, 65536)
		for {
			n, from, err := front.ReadFrom(buf)
			if err != nil {
				return
			}
			mu.Lock()
			clientAddr = from
			to := replyTarget
			mu.Unlock()
			_, _ = back.WriteTo(buf[:n], to)
		}
	}()
	go func() {
		defer wg.Done()
		buf := make([]byte, 65536)
		for {
			n, from, err := back.ReadFromUDP(buf)
			if err != nil {
				return
			}
			mu.Lock()
			replyTarget = from
			to := clientAddr
			mu.Unlock()
			if to != nil {
				_, _ = front.WriteTo(buf[:n], to)
			}
		}
	}()
	t.Cleanup(func() { _ = front.Close(); _ = back.Close(); wg.Wait() })
	return front.LocalAddr().String()
}

// captureLog returns a logger at full verbosity and what it has logged.
func captureLog() (logr.Logger, func() string) {
	var mu sync.Mutex
	var b strings.Builder
	log := funcr.New(func(prefix, args string) {
		mu.Lock()
		defer mu.Unlock()
		b.WriteString(prefix + " " + args + "\n")
	}, funcr.Options{Verbosity: 5})
	return log, func() string {
		mu.Lock()
		defer mu.Unlock()
		return b.String()
	}
}

func scriptName(mac, tok string) string {
	if tok == "" {
		return "boot/" + mac + ".ipxe"
	}
	return "boot/" + tok + "/" + mac + ".ipxe"
}

func TestServeFilesAndScripts(t *testing.T) {
	g := NewWithT(t)
	addr, efi, m := serve(t, machines())
	for _, blk := range []int{0, 1468, 8192} {
		got, size, err := fetch(addr, "ipxe.efi", blk)
		g.Expect(err).NotTo(HaveOccurred(), "blksize %d", blk)
		g.Expect(size).To(Equal(int64(len(efi))), "tsize")
		g.Expect(bytes.Equal(got, efi)).To(BeTrue(), "content with blksize %d", blk)
	}
	got, _, err := fetch(addr, "sub/undionly.kpxe", 0)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(string(got)).To(Equal("kpxe"))

	for _, name := range []string{scriptName(mac31, token), scriptName("52-54-00-12-34-31", token), scriptName("52:54:00:12:34:31", token)} {
		got, size, err := fetch(addr, name, 0)
		g.Expect(err).NotTo(HaveOccurred())
		g.Expect(string(got)).To(Equal(script))
		g.Expect(size).To(Equal(int64(len(script))))
	}
	// The server counts a transfer once the client's last ACK is in.
	g.Eventually(func() float64 { return testutil.ToFloat64(m.transfers.WithLabelValues("ipxe.efi", ResultOK)) }).Should(Equal(3.0))
	g.Eventually(func() float64 { return testutil.ToFloat64(m.transfers.WithLabelValues(RouteScript, ResultOK)) }).Should(Equal(3.0))
	g.Eventually(func() float64 { return testutil.ToFloat64(m.bytes.WithLabelValues("ipxe.efi")) }).Should(Equal(float64(3 * len(efi))))
	g.Eventually(func() float64 { return testutil.ToFloat64(m.bytes.WithLabelValues(RouteScript)) }).Should(Equal(float64(3 * len(script))))
}

func TestScriptAuthorization(t *testing.T) {
	tokenless := machines()
	tokenless.requireToken = false
	failing := func(err error) fakeScripts { f := machines(); f.fail = err; return f }
	// Implementers' texts stay in the log: the client sees the sentinel's text only.
	secretive := "internal detail of the table"
	for _, tc := range []struct {
		name      string
		scripts   fakeScripts
		file      string
		from2     bool   // request from 127.0.0.2 instead of 127.0.0.1
		wantErr   string // "" for the script
		wantLabel string // result counted for the script route
	}{
		{name: "right token, right peer", scripts: machines(), file: scriptName(mac31, token), wantLabel: ResultOK},
		{name: "wrong token", scripts: machines(), file: scriptName(mac31, other), wantErr: "code: 2, message: forbidden", wantLabel: ResultForbidden},
		{name: "right token, wrong peer", scripts: machines(), file: scriptName(mac31, token), from2: true, wantErr: "code: 2, message: forbidden", wantLabel: ResultForbidden},
		{name: "unknown MAC", scripts: machines(), file: scriptName("52:54:00:99:99:99", token), wantErr: "code: 2, message: forbidden", wantLabel: ResultForbidden},
		{name: "tokenless while tokens are required", scripts: machines(), file: scriptName(mac31, ""), wantErr: "code: 2, message: forbidden", wantLabel: ResultForbidden},
		{name: "old name while tokens are required", scripts: machines(), file: mac31 + ".ipxe", wantErr: "code: 2, message: forbidden", wantLabel: ResultForbidden},
		{name: "tokenless allowed", scripts: tokenless, file: scriptName(mac31, ""), wantLabel: ResultOK},
		{name: "old name allowed", scripts: tokenless, file: "52-54-00-12-34-31.ipxe", wantLabel: ResultOK},
		{name: "tokenless allowed, wrong peer", scripts: tokenless, file: scriptName(mac31, ""), from2: true, wantErr: "code: 2, message: forbidden", wantLabel: ResultForbidden},
		{name: "allowed, no bootable session", scripts: machines(), file: scriptName(mac32, other), wantErr: "code: 1, message: no script for this machine", wantLabel: ResultNoScript},
		{name: "not ready", scripts: failing(ErrNotReady), file: scriptName(mac31, token), wantErr: "code: 1, message: boot agent not ready", wantLabel: ResultNotReady},
		{name: "wrapped forbidden", scripts: failing(fmt.Errorf("%w: %s", ErrForbidden, secretive)), file: scriptName(mac31, token), wantErr: "code: 2, message: forbidden\x00", wantLabel: ResultForbidden},
		{name: "other error", scripts: failing(errors.New(secretive)), file: scriptName(mac31, token), wantErr: "code: 1, message: script lookup failed\x00", wantLabel: ResultError},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := NewWithT(t)
			log, logged := captureLog()
			addr, _, m := serve(t, tc.scripts, WithLogger(log))
			if tc.from2 {
				addr = relay(t, addr)
			}
			got, _, err := fetch(addr, tc.file, 0)
			if tc.wantErr == "" {
				g.Expect(err).NotTo(HaveOccurred())
				g.Expect(string(got)).To(Equal(script))
			} else {
				g.Expect(err).To(MatchError(ContainSubstring(tc.wantErr)))
				g.Expect(got).To(BeEmpty())
			}
			g.Eventually(func() float64 { return testutil.ToFloat64(m.transfers.WithLabelValues(RouteScript, tc.wantLabel)) }).Should(Equal(1.0))
			g.Expect(testutil.CollectAndCount(m.transfers)).To(Equal(1), "one series: the request is counted once")
			if tc.wantErr != "" {
				g.Expect(testutil.ToFloat64(m.bytes.WithLabelValues(RouteScript))).To(BeZero(), "nothing of the script sent")
			}
			g.Eventually(logged).Should(ContainSubstring("TFTP"), "the transfer is logged")
			g.Expect(logged()).NotTo(Or(ContainSubstring(token), ContainSubstring(other), ContainSubstring("sanboot")), "no token or script in the log")
		})
	}
}

func TestPerSourceLimit(t *testing.T) {
	g := NewWithT(t)
	addr, efi, m := serve(t, machines(), WithMaxPerSource(2))
	// Two transfers from 127.0.0.1 held open: the server has sent its first
	// packet (OACK for tsize) and waits for the ACK.
	var held []io.WriterTo
	for range 2 {
		wt, err := client(addr, 0).Receive("ipxe.efi", "octet")
		g.Expect(err).NotTo(HaveOccurred())
		held = append(held, wt)
	}
	_, _, err := fetch(addr, "ipxe.efi", 0)
	g.Expect(err).To(MatchError(ContainSubstring("too many transfers from this address")))
	_, _, err = fetch(addr, scriptName(mac31, token), 0)
	g.Expect(err).To(MatchError(ContainSubstring("too many transfers from this address")), "scripts count too")
	g.Expect(testutil.ToFloat64(m.transfers.WithLabelValues("busy", ResultSourceCap))).To(Equal(2.0))

	// Another source is not held back by 127.0.0.1's transfers.
	got, _, err := fetch(relay(t, addr), "ipxe.efi", 0)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(bytes.Equal(got, efi)).To(BeTrue())

	for _, wt := range held {
		got, _, err := finish(wt)
		g.Expect(err).NotTo(HaveOccurred())
		g.Expect(bytes.Equal(got, efi)).To(BeTrue())
	}
	// Slots are given back once a transfer ends.
	g.Eventually(func() error { _, _, err := fetch(addr, "sub/undionly.kpxe", 0); return err }).Should(Succeed())
}

func TestGlobalLimit(t *testing.T) {
	g := NewWithT(t)
	addr, _, m := serve(t, machines(), WithMaxTransfers(1))
	wt, err := client(addr, 0).Receive("ipxe.efi", "octet")
	g.Expect(err).NotTo(HaveOccurred())
	_, _, err = fetch(relay(t, addr), "ipxe.efi", 0)
	g.Expect(err).To(MatchError(ContainSubstring("too many transfers")))
	g.Expect(testutil.ToFloat64(m.transfers.WithLabelValues("busy", ResultRefused))).To(Equal(1.0))
	_, _, err = finish(wt)
	g.Expect(err).NotTo(HaveOccurred())
}

func TestNewValidates(t *testing.T) {
	g := NewWithT(t)
	dir := t.TempDir()
	_, err := New(dir, machines(), WithMaxPerSource(0))
	g.Expect(err).To(MatchError(ContainSubstring("at least 1")))
	_, err = New(dir, machines(), WithMaxTransfers(-1))
	g.Expect(err).To(MatchError(ContainSubstring("at least 1")))
	_, err = New(dir, nil)
	g.Expect(err).To(HaveOccurred())
	_, err = New(filepath.Join(dir, "missing"), machines())
	g.Expect(err).To(MatchError(ContainSubstring("opening the TFTP root")))
}

func TestServeRefuses(t *testing.T) {
	log, logged := captureLog()
	addr, _, m := serve(t, machines(), WithLogger(log))
	for _, name := range []string{
		"../secret", "sub/../../secret", "/etc/passwd", "escape", "missing.efi", "sub",
		`sub\undionly.kpxe`, "./ipxe.efi",
		"boot/../ipxe.efi", "boot/" + token + "/../../escape", "boot/" + token + "/../" + mac31 + ".ipxe",
		"/" + scriptName(mac31, token), scriptName(mac31, token) + "/", "boot/" + token + "//" + mac31 + ".ipxe",
		"boot/" + strings.ToUpper(token) + "/" + mac31 + ".ipxe", "boot/" + token, "boot/x/y/" + mac31 + ".ipxe",
	} {
		t.Run(name, func(t *testing.T) {
			g := NewWithT(t)
			got, _, err := fetch(addr, name, 0)
			g.Expect(err).To(HaveOccurred())
			g.Expect(got).To(BeEmpty())
		})
	}
	NewWithT(t).Expect(testutil.ToFloat64(m.transfers.WithLabelValues(RouteScript, ResultOK))).To(BeZero())
	NewWithT(t).Expect(logged()).NotTo(ContainSubstring(token[:20]), "no token, even a malformed one, in the log")
	t.Run("write", func(t *testing.T) {
		g := NewWithT(t)
		c, err := tftp.NewClient(addr)
		g.Expect(err).NotTo(HaveOccurred())
		c.SetTimeout(time.Second)
		rf, err := c.Send("ipxe.efi", "octet")
		if err == nil {
			_, err = rf.ReadFrom(strings.NewReader("overwrite"))
		}
		g.Expect(err).To(MatchError(ContainSubstring("read-only")))
	})
}
