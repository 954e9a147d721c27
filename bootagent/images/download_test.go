package images

import (
	"bytes"
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-logr/logr"
	. "github.com/onsi/gomega"
	"golang.org/x/sys/unix"

	"github.com/ggnet/ggnet/internal/testfs"
)

// TestDownloadLimits: the size cap (Content-Length up front, the stream
// at the cap), the stall timeout (retried, then SourceUnreachable), and the
// reserve (a download or a conversion that would cut into it stops with
// DiskFull) — on a 64 MiB tmpfs, so the free space is known.
func TestDownloadLimits(t *testing.T) {
	g := NewWithT(t)
	mib := bytes.Repeat([]byte{7}, 1<<20)
	var sent atomic.Int64
	release := make(chan struct{})
	defer close(release)
	qcowDir := t.TempDir()
	qemuImg(t, "create", "-f", "qcow2", filepath.Join(qcowDir, "sparse.qcow2"), "48M")
	sparse, _ := os.ReadFile(filepath.Join(qcowDir, "sparse.qcow2"))
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n, _ := strconv.Atoi(r.URL.Query().Get("mib"))
		switch r.URL.Path {
		case "/sized.raw": // with a Content-Length
			w.Header().Set("Content-Length", strconv.Itoa(n<<20))
		case "/stall.raw": // half, then nothing
			w.Header().Set("Content-Length", strconv.Itoa(n<<20))
			for i := 0; i < n/2; i++ {
				_, _ = w.Write(mib)
			}
			w.(http.Flusher).Flush()
			select {
			case <-release:
			case <-r.Context().Done():
			}
			return
		case "/sparse.qcow2":
			_, _ = w.Write(sparse)
			return
		case "/silent.raw": // not even a header
			select {
			case <-release:
			case <-r.Context().Done():
			}
			return
		case "/slow.raw": // 64 KiB every 100 ms for 1.2 s
			for i := 0; i < 12; i++ {
				_, _ = w.Write(mib[:64<<10])
				w.(http.Flusher).Flush()
				time.Sleep(100 * time.Millisecond)
			}
			return
		}
		for i := 0; i < n; i++ { // chunked without a Content-Length
			if _, err := w.Write(mib); err != nil {
				return
			}
			sent.Add(1 << 20)
		}
	}))
	defer srv.Close()

	data := testfs.Tmpfs(t)
	s := New(data, logr.Discard())
	s.Backoff = 10 * time.Millisecond
	s.Retries = 1
	ctx := context.Background()
	ensure := func(path string, mb int, maxSize int64) (string, string, time.Duration) {
		start := time.Now()
		_, err := s.Ensure(ctx, "cafe", "img", "u1", Source{URL: srv.URL + path + "?mib=" + strconv.Itoa(mb), Format: "raw", MaxVirtualSize: maxSize}, nil)
		reason, msg := failure(err)
		return reason, msg, time.Since(start)
	}

	t.Run("size cap: Content-Length refused up front", func(t *testing.T) {
		g := NewWithT(t)
		sent.Store(0)
		reason, msg, _ := ensure("/sized.raw", 40, 8<<20)
		g.Expect(reason).To(Equal(ReasonTooLarge))
		g.Expect(msg).To(ContainSubstring("the source is 40.0 MiB (Content-Length), over the 8.0 MiB this Image accepts"))
		g.Expect(sent.Load()).To(BeNumerically("<", 8<<20), "the body is not read")
	})
	t.Run("size cap: a stream stopped at the cap", func(t *testing.T) {
		g := NewWithT(t)
		reason, msg, _ := ensure("/chunked.raw", 40, 8<<20)
		g.Expect(reason).To(Equal(ReasonTooLarge))
		g.Expect(msg).To(ContainSubstring("over the 8.0 MiB this Image accepts (maxVirtualSize): stopped there"))
	})
	t.Run("stall timeout", func(t *testing.T) {
		g := NewWithT(t)
		s.StallTimeout = 300 * time.Millisecond
		defer func() { s.StallTimeout = DefaultStallTimeout }()
		reason, msg, took := ensure("/stall.raw", 8, 0)
		g.Expect(reason).To(Equal(ReasonUnreachable))
		g.Expect(msg).To(ContainSubstring("after 2 attempts: no data for 300ms (stall timeout)"))
		g.Expect(took).To(BeNumerically("<", 5*time.Second))

		reason, msg, _ = ensure("/silent.raw", 0, 0)
		g.Expect(reason).To(Equal(ReasonUnreachable), "a server that sends no response header")
		g.Expect(msg).To(ContainSubstring("no data for 300ms (stall timeout)"))

		// A TLS server that accepts and never answers the handshake.
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		g.Expect(err).NotTo(HaveOccurred())
		defer ln.Close()
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				defer c.Close()
			}
		}()
		_, err = s.Ensure(ctx, "cafe", "tls", "u4", Source{URL: "https://" + ln.Addr().String() + "/x.raw", Format: "raw"}, nil)
		reason, msg = failure(err)
		g.Expect(reason).To(Equal(ReasonUnreachable), "a TLS handshake that never ends")
		g.Expect(msg).To(ContainSubstring("no data for 300ms (stall timeout)"))

		start := time.Now()
		r, err := s.Ensure(ctx, "cafe", "slow", "u3", Source{URL: srv.URL + "/slow.raw", Format: "raw"}, nil)
		g.Expect(err).NotTo(HaveOccurred(), "a slow download that keeps moving is not a stall")
		g.Expect(r.SizeBytes).To(Equal(int64(12 << 16)))
		g.Expect(time.Since(start)).To(BeNumerically(">", time.Second))
	})

	free, err := Free(data)
	g.Expect(err).NotTo(HaveOccurred())
	s.Reserve = free - 16<<20 // 16 MiB may be written
	t.Run("reserve: Content-Length refused up front", func(t *testing.T) {
		g := NewWithT(t)
		reason, msg, _ := ensure("/sized.raw", 24, 0)
		g.Expect(reason).To(Equal(ReasonDiskFull))
		g.Expect(msg).To(ContainSubstring("24.0 MiB more would leave less than the"))
		g.Expect(msg).To(ContainSubstring("reserved for running sessions"))
	})
	t.Run("reserve: a stream stopped before it cuts in", func(t *testing.T) {
		g := NewWithT(t)
		reason, msg, _ := ensure("/chunked.raw", 24, 0)
		g.Expect(reason).To(Equal(ReasonDiskFull))
		g.Expect(msg).To(ContainSubstring("reserved for running sessions"))
		now, _ := Free(data)
		g.Expect(now).To(BeNumerically(">=", s.Reserve), "the reserve held")
	})
	t.Run("reserve: a conversion whose virtual size does not fit is not started", func(t *testing.T) {
		g := NewWithT(t)
		_, err := s.Ensure(ctx, "cafe", "sparse", "u2", Source{URL: srv.URL + "/sparse.qcow2", SHA256: sum(sparse), Format: "qcow2"}, nil)
		reason, msg := failure(err)
		g.Expect(reason).To(Equal(ReasonDiskFull), "%v", err)
		g.Expect(msg).To(ContainSubstring("48.0 MiB more would leave less than the"))
	})
	t.Run("within the reserve", func(t *testing.T) {
		g := NewWithT(t)
		reason, msg, _ := ensure("/chunked.raw", 8, 0)
		g.Expect(reason).To(BeEmpty(), msg)
	})
	g.Expect(entries(t, data)).To(ConsistOf("images/cafe/img/u1.raw", "images/cafe/img/u1.raw.sha256",
		"images/cafe/slow/u3.raw", "images/cafe/slow/u3.raw.sha256"), "no partial file is left")
}

