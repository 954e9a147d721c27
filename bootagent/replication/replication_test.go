package replication

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/go-logr/logr/funcr"
	"github.com/go-logr/logr/testr"
	. "github.com/onsi/gomega"

	"github.com/ggnet/ggnet/bootagent/images"
	"github.com/ggnet/ggnet/internal/testfs"
)

// The tests need root (an XFS on a loop device, internal/testfs).

const (
	testNS  = "cafe"
	testImg = "games-v2"
	testUID = "6f1c1a52-5e0c-4c5e-9d4e-4f1a2b3c4d5e"
)

// env is a source node (a store with a Ready replica, a Server on a loopback
// socket) and a destination node's store, both on one XFS.
type env struct {
	src, dst *images.Store
	key      *Key
	srv      *httptest.Server
	endpoint string
	// served counts the data bytes the server sent; onServe, when set, is
	// called after each write with the running count.
	served  atomic.Int64
	onServe atomic.Value // func(int64)
	sum     string
	content []byte // the whole image, holes as zeros
	data    int64  // data bytes of the image
}

// layout is a sparse image: its size and its data extents (random bytes).
type layout struct {
	size    int64
	extents []Extent
}

func newEnv(t *testing.T, l layout) *env {
	t.Helper()
	mnt := testfs.XFS(t, 1<<30)
	e := &env{key: &Key{}}
	e.key.Set(randomKey(t))
	e.src = images.New(filepath.Join(mnt, "src"), logr.Discard())
	e.dst = images.New(filepath.Join(mnt, "dst"), testr.New(t))
	e.content, e.sum = writeReplica(t, e.src, l)
	for _, x := range l.extents {
		e.data += x.Length
	}
	s := &Server{Store: e.src, Key: e.key, Log: testr.New(t)}
	e.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.ServeHTTP(&countingWriter{ResponseWriter: w, e: e}, r)
	}))
	t.Cleanup(e.srv.Close)
	e.endpoint = strings.TrimPrefix(e.srv.URL, "http://")
	return e
}

