package images

import (
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr/funcr"
	. "github.com/onsi/gomega"
)

// TestDownloadRedactsURLCredentials: a signed URL's query and a URL's
// password appear in no replica message and no log line.
func TestDownloadRedactsURLCredentials(t *testing.T) {
	g := NewWithT(t)
	var logs bytes.Buffer
	for _, status := range []int{http.StatusNotFound, http.StatusServiceUnavailable} {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(status) }))
		s := New(t.TempDir(), funcr.New(func(prefix, args string) { logs.WriteString(prefix + args + "\n") }, funcr.Options{}))
		s.Retries, s.Backoff = 1, time.Millisecond
		url := strings.Replace(srv.URL, "http://", "http://alice:Pa55w0rdSecret@", 1) + "/win11.raw?X-Amz-Signature=SIGNATURESECRET&X-Amz-Expires=60"
		_, err := s.Ensure(context.Background(), "cafe", "img", "u1", Source{URL: url, SHA256: strings.Repeat("a", 64), Format: "raw"}, nil)
		g.Expect(err).To(HaveOccurred())
		reason, msg := failure(err)
		g.Expect(reason).To(Equal(ReasonUnreachable), msg)
		g.Expect(msg).To(ContainSubstring("/win11.raw"), "the message still says which file")
		for _, secret := range []string{"Pa55w0rdSecret", "SIGNATURESECRET", "alice"} {
			g.Expect(msg).NotTo(ContainSubstring(secret), "status %d", status)
		}
		srv.Close()
	}
	g.Expect(logs.String()).To(ContainSubstring("Retrying image download"), "the retry was logged")
	for _, secret := range []string{"Pa55w0rdSecret", "SIGNATURESECRET"} {
		g.Expect(logs.String()).NotTo(ContainSubstring(secret))
	}
}
