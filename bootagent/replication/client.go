package replication

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/go-logr/logr"
	"golang.org/x/time/rate"

	bootv1 "github.com/ggnet/ggnet/api/v1alpha1"
	"github.com/ggnet/ggnet/bootagent/images"
)

// Client places replicas from peers (Fill). One Client serves a node: its
// bandwidth limit is shared by all of the node's transfers.
type Client struct {
	// Key is the shared signing key.
	Key *Key
	// HTTP is the transport to the peers (NewClient: no proxy, bounded
	// connect and response header waits).
	HTTP *http.Client
	Log  logr.Logger
	// Reserve is the free space, in bytes, a transfer never cuts into (the
	// images store's).
	Reserve uint64
	// Retries of a request after its first attempt (the transfer goes on
	// from where it stopped), with Backoff doubling between them.
	Retries int
	Backoff time.Duration
	// StallTimeout ends a request that received nothing for that long (it
	// is retried).
	StallTimeout time.Duration
	// ChunkSize is how much is fetched in one request and made durable
	// before the record moves on (default 64 MiB).
	ChunkSize int64

	mu      sync.Mutex
	limiter *rate.Limiter // nil: unlimited
	now     func() time.Time
}

// Defaults of NewClient.
const (
	DefaultChunkSize    = 64 << 20
	DefaultStallTimeout = 60 * time.Second
	connectTimeout      = 30 * time.Second
)

// NewClient returns a client signing with key, limited to bandwidth bytes/s
// (0: unlimited).
func NewClient(key *Key, bandwidth int64, log logr.Logger) *Client {
	c := &Client{
		Key: key, Log: log, Retries: 4, Backoff: time.Second, StallTimeout: DefaultStallTimeout, ChunkSize: DefaultChunkSize,
		HTTP: &http.Client{Transport: &http.Transport{
			// Peers are on the storage network: never through a proxy
			// (the signed requests would go there).
			Proxy:                 nil,
			DialContext:           (&net.Dialer{Timeout: connectTimeout, KeepAlive: 30 * time.Second}).DialContext,
			ResponseHeaderTimeout: DefaultStallTimeout,
			IdleConnTimeout:       90 * time.Second,
			MaxIdleConnsPerHost:   4,
			DisableCompression:    true,
		}},
	}
	c.SetBandwidth(bandwidth)
	return c
}

// SetBandwidth limits the node's transfers to bytes/s together (0 or less:
// unlimited).
func (c *Client) SetBandwidth(bytesPerSecond int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if bytesPerSecond <= 0 {
		c.limiter = nil
		return
	}
	// A tenth of a second's worth at once (at least 16 KiB): smooth, and
	// not a read per byte at low rates.
	burst := int(max(bytesPerSecond/10, 16<<10))
	c.limiter = rate.NewLimiter(rate.Limit(bytesPerSecond), burst)
}

func (c *Client) bucket() *rate.Limiter {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.limiter
}

func fail(reason, format string, a ...any) error {
	return &images.Error{Reason: reason, Err: fmt.Errorf(format, a...)}
}

// Failures for good: the peer has no Ready replica of the image; the peer
// refused the signature. The replica's next try (a minute later, the
// storage agent's retry) may find them healed.
var (
	errNotFound     = errors.New("the peer has no Ready replica of the image")
	errUnauthorized = errors.New("the peer refused the request's signature (another replication key, or clocks more than 2 minutes apart)")
)

