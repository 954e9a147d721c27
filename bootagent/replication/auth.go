// Package replication copies a Ready image replica from one storage node's
// agent to another's: the Server serves this node's replicas, the Client's
// Fill places a peer's replica through images.Source.Fill.
//
// The transfer is sparse (the server's extent map, from SEEK_DATA and
// SEEK_HOLE, names the data; only data crosses the network and holes stay
// holes), resumable (a partial file and a record of how far it got, both
// fsynced in the image's directory, survive a restart of the agent),
// verified (the sha256 of the whole result against the Image's and the
// peer's), bandwidth-limited (a token bucket shared by the node's transfers)
// and authenticated: every request is signed with HMAC-SHA256 under the
// storage agents' shared key (the replication Secret), over the method, the
// path, the range and a timestamp accepted within a window. The key is
// never sent, logged nor put on a command line.
package replication

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// Request headers of the signature.
const (
	// HeaderTimestamp is the request's time, in Unix seconds.
	HeaderTimestamp = "X-Ggnet-Timestamp"
	// HeaderAuthorization carries the scheme and the hex signature.
	HeaderAuthorization = "Authorization"
	scheme              = "GGNET-HMAC-SHA256 "
	// domain separates these signatures from any other use of the key.
	domain = "ggnet-replication-v1"
)

// DefaultWindow is how far a request's timestamp may be from the server's
// clock.
const DefaultWindow = 2 * time.Minute

// MinKeyLen is the shortest key accepted (the manager makes 32 bytes).
const MinKeyLen = 16

// Key is the shared signing key; Set replaces it (the Secret changed). It is
// safe for concurrent use. Without a key (or with one shorter than
// MinKeyLen) nothing is signed and every request is refused.
type Key struct {
	v atomic.Pointer[[]byte]
}

// Set replaces the key (a copy of b is kept).
func (k *Key) Set(b []byte) {
	c := append([]byte(nil), b...)
	k.v.Store(&c)
}

// get returns the key, or nil when none (or one too short) is set.
func (k *Key) get() []byte {
	if k == nil {
		return nil
	}
	p := k.v.Load()
	if p == nil || len(*p) < MinKeyLen {
		return nil
	}
	return *p
}

// Ready reports whether a usable key is set.
func (k *Key) Ready() bool { return k.get() != nil }

var errNoKey = errors.New("no replication key (the replication Secret is missing or its key is shorter than 16 bytes)")

// signature is the hex HMAC-SHA256 of a request's signed fields.
func signature(key []byte, method, uri, rng, ts string) string {
	m := hmac.New(sha256.New, key)
	for _, s := range []string{domain, method, uri, rng, ts} {
		m.Write([]byte(s))
		m.Write([]byte{'\n'})
	}
	return hex.EncodeToString(m.Sum(nil))
}

// sign adds the timestamp and the signature to req.
func (k *Key) sign(req *http.Request, now time.Time) error {
	key := k.get()
	if key == nil {
		return errNoKey
	}
	ts := strconv.FormatInt(now.Unix(), 10)
	req.Header.Set(HeaderTimestamp, ts)
	req.Header.Set(HeaderAuthorization, scheme+signature(key, req.Method, req.URL.RequestURI(), req.Header.Get("Range"), ts))
	return nil
}

// verify checks a request's signature and timestamp; the error is for the
// server's log only (it never names the key nor the expected signature).
func (k *Key) verify(req *http.Request, now time.Time, window time.Duration) error {
	key := k.get()
	if key == nil {
		return errNoKey
	}
	if len(req.Header.Values("Range")) > 1 || len(req.Header.Values(HeaderTimestamp)) > 1 || len(req.Header.Values(HeaderAuthorization)) > 1 {
		return errors.New("a signed header given twice")
	}
	auth := req.Header.Get(HeaderAuthorization)
	if !strings.HasPrefix(auth, scheme) {
		return errors.New("no signature")
	}
	got, err := hex.DecodeString(strings.TrimPrefix(auth, scheme))
	if err != nil || len(got) != sha256.Size {
		return errors.New("malformed signature")
	}
	ts := req.Header.Get(HeaderTimestamp)
	sec, err := strconv.ParseInt(ts, 10, 64)
	if err != nil || strconv.FormatInt(sec, 10) != ts {
		return errors.New("malformed timestamp")
	}
	if d := now.Sub(time.Unix(sec, 0)); d > window || d < -window {
		return errors.New("timestamp outside the window")
	}
	want, _ := hex.DecodeString(signature(key, req.Method, req.URL.RequestURI(), req.Header.Get("Range"), ts))
	if !hmac.Equal(got, want) {
		return errors.New("wrong signature")
	}
	return nil
}
