// Package images places image replicas on a storage node: it downloads an
// HTTP(S) source (streamed, sha256 verified, retried with backoff, with
// timeouts, a stall timeout and a size cap) or adopts a file under the
// node's image path root (opened through os.Root, regular files only),
// checks and converts non-raw formats to raw with qemu-img (sandboxed, see
// qemu.go), and puts the result at <dataDir>/images/<namespace>/<name>/<uid>.raw
// through a temporary file and a rename, so no partial file is ever left at
// the final path. The free space reserved for running sessions holds
// throughout: a download, a copy or a conversion that would cut into it
// stops with DiskFull.
package images

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/go-logr/logr"

	bootv1 "github.com/ggnet/ggnet/api/v1alpha1"
)

// Reasons a replica fails with (declared in the API).
const (
	ReasonChecksumMismatch  = bootv1.ChecksumMismatchReason
	ReasonUnreachable       = bootv1.SourceUnreachableReason
	ReasonUnsupportedFormat = bootv1.UnsupportedFormatReason
	ReasonDiskFull          = bootv1.DiskFullReason
	ReasonSourceMissing     = bootv1.SourceMissingReason
	ReasonConvertFailed     = bootv1.ConvertFailedReason
	ReasonPathNotAllowed    = bootv1.PathNotAllowedReason
	ReasonUnsafeImage       = bootv1.UnsafeImageReason
	ReasonTooLarge          = bootv1.TooLargeReason
)

// Permanent reports whether a failure with reason repeats when the same
// source is tried again: the bytes themselves are wrong (checksum, unsafe,
// too large, not convertible). Others (the network, the disk, a missing or
// misplaced file) may heal.
func Permanent(reason string) bool {
	switch reason {
	case ReasonChecksumMismatch, ReasonUnsupportedFormat, ReasonConvertFailed, ReasonUnsafeImage, ReasonTooLarge:
		return true
	}
	return false
}

// Error is a failed replica with a reason for the Image's status.
type Error struct {
	Reason string
	Err    error
}

func (e *Error) Error() string { return e.Reason + ": " + e.Err.Error() }
func (e *Error) Unwrap() error { return e.Err }

func fail(reason string, format string, a ...any) error {
	return &Error{Reason: reason, Err: fmt.Errorf(format, a...)}
}

// Source is where an image comes from.
type Source struct {
	// URL (http or https) or Path (on this node); exactly one is set.
	URL, Path string
	// SHA256 is the expected checksum of the source file (required for URL).
	SHA256 string
	// Format is raw, qcow2, vmdk, vhdx or vpc.
	Format string
	// MaxVirtualSize caps the image's virtual size in bytes (0: the
	// store's MaxVirtualSize).
	MaxVirtualSize int64
	// Fill, when URL and Path are empty, writes the raw image itself (a
	// capture of a session's disk, a replication from another storage
	// node): into dst, a new empty file in the image's directory (Fill may
	// instead rename a file of its own in that directory over dst.Name()),
	// returning the sha256 of what it wrote. Format must be raw. It runs in
	// one of the store's transfer slots.
	Fill func(ctx context.Context, dst *os.File, progress func(Progress)) (sha256 string, err error)
}

// Progress is what Ensure is doing, for the replica's status.
type Progress struct {
	// State is Downloading (a URL), Pending (copying a path) or Converting.
	State bootv1.ReplicaState
	// Done and Total are bytes of the transfer (Total 0: not known yet); for
	// Converting, Total is the virtual size.
	Done, Total int64
}

// Result describes a placed replica.
type Result struct {
	Path      string
	SizeBytes int64
	SHA256    string
}