// Fill returns the images.Source.Fill that places the replica of the Image
// namespace/name (uid) from the storage agent at endpoint (<IPv4>:<port>,
// the peer's bootv1.ReplicationEndpointAnnotation). wantSHA256 (the Image's
// checksum; empty: the peer's) must match the peer's recorded checksum and
// the result's. The partial file (images.PartialName) and its record stay in
// the image's directory when the transfer stops (canceled, the agent
// restarts, the peer goes away) and a later Fill goes on from there; they
// go when the content is wrong (ChecksumMismatch).
func (c *Client) Fill(endpoint, namespace, name, uid, wantSHA256 string) func(ctx context.Context, dst *os.File, progress func(images.Progress)) (string, error) {
	return func(ctx context.Context, dst *os.File, progress func(images.Progress)) (string, error) {
		if progress == nil {
			progress = func(images.Progress) {}
		}
		if !validNames(namespace, name, uid) {
			return "", fail(images.ReasonSourceMissing, "%s/%s (%s) is not a replica name", namespace, name, uid)
		}
		log := c.Log.WithValues("peer", endpoint, "Image", namespace+"/"+name)
		for attempt := 0; ; attempt++ {
			t := &transfer{c: c, base: "http://" + endpoint, namespace: namespace, name: name, uid: uid, progress: progress, log: log}
			sum, err := t.run(ctx, filepath.Dir(dst.Name()), dst.Name(), wantSHA256)
			if errors.Is(err, errResumedMismatch) && attempt == 0 {
				// The part kept from before did not hold what its record
				// said (the disk, a crash): start over once, at once.
				log.Info("The resumed replica did not match its checksum, starting over")
				continue
			}
			return sum, err
		}
	}
}

// errResumedMismatch marks a checksum mismatch of a resumed transfer.
var errResumedMismatch = errors.New("resumed")

// transfer is one Fill.
type transfer struct {
	c                    *Client
	base                 string
	namespace, name, uid string
	progress             func(images.Progress)
	log                  logr.Logger

	m           *ExtentMap
	fl          *follower
	done, total int64 // data bytes
	lastReport  int64
	// moved counts the bytes received, for the stall watch.
	moved atomic.Int64
}

func (t *transfer) run(ctx context.Context, dir, dst, want string) (string, error) {
	m, err := t.extentMap(ctx)
	if err != nil {
		return "", err
	}
	if want != "" && m.SHA256 != want {
		return "", fail(images.ReasonChecksumMismatch, "the peer's replica has sha256 %s, the Image says %s", m.SHA256, want)
	}
	t.m, t.total = m, m.DataBytes()
	p, err := openPartial(dir, t.uid, m)
	if err != nil {
		return "", diskErr(err)
	}
	defer p.close()
	t.done = dataBelow(m.Extents, p.rec.Done)
	if err := t.need(dir, t.total-t.done); err != nil {
		return "", err
	}
	if p.rec.Done > 0 {
		t.log.Info("Resuming a replica transfer", "doneBytes", t.done, "totalBytes", t.total)
	} else {
		t.log.Info("Replicating an image", "sizeBytes", m.Size, "dataBytes", t.total, "extents", len(m.Extents))
	}
	t.report(true)
	// The sha256 follows the transfer (hash.go).
	fctx, fcancel := context.WithCancel(ctx)
	t.fl = follow(fctx, p.f, m.Size, p.rec.Done)
	defer func() {
		fcancel()
		_, _ = t.fl.wait()
	}()
	start, startDone := time.Now(), t.done
	chunk := t.c.ChunkSize
	if chunk <= 0 {
		chunk = DefaultChunkSize
	}
	// The record moves on every chunk bytes fetched (a request never spans
	// two records), not every extent: a fragmented image is not an fsync
	// per extent.
	var unsaved int64
	for _, e := range m.Extents {
		end := e.Offset + e.Length
		for off := max(e.Offset, p.rec.Done); off < end; {
			n := min(chunk-unsaved, end-off)
			t.fl.advance(off) // no byte below off is written again
			if err := t.need(dir, n); err != nil {
				return "", err
			}
			if err := t.fetchRange(ctx, p.f, off, n); err != nil {
				return "", err
			}
			off += n
			if unsaved += n; unsaved >= chunk {
				if err := p.save(off); err != nil {
					return "", diskErr(err)
				}
				unsaved = 0
			}
		}
	}
	if err := p.save(m.Size); err != nil {
		return "", diskErr(err)
	}
	t.report(true)
	elapsed := time.Since(start)
	t.fl.advance(m.Size)
	sum, err := t.fl.wait()
	if err != nil {
		return "", err
	}
	if sum != m.SHA256 || (want != "" && sum != want) {
		p.discard()
		if p.resumed {
			return "", fmt.Errorf("%w: %w", errResumedMismatch, fail(images.ReasonChecksumMismatch,
				"the replicated file's sha256 is %s, the peer's replica has %s", sum, m.SHA256))
		}
		return "", fail(images.ReasonChecksumMismatch, "the replicated file's sha256 is %s, the peer's replica has %s", sum, m.SHA256)
	}
	if err := p.finish(dst); err != nil {
		return "", diskErr(err)
	}
	t.log.Info("Replicated an image", "dataBytes", t.total, "fetchedBytes", t.done-startDone,
		"duration", elapsed.Round(time.Millisecond).String())
	return sum, nil
}

