package replication

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	. "github.com/onsi/gomega"
)

// raw sends a request over a plain TCP connection (no client-side cleaning
// of the path) and returns the status and body.
func raw(t *testing.T, endpoint, reqText string) (int, string) {
	t.Helper()
	conn, err := net.Dial("tcp", endpoint)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := io.WriteString(conn, reqText); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// signedRequest is a signed GET of uri with rng, at now, as request text.
func signedRequest(k *Key, uri, rng string, now time.Time, mutate func(*http.Request)) string {
	req, _ := http.NewRequest(http.MethodGet, "http://peer"+uri, nil)
	req.URL.Opaque, _, _ = strings.Cut(uri, "?") // keep the path as written (no cleaning)
	if rng != "" {
		req.Header.Set("Range", rng)
	}
	if err := k.sign(req, now); err != nil {
		panic(err)
	}
	if mutate != nil {
		mutate(req)
	}
	text := "GET " + uri + " HTTP/1.1\r\nHost: peer\r\nConnection: close\r\n"
	for name, vs := range req.Header {
		for _, v := range vs {
			text += name + ": " + v + "\r\n"
		}
	}
	return text + "\r\n"
}

func TestRequestsAreAuthenticated(t *testing.T) {
	e := newEnv(t, sparse)
	data := replicaPath(testNS, testImg, testUID, opData)
	extents := replicaPath(testNS, testImg, testUID, opExtents)
	now := time.Now()
	other := &Key{}
	other.Set(randomKey(t))

	// The right key reads the data.
	g := NewWithT(t)
	code, body := raw(t, e.endpoint, signedRequest(e.key, data, "bytes=0-9", now, nil))
	g.Expect(code).To(Equal(http.StatusPartialContent))
	g.Expect([]byte(body)).To(Equal(e.content[:10]))
	code, _ = raw(t, e.endpoint, signedRequest(e.key, extents, "", now.Add(-90*time.Second), nil))
	g.Expect(code).To(Equal(http.StatusOK), "a clock 90s behind is within the window")

	for name, req := range map[string]string{
		"no signature":    "GET " + data + " HTTP/1.1\r\nHost: peer\r\nRange: bytes=0-9\r\nConnection: close\r\n\r\n",
		"wrong key":       signedRequest(other, data, "bytes=0-9", now, nil),
		"stale":           signedRequest(e.key, data, "bytes=0-9", now.Add(-3*time.Minute), nil),
		"from the future": signedRequest(e.key, data, "bytes=0-9", now.Add(3*time.Minute), nil),
		"tampered range": signedRequest(e.key, data, "bytes=0-9", now, func(r *http.Request) {
			r.Header.Set("Range", "bytes=0-1048575")
		}),
		"tampered timestamp": signedRequest(e.key, data, "bytes=0-9", now.Add(-3*time.Minute), func(r *http.Request) {
			r.Header.Set(HeaderTimestamp, strconv.FormatInt(now.Unix(), 10))
		}),
		"signature of another path": replaceRequestLine(signedRequest(e.key, replicaPath(testNS, "other", testUID, opData), "bytes=0-9", now, nil), data),
		"malformed signature":       signedRequest(e.key, data, "bytes=0-9", now, func(r *http.Request) { r.Header.Set(HeaderAuthorization, scheme+"zz") }),
		"two ranges": signedRequest(e.key, data, "bytes=0-9", now, func(r *http.Request) {
			r.Header.Add("Range", "bytes=0-1048575")
		}),
	} {
		t.Run(name, func(t *testing.T) {
			g := NewWithT(t)
			code, body := raw(t, e.endpoint, req)
			g.Expect(code).To(Equal(http.StatusUnauthorized))
			// Nothing about why, nor about the replica.
			g.Expect(body).To(Equal("unauthorized\n"))
		})
	}
}

// replaceRequestLine puts uri in a request text's request line (its
// signature stays that of the original path).
func replaceRequestLine(text, uri string) string {
	for i := 0; i < len(text); i++ {
		if text[i] == '\r' {
			return "GET " + uri + " HTTP/1.1" + text[i:]
		}
	}
	return text
}

func TestNoKeyNoService(t *testing.T) {
	g := NewWithT(t)
	e := newEnv(t, sparse)
	data := replicaPath(testNS, testImg, testUID, opData)
	now := time.Now()
	short := []byte("too short")
	for name, k := range map[string]*Key{"no key": {}, "a key too short": {}} {
		if name == "a key too short" {
			k.Set(short)
		}
		s := &Server{Store: e.src, Key: k}
		req, _ := http.NewRequest(http.MethodGet, "http://peer"+data, nil)
		req.Header.Set("Range", "bytes=0-9")
		ts := strconv.FormatInt(now.Unix(), 10)
		req.Header.Set(HeaderTimestamp, ts)
		req.Header.Set(HeaderAuthorization, scheme+signature(short, http.MethodGet, data, "bytes=0-9", ts))
		w := httptest.NewRecorder()
		s.ServeHTTP(w, req)
		g.Expect(w.Code).To(Equal(http.StatusUnauthorized), name)
		g.Expect(w.Body.String()).To(Equal("unauthorized\n"), name)
		g.Expect(k.sign(req, now)).To(MatchError(errNoKey), name)
	}
}

func TestOnlyReadyReplicasAreServed(t *testing.T) {
	e := newEnv(t, sparse)
	now := time.Now()
	// A file outside the store, and links to it from inside.
	secret := filepath.Join(filepath.Dir(e.src.Dir), "outside.raw")
	if err := os.WriteFile(secret, []byte("not a replica"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(secret+".sha256", []byte("abc\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	linked := e.src.Path(testNS, "linked", testUID)
	if err := os.MkdirAll(filepath.Dir(linked), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(secret, linked); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(linked+".sha256", []byte("abc\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// A replica being placed: its file, no checksum yet.
	placing := e.src.Path(testNS, "placing", testUID)
	if err := os.MkdirAll(filepath.Dir(placing), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(placing, []byte("half"), 0o600); err != nil {
		t.Fatal(err)
	}

	for name, uri := range map[string]string{
		"dot dot":              "/v1/replicas/" + testNS + "/../../outside/" + testUID + "/data",
		"escaped dot dot":      "/v1/replicas/%2e%2e/%2e%2e/x/" + testUID + "/data",
		"escaped slash":        "/v1/replicas/" + testNS + "/a%2F..%2F..%2Foutside/" + testUID + "/data",
		"absolute in a name":   "/v1/replicas//etc/passwd/x/data",
		"a uid with a dot dot": "/v1/replicas/" + testNS + "/" + testImg + "/..%2F..%2Foutside/data",
		"upper case name":      "/v1/replicas/" + testNS + "/GAMES/" + testUID + "/data",
		"a query":              replicaPath(testNS, testImg, testUID, opData) + "?x=1",
		"another op":           "/v1/replicas/" + testNS + "/" + testImg + "/" + testUID + "/sha256",
		"symbolic link out":    replicaPath(testNS, "linked", testUID, opData),
		"no checksum yet":      replicaPath(testNS, "placing", testUID, opData),
		"no such replica":      replicaPath(testNS, "nope", testUID, opData),
	} {
		t.Run(name, func(t *testing.T) {
			g := NewWithT(t)
			code, body := raw(t, e.endpoint, signedRequest(e.key, uri, "bytes=0-9", now, nil))
			g.Expect(code).To(Equal(http.StatusNotFound))
			g.Expect(body).To(Equal("not found\n"))
		})
	}
	t.Run("range outside the file", func(t *testing.T) {
		g := NewWithT(t)
		for _, rng := range []string{"bytes=0-67108864", "bytes=5-4", "bytes=-5", "bytes=0-", "bytes=0-1,4-5", "items=0-1"} {
			code, _ := raw(t, e.endpoint, signedRequest(e.key, replicaPath(testNS, testImg, testUID, opData), rng, now, nil))
			g.Expect(code).To(Equal(http.StatusRequestedRangeNotSatisfiable), rng)
		}
	})
	t.Run("not GET", func(t *testing.T) {
		g := NewWithT(t)
		req := signedRequest(e.key, replicaPath(testNS, testImg, testUID, opData), "bytes=0-9", now, nil)
		code, _ := raw(t, e.endpoint, "PUT"+req[3:])
		g.Expect(code).To(Equal(http.StatusUnauthorized), "the method is signed")
	})
}

// An agent watching one namespace serves that namespace's replicas only: the
// data directory may be shared with another GGnet's agent watching another
// namespace, whose replicas this agent's key must not open.
func TestOnlyTheWatchedNamespaceIsServed(t *testing.T) {
	e := newEnv(t, sparse)
	now := time.Now()
	for name, tc := range map[string]struct {
		namespace string
		want      int
	}{
		"all namespaces":      {"", http.StatusOK},
		"the replica's":       {testNS, http.StatusOK},
		"another namespace's": {"tenant-b", http.StatusNotFound},
	} {
		t.Run(name, func(t *testing.T) {
			g := NewWithT(t)
			s := &Server{Store: e.src, Key: e.key, Namespace: tc.namespace}
			for _, op := range []string{opExtents, opData} {
				req, _ := http.NewRequest(http.MethodGet, "http://peer"+replicaPath(testNS, testImg, testUID, op), nil)
				if op == opData {
					req.Header.Set("Range", "bytes=0-9")
				}
				g.Expect(e.key.sign(req, now)).To(Succeed())
				w := httptest.NewRecorder()
				s.ServeHTTP(w, req)
				want := tc.want
				if op == opData && want == http.StatusOK {
					want = http.StatusPartialContent
				}
				g.Expect(w.Code).To(Equal(want), op)
				if want == http.StatusNotFound {
					g.Expect(w.Body.String()).To(Equal("not found\n"), op)
				}
			}
		})
	}
}

// TestUnsignedConnectionsAreClosed: an unsigned client asking to keep its
// connection alive gets its 401 and the connection closed, so that it
// cannot hold the server's connection slots.
func TestUnsignedConnectionsAreClosed(t *testing.T) {
	e := newEnv(t, sparse)
	g := NewWithT(t)
	conn, err := net.Dial("tcp", e.endpoint)
	g.Expect(err).NotTo(HaveOccurred())
	defer conn.Close()
	data := replicaPath(testNS, testImg, testUID, opData)
	_, err = io.WriteString(conn, "GET "+data+" HTTP/1.1\r\nHost: peer\r\nConnection: keep-alive\r\n\r\n")
	g.Expect(err).NotTo(HaveOccurred())
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	g.Expect(err).NotTo(HaveOccurred())
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	g.Expect(resp.StatusCode).To(Equal(http.StatusUnauthorized))
	g.Expect(resp.Close).To(BeTrue(), "the answer says the connection closes")
	g.Expect(conn.SetReadDeadline(time.Now().Add(5 * time.Second))).To(Succeed())
	_, err = br.ReadByte()
	g.Expect(err).To(MatchError(io.EOF), "the server closed the connection")
}
