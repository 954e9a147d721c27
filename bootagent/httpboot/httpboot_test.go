package httpboot

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/go-logr/logr/funcr"
	. "github.com/onsi/gomega"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/ggnet/ggnet/bootagent/dhcp"
	"github.com/ggnet/ggnet/bootagent/table"
	"github.com/ggnet/ggnet/internal/ipxe"
)

type recorder struct {
	mu        sync.Mutex
	served    []string
	requested []string
	failed    []string
	forbidden []string
	onRequest func(table.Machine)
}

func (r *recorder) ScriptServed(key string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.served = append(r.served, key)
}

func (r *recorder) RequestSession(m table.Machine) {
	r.mu.Lock()
	r.requested = append(r.requested, m.Key)
	f := r.onRequest
	r.mu.Unlock()
	if f != nil {
		f(m)
	}
}

func (r *recorder) BootFailed(key, errno string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.failed = append(r.failed, key+" "+errno)
}

func (r *recorder) Forbidden(m table.Machine, _ netip.Addr, reason error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.forbidden = append(r.forbidden, m.Key+": "+reason.Error())
}

// sideEffects returns what was recorded besides refusals.
func (r *recorder) sideEffects() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	out = append(out, r.served...)
	out = append(out, r.requested...)
	return append(out, r.failed...)
}

func (r *recorder) refusals() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.forbidden...)
}

const (
	token1 = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
	token5 = "cccccccccccccccccccccccccccccccc"
	token7 = "dddddddddddddddddddddddddddddddd"
	wrong  = "zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz"
)

func hw(s string) net.HardwareAddr { m, _ := net.ParseMAC(s); return m }

// machine builds a table Machine in namespace cafe reserved 127.0.0.1 (the
// test client's address) unless changed.
func machine(key, mac string, policy table.Policy, opts ...func(*table.Machine)) table.Machine {
	ns, name, _ := strings.Cut(key, "/")
	m := table.Machine{Key: key, Namespace: ns, Name: name, Policy: policy, HasImage: true,
		Reservation: dhcp.Reservation{MAC: hw(mac), Address: net.IPv4(127, 0, 0, 1).To4()}}
	for _, o := range opts {
		o(&m)
	}
	return m
}

func session(key, machineKey, mac string) table.Session {
	ns, name, _ := strings.Cut(key, "/")
	return table.Session{Key: key, MAC: mac, MachineKey: machineKey, Bootable: true, Live: true,
		Boot: ipxe.Session{Name: ns + "/" + name, Image: "win11", Portal: "10.0.0.1:3260",
			TargetIQN: "iqn.2026-11.io.ggnet:" + name, InitiatorIQN: "iqn.2026-11.io.ggnet:initiator:" + name}}
}

var creds = ipxe.Credentials{Username: "seat", Password: "Passw0rdPassw0rd", TargetUsername: "tgt", TargetPassword: "Target0Target0Ta"}

func addSession(tbl *table.Table, s table.Session, token string) {
	tbl.UpsertSession(s)
	tbl.UpsertSecret(s.Key, table.Secret{Credentials: creds, Token: token})
}

type fixture struct {
	url  string
	tbl  *table.Table
	rec  *recorder
	reg  *prometheus.Registry
	h    *Handler
	neig *table.NeighborMap
}

func (f *fixture) nonce(mac string) string {
	r, _ := f.tbl.LookupMAC(hw(mac))
	return r.Token
}