// dataBelow is the data bytes of ext below off.
func dataBelow(ext []Extent, off int64) int64 {
	var n int64
	for _, e := range ext {
		if e.Offset >= off {
			break
		}
		n += min(e.Length, off-e.Offset)
	}
	return n
}

// report sends the progress (at most every MiB unless force).
func (t *transfer) report(force bool) {
	if !force && t.done-t.lastReport < 1<<20 {
		return
	}
	t.lastReport = t.done
	t.progress(images.Progress{State: bootv1.ReplicaDownloading, Done: t.done, Total: t.total})
}

// need refuses (DiskFull) when writing n more bytes would cut into the
// reserve.
func (t *transfer) need(dir string, n int64) error {
	free, err := images.Free(dir)
	if err != nil {
		return err
	}
	if room := int64(free) - int64(t.c.Reserve); n > room {
		return fail(images.ReasonDiskFull, "the replica needs %d more bytes; %d are free above the %d reserved for running sessions",
			n, max(room, 0), t.c.Reserve)
	}
	return nil
}

func diskErr(err error) error {
	if errors.Is(err, syscall.ENOSPC) {
		return fail(images.ReasonDiskFull, "%v", err)
	}
	return err
}

// extentMap fetches the peer's extent map, with retries.
func (t *transfer) extentMap(ctx context.Context) (*ExtentMap, error) {
	var m *ExtentMap
	err := t.retry(ctx, func(ctx context.Context) (bool, error) {
		resp, err := t.get(ctx, opExtents, "")
		if err != nil {
			return true, err
		}
		defer resp.Body.Close()
		if err := status(resp, http.StatusOK); err != nil {
			return !errors.Is(err, errNotFound), err
		}
		var got ExtentMap
		if err := json.NewDecoder(io.LimitReader(resp.Body, 64<<20)).Decode(&got); err != nil {
			return true, fmt.Errorf("the extent map: %w", err)
		}
		if err := got.check(); err != nil {
			return false, fmt.Errorf("the peer's extent map: %w", err)
		}
		m = &got
		return false, nil
	})
	return m, err
}

// fetchRange writes [off, off+n) of the replica into f, going on from where
// a failed attempt stopped.
func (t *transfer) fetchRange(ctx context.Context, f *os.File, off, n int64) error {
	end := off + n
	return t.retry(ctx, func(ctx context.Context) (bool, error) {
		resp, err := t.get(ctx, opData, fmt.Sprintf("bytes=%d-%d", off, end-1))
		if err != nil {
			return true, err
		}
		defer resp.Body.Close()
		if err := status(resp, http.StatusPartialContent); err != nil {
			return !errors.Is(err, errNotFound), err
		}
		if resp.ContentLength != end-off {
			return true, fmt.Errorf("the peer sent %d bytes for a range of %d", resp.ContentLength, end-off)
		}
		w := &offsetWriter{f: f, off: off}
		got, err := t.copy(ctx, w, resp.Body, end-off)
		off += got
		if err != nil {
			var ie *images.Error
			if errors.As(err, &ie) {
				return false, err
			}
			return ctx.Err() == nil, err
		}
		return false, nil
	})
}