// TestSweep: temporary files a crash left are removed at start; replicas,
// and temporary files written since the start, are not.
func TestSweep(t *testing.T) {
	g := NewWithT(t)
	s := New(t.TempDir(), logr.Discard())
	write := func(rel string, age time.Duration) string {
		p := filepath.Join(s.Dir, rel)
		g.Expect(os.MkdirAll(filepath.Dir(p), 0o700)).To(Succeed())
		g.Expect(os.WriteFile(p, []byte("x"), 0o600)).To(Succeed())
		old := time.Now().Add(-age)
		g.Expect(os.Chtimes(p, old, old)).To(Succeed())
		return p
	}
	start := time.Now()
	litter := []string{
		write("cafe/win11/.download-123", time.Hour),
		write("cafe/win11/.convert-456", time.Minute),
		write("cafe/win11/.sha256-789", time.Second),
		write("lab/ubuntu/.download-1", time.Hour),
	}
	kept := []string{
		write("cafe/win11/uid-1.raw", time.Hour),
		write("cafe/win11/uid-1.raw.sha256", time.Hour),
		write("cafe/win10/.download-now", -time.Second), // a download of this agent
		write("cafe/win10/.hidden-by-someone", time.Hour),
	}
	removed, err := s.Sweep(start, "cafe")
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(removed).To(ConsistOf(litter[:3]))
	removed, err = s.Sweep(start, "")
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(removed).To(ConsistOf(litter[3]))
	for _, p := range kept {
		g.Expect(p).To(BeAnExistingFile())
	}
	_, ok := s.Existing("cafe", "win11", "uid-1")
	g.Expect(ok).To(BeTrue())
}