// Store places replicas under <dataDir>/images.
type Store struct {
	Dir    string
	Client *http.Client
	Log    logr.Logger
	// Retries of a download after its first attempt.
	Retries int
	// Backoff is the first pause between attempts, doubling (default 1s).
	Backoff time.Duration
	// PathRoot is the only directory path sources are adopted from; empty
	// refuses every path source (ReasonPathNotAllowed).
	PathRoot string
	// Reserve is the free space, in bytes, no download, copy or conversion
	// cuts into: it is kept for running sessions' writes.
	Reserve uint64
	// MaxVirtualSize caps an image's virtual size in bytes unless its Source
	// says otherwise (0: no cap).
	MaxVirtualSize int64
	// StallTimeout aborts a download attempt that received no byte for that
	// long (it is retried like any network error).
	StallTimeout time.Duration
	// SpaceCheckInterval is how often a running conversion checks the free
	// space (default 5s).
	SpaceCheckInterval time.Duration
	// Qemu runs qemu-img.
	Qemu Qemu

	// Node-wide bounds (a namespace admin creating a hundred Images must
	// not start a hundred transfers or qemu-img processes beside tgtd, nor
	// have each check the free space on its own): transfers (downloads and
	// copies) at once, and conversions at once. A stalled transfer frees its
	// slot at the stall timeout.
	slotsOnce              sync.Once
	transfers, conversions chan struct{}
}

// Placements a node runs at once: transfers, and conversions.
const (
	MaxTransfers   = 8
	MaxConversions = 1
)

func (s *Store) slots() {
	s.slotsOnce.Do(func() {
		s.transfers = make(chan struct{}, MaxTransfers)
		s.conversions = make(chan struct{}, MaxConversions)
	})
}