// setup serves a handler on loopback. Machines (namespace cafe):
// seat-1 with a Ready session, seat-2 without, seat-3 LocalBoot, seat-4
// AutoSession, seat-5 reserved 10.20.0.5 (not the client's address) with a
// session, seat-6 Conflict with a session (127.0.0.3 is its neighbour),
// seat-7 owner of :07 whose namesake in namespace other has a session.
func setup(t *testing.T, cfg Config, opts ...table.Option) *fixture {
	t.Helper()
	root := t.TempDir()
	if err := os.WriteFile(filepath.Join(root, "ipxe.efi"), []byte("EFI binary"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(t.TempDir(), "secret"), []byte("s"), 0o644); err != nil {
		t.Fatal(err)
	}
	n := &table.NeighborMap{}
	n.Set(netip.MustParseAddr("127.0.0.3"), hw("52:54:00:00:00:06"))
	tbl := table.New(append([]table.Option{table.WithNeighbors(n)}, opts...)...)
	tbl.UpsertMachine(machine("cafe/seat-1", "52:54:00:00:00:01", table.PolicyManual))
	tbl.UpsertMachine(machine("cafe/seat-2", "52:54:00:00:00:02", table.PolicyManual))
	tbl.UpsertMachine(machine("cafe/seat-3", "52:54:00:00:00:03", table.PolicyLocalBoot))
	tbl.UpsertMachine(machine("cafe/seat-4", "52:54:00:00:00:04", table.PolicyAutoSession))
	tbl.UpsertMachine(machine("cafe/seat-5", "52:54:00:00:00:05", table.PolicyManual,
		func(m *table.Machine) { m.Reservation.Address = net.IPv4(10, 20, 0, 5).To4() }))
	tbl.UpsertMachine(machine("cafe/seat-6", "52:54:00:00:00:06", table.PolicyManual,
		func(m *table.Machine) { m.Conflict, m.Reservation.Address = true, nil }))
	tbl.UpsertMachine(machine("cafe/seat-7", "52:54:00:00:00:07", table.PolicyManual, func(m *table.Machine) { m.CreatedUnix = 1 }))
	tbl.UpsertMachine(machine("other/seat-7", "52:54:00:00:00:07", table.PolicyManual, func(m *table.Machine) { m.CreatedUnix = 2 }))
	addSession(tbl, session("cafe/s1", "cafe/seat-1", "52:54:00:00:00:01"), token1)
	addSession(tbl, session("cafe/s5", "cafe/seat-5", "52:54:00:00:00:05"), token5)
	addSession(tbl, session("cafe/s6", "cafe/seat-6", "52:54:00:00:00:06"), token7)
	addSession(tbl, session("other/s7", "other/seat-7", "52:54:00:00:00:07"), token7)
	rec := &recorder{}
	reg := prometheus.NewRegistry()
	cfg.BaseURL, cfg.IPXERoot, cfg.RetryDelay = "http://10.20.0.2:8880", root, 5
	if cfg.LongPoll == 0 {
		cfg.LongPoll = time.Second
	}
	h, err := New(cfg, tbl, rec, logr.Discard(), reg)
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	h.Register(mux)
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return &fixture{url: srv.URL, tbl: tbl, rec: rec, reg: reg, h: h, neig: n}
}

// getFrom fetches url from the local address from (a loopback address).
func getFrom(g Gomega, from, url string) (int, string) {
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}}
	c := &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{DialContext: d.DialContext}}
	resp, err := c.Get(url)
	g.Expect(err).NotTo(HaveOccurred())
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	g.Expect(err).NotTo(HaveOccurred())
	return resp.StatusCode, string(b)
}

func get(g Gomega, url string) (int, string) { return getFrom(g, "127.0.0.1", url) }

