package storage

import (
	"encoding/json"
	"fmt"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	bootv1 "github.com/ggnet/ggnet/api/v1alpha1"
	"github.com/ggnet/ggnet/bootagent/target"
)

const seat = "iqn.2026-11.io.ggnet:initiator:cafe:seat-1"

// at is t0 plus n seconds.
var t0 = time.Date(2026, 11, 3, 10, 0, 0, 0, time.UTC)

func at(n int) time.Time { return t0.Add(time.Duration(n) * time.Second) }

func mt(n int) *metav1.Time { t := metav1.NewTime(at(n)); return &t }

// times answers when(key) from a map, failing on a key it was not told.
func times(t *testing.T, m map[string]int) func(string) time.Time {
	return func(k string) time.Time {
		n, ok := m[k]
		if !ok {
			t.Fatalf("when(%q) was not expected", k)
		}
		return at(n)
	}
}

func conn(session, addr string) target.Connection {
	return target.Connection{Initiator: seat, Address: addr, Session: session, CID: "0"}
}

// roundTrip is the timeline as the API server gives it back (times to the
// second).
func roundTrip(g *WithT, tl bootv1.SessionTimeline) bootv1.SessionTimeline {
	b, err := json.Marshal(tl)
	g.Expect(err).NotTo(HaveOccurred())
	var out bootv1.SessionTimeline
	g.Expect(json.Unmarshal(b, &out)).To(Succeed())
	utc := func(t *metav1.Time) {
		if t != nil {
			t.Time = t.UTC()
		}
	}
	for _, p := range []*metav1.Time{out.ISCSILogin, out.ISCSILogout} {
		utc(p)
	}
	for i := range out.Logins {
		utc(&out.Logins[i].At)
		utc(out.Logins[i].LoggedOutAt)
	}
	return out
}

// TestMergeLoginsBoot walks a BIOS boot: iPXE logs in, the OS logs in beside
// it (same initiator, a new session), iPXE's connection goes, then the OS's.
func TestMergeLoginsBoot(t *testing.T) {
	g := NewWithT(t)
	var tl bootv1.SessionTimeline
	ipxe, os := conn("281474997486080", "10.20.0.31"), conn("564049465049088", "10.20.0.31")

	tl, changed := mergeLogins(tl, nil, times(t, nil))
	g.Expect(changed).To(BeFalse(), "nobody logged in, nothing to write")

	tl, changed = mergeLogins(tl, []target.Connection{ipxe}, times(t, map[string]int{ipxe.Session: 1}))
	g.Expect(changed).To(BeTrue())
	g.Expect(tl.Logins).To(Equal([]bootv1.SessionLogin{{At: *mt(1), Initiator: seat, Address: "10.20.0.31", SessionID: ipxe.Session}}))
	g.Expect(tl.ISCSILogin).To(Equal(mt(1)))
	g.Expect(tl.ISCSILogout).To(BeNil())
	tl = roundTrip(g, tl)

	_, changed = mergeLogins(tl, []target.Connection{ipxe}, times(t, nil))
	g.Expect(changed).To(BeFalse(), "the same session on the next tick writes nothing")

	tl, changed = mergeLogins(tl, []target.Connection{ipxe, os}, times(t, map[string]int{os.Session: 4}))
	g.Expect(changed).To(BeTrue())
	g.Expect(tl.Logins).To(HaveLen(2))
	g.Expect(tl.Logins[1]).To(Equal(bootv1.SessionLogin{At: *mt(4), Initiator: seat, Address: "10.20.0.31", SessionID: os.Session}))
	g.Expect(tl.ISCSILogin).To(Equal(mt(1)), "iscsiLogin stays the first login")
	tl = roundTrip(g, tl)

	tl, changed = mergeLogins(tl, []target.Connection{os}, times(t, map[string]int{ipxe.Session: 6}))
	g.Expect(changed).To(BeTrue())
	g.Expect(tl.Logins[0].LoggedOutAt).To(Equal(mt(6)), "the firmware's session went")
	g.Expect(tl.Logins[1].LoggedOutAt).To(BeNil())
	g.Expect(tl.ISCSILogout).To(BeNil(), "the OS is still logged in")
	tl = roundTrip(g, tl)

	tl, changed = mergeLogins(tl, nil, times(t, map[string]int{os.Session: 30}))
	g.Expect(changed).To(BeTrue())
	g.Expect(tl.Logins[1].LoggedOutAt).To(Equal(mt(30)))
	g.Expect(tl.ISCSILogout).To(Equal(mt(30)), "no session left: the last logout")
	tl = roundTrip(g, tl)
	_, changed = mergeLogins(tl, nil, times(t, nil))
	g.Expect(changed).To(BeFalse())
}