// copy moves n bytes from r to w under the bandwidth limit.
func (t *transfer) copy(ctx context.Context, w *offsetWriter, r io.Reader, n int64) (int64, error) {
	buf := make([]byte, 1<<20)
	var got int64
	for got < n {
		want := min(int64(len(buf)), n-got)
		lim := t.c.bucket()
		if lim != nil {
			want = min(want, int64(lim.Burst()))
			if err := lim.WaitN(ctx, int(want)); err != nil {
				return got, err
			}
		}
		k, err := io.ReadFull(r, buf[:want])
		if k > 0 {
			if _, werr := w.Write(buf[:k]); werr != nil {
				return got, diskErr(werr)
			}
			got += int64(k)
			t.fl.advance(w.off)
			t.done += int64(k)
			t.moved.Add(int64(k))
			t.report(false)
		}
		if err != nil {
			return got, err
		}
	}
	return got, nil
}

// offsetWriter writes at a moving offset.
type offsetWriter struct {
	f   *os.File
	off int64
}

func (w *offsetWriter) Write(b []byte) (int, error) {
	n, err := w.f.WriteAt(b, w.off)
	w.off += int64(n)
	return n, err
}

// get sends one signed GET of op of the replica; the request ends when no
// byte arrived for the stall timeout.
func (t *transfer) get(ctx context.Context, op, rng string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, t.base+replicaPath(t.namespace, t.name, t.uid, op), nil)
	if err != nil {
		return nil, err
	}
	if rng != "" {
		req.Header.Set("Range", rng)
	}
	now := time.Now
	if t.c.now != nil {
		now = t.c.now
	}
	if err := t.c.Key.sign(req, now()); err != nil {
		return nil, err
	}
	return t.c.HTTP.Do(req)
}

// status checks a response's status.
func status(resp *http.Response, want int) error {
	switch resp.StatusCode {
	case want:
		return nil
	case http.StatusNotFound:
		return errNotFound
	case http.StatusUnauthorized:
		return errUnauthorized
	default:
		return fmt.Errorf("the peer answered %s", resp.Status)
	}
}

// retry runs attempt until it succeeds, fails for good (retry false) or the
// retries are used up; each attempt ends when nothing arrived for the stall
// timeout. A failure for good of images.Error stays one; the rest become
// SourceUnreachable (SourceMissing when the peer has no replica).
func (t *transfer) retry(ctx context.Context, attempt func(context.Context) (bool, error)) error {
	pause := t.c.Backoff
	if pause <= 0 {
		pause = time.Second
	}
	var last error
	for i := 0; i <= t.c.Retries; i++ {
		if i > 0 {
			t.log.Info("Retrying a replica request", "attempt", i, "error", last.Error())
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(pause):
			}
			pause *= 2
		}
		again, err := t.stallGuarded(ctx, attempt)
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		var ie *images.Error
		switch {
		case errors.As(err, &ie):
			return err
		case errors.Is(err, errNotFound):
			return fail(images.ReasonSourceMissing, "%s: %v", t.base, err)
		case !again || errors.Is(err, errNoKey) || errors.Is(err, errUnauthorized):
			return fail(images.ReasonUnreachable, "%s: %v", t.base, err)
		}
		last = err
	}
	return fail(images.ReasonUnreachable, "%s after %d attempts: %v", t.base, t.c.Retries+1, last)
}

// stallGuarded runs attempt with a context that ends when the transfer made
// no progress for the stall timeout.
func (t *transfer) stallGuarded(ctx context.Context, attempt func(context.Context) (bool, error)) (bool, error) {
	stall := t.c.StallTimeout
	if stall <= 0 {
		stall = DefaultStallTimeout
	}
	actx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	done := make(chan struct{})
	defer close(done)
	go func() {
		last, tick := t.moved.Load(), time.NewTicker(stall/4+time.Millisecond)
		defer tick.Stop()
		at := time.Now()
		for {
			select {
			case <-done:
				return
			case now := <-tick.C:
				if m := t.moved.Load(); m != last {
					last, at = m, now
				} else if now.Sub(at) >= stall {
					cancel(fmt.Errorf("no data for %s (stall timeout)", stall))
					return
				}
			}
		}
	}()
	again, err := attempt(actx)
	if cause := context.Cause(actx); err != nil && ctx.Err() == nil && cause != nil && !errors.Is(cause, context.Canceled) {
		return true, cause
	}
	return again, err
}
