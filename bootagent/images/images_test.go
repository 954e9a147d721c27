package images

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-logr/logr"
	. "github.com/onsi/gomega"

	"github.com/ggnet/ggnet/internal/testfs"
)

func sum(b []byte) string { s := sha256.Sum256(b); return hex.EncodeToString(s[:]) }

func entries(t *testing.T, dir string) []string {
	var out []string
	_ = filepath.Walk(dir, func(p string, info os.FileInfo, err error) error {
		if err == nil && info.Mode().IsRegular() {
			rel, _ := filepath.Rel(dir, p)
			out = append(out, rel)
		}
		return nil
	})
	return out
}

func TestPlaceReplicas(t *testing.T) {
	g := NewWithT(t)
	raw := bytes.Repeat([]byte("disk"), 1<<18) // 1 MiB
	dir := t.TempDir()
	rawPath := filepath.Join(dir, "src.raw")
	g.Expect(os.WriteFile(rawPath, raw, 0o644)).To(Succeed())
	qcow := filepath.Join(dir, "src.qcow2")
	out, err := exec.Command("qemu-img", "convert", "-f", "raw", "-O", "qcow2", rawPath, qcow).CombinedOutput()
	g.Expect(err).NotTo(HaveOccurred(), string(out))
	qcowBytes, _ := os.ReadFile(qcow)

	var fails atomic.Int32
	fails.Store(2)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/flaky.raw":
			if fails.Add(-1) >= 0 {
				http.Error(w, "busy", http.StatusServiceUnavailable)
				return
			}
			_, _ = w.Write(raw)
		case "/win.raw":
			_, _ = w.Write(raw)
		case "/win.qcow2":
			_, _ = w.Write(qcowBytes)
		default:
			http.NotFound(w, r)
		}
	}))
	defer srv.Close()

	data := t.TempDir()
	s := New(data, logr.Discard())
	s.Backoff = 10 * time.Millisecond
	ctx := context.Background()

	r, err := s.Ensure(ctx, "cafe", "win", "u1", Source{URL: srv.URL + "/win.raw", SHA256: sum(raw), Format: "raw"}, nil)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(r.SizeBytes).To(Equal(int64(len(raw))))
	g.Expect(r.SHA256).To(Equal(sum(raw)))
	got, _ := os.ReadFile(r.Path)
	g.Expect(bytes.Equal(got, raw)).To(BeTrue())
	again, err := s.Ensure(ctx, "cafe", "win", "u1", Source{URL: "http://127.0.0.1:1/gone", Format: "raw"}, nil)
	g.Expect(err).NotTo(HaveOccurred(), "an existing replica is not fetched again")
	g.Expect(again).To(Equal(r))

	r, err = s.Ensure(ctx, "cafe", "winq", "u2", Source{URL: srv.URL + "/win.qcow2", SHA256: sum(qcowBytes), Format: "qcow2"}, nil)
	g.Expect(err).NotTo(HaveOccurred())
	got, _ = os.ReadFile(r.Path)
	g.Expect(bytes.Equal(got, raw)).To(BeTrue(), "qcow2 converted to the same raw bytes")

	r, err = s.Ensure(ctx, "cafe", "flaky", "u3", Source{URL: srv.URL + "/flaky.raw", SHA256: sum(raw), Format: "raw"}, nil)
	g.Expect(err).NotTo(HaveOccurred(), "retried after two 503s")

	s.PathRoot = dir
	r, err = s.Ensure(ctx, "cafe", "local", "u4", Source{Path: rawPath, Format: "raw"}, nil)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(r.SHA256).To(Equal(sum(raw)))

	before := entries(t, data)
	for name, tc := range map[string]struct {
		src    Source
		reason string
	}{
		"checksum mismatch": {Source{URL: srv.URL + "/win.raw", SHA256: sum([]byte("other")), Format: "raw"}, ReasonChecksumMismatch},
		"404":               {Source{URL: srv.URL + "/missing.raw", SHA256: sum(raw), Format: "raw"}, ReasonUnreachable},
		"unreachable":       {Source{URL: "http://127.0.0.1:1/x.raw", SHA256: sum(raw), Format: "raw"}, ReasonUnreachable},
		"unsupported":       {Source{URL: srv.URL + "/win.raw", Format: "iso"}, ReasonUnsupportedFormat},
		"missing path":      {Source{Path: filepath.Join(dir, "nonexistent.raw"), Format: "raw"}, ReasonSourceMissing},
		"not really qcow2":  {Source{URL: srv.URL + "/win.raw", SHA256: sum(raw), Format: "qcow2"}, ReasonConvertFailed},
	} {
		s.Retries = 1
		_, err := s.Ensure(ctx, "cafe", "bad", "u-"+name, tc.src, nil)
		var ie *Error
		g.Expect(errors.As(err, &ie)).To(BeTrue(), "%s: %v", name, err)
		g.Expect(ie.Reason).To(Equal(tc.reason), name)
	}
	g.Expect(entries(t, data)).To(Equal(before), "no partial file is left behind")
}

func TestDiskFull(t *testing.T) {
	g := NewWithT(t)
	big := bytes.Repeat([]byte{1}, 96<<20) // more than the 64 MiB tmpfs
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write(big) }))
	defer srv.Close()
	data := testfs.Tmpfs(t)
	s := New(data, logr.Discard())
	_, err := s.Ensure(context.Background(), "cafe", "big", "u1", Source{URL: srv.URL + "/big.raw", SHA256: sum(big), Format: "raw"}, nil)
	var ie *Error
	g.Expect(errors.As(err, &ie)).To(BeTrue(), "%v", err)
	g.Expect(ie.Reason).To(Equal(ReasonDiskFull))
	g.Expect(entries(t, data)).To(BeEmpty(), "the partial download is gone")
}
