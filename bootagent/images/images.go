// Package images places image replicas on a storage node: it downloads an
// HTTP(S) source (streamed, sha256 verified, retried with backoff) or adopts
// a file already on the node, converts non-raw formats to raw with qemu-img,
// and puts the result at <dataDir>/images/<namespace>/<name>/<uid>.raw
// through a temporary file and a rename, so no partial file is ever left at
// the final path.
package images

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/go-logr/logr"
	"golang.org/x/sys/unix"
)

// Reasons a replica fails with.
const (
	ReasonChecksumMismatch  = "ChecksumMismatch"
	ReasonUnreachable       = "SourceUnreachable"
	ReasonUnsupportedFormat = "UnsupportedFormat"
	ReasonDiskFull          = "DiskFull"
	ReasonSourceMissing     = "SourceMissing"
	ReasonConvertFailed     = "ConvertFailed"
)

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
}

// Result describes a placed replica.
type Result struct {
	Path      string
	SizeBytes int64
	SHA256    string
}

// Store places replicas under <dataDir>/images.
type Store struct {
	Dir     string
	Client  *http.Client
	Log     logr.Logger
	Retries int
	// Backoff is the first pause between attempts, doubling (default 1s).
	Backoff time.Duration
}

// New returns a store under dataDir.
func New(dataDir string, log logr.Logger) *Store {
	return &Store{Dir: filepath.Join(dataDir, "images"), Client: &http.Client{Timeout: 0}, Log: log, Retries: 4, Backoff: time.Second}
}

// Path is the final place of a replica.
func (s *Store) Path(namespace, name, uid string) string {
	return filepath.Join(s.Dir, namespace, name, uid+".raw")
}

var formats = map[string]bool{"raw": true, "qcow2": true, "vmdk": true, "vhdx": true, "vpc": true}

// Ensure places the replica unless it is already there.
func (s *Store) Ensure(ctx context.Context, namespace, name, uid string, src Source) (Result, error) {
	final := s.Path(namespace, name, uid)
	if st, err := os.Stat(final); err == nil {
		sum, _ := os.ReadFile(final + ".sha256")
		return Result{Path: final, SizeBytes: st.Size(), SHA256: strings.TrimSpace(string(sum))}, nil
	}
	if !formats[src.Format] {
		return Result{}, fail(ReasonUnsupportedFormat, "format %q: want raw, qcow2, vmdk, vhdx or vpc", src.Format)
	}
	if err := os.MkdirAll(filepath.Dir(final), 0o700); err != nil {
		return Result{}, diskErr(err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(final), ".download-*")
	if err != nil {
		return Result{}, diskErr(err)
	}
	tmpName := tmp.Name()
	defer os.Remove(tmpName)
	var sum string
	switch {
	case src.URL != "":
		sum, err = s.download(ctx, src, tmp)
	case src.Path != "":
		sum, err = copyFile(src.Path, tmp)
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
	if src.Format != "raw" {
		raw = tmpName + ".raw"
		defer os.Remove(raw)
		out, err := exec.CommandContext(ctx, "qemu-img", "convert", "-f", src.Format, "-O", "raw", tmpName, raw).CombinedOutput()
		if err != nil {
			if isNoSpace(string(out)) {
				return Result{}, fail(ReasonDiskFull, "converting to raw: %s", strings.TrimSpace(string(out)))
			}
			return Result{}, fail(ReasonConvertFailed, "qemu-img convert from %s: %s", src.Format, strings.TrimSpace(string(out)))
		}
	}
	if err := os.WriteFile(final+".sha256", []byte(sum+"\n"), 0o600); err != nil {
		return Result{}, diskErr(err)
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

// Remove deletes a replica and its checksum.
func (s *Store) Remove(namespace, name, uid string) error {
	p := s.Path(namespace, name, uid)
	for _, f := range []string{p, p + ".sha256"} {
		if err := os.Remove(f); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
	}
	_ = os.Remove(filepath.Dir(p))
	return nil
}

func (s *Store) download(ctx context.Context, src Source, dst *os.File) (string, error) {
	var last error
	pause := s.Backoff
	for attempt := 0; attempt <= s.Retries; attempt++ {
		if attempt > 0 {
			s.Log.Info("Retrying image download", "url", src.URL, "attempt", attempt, "error", last.Error())
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
		}
		sum, retry, err := s.fetch(ctx, src.URL, dst)
		if err == nil || !retry {
			return sum, err
		}
		last = err
	}
	return "", fail(ReasonUnreachable, "%s after %d attempts: %v", src.URL, s.Retries+1, last)
}

// fetch streams one attempt; retry says whether trying again may help.
func (s *Store) fetch(ctx context.Context, url string, dst *os.File) (sum string, retry bool, err error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", false, fail(ReasonUnreachable, "%v", err)
	}
	resp, err := s.Client.Do(req)
	if err != nil {
		return "", true, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		e := fmt.Errorf("%s: %s", url, resp.Status)
		if resp.StatusCode >= 500 || resp.StatusCode == http.StatusTooManyRequests {
			return "", true, e
		}
		return "", false, fail(ReasonUnreachable, "%v", e)
	}
	h := sha256.New()
	start := time.Now()
	n, err := io.Copy(io.MultiWriter(dst, h), resp.Body)
	if err != nil {
		if isNoSpaceErr(err) {
			return "", false, fail(ReasonDiskFull, "writing the download: %v", err)
		}
		return "", true, err
	}
	s.Log.Info("Downloaded image", "url", url, "bytes", n, "duration", time.Since(start).String())
	return hex.EncodeToString(h.Sum(nil)), false, nil
}

// copyFile adopts a file on the node: a reflink clone when it is on the data
// directory's file system (instant), else a copy; it returns the sha256.
func copyFile(path string, dst *os.File) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fail(ReasonSourceMissing, "%v", err)
	}
	defer f.Close()
	h := sha256.New()
	if unix.IoctlFileClone(int(dst.Fd()), int(f.Fd())) == nil {
		_, err = io.Copy(h, f)
		return hex.EncodeToString(h.Sum(nil)), err
	}
	if _, err := io.Copy(io.MultiWriter(dst, h), f); err != nil {
		return "", diskErr(err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

func diskErr(err error) error {
	if isNoSpaceErr(err) {
		return fail(ReasonDiskFull, "%v", err)
	}
	return err
}

func isNoSpaceErr(err error) bool { return errors.Is(err, syscall.ENOSPC) }

func isNoSpace(out string) bool { return strings.Contains(out, "No space left on device") }