func TestScripts(t *testing.T) {
	f := setup(t, Config{})
	served := func(g Gomega, b string) {
		want, err := ipxe.Render(ipxe.Session{Name: "cafe/s1", Image: "win11", Portal: "10.0.0.1:3260",
			TargetIQN: "iqn.2026-11.io.ggnet:s1", InitiatorIQN: "iqn.2026-11.io.ggnet:initiator:s1", Credentials: &creds})
		g.Expect(err).NotTo(HaveOccurred())
		g.Expect(b).To(Equal(want))
		g.Expect(b).To(ContainSubstring("set password Passw0rdPassw0rd\n"), "the credentials are in the served script")
	}
	for name, tc := range map[string]struct {
		path   string
		from   string
		status int
		check  func(g Gomega, body string)
	}{
		"session script, right token, bound address": {"/boot/" + token1 + "/52:54:00:00:00:01.ipxe", "", 200, served},
		"the MAC's nonce serves its session too":     {"/boot/{nonce1}/52:54:00:00:00:01.ipxe", "", 200, served},
		"dashed MAC":                                 {"/boot/" + token1 + "/52-54-00-00-00-01.ipxe", "", 200, served},
		"wrong token": {"/boot/" + wrong + "/52:54:00:00:00:01.ipxe", "", 403, func(g Gomega, b string) {
			g.Expect(b).To(Equal("forbidden\n"))
		}},
		"malformed token":                  {"/boot/seat-1/52:54:00:00:00:01.ipxe", "", 403, nil},
		"another MAC's token":              {"/boot/" + token5 + "/52:54:00:00:00:01.ipxe", "", 403, nil},
		"no token while required":          {"/boot/52:54:00:00:00:01.ipxe", "", 403, nil},
		"right token, wrong address":       {"/boot/" + token1 + "/52:54:00:00:00:01.ipxe", "127.0.0.2", 403, nil},
		"right token, unbound reservation": {"/boot/" + token5 + "/52:54:00:00:00:05.ipxe", "", 403, nil},
		"Conflict machine's session token": {"/boot/" + token7 + "/52:54:00:00:00:06.ipxe", "127.0.0.3", 403, nil},
		"Conflict machine with its nonce gets no session": {"/boot/{nonce6}/52:54:00:00:00:06.ipxe", "127.0.0.3", 200, func(g Gomega, b string) {
			g.Expect(b).To(ContainSubstring("seat-6 shares its MAC or address with another Machine"))
			g.Expect(b).NotTo(ContainSubstring("sanboot"))
		}},
		"non-owner's session token in another namespace": {"/boot/" + token7 + "/52:54:00:00:00:07.ipxe", "", 403, nil},
		"owner of a MAC with another namespace's session": {"/boot/{nonce7}/52:54:00:00:00:07.ipxe", "", 200, func(g Gomega, b string) {
			g.Expect(b).To(ContainSubstring("no boot session for seat-7"))
			g.Expect(b).NotTo(ContainSubstring("sanboot"))
		}},
		"known machine without session retries": {"/boot/{nonce2}/52:54:00:00:00:02.ipxe", "", 200, func(g Gomega, b string) {
			g.Expect(b).To(ContainSubstring("no boot session for seat-2"))
			g.Expect(b).To(MatchRegexp(`chain --replace --autofree http://10\.20\.0\.2:8880/boot/[a-z2-7]{32}/52:54:00:00:00:02\.ipxe`))
			g.Expect(ipxe.Validate(b)).To(Succeed())
		}},
		"LocalBoot exits": {"/boot/{nonce3}/52:54:00:00:00:03.ipxe", "", 200, func(g Gomega, b string) {
			g.Expect(b).To(ContainSubstring("boots from its local disk"))
			g.Expect(b).To(HaveSuffix("exit 1\n"))
		}},
		"unknown MAC":  {"/boot/" + token1 + "/52:54:00:99:99:99.ipxe", "", 403, nil},
		"not a MAC":    {"/boot/" + token1 + "/seat-1.ipxe", "", 400, func(g Gomega, b string) { g.Expect(b).To(ContainSubstring("want /boot/<token>/<mac>.ipxe")) }},
		"not .ipxe":    {"/boot/" + token1 + "/52:54:00:00:00:01.txt", "", 400, nil},
		"iPXE binary":  {"/ipxe/ipxe.efi", "", 200, func(g Gomega, b string) { g.Expect(b).To(Equal("EFI binary")) }},
		"missing file": {"/ipxe/snponly.efi", "", 404, nil},
		"failure report": {"/boot/" + token1 + "/52:54:00:00:00:01.ipxe?failed=0x0216eb3c", "", 200, func(g Gomega, b string) {
			g.Expect(b).To(ContainSubstring("the boot failed (iPXE error 0x0216eb3c)"))
			g.Expect(b).To(HaveSuffix("exit 1\n"))
		}},
		"failure report with a wrong token":   {"/boot/" + wrong + "/52:54:00:00:00:01.ipxe?failed=0x0216eb3c", "", 403, nil},
		"failure report from a wrong address": {"/boot/" + token1 + "/52:54:00:00:00:01.ipxe?failed=0x0216eb3c", "127.0.0.2", 403, nil},
		"bad failure report":                  {"/boot/" + token1 + "/52:54:00:00:00:01.ipxe?failed=$(reboot)", "", 400, nil},
		"traversal":                           {"/ipxe/..%2fsecret", "", 404, nil},
	} {
		t.Run(name, func(t *testing.T) {
			g := NewWithT(t)
			path := tc.path
			for _, n := range []string{"1", "2", "3", "6", "7"} {
				path = strings.ReplaceAll(path, "{nonce"+n+"}", f.nonce("52:54:00:00:00:0"+n))
			}
			from := tc.from
			if from == "" {
				from = "127.0.0.1"
			}
			status, body := getFrom(g, from, f.url+path)
			g.Expect(status).To(Equal(tc.status))
			if tc.check != nil {
				tc.check(g, body)
			}
		})
	}
	g := NewWithT(t)
	g.Expect(f.rec.served).To(ConsistOf("cafe/s1", "cafe/s1", "cafe/s1"), "served only to allowed requests")
	g.Expect(f.rec.failed).To(ConsistOf("cafe/s1 0x0216eb3c"), "only the allowed failure report is recorded")
	g.Expect(f.rec.requested).To(BeEmpty())
	g.Expect(f.rec.refusals()).To(HaveLen(10), "a refusal for a known machine is reported for its Event")
	for _, r := range f.rec.refusals() {
		g.Expect(r).NotTo(ContainSubstring(token1))
		g.Expect(r).NotTo(ContainSubstring(wrong))
	}
	g.Expect(testutil.ToFloat64(f.h.requests.WithLabelValues(ResultForbidden))).To(Equal(11.0))
	boundedLabels(g, f.reg)
}

