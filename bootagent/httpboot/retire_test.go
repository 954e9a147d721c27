package httpboot

import (
	"sync/atomic"
	"testing"
	"time"

	"github.com/ggnet/ggnet/bootagent/table"

	. "github.com/onsi/gomega"
)

// TestRetiringSession: a session being retired is not handed out (an
// AutoSession machine's request waits in the long poll for the next one);
// a failure report of a retiring or retired session gets the retry
// fallback, whose URL (the retired session's token) then brings the next
// session; nothing is recorded as a boot failure.
func TestRetiringSession(t *testing.T) {
	g := NewWithT(t)
	f := setup(t, Config{LongPoll: 300 * time.Millisecond})
	const (
		mac    = "52:54:00:00:00:04"
		tokenA = "eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee"
		tokenB = "ffffffffffffffffffffffffffffffff"
	)
	a := session("cafe/a", "cafe/seat-4", mac)
	a.AutoSession = true
	addSession(f.tbl, a, tokenA)
	status, body := get(g, f.url+"/boot/"+tokenA+"/"+mac+".ipxe")
	g.Expect(status).To(Equal(200))
	g.Expect(body).To(ContainSubstring("# GGnet session cafe/a"))

	t.Log("the manager asks to retire it: not handed out; the request waits for the next session without asking for one (a is still live)")
	a.Retiring = true
	f.tbl.UpsertSession(a)
	r, _ := f.tbl.LookupMAC(hw(mac))
	g.Expect(r.Token).NotTo(Equal(tokenA), "DHCP hands out the MAC's nonce again")
	for _, token := range []string{f.nonce(mac), tokenA} {
		status, body = get(g, f.url+"/boot/"+token+"/"+mac+".ipxe")
		g.Expect(status).To(Equal(200))
		g.Expect(body).NotTo(ContainSubstring("cafe/a"))
		g.Expect(body).To(ContainSubstring("the session of seat-4 is not ready yet"))
	}
	g.Expect(f.rec.sideEffects()).To(Equal([]string{"cafe/a"}), "only the first script was served; no session asked for")

	t.Log("a PC that got a's script just before reports its failed sanboot: the retry fallback, no BootFailed")
	for _, token := range []string{tokenA, f.nonce(mac)} {
		status, body = get(g, f.url+"/boot/"+token+"/"+mac+".ipxe?failed=0x0216eb3c")
		g.Expect(status).To(Equal(200))
		g.Expect(body).To(ContainSubstring("the session was retired"))
		g.Expect(body).To(ContainSubstring("chain --replace --autofree " + f.h.cfg.BaseURL + "/boot/" + token + "/" + mac + ".ipxe"))
		g.Expect(body).NotTo(HaveSuffix("exit 1\n"))
	}
	g.Expect(f.rec.failed).To(BeEmpty())

	t.Log("a retired (Retire=True, stopped), the next session b Ready: the retry's URL, with a's token, gets b's script")
	a.Retired, a.Live, a.Bootable = true, false, false
	f.tbl.UpsertSession(a)
	b := session("cafe/b", "cafe/seat-4", mac)
	b.AutoSession = true
	addSession(f.tbl, b, tokenB)
	status, body = get(g, f.url+"/boot/"+tokenA+"/"+mac+".ipxe")
	g.Expect(status).To(Equal(200))
	g.Expect(body).To(ContainSubstring("# GGnet session cafe/b"))

	t.Log("once a is stopped, a failure of b is b's, as always")
	status, body = get(g, f.url+"/boot/"+tokenB+"/"+mac+".ipxe?failed=0x0216eb3c")
	g.Expect(status).To(Equal(200))
	g.Expect(body).To(HaveSuffix("exit 1\n"))
	g.Expect(f.rec.failed).To(Equal([]string{"cafe/b 0x0216eb3c"}))

	t.Log("a leaves the table (deleted): its token is refused")
	f.tbl.DeleteSession(a.Key)
	status, _ = get(g, f.url+"/boot/"+tokenA+"/"+mac+".ipxe")
	g.Expect(status).To(Equal(403))
}

// TestRetiredTokenEnds: a retiring session's token is refused once the MAC
// is another Machine's, and after table.RetiredTokenTTL; right after the
// retire it works.
func TestRetiredTokenEnds(t *testing.T) {
	const (
		mac    = "52:54:00:00:00:04"
		tokenA = "eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee"
	)
	for name, end := range map[string]func(f *fixture, now *atomic.Int64){
		"the MAC moves to a Machine of another namespace": func(f *fixture, _ *atomic.Int64) {
			f.tbl.DeleteMachine("cafe/seat-4")
			f.tbl.UpsertMachine(machine("other/seat-4", mac, table.PolicyAutoSession))
		},
		"TTL": func(_ *fixture, now *atomic.Int64) { now.Add(int64(table.RetiredTokenTTL / time.Second)) },
	} {
		t.Run(name, func(t *testing.T) {
			g := NewWithT(t)
			var now atomic.Int64 // Unix seconds
			now.Store(1_800_000_000)
			clock := func() time.Time { return time.Unix(now.Load(), 0) }
			f := setup(t, Config{LongPoll: 100 * time.Millisecond}, table.WithClock(clock))
			a := session("cafe/a", "cafe/seat-4", mac)
			a.AutoSession = true
			addSession(f.tbl, a, tokenA)
			a.Retiring = true
			f.tbl.UpsertSession(a)
			status, body := get(g, f.url+"/boot/"+tokenA+"/"+mac+".ipxe?failed=0x0216eb3c")
			g.Expect(status).To(Equal(200))
			g.Expect(body).To(ContainSubstring("the session was retired"))

			end(f, &now)
			for _, q := range []string{"", "?failed=0x0216eb3c"} {
				status, body = get(g, f.url+"/boot/"+tokenA+"/"+mac+".ipxe"+q)
				g.Expect(status).To(Equal(403), body)
				g.Expect(body).NotTo(ContainSubstring("chain"))
			}
			g.Expect(f.rec.failed).To(BeEmpty())
		})
	}
}
