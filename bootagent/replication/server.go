package replication

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/go-logr/logr"

	"github.com/ggnet/ggnet/bootagent/images"
)

// Paths: <prefix><namespace>/<name>/<uid>/extents and …/data.
const (
	pathPrefix = "/v1/replicas/"
	opExtents  = "extents"
	opData     = "data"
)

// Server serves this node's Ready replicas (the files the images store
// placed, with their recorded checksum) to the other storage agents. Every
// request must be signed (Key); nothing else is served.
type Server struct {
	// Store is this node's images store.
	Store *images.Store
	// Key is the shared signing key.
	Key *Key
	// Namespace, when set, is the one namespace whose replicas are served
	// (the agent's watched namespace): the data directory may hold another
	// GGnet's replicas too, of other namespaces, which this agent's key must
	// not open. Empty: every namespace (the agent watches them all).
	Namespace string
	Log       logr.Logger
	// Window is how far a request's timestamp may be from this clock
	// (default DefaultWindow).
	Window time.Duration
	// now is the clock (tests).
	now func() time.Time
}

// Names in a path: a namespace (DNS label), an Image name (DNS subdomain) and
// a UID. None can be "." or ".." nor hold a "/".
var (
	dnsLabel     = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$`)
	dnsSubdomain = regexp.MustCompile(`^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$`)
	uidRE        = regexp.MustCompile(`^[a-zA-Z0-9][-a-zA-Z0-9]{0,63}$`)
)

// validNames reports whether namespace, name and uid are names a replica can
// have (and so safe in a path).
func validNames(namespace, name, uid string) bool {
	return dnsLabel.MatchString(namespace) && dnsSubdomain.MatchString(name) && uidRE.MatchString(uid)
}

// replicaPath is the URL path of one of a replica's endpoints.
func replicaPath(namespace, name, uid, op string) string {
	return pathPrefix + namespace + "/" + name + "/" + uid + "/" + op
}

func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	now := time.Now
	if s.now != nil {
		now = s.now
	}
	window := s.Window
	if window <= 0 {
		window = DefaultWindow
	}
	log := s.Log.WithValues("peer", r.RemoteAddr, "path", r.URL.Path)
	// Authenticate first: an unsigned request learns nothing, not even
	// whether a replica exists or the path is valid.
	if err := s.Key.verify(r, now(), window); err != nil {
		log.V(1).Info("Refusing an unauthenticated replication request", "why", err.Error())
		w.Header().Set("WWW-Authenticate", strings.TrimSpace(scheme))
		// The connection goes with the answer: an unsigned client does not
		// get to hold one of the server's connections open.
		w.Header().Set("Connection", "close")
		http.Error(w, "unauthorized", http.StatusUnauthorized)
		return
	}
	if r.Method != http.MethodGet {
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	parts := strings.Split(strings.TrimPrefix(r.URL.Path, pathPrefix), "/")
	if !strings.HasPrefix(r.URL.Path, pathPrefix) || len(parts) != 4 || r.URL.RawQuery != "" ||
		!validNames(parts[0], parts[1], parts[2]) || (parts[3] != opExtents && parts[3] != opData) ||
		(s.Namespace != "" && parts[0] != s.Namespace) {
		http.Error(w, "not found", http.StatusNotFound)
		return
	}
	namespace, name, uid, op := parts[0], parts[1], parts[2], parts[3]
	f, size, sum, err := s.open(namespace, name, uid)
	if err != nil {
		log.V(1).Info("Replica not served", "why", err.Error())
		http.Error(w, "not found", http.StatusNotFound)
		return
	}
	defer f.Close()
	switch op {
	case opExtents:
		s.serveExtents(w, f, size, sum, log)
	case opData:
		s.serveData(w, r, f, size, log)
	}
}

// open opens a Ready replica: a regular file at its final place in the
// store, with its recorded checksum, opened through the store's directory
// (no symbolic link out of it).
func (s *Server) open(namespace, name, uid string) (*os.File, int64, string, error) {
	res, ok := s.Store.Existing(namespace, name, uid)
	if !ok || res.SHA256 == "" {
		return nil, 0, "", errors.New("no Ready replica")
	}
	root, err := os.OpenRoot(s.Store.Dir)
	if err != nil {
		return nil, 0, "", err
	}
	defer root.Close()
	f, err := root.Open(filepath.Join(namespace, name, uid+".raw"))
	if err != nil {
		return nil, 0, "", err
	}
	st, err := f.Stat()
	if err != nil || !st.Mode().IsRegular() {
		f.Close()
		return nil, 0, "", errors.New("not a regular file")
	}
	return f, st.Size(), res.SHA256, nil
}

func (s *Server) serveExtents(w http.ResponseWriter, f *os.File, size int64, sum string, log logr.Logger) {
	ext, err := extentMap(f, size)
	if err != nil {
		log.Error(err, "Unable to map the replica's extents")
		http.Error(w, "internal error", http.StatusInternalServerError)
		return
	}
	if ext == nil {
		ext = []Extent{}
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	_ = json.NewEncoder(w).Encode(ExtentMap{Size: size, SHA256: sum, Extents: ext})
}

// serveData sends one range of the file (Range: bytes=<first>-<last>, both
// required); the kernel copies it (sendfile).
func (s *Server) serveData(w http.ResponseWriter, r *http.Request, f *os.File, size int64, log logr.Logger) {
	first, last, ok := parseRange(r.Header.Get("Range"))
	if !ok || last >= size {
		w.Header().Set("Content-Range", fmt.Sprintf("bytes */%d", size))
		http.Error(w, "range not satisfiable", http.StatusRequestedRangeNotSatisfiable)
		return
	}
	n := last - first + 1
	if _, err := f.Seek(first, io.SeekStart); err != nil {
		http.Error(w, "internal error", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", first, last, size))
	w.Header().Set("Content-Length", strconv.FormatInt(n, 10))
	w.WriteHeader(http.StatusPartialContent)
	// A peer that stops reading for the stall timeout loses its
	// connection: the deadline moves on with every piece sent.
	rc := http.NewResponseController(w)
	for sent := int64(0); sent < n; {
		_ = rc.SetWriteDeadline(time.Now().Add(writeStall))
		k, err := io.CopyN(w, f, min(n-sent, sendPiece))
		sent += k
		if err != nil {
			log.V(1).Info("Replica range not sent in full", "first", first, "last", last, "sent", sent, "error", err.Error())
			return
		}
	}
}

// A range is sent in pieces of sendPiece bytes (each by sendfile), each
// within writeStall.
const (
	sendPiece  = 4 << 20
	writeStall = 60 * time.Second
)

// parseRange parses "bytes=<first>-<last>" (one range, both ends given,
// first <= last).
func parseRange(h string) (first, last int64, ok bool) {
	spec, found := strings.CutPrefix(h, "bytes=")
	if !found {
		return 0, 0, false
	}
	a, b, found := strings.Cut(spec, "-")
	if !found {
		return 0, 0, false
	}
	first, err1 := strconv.ParseInt(a, 10, 64)
	last, err2 := strconv.ParseInt(b, 10, 64)
	if err1 != nil || err2 != nil || first < 0 || last < first || a != strconv.FormatInt(first, 10) || b != strconv.FormatInt(last, 10) {
		return 0, 0, false
	}
	return first, last, true
}