// boundedLabels checks that the result label takes only declared values.
func boundedLabels(g Gomega, reg *prometheus.Registry) {
	known := map[string]bool{}
	for _, r := range []string{ResultSession, ResultAutoReady, ResultNoSession, ResultConflict, ResultLocalBoot, ResultBadRequest,
		ResultTimeout, ResultBusy, ResultBootFailed, ResultForbidden, ResultNotReady, ResultError} {
		known[r] = true
	}
	mfs, err := reg.Gather()
	g.Expect(err).NotTo(HaveOccurred())
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				g.Expect(l.GetName()).To(Equal("result"))
				g.Expect(known).To(HaveKey(l.GetValue()))
			}
		}
	}
}

func TestForbiddenAutoSessionHasNoSideEffect(t *testing.T) {
	g := NewWithT(t)
	f := setup(t, Config{})
	for _, from := range []string{"127.0.0.1", "127.0.0.2"} {
		status, _ := getFrom(g, from, f.url+"/boot/"+wrong+"/52:54:00:00:00:04.ipxe")
		g.Expect(status).To(Equal(403))
	}
	status, _ := getFrom(g, "127.0.0.2", f.url+"/boot/"+f.nonce("52:54:00:00:00:04")+"/52:54:00:00:00:04.ipxe")
	g.Expect(status).To(Equal(403), "the nonce from an unbound address")
	g.Expect(f.rec.sideEffects()).To(BeEmpty(), "no session asked for, nothing served")
	g.Expect(f.rec.refusals()).To(HaveLen(3))
}

func TestNotReady(t *testing.T) {
	g := NewWithT(t)
	var ready atomic.Bool
	f := setup(t, Config{Ready: ready.Load})
	url := f.url + "/boot/" + token1 + "/52:54:00:00:00:01.ipxe"
	status, _ := get(g, url)
	g.Expect(status).To(Equal(503))
	g.Expect(f.rec.sideEffects()).To(BeEmpty())
	ready.Store(true)
	status, _ = get(g, url)
	g.Expect(status).To(Equal(200))
}

