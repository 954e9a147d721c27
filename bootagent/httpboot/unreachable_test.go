package httpboot

import (
	"testing"

	. "github.com/onsi/gomega"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/ggnet/ggnet/internal/ipxe"
)

// TestStorageUnreachable: while its session's storage node is unreachable
// (StorageReachable=False) a PC gets the retry fallback with its own token,
// not the script (it would log in to a dead portal); once reachable again,
// the script.
func TestStorageUnreachable(t *testing.T) {
	f := setup(t, Config{Fallback: ipxe.FailureExit})
	g := NewWithT(t)
	s := session("cafe/s1", "cafe/seat-1", "52:54:00:00:00:01")
	s.StorageUnreachable = true
	f.tbl.UpsertSession(s)

	status, body := get(g, f.url+"/boot/"+token1+"/52:54:00:00:00:01.ipxe")
	g.Expect(status).To(Equal(200))
	g.Expect(body).To(ContainSubstring("the storage node of the session of seat-1 is unreachable; seat-1 asks again"))
	g.Expect(body).To(ContainSubstring("chain --replace --autofree http://10.20.0.2:8880/boot/"+token1+"/52:54:00:00:00:01.ipxe"),
		"a retry with the same token, even with the exit fallback configured")
	g.Expect(body).NotTo(ContainSubstring("sanboot"))
	g.Expect(body).NotTo(ContainSubstring(creds.Password))
	g.Expect(ipxe.Validate(body)).To(Succeed())
	g.Expect(f.rec.sideEffects()).To(BeEmpty(), "no script served")
	g.Expect(testutil.ToFloat64(f.h.requests.WithLabelValues(ResultStorageUnreachable))).To(Equal(1.0))

	s.StorageUnreachable = false
	f.tbl.UpsertSession(s)
	status, body = get(g, f.url+"/boot/"+token1+"/52:54:00:00:00:01.ipxe")
	g.Expect(status).To(Equal(200))
	g.Expect(body).To(ContainSubstring("sanboot"))
	g.Expect(f.rec.served).To(ConsistOf("cafe/s1"))
}
