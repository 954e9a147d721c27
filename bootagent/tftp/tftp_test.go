package tftp

import (
	"bytes"
	"context"
	"crypto/rand"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	"github.com/pin/tftp/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

type mapScripts map[string]string

func (m mapScripts) Script(mac net.HardwareAddr) (string, bool) {
	s, ok := m[mac.String()]
	return s, ok
}

const script = "#!ipxe\nsanboot iscsi:10.0.0.1::::iqn.2026-11.io.ggnet:a\n"

// serve starts a server on a loopback ephemeral port over a root holding
// ipxe.efi (1 MiB of random bytes) and a symlink that points outside it.
func serve(t *testing.T) (addr string, efi []byte, m *Metrics) {
	t.Helper()
	dir := t.TempDir()
	root := filepath.Join(dir, "root")
	if err := os.MkdirAll(filepath.Join(root, "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	efi = make([]byte, 1<<20+123)
	_, _ = rand.Read(efi)
	must(t, os.WriteFile(filepath.Join(root, "ipxe.efi"), efi, 0o644))
	must(t, os.WriteFile(filepath.Join(root, "sub", "undionly.kpxe"), []byte("kpxe"), 0o644))
	must(t, os.WriteFile(filepath.Join(dir, "secret"), []byte("secret"), 0o600))
	must(t, os.Symlink(filepath.Join(dir, "secret"), filepath.Join(root, "escape")))

	m = NewMetrics(prometheus.NewRegistry())
	s, err := New(root, mapScripts{"52:54:00:12:34:31": script}, WithMetrics(m))
	must(t, err)
	conn, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	must(t, err)
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

func fetch(addr, name string, blksize int) ([]byte, int64, error) {
	c, err := tftp.NewClient(addr)
	if err != nil {
		return nil, 0, err
	}
	c.SetTimeout(time.Second)
	c.SetRetries(2)
	if blksize > 0 {
		c.SetBlockSize(blksize)
	}
	c.RequestTSize(true)
	wt, err := c.Receive(name, "octet")
	if err != nil {
		return nil, 0, err
	}
	size, _ := wt.(tftp.IncomingTransfer).Size()
	var buf bytes.Buffer
	_, err = wt.WriteTo(&buf)
	return buf.Bytes(), size, err
}

func TestServeFilesAndScripts(t *testing.T) {
	g := NewWithT(t)
	addr, efi, m := serve(t)
	for _, blk := range []int{0, 1468, 8192} {
		got, size, err := fetch(addr, "ipxe.efi", blk)
		g.Expect(err).NotTo(HaveOccurred(), "blksize %d", blk)
		g.Expect(size).To(Equal(int64(len(efi))), "tsize")
		g.Expect(bytes.Equal(got, efi)).To(BeTrue(), "content with blksize %d", blk)
	}
	got, _, err := fetch(addr, "sub/undionly.kpxe", 0)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(string(got)).To(Equal("kpxe"))

	for _, name := range []string{"52:54:00:12:34:31.ipxe", "52-54-00-12-34-31.ipxe"} {
		got, size, err := fetch(addr, name, 0)
		g.Expect(err).NotTo(HaveOccurred())
		g.Expect(string(got)).To(Equal(script))
		g.Expect(size).To(Equal(int64(len(script))))
	}
	// The server counts a transfer once the client's last ACK is in.
	g.Eventually(func() float64 { return testutil.ToFloat64(m.transfers.WithLabelValues("ipxe.efi", "ok")) }).Should(Equal(3.0))
	g.Eventually(func() float64 { return testutil.ToFloat64(m.transfers.WithLabelValues(RouteScript, "ok")) }).Should(Equal(2.0))
	g.Eventually(func() float64 { return testutil.ToFloat64(m.bytes.WithLabelValues("ipxe.efi")) }).Should(Equal(float64(3 * len(efi))))
}

func TestServeRefuses(t *testing.T) {
	addr, _, _ := serve(t)
	for _, name := range []string{
		"../secret", "sub/../../secret", "/etc/passwd", "escape", "missing.efi", "sub",
		"52:54:00:99:99:99.ipxe", `sub\undionly.kpxe`, "./ipxe.efi",
	} {
		t.Run(name, func(t *testing.T) {
			_, _, err := fetch(addr, name, 0)
			NewWithT(t).Expect(err).To(HaveOccurred())
		})
	}
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

func TestResolve(t *testing.T) {
	g := NewWithT(t)
	r, err := Resolve("52:54:00:AB:cd:ef.ipxe")
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(r.Kind).To(Equal(RouteScript))
	g.Expect(r.MAC.String()).To(Equal("52:54:00:ab:cd:ef"))
	r, err = Resolve("efi/ipxe.efi")
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(r).To(Equal(Resolved{Kind: RouteFile, Path: "efi/ipxe.efi"}))
	r, err = Resolve("x/52:54:00:ab:cd:ef.ipxe")
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(r.Kind).To(Equal(RouteFile))
	for _, bad := range []string{"", "..", "a/../b", "/abs", "a//b", "a/", "a b", "a\x00", `a\b`, strings.Repeat("a", 256)} {
		_, err := Resolve(bad)
		g.Expect(err).To(MatchError(ErrBadName), "%q", bad)
	}
}

func FuzzResolve(f *testing.F) {
	for _, s := range []string{"ipxe.efi", "../x", "52:54:00:12:34:56.ipxe", "a/b/c", "/x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		r, err := Resolve(name)
		if err != nil {
			return
		}
		if r.Kind == RouteFile {
			if !filepath.IsLocal(r.Path) || filepath.Clean(r.Path) != r.Path {
				t.Fatalf("%q resolved to a path outside the root or not clean: %q", name, r.Path)
			}
		}
	})
}