func TestTokenOptional(t *testing.T) {
	g := NewWithT(t)
	f := setup(t, Config{}, table.WithoutRequiredToken())
	status, body := get(g, f.url+"/boot/52:54:00:00:00:01.ipxe")
	g.Expect(status).To(Equal(200))
	g.Expect(body).To(ContainSubstring("set password Passw0rdPassw0rd"))
	status, _ = getFrom(g, "127.0.0.2", f.url+"/boot/52:54:00:00:00:01.ipxe")
	g.Expect(status).To(Equal(403), "the address is still checked")
	status, _ = get(g, f.url+"/boot/"+wrong+"/52:54:00:00:00:01.ipxe")
	g.Expect(status).To(Equal(403), "a wrong token is still refused")
}

func TestAutoSessionLongPoll(t *testing.T) {
	g := NewWithT(t)
	f := setup(t, Config{LongPoll: 10 * time.Second})
	// The controller's part: a session appears, then becomes Ready.
	f.rec.onRequest = func(m table.Machine) {
		go func() {
			time.Sleep(50 * time.Millisecond)
			f.tbl.UpsertSession(table.Session{Key: "cafe/auto", MAC: "52:54:00:00:00:04", MachineKey: "cafe/seat-4", Live: true})
			time.Sleep(50 * time.Millisecond)
			addSession(f.tbl, session("cafe/auto", "cafe/seat-4", "52:54:00:00:00:04"), token5)
		}()
	}
	start := time.Now()
	status, body := get(g, f.url+"/boot/"+f.nonce("52:54:00:00:00:04")+"/52:54:00:00:00:04.ipxe")
	g.Expect(status).To(Equal(200))
	g.Expect(body).To(ContainSubstring("# GGnet session cafe/auto"))
	g.Expect(body).To(ContainSubstring("set password Passw0rdPassw0rd"))
	g.Expect(time.Since(start)).To(BeNumerically("<", 5*time.Second))
	f.rec.mu.Lock()
	defer f.rec.mu.Unlock()
	g.Expect(f.rec.requested).To(Equal([]string{"cafe/seat-4"}), "asked for a session exactly once")
	g.Expect(f.rec.served).To(Equal([]string{"cafe/auto"}))
}

func TestAutoSessionTimeout(t *testing.T) {
	g := NewWithT(t)
	f := setup(t, Config{LongPoll: 300 * time.Millisecond})
	status, body := get(g, f.url+"/boot/"+f.nonce("52:54:00:00:00:04")+"/52:54:00:00:00:04.ipxe")
	g.Expect(status).To(Equal(200))
	g.Expect(body).To(ContainSubstring("the session of seat-4 is not ready yet"))
	g.Expect(body).To(ContainSubstring("chain --replace --autofree"))
	g.Expect(f.rec.requested).To(HaveLen(1))
}