func randomKey(t *testing.T) []byte {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// countingWriter counts the data the server sends.
type countingWriter struct {
	http.ResponseWriter
	e *env
}

func (w *countingWriter) Write(b []byte) (int, error) {
	n, err := w.ResponseWriter.Write(b)
	if w.Header().Get("Content-Type") == "application/octet-stream" {
		total := w.e.served.Add(int64(n))
		if f, ok := w.e.onServe.Load().(func(int64)); ok && f != nil {
			f(total)
		}
	}
	return n, err
}

// writeReplica places a Ready replica (file and checksum) of l in store, as
// Ensure leaves one, and returns its content and sha256.
func writeReplica(t *testing.T, store *images.Store, l layout) ([]byte, string) {
	t.Helper()
	p := store.Path(testNS, testImg, testUID)
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(l.size); err != nil {
		t.Fatal(err)
	}
	content := make([]byte, l.size)
	for _, x := range l.extents {
		b := content[x.Offset : x.Offset+x.Length]
		if _, err := rand.Read(b); err != nil {
			t.Fatal(err)
		}
		if _, err := f.WriteAt(b, x.Offset); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	h := sha256.Sum256(content)
	sum := hex.EncodeToString(h[:])
	if err := os.WriteFile(p+".sha256", []byte(sum+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return content, sum
}

// sparse is 64 MiB with 3 data extents (12 MiB), holes between and after.
var sparse = layout{size: 64 << 20, extents: []Extent{
	{Offset: 0, Length: 1 << 20},
	{Offset: 8 << 20, Length: 3 << 20},
	{Offset: 32 << 20, Length: 8 << 20},
}}

func (e *env) client(t *testing.T, bandwidth int64) *Client {
	c := NewClient(e.key, bandwidth, testr.New(t))
	c.Backoff, c.Retries = 10*time.Millisecond, 1
	return c
}

// ensure places the replica on the destination through Fill, as the
// storage agent does.
func (e *env) ensure(ctx context.Context, c *Client, want string, progress func(images.Progress)) (images.Result, error) {
	return e.dst.Ensure(ctx, testNS, testImg, testUID, images.Source{
		Format: "raw", SHA256: want, Fill: c.Fill(e.endpoint, testNS, testImg, testUID, want)}, progress)
}

func TestRoundTripKeepsHoles(t *testing.T) {
	g := NewWithT(t)
	e := newEnv(t, sparse)
	var last images.Progress
	var calls int
	res, err := e.ensure(context.Background(), e.client(t, 0), e.sum, func(p images.Progress) { last = p; calls++ })
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(res.SHA256).To(Equal(e.sum))
	g.Expect(res.SizeBytes).To(Equal(sparse.size))

	got, err := os.ReadFile(res.Path)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(bytes.Equal(got, e.content)).To(BeTrue(), "the replica's bytes differ from the source's")
	// Only the data crossed the network, and the holes stayed holes.
	g.Expect(e.served.Load()).To(Equal(e.data))
	var st syscall.Stat_t
	g.Expect(syscall.Stat(res.Path, &st)).To(Succeed())
	g.Expect(st.Blocks * 512).To(BeNumerically(">=", e.data))
	g.Expect(st.Blocks*512).To(BeNumerically("<=", e.data+1<<20), "holes were filled")
	f, err := os.Open(res.Path)
	g.Expect(err).NotTo(HaveOccurred())
	defer f.Close()
	ext, err := Extents(f, res.SizeBytes, 0)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(ext).To(Equal(sparse.extents))

	g.Expect(last).To(Equal(images.Progress{State: "Downloading", Done: e.data, Total: e.data}))
	g.Expect(calls).To(BeNumerically(">", 2))
	// Nothing of the transfer is left beside the replica.
	entries, err := os.ReadDir(filepath.Dir(res.Path))
	g.Expect(err).NotTo(HaveOccurred())
	var names []string
	for _, d := range entries {
		names = append(names, d.Name())
	}
	g.Expect(names).To(ConsistOf(testUID+".raw", testUID+".raw.sha256"))
}

func TestEmptyAndFullImages(t *testing.T) {
	for name, l := range map[string]layout{
		"all holes": {size: 16 << 20},
		"all data":  {size: 5<<20 + 4096, extents: []Extent{{Offset: 0, Length: 5<<20 + 4096}}},
	} {
		t.Run(name, func(t *testing.T) {
			g := NewWithT(t)
			e := newEnv(t, l)
			res, err := e.ensure(context.Background(), e.client(t, 0), "", nil)
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(res.SHA256).To(Equal(e.sum))
			got, err := os.ReadFile(res.Path)
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(bytes.Equal(got, e.content)).To(BeTrue())
			g.Expect(e.served.Load()).To(Equal(e.data))
		})
	}
}

func TestResumesAfterAnInterruptedTransfer(t *testing.T) {
	g := NewWithT(t)
	e := newEnv(t, sparse)
	c := e.client(t, 0)
	c.ChunkSize = 1 << 20
	ctx, cancel := context.WithCancel(context.Background())
	// Stop the transfer (as a restart of the agent would) half-way.
	e.onServe.Store(func(n int64) {
		if n >= e.data/2 {
			cancel()
		}
	})
	_, err := e.ensure(ctx, c, e.sum, nil)
	g.Expect(err).To(MatchError(context.Canceled))
	first := e.served.Load()
	g.Expect(first).To(BeNumerically(">=", e.data/2))
	g.Expect(first).To(BeNumerically("<", e.data))
	_, ok := e.dst.Existing(testNS, testImg, testUID)
	g.Expect(ok).To(BeFalse())

	// The partial file and its record are there; the agent's start sweep
	// keeps them.
	dir := filepath.Dir(e.dst.Path(testNS, testImg, testUID))
	part := filepath.Join(dir, images.PartialName(testUID))
	rec := readRecord(t, part+images.PartialRecordSuffix)
	g.Expect(rec.SHA256).To(Equal(e.sum))
	g.Expect(rec.Done).To(BeNumerically(">", 0))
	removed, err := e.dst.Sweep(time.Now().Add(time.Hour), "")
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(removed).NotTo(ContainElement(part))
	g.Expect(part).To(BeARegularFile())

	// A new agent (client and store) goes on from the record: only the rest
	// crosses the network.
	e.onServe.Store(func(int64) {})
	e.served.Store(0)
	dst := images.New(filepath.Dir(e.dst.Dir), testr.New(t))
	c2 := e.client(t, 0)
	var progress []images.Progress
	res, err := dst.Ensure(context.Background(), testNS, testImg, testUID, images.Source{
		Format: "raw", SHA256: e.sum, Fill: c2.Fill(e.endpoint, testNS, testImg, testUID, e.sum)},
		func(p images.Progress) { progress = append(progress, p) })
	g.Expect(err).NotTo(HaveOccurred())
	already := dataBelow(sparse.extents, rec.Done)
	g.Expect(e.served.Load()).To(Equal(e.data - already))
	g.Expect(progress[0]).To(Equal(images.Progress{State: "Downloading", Done: already, Total: e.data}))
	got, err := os.ReadFile(res.Path)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(bytes.Equal(got, e.content)).To(BeTrue())
	g.Expect(part).NotTo(BeAnExistingFile())
	g.Expect(part + images.PartialRecordSuffix).NotTo(BeAnExistingFile())
}

func readRecord(t *testing.T, path string) record {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var r record
	if err := json.Unmarshal(b, &r); err != nil {
		t.Fatal(err)
	}
	return r
}

func TestPartialOfAnotherContentStartsOver(t *testing.T) {
	g := NewWithT(t)
	e := newEnv(t, sparse)
	dir := filepath.Dir(e.dst.Path(testNS, testImg, testUID))
	g.Expect(os.MkdirAll(dir, 0o700)).To(Succeed())
	part := filepath.Join(dir, images.PartialName(testUID))
	// Garbage in the partial file, recorded as done for another content.
	g.Expect(os.WriteFile(part, bytes.Repeat([]byte{0xff}, 40<<20), 0o600)).To(Succeed())
	b, _ := json.Marshal(record{SHA256: strings.Repeat("0", 64), Size: sparse.size, Done: 40 << 20})
	g.Expect(os.WriteFile(part+images.PartialRecordSuffix, b, 0o600)).To(Succeed())
	res, err := e.ensure(context.Background(), e.client(t, 0), e.sum, nil)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(e.served.Load()).To(Equal(e.data))
	got, err := os.ReadFile(res.Path)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(bytes.Equal(got, e.content)).To(BeTrue())
}

func TestRemoveDeletesAPartial(t *testing.T) {
	g := NewWithT(t)
	e := newEnv(t, sparse)
	c := e.client(t, 0)
	c.ChunkSize = 1 << 20
	ctx, cancel := context.WithCancel(context.Background())
	e.onServe.Store(func(n int64) {
		if n >= 2<<20 {
			cancel()
		}
	})
	_, err := e.ensure(ctx, c, e.sum, nil)
	g.Expect(err).To(MatchError(context.Canceled))
	dir := filepath.Dir(e.dst.Path(testNS, testImg, testUID))
	g.Expect(filepath.Join(dir, images.PartialName(testUID))).To(BeARegularFile())
	g.Expect(e.dst.Remove(testNS, testImg, testUID)).To(Succeed())
	g.Expect(dir).NotTo(BeADirectory())
}

func TestChecksumMismatchLeavesNoReplica(t *testing.T) {
	t.Run("the peer's replica is another image", func(t *testing.T) {
		g := NewWithT(t)
		e := newEnv(t, sparse)
		_, err := e.ensure(context.Background(), e.client(t, 0), strings.Repeat("a", 64), nil)
		var ie *images.Error
		g.Expect(errors.As(err, &ie)).To(BeTrue(), "%v", err)
		g.Expect(ie.Reason).To(Equal(images.ReasonChecksumMismatch))
		g.Expect(e.served.Load()).To(BeZero(), "nothing is fetched")
		_, ok := e.dst.Existing(testNS, testImg, testUID)
		g.Expect(ok).To(BeFalse())
	})
	t.Run("the peer's bytes are not what it recorded", func(t *testing.T) {
		g := NewWithT(t)
		e := newEnv(t, sparse)
		// Rot on the peer: a byte of its replica changes after placement.
		f, err := os.OpenFile(e.src.Path(testNS, testImg, testUID), os.O_WRONLY, 0)
		g.Expect(err).NotTo(HaveOccurred())
		_, err = f.WriteAt([]byte{e.content[9<<20] ^ 1}, 9<<20)
		g.Expect(err).NotTo(HaveOccurred())
		g.Expect(f.Close()).To(Succeed())
		_, err = e.ensure(context.Background(), e.client(t, 0), e.sum, nil)
		var ie *images.Error
		g.Expect(errors.As(err, &ie)).To(BeTrue(), "%v", err)
		g.Expect(ie.Reason).To(Equal(images.ReasonChecksumMismatch))
		g.Expect(images.Permanent(ie.Reason)).To(BeTrue())
		_, ok := e.dst.Existing(testNS, testImg, testUID)
		g.Expect(ok).To(BeFalse())
		entries, err := os.ReadDir(filepath.Dir(e.dst.Path(testNS, testImg, testUID)))
		g.Expect(err).NotTo(HaveOccurred())
		g.Expect(entries).To(BeEmpty(), "no partial file nor record is left")
	})
}

func TestBandwidthLimit(t *testing.T) {
	g := NewWithT(t)
	l := layout{size: 32 << 20, extents: []Extent{{Offset: 1 << 20, Length: 3 << 20}, {Offset: 16 << 20, Length: 3 << 20}}}
	e := newEnv(t, l)
	const limit = 4 << 20 // 6 MiB at 4 MiB/s: 1.5 s less a 0.4 MiB burst
	start := time.Now()
	_, err := e.ensure(context.Background(), e.client(t, limit), e.sum, nil)
	elapsed := time.Since(start)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(elapsed).To(BeNumerically(">=", 1200*time.Millisecond), "6 MiB at 4 MiB/s")
	// Unlimited, the same transfer is much faster (loosely: the limit did
	// the waiting).
	g.Expect(e.dst.Remove(testNS, testImg, testUID)).To(Succeed())
	start = time.Now()
	_, err = e.ensure(context.Background(), e.client(t, 0), e.sum, nil)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(time.Since(start)).To(BeNumerically("<", elapsed))
}

func TestGoesOnAfterADroppedConnection(t *testing.T) {
	g := NewWithT(t)
	e := newEnv(t, sparse)
	var dropped atomic.Bool
	e.onServe.Store(func(n int64) {
		if n >= 5<<20 && dropped.CompareAndSwap(false, true) {
			panic(http.ErrAbortHandler) // the connection breaks mid-range
		}
	})
	res, err := e.ensure(context.Background(), e.client(t, 0), e.sum, nil)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(dropped.Load()).To(BeTrue())
	got, err := os.ReadFile(res.Path)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(bytes.Equal(got, e.content)).To(BeTrue())
	// The retry asked for the rest of the range, not all of it again: only
	// what was in flight when the connection broke crossed twice.
	g.Expect(e.served.Load()).To(BeNumerically("<", e.data+2<<20))
}

func TestTheKeyIsNeverLogged(t *testing.T) {
	g := NewWithT(t)
	e := newEnv(t, sparse)
	var logs strings.Builder
	var mu sync.Mutex
	sink := funcr.New(func(prefix, args string) {
		mu.Lock()
		logs.WriteString(prefix + " " + args + "\n")
		mu.Unlock()
	}, funcr.Options{Verbosity: 10})
	// A server and clients that log everything, one with the wrong key.
	s := &Server{Store: e.src, Key: e.key, Log: sink}
	srv := httptest.NewServer(s)
	defer srv.Close()
	endpoint := strings.TrimPrefix(srv.URL, "http://")
	wrong := &Key{}
	wrong.Set(randomKey(t))
	var errs []string
	for _, k := range []*Key{e.key, wrong} {
		c := NewClient(k, 0, sink)
		c.Retries = 0
		_, err := e.dst.Ensure(context.Background(), testNS, testImg, testUID, images.Source{Format: "raw",
			Fill: c.Fill(endpoint, testNS, testImg, testUID, e.sum)}, nil)
		if err != nil {
			errs = append(errs, err.Error())
		}
		g.Expect(e.dst.Remove(testNS, testImg, testUID)).To(Succeed())
	}
	g.Expect(errs).To(HaveLen(1), "the wrong key is refused")
	g.Expect(logs.String()).To(ContainSubstring("Refusing an unauthenticated replication request"))
	for _, k := range [][]byte{*e.key.v.Load(), *wrong.v.Load()} {
		for _, form := range []string{string(k), hex.EncodeToString(k), base64.StdEncoding.EncodeToString(k), base64.RawURLEncoding.EncodeToString(k)} {
			g.Expect(logs.String()).NotTo(ContainSubstring(form))
			g.Expect(strings.Join(errs, "\n")).NotTo(ContainSubstring(form))
		}
	}
}

func TestAStalledPeerIsLeft(t *testing.T) {
	g := NewWithT(t)
	e := newEnv(t, sparse)
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	var stalled atomic.Bool
	e.onServe.Store(func(n int64) {
		if n >= 2<<20 && stalled.CompareAndSwap(false, true) {
			<-release // the peer stops sending, the connection stays up
		}
	})
	c := e.client(t, 0)
	c.Retries, c.StallTimeout = 0, 300*time.Millisecond
	start := time.Now()
	_, err := e.ensure(context.Background(), c, e.sum, nil)
	var ie *images.Error
	g.Expect(errors.As(err, &ie)).To(BeTrue(), "%v", err)
	g.Expect(ie.Reason).To(Equal(images.ReasonUnreachable))
	g.Expect(err.Error()).To(ContainSubstring("stall timeout"))
	g.Expect(time.Since(start)).To(BeNumerically("<", 10*time.Second))
}

func TestARecordWithoutItsPartialIsIgnored(t *testing.T) {
	g := NewWithT(t)
	e := newEnv(t, sparse)
	// A crash after the rename of a finished partial, before the record
	// went: the record says all is done, and there is no partial file.
	dir := filepath.Dir(e.dst.Path(testNS, testImg, testUID))
	g.Expect(os.MkdirAll(dir, 0o700)).To(Succeed())
	b, _ := json.Marshal(record{SHA256: e.sum, Size: sparse.size, Done: sparse.size})
	g.Expect(os.WriteFile(filepath.Join(dir, images.PartialName(testUID))+images.PartialRecordSuffix, b, 0o600)).To(Succeed())
	res, err := e.ensure(context.Background(), e.client(t, 0), e.sum, nil)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(e.served.Load()).To(Equal(e.data))
	got, err := os.ReadFile(res.Path)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(bytes.Equal(got, e.content)).To(BeTrue())
}

func TestACorruptPartialStartsOverOnce(t *testing.T) {
	g := NewWithT(t)
	e := newEnv(t, sparse)
	c := e.client(t, 0)
	c.ChunkSize = 1 << 20
	ctx, cancel := context.WithCancel(context.Background())
	e.onServe.Store(func(n int64) {
		if n >= e.data/2 {
			cancel()
		}
	})
	_, err := e.ensure(ctx, c, e.sum, nil)
	g.Expect(err).To(MatchError(context.Canceled))
	part := filepath.Join(filepath.Dir(e.dst.Path(testNS, testImg, testUID)), images.PartialName(testUID))
	rec := readRecord(t, part+images.PartialRecordSuffix)
	g.Expect(rec.Done).To(BeNumerically(">", 8<<20))
	// A byte of the part already done rots.
	f, err := os.OpenFile(part, os.O_WRONLY, 0)
	g.Expect(err).NotTo(HaveOccurred())
	_, err = f.WriteAt([]byte{e.content[8<<20] ^ 0xff}, 8<<20)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(f.Close()).To(Succeed())

	e.onServe.Store(func(int64) {})
	e.served.Store(0)
	res, err := e.ensure(context.Background(), e.client(t, 0), e.sum, nil)
	g.Expect(err).NotTo(HaveOccurred())
	got, err := os.ReadFile(res.Path)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(bytes.Equal(got, e.content)).To(BeTrue())
	// The rest, then all of it again.
	g.Expect(e.served.Load()).To(Equal(e.data - dataBelow(sparse.extents, rec.Done) + e.data))
}