// TestMergeLoginsUEFI: the firmware's session ends before the OS logs in;
// iscsiLogout shows the gap and goes with the OS's login.
func TestMergeLoginsUEFI(t *testing.T) {
	g := NewWithT(t)
	var tl bootv1.SessionTimeline
	fw, os := conn("1", "10.20.0.32"), conn("2", "10.20.0.32")
	tl, _ = mergeLogins(tl, []target.Connection{fw}, times(t, map[string]int{"1": 1}))
	tl, _ = mergeLogins(tl, nil, times(t, map[string]int{"1": 3}))
	g.Expect(tl.ISCSILogout).To(Equal(mt(3)))
	tl, changed := mergeLogins(tl, []target.Connection{os}, times(t, map[string]int{"2": 5}))
	g.Expect(changed).To(BeTrue())
	g.Expect(tl.ISCSILogout).To(BeNil(), "a login after it removes the logout")
	g.Expect(tl.ISCSILogin).To(Equal(mt(1)))
	g.Expect(tl.Logins).To(HaveLen(2))
	g.Expect(tl.Logins[0].LoggedOutAt).To(Equal(mt(3)))
	g.Expect(tl.Logins[1].At).To(Equal(*mt(5)))
}

// TestMergeLoginsRestart: a new agent (no memory of what it saw) finds its
// rows in the status: an open row still live is not added again, one that
// went while it was away is logged out when it sees it gone.
func TestMergeLoginsRestart(t *testing.T) {
	g := NewWithT(t)
	tl := bootv1.SessionTimeline{ISCSILogin: mt(1), Logins: []bootv1.SessionLogin{
		{At: *mt(1), Initiator: seat, Address: "10.20.0.31", SessionID: "1"},
		{At: *mt(4), Initiator: seat, Address: "10.20.0.31", SessionID: "2"},
	}}
	_, changed := mergeLogins(tl, []target.Connection{conn("1", "10.20.0.31"), conn("2", "10.20.0.31")}, times(t, nil))
	g.Expect(changed).To(BeFalse(), "both still logged in: nothing new")
	out, changed := mergeLogins(tl, []target.Connection{conn("2", "10.20.0.31")}, times(t, map[string]int{"1": 20}))
	g.Expect(changed).To(BeTrue())
	g.Expect(out.Logins).To(HaveLen(2))
	g.Expect(out.Logins[0].LoggedOutAt).To(Equal(mt(20)))
	g.Expect(tl.Logins[0].LoggedOutAt).To(BeNil(), "the input (a cached object) is not modified")

	// Without a session id (a driver that has none): initiator and address.
	noID := bootv1.SessionTimeline{ISCSILogin: mt(1), Logins: []bootv1.SessionLogin{{At: *mt(1), Initiator: seat, Address: "10.20.0.31"}}}
	_, changed = mergeLogins(noID, []target.Connection{conn("", "10.20.0.31")}, times(t, nil))
	g.Expect(changed).To(BeFalse())
	out, _ = mergeLogins(noID, []target.Connection{conn("", "10.20.0.99")}, times(t, map[string]int{seat + "@10.20.0.31": 7, seat + "@10.20.0.99": 7}))
	g.Expect(out.Logins).To(HaveLen(2), "another address is another session")
}

// TestMergeLoginsOld: a timeline written before the rows existed keeps its
// login and logout.
func TestMergeLoginsOld(t *testing.T) {
	g := NewWithT(t)
	tl := bootv1.SessionTimeline{ISCSILogin: mt(1), ISCSILogout: mt(9)}
	_, changed := mergeLogins(tl, nil, times(t, nil))
	g.Expect(changed).To(BeFalse())
	out, changed := mergeLogins(tl, []target.Connection{conn("5", "10.20.0.31")}, times(t, map[string]int{"5": 12}))
	g.Expect(changed).To(BeTrue())
	g.Expect(out.ISCSILogin).To(Equal(mt(1)))
	g.Expect(out.ISCSILogout).To(BeNil())
	g.Expect(out.Logins).To(HaveLen(1))
}