func TestLongPollBounds(t *testing.T) {
	g := NewWithT(t)
	f := setup(t, Config{LongPoll: 20 * time.Second, MaxLongPolls: 2})
	auto := []string{"52:54:00:00:01:01", "52:54:00:00:01:02", "52:54:00:00:01:03"}
	for i, mac := range auto {
		f.tbl.UpsertMachine(machine("cafe/auto-"+string(rune('a'+i)), mac, table.PolicyAutoSession))
	}
	url := func(mac string) string { return f.url + "/boot/" + f.nonce(mac) + "/" + mac + ".ipxe" }
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var wg sync.WaitGroup
	for _, mac := range auto[:2] {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url(mac), nil)
			if resp, err := http.DefaultClient.Do(req); err == nil {
				resp.Body.Close()
			}
		}()
	}
	g.Eventually(func() int { f.h.polls.mu.Lock(); defer f.h.polls.mu.Unlock(); return len(f.h.polls.byMAC) }).Should(Equal(2))

	status, body := get(g, url(auto[2]))
	g.Expect(status).To(Equal(200))
	g.Expect(body).To(ContainSubstring("the boot agent is busy"), "past the total cap: the retry fallback at once")
	g.Expect(body).To(ContainSubstring("chain --replace --autofree"))
	status, body = get(g, url(auto[0]))
	g.Expect(status).To(Equal(200))
	g.Expect(body).To(ContainSubstring("the boot agent is busy"), "a second long poll for one MAC")
	g.Expect(testutil.ToFloat64(f.h.requests.WithLabelValues(ResultBusy))).To(Equal(2.0))

	status, body = get(g, f.url+"/boot/"+token1+"/52:54:00:00:00:01.ipxe")
	g.Expect(status).To(Equal(200))
	g.Expect(body).To(ContainSubstring("set password"), "a PC with a Ready session is served while the long polls are full")
	cancel()
	wg.Wait()
	g.Eventually(func() int { f.h.polls.mu.Lock(); defer f.h.polls.mu.Unlock(); return len(f.h.polls.byMAC) }).Should(BeZero(), "slots are given back")
}

func TestConnectionCap(t *testing.T) {
	g := NewWithT(t)
	f := setup(t, Config{})
	mux := http.NewServeMux()
	f.h.Register(mux)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	g.Expect(err).NotTo(HaveOccurred())
	srv := NewServer(mux)
	srv.ReadHeaderTimeout = 500 * time.Millisecond // 5s in production
	go func() { _ = srv.Serve(LimitListener(ln, 4, 16)) }()
	defer srv.Close()

	// Past the cap: idle connections that never send a request.
	var idle []net.Conn
	for range 12 {
		c, err := net.Dial("tcp", ln.Addr().String())
		g.Expect(err).NotTo(HaveOccurred())
		idle = append(idle, c)
	}
	defer func() {
		for _, c := range idle {
			_ = c.Close()
		}
	}()
	start := time.Now()
	status, body := get(g, "http://"+ln.Addr().String()+"/boot/"+token1+"/52:54:00:00:00:01.ipxe")
	g.Expect(status).To(Equal(200))
	g.Expect(body).To(ContainSubstring("set password"), "the legitimate PC is served once the idle connections time out")
	g.Expect(time.Since(start)).To(BeNumerically("<", 10*time.Second))

	// Refused requesters do not hold a slot: the server closes at once.
	c, err := net.Dial("tcp", ln.Addr().String())
	g.Expect(err).NotTo(HaveOccurred())
	defer c.Close()
	_, err = c.Write([]byte("GET /boot/" + wrong + "/52:54:00:00:00:01.ipxe HTTP/1.1\r\nHost: x\r\n\r\n"))
	g.Expect(err).NotTo(HaveOccurred())
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	b, err := io.ReadAll(c)
	g.Expect(errors.Is(err, os.ErrDeadlineExceeded)).To(BeFalse(), "connection closed by the server")
	g.Expect(string(b)).To(HavePrefix("HTTP/1.1 403"))
}

func TestServerBounds(t *testing.T) {
	g := NewWithT(t)
	srv := NewServer(http.NewServeMux())
	g.Expect(srv.ReadHeaderTimeout).To(Equal(5 * time.Second))
	g.Expect(srv.ReadTimeout).To(Equal(10 * time.Second))
	g.Expect(srv.WriteTimeout).To(Equal(15 * time.Second))
	g.Expect(srv.IdleTimeout).To(Equal(30 * time.Second))
	g.Expect(srv.MaxHeaderBytes).To(Equal(8 << 10))
}