// TestConversionKeepsTheReserve: a conversion is stopped (DiskFull) when the
// free space falls into the reserve while it runs — here another writer
// fills the file system while qemu-img, started 3 s late by a wrapper,
// converts.
func TestConversionKeepsTheReserve(t *testing.T) {
	g := NewWithT(t)
	src := t.TempDir()
	raw := filepath.Join(src, "d.raw")
	g.Expect(os.WriteFile(raw, bytes.Repeat([]byte("golden!!"), 1<<20), 0o644)).To(Succeed()) // 8 MiB
	qemuImg(t, "convert", "-f", "raw", "-O", "qcow2", raw, filepath.Join(src, "d.qcow2"))
	wrapper := filepath.Join(os.TempDir(), "ggnet-slow-qemu-img-"+strconv.Itoa(os.Getpid()))
	g.Expect(os.WriteFile(wrapper, []byte("#!/bin/sh\n[ \"$1\" = convert ] && sleep 3\nexec qemu-img \"$@\"\n"), 0o755)).To(Succeed())
	defer os.Remove(wrapper)

	data := testfs.Tmpfs(t)
	s := New(data, logr.Discard())
	s.PathRoot, s.SpaceCheckInterval = src, 50*time.Millisecond
	s.Qemu.Command = wrapper
	free, err := Free(data)
	g.Expect(err).NotTo(HaveOccurred())
	s.Reserve = free - 40<<20
	go func() { // the other writer
		for {
			matches, _ := filepath.Glob(filepath.Join(data, "images", "cafe", "d", tmpConvert+"*"))
			if len(matches) > 0 {
				f, err := os.Create(filepath.Join(data, "filler"))
				if err == nil {
					_ = unix.Fallocate(int(f.Fd()), 0, 0, 36<<20)
					f.Close()
				}
				return
			}
			time.Sleep(5 * time.Millisecond)
		}
	}()
	start := time.Now()
	_, err = s.Ensure(context.Background(), "cafe", "d", "u1", Source{Path: filepath.Join(src, "d.qcow2"), Format: "qcow2"}, nil)
	reason, msg := failure(err)
	g.Expect(reason).To(Equal(ReasonDiskFull), "%v", err)
	g.Expect(msg).To(ContainSubstring("stopped converting: the free space fell to"))
	g.Expect(time.Since(start)).To(BeNumerically("<", 3*time.Second), "qemu-img was stopped, not waited for")
	g.Expect(entries(t, filepath.Join(data, "images"))).To(BeEmpty())
}
