package httpboot

import (
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr"
	. "github.com/onsi/gomega"

	"github.com/ggnet/ggnet/bootagent/dhcp"
	"github.com/ggnet/ggnet/bootagent/table"
	"github.com/ggnet/ggnet/internal/ipxe"
)

type recorder struct {
	mu        sync.Mutex
	served    []string
	requested []string
	failed    []string
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

func machine(name, mac string, policy table.Policy) table.Machine {
	hw, _ := net.ParseMAC(mac)
	return table.Machine{Key: "cafe/" + name, Namespace: "cafe", Name: name, Policy: policy, HasImage: true,
		Reservation: dhcp.Reservation{MAC: hw}}
}

const sessionScript = "#!ipxe\nsanboot iscsi:10.0.0.1::::iqn.2026-11.io.ggnet:cafe:s1\n"

func setup(t *testing.T, longPoll time.Duration) (*httptest.Server, *table.Table, *recorder) {
	t.Helper()
	root := t.TempDir()
	if err := os.WriteFile(filepath.Join(root, "ipxe.efi"), []byte("EFI binary"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(t.TempDir(), "secret"), []byte("s"), 0o644); err != nil {
		t.Fatal(err)
	}
	tbl := table.New()
	tbl.UpsertMachine(machine("seat-1", "52:54:00:00:00:01", table.PolicyManual))
	tbl.UpsertMachine(machine("seat-2", "52:54:00:00:00:02", table.PolicyManual))
	tbl.UpsertMachine(machine("seat-3", "52:54:00:00:00:03", table.PolicyLocalBoot))
	tbl.UpsertMachine(machine("seat-4", "52:54:00:00:00:04", table.PolicyAutoSession))
	tbl.UpsertSession(table.Session{Key: "cafe/s1", MAC: "52:54:00:00:00:01", Script: sessionScript, Bootable: true})
	rec := &recorder{}
	h, err := New(Config{BaseURL: "http://10.20.0.2:8880", IPXERoot: root, LongPoll: longPoll, RetryDelay: 5}, tbl, rec, logr.Discard(), nil)
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	h.Register(mux)
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv, tbl, rec
}

func get(g Gomega, url string) (int, string) {
	resp, err := http.Get(url)
	g.Expect(err).NotTo(HaveOccurred())
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	g.Expect(err).NotTo(HaveOccurred())
	return resp.StatusCode, string(b)
}

func TestScripts(t *testing.T) {
	srv, _, rec := setup(t, time.Second)
	for name, tc := range map[string]struct {
		path   string
		status int
		check  func(g Gomega, body string)
	}{
		"session script": {"/boot/52:54:00:00:00:01.ipxe", 200, func(g Gomega, b string) { g.Expect(b).To(Equal(sessionScript)) }},
		"dashed MAC":     {"/boot/52-54-00-00-00-01.ipxe", 200, func(g Gomega, b string) { g.Expect(b).To(Equal(sessionScript)) }},
		"known machine without session retries": {"/boot/52:54:00:00:00:02.ipxe", 200, func(g Gomega, b string) {
			g.Expect(b).To(ContainSubstring("no boot session for seat-2"))
			g.Expect(b).To(ContainSubstring("chain --replace --autofree http://10.20.0.2:8880/boot/52:54:00:00:00:02.ipxe"))
			g.Expect(ipxe.Validate(b)).To(Succeed())
		}},
		"LocalBoot exits": {"/boot/52:54:00:00:00:03.ipxe", 200, func(g Gomega, b string) {
			g.Expect(b).To(ContainSubstring("boots from its local disk"))
			g.Expect(b).To(HaveSuffix("exit 1\n"))
		}},
		"unknown MAC exits": {"/boot/52:54:00:99:99:99.ipxe", 200, func(g Gomega, b string) {
			g.Expect(b).To(ContainSubstring("52:54:00:99:99:99 is not a known machine"))
			g.Expect(b).To(HaveSuffix("exit 1\n"))
		}},
		"not a MAC":    {"/boot/seat-1.ipxe", 400, func(g Gomega, b string) { g.Expect(b).To(ContainSubstring("want /boot/<mac>.ipxe")) }},
		"not .ipxe":    {"/boot/52:54:00:00:00:01.txt", 400, nil},
		"iPXE binary":  {"/ipxe/ipxe.efi", 200, func(g Gomega, b string) { g.Expect(b).To(Equal("EFI binary")) }},
		"missing file": {"/ipxe/snponly.efi", 404, nil},
		"failure report": {"/boot/52:54:00:00:00:01.ipxe?failed=0x0216eb3c", 200, func(g Gomega, b string) {
			g.Expect(b).To(ContainSubstring("the boot failed (iPXE error 0x0216eb3c)"))
			g.Expect(b).To(HaveSuffix("exit 1\n"))
		}},
		"bad failure report": {"/boot/52:54:00:00:00:01.ipxe?failed=$(reboot)", 400, nil},
		"traversal":          {"/ipxe/..%2fsecret", 404, nil},
	} {
		t.Run(name, func(t *testing.T) {
			g := NewWithT(t)
			status, body := get(g, srv.URL+tc.path)
			g.Expect(status).To(Equal(tc.status))
			if tc.check != nil {
				tc.check(g, body)
			}
		})
	}
	g := NewWithT(t)
	g.Expect(rec.served).To(ConsistOf("cafe/s1", "cafe/s1"))
	g.Expect(rec.failed).To(ConsistOf("cafe/s1 0x0216eb3c"))
	g.Expect(rec.requested).To(BeEmpty())
}

func TestAutoSessionLongPoll(t *testing.T) {
	g := NewWithT(t)
	srv, tbl, rec := setup(t, 10*time.Second)
	// The controller's part: a session appears, then becomes Ready.
	rec.onRequest = func(m table.Machine) {
		go func() {
			time.Sleep(50 * time.Millisecond)
			tbl.UpsertSession(table.Session{Key: "cafe/auto", MAC: "52:54:00:00:00:04"})
			time.Sleep(50 * time.Millisecond)
			tbl.UpsertSession(table.Session{Key: "cafe/auto", MAC: "52:54:00:00:00:04", Script: sessionScript, Bootable: true})
		}()
	}
	start := time.Now()
	status, body := get(g, srv.URL+"/boot/52:54:00:00:00:04.ipxe")
	g.Expect(status).To(Equal(200))
	g.Expect(body).To(Equal(sessionScript))
	g.Expect(time.Since(start)).To(BeNumerically("<", 5*time.Second))
	rec.mu.Lock()
	defer rec.mu.Unlock()
	g.Expect(rec.requested).To(Equal([]string{"cafe/seat-4"}), "asked for a session exactly once")
	g.Expect(rec.served).To(Equal([]string{"cafe/auto"}))
}

func TestAutoSessionTimeout(t *testing.T) {
	g := NewWithT(t)
	srv, _, rec := setup(t, 300*time.Millisecond)
	status, body := get(g, srv.URL+"/boot/52:54:00:00:00:04.ipxe")
	g.Expect(status).To(Equal(200))
	g.Expect(body).To(ContainSubstring("the session of seat-4 is not ready yet"))
	g.Expect(body).To(ContainSubstring("chain --replace --autofree"))
	g.Expect(rec.requested).To(HaveLen(1))
}