func TestConnectionCapPerSource(t *testing.T) {
	g := NewWithT(t)
	f := setup(t, Config{})
	mux := http.NewServeMux()
	f.h.Register(mux)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	g.Expect(err).NotTo(HaveOccurred())
	srv := NewServer(mux)
	go func() { _ = srv.Serve(LimitListener(ln, 64, 2)) }()
	defer srv.Close()
	dial := func(from string) net.Conn {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}}
		c, err := d.Dial("tcp", ln.Addr().String())
		g.Expect(err).NotTo(HaveOccurred())
		return c
	}

	// One host holds its two connections (idle, never a request) ...
	for range 2 {
		defer dial("127.0.0.1").Close()
	}
	// ... its third is closed at once, without an answer ...
	c := dial("127.0.0.1")
	defer c.Close()
	_, _ = c.Write([]byte("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"))
	_ = c.SetReadDeadline(time.Now().Add(3 * time.Second))
	b, err := io.ReadAll(c)
	g.Expect(errors.Is(err, os.ErrDeadlineExceeded)).To(BeFalse(), "the server closed the connection past the source's cap")
	g.Expect(b).To(BeEmpty())

	// ... while another host is served.
	other := &http.Client{Transport: &http.Transport{DialContext: (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2)}}).DialContext}}
	resp, err := other.Get("http://" + ln.Addr().String() + "/ipxe/ipxe.efi")
	g.Expect(err).NotTo(HaveOccurred())
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	g.Expect(resp.StatusCode).To(Equal(200))
	g.Expect(string(body)).To(Equal("EFI binary"))
}

// TestLongPollOutlivesWriteTimeout: the server's write timeout is short, the
// long poll alone extends its own deadline and still answers.
func TestLongPollOutlivesWriteTimeout(t *testing.T) {
	g := NewWithT(t)
	f := setup(t, Config{LongPoll: 1500 * time.Millisecond})
	mux := http.NewServeMux()
	f.h.Register(mux)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	g.Expect(err).NotTo(HaveOccurred())
	srv := NewServer(mux)
	srv.WriteTimeout = 300 * time.Millisecond // 15s in production
	go func() { _ = srv.Serve(LimitListener(ln, 4, 4)) }()
	defer srv.Close()
	status, body := get(g, "http://"+ln.Addr().String()+"/boot/"+f.nonce("52:54:00:00:00:04")+"/52:54:00:00:00:04.ipxe")
	g.Expect(status).To(Equal(200))
	g.Expect(body).To(ContainSubstring("is not ready yet"), "the long poll timed out and answered")
}

// TestLogsNoToken: a script request logs the parsed MAC, never the path or
// its file value, which a request for /boot/<token>%2F<mac>.ipxe unescapes
// to a value holding the token.
func TestLogsNoToken(t *testing.T) {
	g := NewWithT(t)
	f := setup(t, Config{})
	var (
		mu   sync.Mutex
		logs strings.Builder
	)
	log := funcr.New(func(prefix, args string) {
		mu.Lock()
		defer mu.Unlock()
		logs.WriteString(prefix + " " + args + "\n")
	}, funcr.Options{Verbosity: 5})
	h, err := New(Config{BaseURL: "http://10.20.0.2:8880", IPXERoot: t.TempDir(), RetryDelay: 5, LongPoll: time.Second},
		f.tbl, &recorder{}, log, prometheus.NewRegistry())
	g.Expect(err).NotTo(HaveOccurred())
	mux := http.NewServeMux()
	h.Register(mux)
	srv := httptest.NewServer(mux)
	defer srv.Close()
	for _, path := range []string{
		"/boot/" + token1 + "%2F52:54:00:00:00:01.ipxe",
		"/boot/" + token1 + "/52:54:00:00:00:01.ipxe",
		"/boot/" + token1 + "/52:54:00:00:00:01.ipxe?failed=0x3f122003",
		"/boot/" + token1 + "%2Fnot-a-mac.ipxe",
	} {
		resp, err := http.Get(srv.URL + path)
		g.Expect(err).NotTo(HaveOccurred())
		_ = resp.Body.Close()
	}
	mu.Lock()
	defer mu.Unlock()
	g.Expect(logs.String()).To(ContainSubstring(`"mac"="52:54:00:00:00:01"`))
	g.Expect(logs.String()).To(ContainSubstring(`"mac"="invalid"`))
	g.Expect(logs.String()).NotTo(ContainSubstring(token1))
}
