package images

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	neturl "net/url"
	"os"
	"strings"
	"sync"
	"time"

	bootv1 "github.com/ggnet/ggnet/api/v1alpha1"
)

// errStalled ends an attempt that received nothing for the stall timeout.
var errStalled = errors.New("stalled")

func (s *Store) download(ctx context.Context, src Source, dst *os.File, maxBytes int64, guard *spaceGuard, progress func(Progress)) (string, error) {
	var last error
	pause := s.Backoff
	if pause <= 0 {
		pause = time.Second
	}
	for attempt := 0; attempt <= s.Retries; attempt++ {
		if attempt > 0 {
			s.Log.Info("Retrying image download", "url", redactURL(src.URL), "attempt", attempt, "error", scrubURL(last.Error(), src.URL))
			select {
			case <-ctx.Done():
				return "", ctx.Err()
			case <-time.After(pause):
			}
			pause *= 2
			if _, err := dst.Seek(0, io.SeekStart); err != nil {
				return "", err
			}
			if err := dst.Truncate(0); err != nil {
				return "", err
			}
			guard.reset()
		}
		sum, retry, err := s.fetch(ctx, src.URL, dst, maxBytes, guard, progress)
		if err == nil || !retry {
			return sum, scrubErr(err, src.URL)
		}
		last = err
	}
	return "", fail(ReasonUnreachable, "%s after %d attempts: %s", redactURL(src.URL), s.Retries+1, scrubURL(last.Error(), src.URL))
}

// fetch streams one attempt; retry says whether trying again may help. An
// attempt ends when no byte arrived for the stall timeout (the response
// header included), when the body passes maxBytes, and when writing it
// would cut into the reserve.
func (s *Store) fetch(ctx context.Context, url string, dst *os.File, maxBytes int64, guard *spaceGuard, progress func(Progress)) (sum string, retry bool, err error) {
	actx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	stall := s.StallTimeout
	if stall <= 0 {
		stall = DefaultStallTimeout
	}
	watch := &stallWatch{timer: time.AfterFunc(stall, func() { cancel(errStalled) }), d: stall}
	defer watch.stop()
	req, err := http.NewRequestWithContext(actx, http.MethodGet, url, nil)
	if err != nil {
		return "", false, fail(ReasonUnreachable, "%v", err)
	}
	resp, err := s.Client.Do(req)
	if err != nil {
		return "", ctx.Err() == nil, attemptErr(ctx, actx, stall, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		e := fmt.Errorf("%s: %s", url, resp.Status)
		if resp.StatusCode >= 500 || resp.StatusCode == http.StatusTooManyRequests {
			return "", true, e
		}
		return "", false, fail(ReasonUnreachable, "%v", e)
	}
	total := resp.ContentLength
	if total > maxBytes {
		return "", false, fail(ReasonTooLarge, "the source is %s (Content-Length), over the %s this Image accepts (maxVirtualSize)", gib(total), gib(maxBytes))
	}
	if total > 0 {
		if err := guard.need(total); err != nil {
			return "", false, err
		}
	}
	progress(Progress{State: bootv1.ReplicaDownloading, Total: max(total, 0)})
	h := sha256.New()
	start := time.Now()
	w := &guardedWriter{w: io.MultiWriter(dst, h), guard: guard, progress: progress,
		state: bootv1.ReplicaDownloading, total: max(total, 0)}
	n, err := io.Copy(w, io.LimitReader(&stallReader{r: resp.Body, watch: watch}, maxBytes+1))
	var ie *Error
	switch {
	case errors.As(err, &ie):
		return "", false, err
	case err != nil && isNoSpaceErr(err):
		return "", false, fail(ReasonDiskFull, "writing the download: %v", err)
	case err != nil:
		return "", ctx.Err() == nil, attemptErr(ctx, actx, stall, err)
	case n > maxBytes:
		return "", false, fail(ReasonTooLarge, "the source is over the %s this Image accepts (maxVirtualSize): stopped there", gib(maxBytes))
	case total > 0 && n != total:
		return "", true, fmt.Errorf("%s: got %d of %d bytes", url, n, total)
	}
	s.Log.Info("Downloaded image", "url", redactURL(url), "bytes", n, "duration", time.Since(start).String())
	return hex.EncodeToString(h.Sum(nil)), false, nil
}

// attemptErr says why an attempt ended: the caller's context, a stall, or
// the transport's own error.
func attemptErr(ctx, actx context.Context, stall time.Duration, err error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if errors.Is(context.Cause(actx), errStalled) {
		return fmt.Errorf("no data for %s (stall timeout)", stall)
	}
	return err
}

// stallWatch fires when no byte arrived for d.
type stallWatch struct {
	mu    sync.Mutex
	timer *time.Timer
	d     time.Duration
}

func (w *stallWatch) moved() {
	w.mu.Lock()
	w.timer.Reset(w.d)
	w.mu.Unlock()
}

func (w *stallWatch) stop() {
	w.mu.Lock()
	w.timer.Stop()
	w.mu.Unlock()
}

// stallReader resets the stall watch on every byte read.
type stallReader struct {
	r     io.Reader
	watch *stallWatch
}

func (r *stallReader) Read(p []byte) (int, error) {
	n, err := r.r.Read(p)
	if n > 0 {
		r.watch.moved()
	}
	return n, err
}

// guardedWriter writes only what the space guard allows and reports
// progress.
type guardedWriter struct {
	w        io.Writer
	guard    *spaceGuard
	progress func(Progress)
	state    bootv1.ReplicaState
	done     int64
	total    int64
}

func (g *guardedWriter) Write(p []byte) (int, error) {
	if err := g.guard.take(int64(len(p))); err != nil {
		return 0, err
	}
	n, err := g.w.Write(p)
	g.done += int64(n)
	g.progress(Progress{State: g.state, Done: g.done, Total: g.total})
	return n, err
}

// redactURL is a source URL as logs and status show it: without a user's
// password and without the query, where signed URLs carry their signature.
func redactURL(raw string) string {
	u, err := neturl.Parse(raw)
	if err != nil {
		return "(an unparsable URL)"
	}
	u.User = nil
	if u.RawQuery != "" {
		u.RawQuery = "[redacted]"
	}
	u.Fragment = ""
	return u.String()
}

// scrubURL replaces the URL's credentials (user info, query) in msg, in
// whatever form the HTTP client quoted them.
func scrubURL(msg, raw string) string {
	u, err := neturl.Parse(raw)
	if err != nil {
		return strings.ReplaceAll(msg, raw, "(the source URL)")
	}
	msg = strings.ReplaceAll(msg, raw, redactURL(raw))
	if u.User != nil {
		if p, ok := u.User.Password(); ok && p != "" {
			msg = strings.ReplaceAll(msg, p, "[redacted]")
		}
		msg = strings.ReplaceAll(msg, u.User.String()+"@", "")
		msg = strings.ReplaceAll(msg, u.User.Username()+":***@", "")
	}
	if u.RawQuery != "" {
		msg = strings.ReplaceAll(msg, u.RawQuery, "[redacted]")
	}
	return msg
}

// scrubErr is err with scrubURL applied to its message, keeping its reason.
func scrubErr(err error, raw string) error {
	if err == nil {
		return nil
	}
	var ie *Error
	if errors.As(err, &ie) {
		return &Error{Reason: ie.Reason, Err: errors.New(scrubURL(ie.Err.Error(), raw))}
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	return errors.New(scrubURL(err.Error(), raw))
}