// acquire takes a slot of ch, or fails when ctx ends first.
func acquire(ctx context.Context, ch chan struct{}) (release func(), err error) {
	select {
	case ch <- struct{}{}:
		return func() { <-ch }, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// Default limits.
const (
	DefaultMaxVirtualSize = 512 << 30
	DefaultStallTimeout   = 60 * time.Second
	connectTimeout        = 30 * time.Second
)

// New returns a store under dataDir with the default limits.
func New(dataDir string, log logr.Logger) *Store {
	return &Store{
		Dir: filepath.Join(dataDir, "images"), Client: NewHTTPClient(DefaultStallTimeout), Log: log,
		Retries: 4, Backoff: time.Second, MaxVirtualSize: DefaultMaxVirtualSize, StallTimeout: DefaultStallTimeout,
		Qemu: DefaultQemu(),
	}
}

// NewHTTPClient is the downloads' client: bounded connect, TLS handshake
// and response header waits, no overall timeout (an image takes as long as
// it takes; the stall timeout ends a transfer that stopped moving).
func NewHTTPClient(stall time.Duration) *http.Client {
	return &http.Client{Transport: &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           (&net.Dialer{Timeout: connectTimeout, KeepAlive: 30 * time.Second}).DialContext,
		TLSHandshakeTimeout:   connectTimeout,
		ResponseHeaderTimeout: stall,
		ExpectContinueTimeout: time.Second,
		IdleConnTimeout:       90 * time.Second,
		MaxIdleConnsPerHost:   2,
		ForceAttemptHTTP2:     true,
	}}
}

// Path is the final place of a replica.
func (s *Store) Path(namespace, name, uid string) string {
	return filepath.Join(s.Dir, namespace, name, uid+".raw")
}

// Existing returns the replica when it is in place.
func (s *Store) Existing(namespace, name, uid string) (Result, bool) {
	final := s.Path(namespace, name, uid)
	st, err := os.Stat(final)
	if err != nil || !st.Mode().IsRegular() {
		return Result{}, false
	}
	sum, _ := os.ReadFile(final + ".sha256")
	return Result{Path: final, SizeBytes: st.Size(), SHA256: strings.TrimSpace(string(sum))}, true
}

var formats = map[string]bool{"raw": true, "qcow2": true, "vmdk": true, "vhdx": true, "vpc": true}

// Temporary file names in an image's directory (swept at start, see Sweep).
const (
	tmpDownload = ".download-"
	tmpConvert  = ".convert-"
	tmpSum      = ".sha256-"
)

// Ensure places the replica unless it is already there. progress, when not
// nil, is called as the work moves on (from this goroutine).
func (s *Store) Ensure(ctx context.Context, namespace, name, uid string, src Source, progress func(Progress)) (Result, error) {
	if r, ok := s.Existing(namespace, name, uid); ok {
		return r, nil
	}
	if progress == nil {
		progress = func(Progress) {}
	}
	if !formats[src.Format] {
		return Result{}, fail(ReasonUnsupportedFormat, "format %q: want raw, qcow2, vmdk, vhdx or vpc", src.Format)
	}
	// The Image may lower the node's cap, never raise it: the node's is the
	// operator's, the Image's its namespace admin's.
	limit := s.MaxVirtualSize
	if src.MaxVirtualSize > 0 && (limit <= 0 || src.MaxVirtualSize < limit) {
		limit = src.MaxVirtualSize
	}
	final := s.Path(namespace, name, uid)
	if err := os.MkdirAll(filepath.Dir(final), 0o700); err != nil {
		return Result{}, diskErr(err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(final), tmpDownload+"*")
	if err != nil {
		return Result{}, diskErr(err)
	}
	tmpName := tmp.Name()
	defer os.Remove(tmpName)
	guard := s.guard(ctx)
	var sum string
	switch {
	case src.URL != "" || src.Path != "":
		s.slots()
		var release func()
		if release, err = acquire(ctx, s.transfers); err != nil {
			break
		}
		if src.URL != "" {
			sum, err = s.download(ctx, src, tmp, fileCap(src.Format, limit), guard, progress)
		} else {
			sum, err = s.adopt(ctx, src, tmp, fileCap(src.Format, limit), guard, progress)
		}
		release()
	case src.Fill != nil:
		s.slots()
		var release func()
		if release, err = acquire(ctx, s.transfers); err != nil {
			break
		}
		sum, err = src.Fill(ctx, tmp, progress)
		release()
	default:
		err = fail(ReasonSourceMissing, "no source")
	}
	if cerr := tmp.Close(); err == nil && cerr != nil {
		err = diskErr(cerr)
	}
	if err != nil {
		return Result{}, err
	}
	if src.SHA256 != "" && sum != src.SHA256 {
		return Result{}, fail(ReasonChecksumMismatch, "sha256 of the source is %s, the Image says %s", sum, src.SHA256)
	}
	raw := tmpName
	if src.Format == "raw" {
		st, err := os.Stat(tmpName)
		if err != nil {
			return Result{}, err
		}
		if st.Size() > limit && limit > 0 {
			return Result{}, fail(ReasonTooLarge, "the raw image is %s, over the Image's maxVirtualSize of %s", gib(st.Size()), gib(limit))
		}
	} else {
		raw, err = s.convert(ctx, tmpName, src.Format, limit, guard, progress)
		if raw != "" {
			defer os.Remove(raw)
		}
		if err != nil {
			return Result{}, err
		}
	}
	if err := writeAtomic(final+".sha256", []byte(sum+"\n")); err != nil {
		return Result{}, diskErr(err)
	}
	if err := os.Chmod(raw, 0o600); err != nil {
		return Result{}, err
	}
	if err := os.Rename(raw, final); err != nil {
		return Result{}, diskErr(err)
	}
	st, err := os.Stat(final)
	if err != nil {
		return Result{}, err
	}
	return Result{Path: final, SizeBytes: st.Size(), SHA256: sum}, nil
}

// fileCap is the largest source file accepted for an image of at most limit
// bytes: the limit itself for raw, plus 1/8 and 64 MiB for the other
// formats' metadata.
func fileCap(format string, limit int64) int64 {
	if limit <= 0 {
		return 1<<63 - 1
	}
	if format == "raw" {
		return limit
	}
	return limit + limit/8 + 64<<20
}

// writeAtomic writes a small file through a temporary name and a rename.
func writeAtomic(path string, b []byte) error {
	f, err := os.CreateTemp(filepath.Dir(path), tmpSum+"*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}

// Remove deletes a replica, its checksum and a partial transfer of it.
func (s *Store) Remove(namespace, name, uid string) error {
	p := s.Path(namespace, name, uid)
	for _, f := range append([]string{p, p + ".sha256"}, s.partials(namespace, name, uid)...) {
		if err := os.Remove(f); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
	}
	_ = os.Remove(filepath.Dir(p))
	return nil
}

func diskErr(err error) error {
	if isNoSpaceErr(err) {
		return fail(ReasonDiskFull, "%v", err)
	}
	return err
}

func isNoSpaceErr(err error) bool { return errors.Is(err, syscall.ENOSPC) }

func isNoSpace(out string) bool { return strings.Contains(out, "No space left on device") }

// gib renders a size for messages.
func gib(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	default:
		return fmt.Sprintf("%d bytes", n)
	}
}