// TestMergeLoginsCap: at most MaxSessionLogins rows, newest last; logged-out
// rows go before open ones; a logout is never before its login; several
// new sessions in one sample are added in the order they were seen.
func TestMergeLoginsCap(t *testing.T) {
	g := NewWithT(t)
	var tl bootv1.SessionTimeline
	tl, _ = mergeLogins(tl, []target.Connection{conn("first", "10.20.0.31")}, times(t, map[string]int{"first": 0}))
	for i := 1; i <= 12; i++ {
		id := string(rune('a' + i))
		live := []target.Connection{conn("first", "10.20.0.31"), conn(id, "10.20.0.31")}
		tl, _ = mergeLogins(tl, live, times(t, map[string]int{id: i, string(rune('a' + i - 1)): i}))
	}
	g.Expect(tl.Logins).To(HaveLen(bootv1.MaxSessionLogins))
	g.Expect(tl.Logins[0].SessionID).To(Equal("first"), "the open row is kept")
	g.Expect(tl.Logins[0].LoggedOutAt).To(BeNil())
	g.Expect(tl.Logins[len(tl.Logins)-1].SessionID).To(Equal(string(rune('a' + 12))))
	g.Expect(tl.ISCSILogin).To(Equal(mt(0)))
	for i := 2; i < len(tl.Logins); i++ {
		g.Expect(tl.Logins[i].At.Before(&tl.Logins[i-1].At)).To(BeFalse(), "newest last")
	}

	// A logout seen "before" the login (clock of another agent): clamped.
	x := bootv1.SessionTimeline{Logins: []bootv1.SessionLogin{{At: *mt(10), Initiator: seat, SessionID: "x"}}}
	x, _ = mergeLogins(x, nil, times(t, map[string]int{"x": 5}))
	g.Expect(x.Logins[0].LoggedOutAt).To(Equal(mt(10)))

	// Two sessions new in one sample: in the order they were seen.
	y, _ := mergeLogins(bootv1.SessionTimeline{}, []target.Connection{conn("late", "a"), conn("early", "b")},
		times(t, map[string]int{"late": 3, "early": 2}))
	g.Expect([]string{y.Logins[0].SessionID, y.Logins[1].SessionID}).To(Equal([]string{"early", "late"}))
	g.Expect(y.ISCSILogin).To(Equal(mt(2)))
}

// TestMergeLoginsAllOpenOverCap: a PC holding more live sessions than the
// cap (its OS has the iBFT's credentials and can open as many as it likes)
// keeps its oldest rows, and a second sample of the same sessions changes
// nothing — no status write per sample.
func TestMergeLoginsAllOpenOverCap(t *testing.T) {
	g := NewWithT(t)
	var live []target.Connection
	at := map[string]int{}
	for i := range bootv1.MaxSessionLogins + 3 {
		id := fmt.Sprintf("s%02d", i)
		live = append(live, conn(id, "10.20.0.31"))
		at[id] = i
	}
	tl, changed := mergeLogins(bootv1.SessionTimeline{}, live, times(t, at))
	g.Expect(changed).To(BeTrue())
	g.Expect(tl.Logins).To(HaveLen(bootv1.MaxSessionLogins))
	g.Expect(tl.Logins[0].SessionID).To(Equal("s00"), "the firmware's row stays")
	g.Expect(tl.Logins[1].SessionID).To(Equal("s01"), "the OS's row stays")
	for i := range 5 {
		var again bool
		tl, again = mergeLogins(tl, live, times(t, at))
		g.Expect(again).To(BeFalse(), "sample %d of the same live sessions", i)
	}
	g.Expect(tl.Logins).To(HaveLen(bootv1.MaxSessionLogins))

	// One of the kept sessions ends: its row is logged out and a session
	// past the cap gets a row in place of the oldest logged-out one.
	at["s00"] = 20 // its logout
	tl, changed = mergeLogins(tl, live[1:], times(t, at))
	g.Expect(changed).To(BeTrue())
	g.Expect(tl.Logins).To(HaveLen(bootv1.MaxSessionLogins))
	g.Expect(tl.Logins[0].SessionID).To(Equal("s01"))
	g.Expect(tl.Logins[len(tl.Logins)-1].SessionID).To(Equal(fmt.Sprintf("s%02d", bootv1.MaxSessionLogins)))
}
