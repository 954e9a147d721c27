// Package table is the boot agent's in-memory view of Machines, their
// bootable sessions and the sessions' Secrets, keyed by MAC. The agent's
// informer handlers feed it; the DHCP, TFTP and HTTP servers read it on
// every request without waiting on the API server. It keeps answering from
// what it last saw while the API server is unreachable. It imports no
// Kubernetes package.
//
// Who gets what (the contract's "who gets a script"):
//   - a MAC's owner is its oldest non-discovered Machine without
//     Conflict=True, whatever its namespace;
//   - only the owner's sessions are served, and only once their Secret
//     (credentials and token) is in the table;
//   - the reservation DHCP hands out carries the served session's token, or
//     the MAC's nonce (random, made when a Machine with that MAC entered the
//     table, kept in memory only);
//   - a script is handed out (Authorize) only for one of those tokens and to
//     an address bound to the MAC.
package table

import (
	"crypto/rand"
	"encoding/base32"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ggnet/ggnet/bootagent/dhcp"
	"github.com/ggnet/ggnet/internal/ipxe"
)

// Policy is a Machine's boot policy.
type Policy string

const (
	PolicyManual      Policy = "Manual"
	PolicyAutoSession Policy = "AutoSession"
	PolicyLocalBoot   Policy = "LocalBoot"
)

// Machine is what the agent keeps of one Machine.
type Machine struct {
	// Key is namespace/name.
	Key       string
	Namespace string
	Name      string
	// UID is the Machine's UID, for Events about it.
	UID string
	// Reservation is the Machine's; its Token is set by the table.
	Reservation dhcp.Reservation
	Policy      Policy
	// HasImage is true when the machine names a default image (AutoSession
	// needs one).
	HasImage bool
	// Discovered marks a placeholder the agent recorded for an unknown client.
	Discovered bool
	// Conflict is true when the Machine controller set Conflict=True: another
	// Machine in the cluster has its MAC or address. It is never an owner.
	Conflict bool
	// CreatedUnix orders machines that share a MAC.
	CreatedUnix int64
}

// better reports whether a should answer for a MAC rather than b: a Machine
// without conflict first, then a real Machine before a discovered
// placeholder, then the oldest, then by key.
func (a *Machine) better(b *Machine) bool {
	if a.Conflict != b.Conflict {
		return !a.Conflict
	}
	if a.Discovered != b.Discovered {
		return !a.Discovered
	}
	if a.CreatedUnix != b.CreatedUnix {
		return a.CreatedUnix < b.CreatedUnix
	}
	return a.Key < b.Key
}

// owner reports whether m may own its MAC: sessions are served only for an
// owner.
func (m *Machine) owner() bool { return m != nil && !m.Conflict && !m.Discovered }

// Session is what the agent keeps of one session.
type Session struct {
	// Key is namespace/name.
	Key string
	MAC string
	// MachineKey is namespace/name of the session's machineRef; the session
	// is served only when that Machine owns the MAC.
	MachineKey string
	// Boot is what the script is rendered from, without credentials (they
	// come from the session's Secret at serve time).
	Boot ipxe.Session
	// Bootable is true in phases Ready, Booting and Active.
	Bootable bool
	// StorageUnreachable is true while the manager finds the session's
	// storage node unreachable (StorageReachable=False): the session stays
	// the served one (its token holds) but its script is not handed out.
	StorageUnreachable bool
	// Live is true for a session that is not stopped, stopping or failed:
	// one on its way to Ready or bootable. An AutoSession machine with a live
	// session does not ask for another.
	Live bool
	// CreatedUnix orders sessions: the newest bootable one wins.
	CreatedUnix int64
	// AutoSession is true for a session the Machine controller made for an
	// AutoSession Machine (bootv1.AutoSessionLabel): only such a session is
	// ever retired, so Retiring counts only with it.
	AutoSession bool
	// Retiring is true for a session the manager asked to retire
	// (bootv1.RetireAnnotation) or that was retired: it is not handed out
	// (the target refuses new logins), and its token stays good for a short
	// while for its MAC's script requests and failure reports (handOver).
	Retiring bool
	// Retired is true once its storage agent answered that no PC used it
	// (Retire=True Unused): the manager then stops it, and that stop is the
	// retire itself, so its token stays good through it (handOver). Any
	// other end of a retiring session (stopped or failed without that
	// answer, being deleted) ends its token at once.
	Retired bool
}

// retiring reports whether s is not handed out because it is being retired.
func (s *Session) retiring() bool { return s.AutoSession && s.Retiring }

// handsOver reports whether s's token may still lead its PC to its
// machine's next session: retiring, and either still live or stopped as the
// retire's answer.
func (s *Session) handsOver() bool { return s.retiring() && (s.Live || s.Retired) }

// RetiredTokenTTL bounds how long the token of a retiring session stays
// good after the table first saw the session retiring: long enough for a PC
// that got its script just before the retire to report the refused login
// and fetch its machine's next session (prepared in seconds), short enough
// that a sniffed token is soon worthless.
const RetiredTokenTTL = 2 * time.Minute

// handOver is what the table keeps of a retiring session's token, by
// session key, while the session is in the table: the token stays good for
// the session's MAC while the MAC's owner is still the Machine (key and
// UID) that owned it when the retire was first seen, the session still
// hands over (Session.handsOver) and RetiredTokenTTL has not passed since.
// Once dropped (dropped set) it never comes back for that session.
type handOver struct {
	mac        macKey
	machineKey string
	machineUID string
	token      string
	since      time.Time
	dropped    bool
}

// valid reports whether h's token is good at now for an entry answered by m.
func (h *handOver) valid(m *Machine, now time.Time) bool {
	return !h.dropped && h.token != "" && m.owner() && m.Key == h.machineKey && m.UID == h.machineUID &&
		now.Sub(h.since) < RetiredTokenTTL
}

// Secret is what the agent keeps of a session's Secret, in memory only.
type Secret struct {
	Credentials ipxe.Credentials
	// Token is the session's script token.
	Token string
}

// valid reports whether the Secret can serve its session.
func (s Secret) valid() bool {
	return ipxe.ValidToken(s.Token) && s.Credentials.Username != "" && s.Credentials.Password != ""
}

type entry struct {
	// machine is the one of machines that answers for the MAC (see better).
	machine  *Machine
	machines map[string]*Machine
	// session is the newest bootable session of the owner with a valid
	// Secret, kept on every change so that a request finds it without
	// walking the map; secret is its Secret.
	session  *Session
	secret   Secret
	sessions map[string]*Session
	// reservation is machine's reservation with the token DHCP hands out:
	// session's, else nonce. Kept so that a DHCP lookup is a copy.
	reservation dhcp.Reservation
	// nonce is the MAC's token while it has no bootable session, made when
	// the first Machine with this MAC entered the table.
	nonce string
	// handOvers are the MAC's retiring sessions whose token may still be
	// good (Table.handOvers; checked again at every request for the TTL): a
	// PC that got one just before the retire still reaches its machine's
	// next session with it.
	handOvers []*handOver
	// retiring is true while the owner has a retiring session not yet
	// stopped and no other session is served.
	retiring bool
	// seen is the IPv4 address the MAC used in its last DHCP exchange
	// (SawAddress): bit 32 set when valid, the address in the low 32 bits.
	seen atomic.Uint64
	// changed is closed and replaced on every change of this MAC.
	changed chan struct{}
}

// macKey is a MAC as a map key: no allocation per lookup.
type macKey [6]byte

func keyOf(mac net.HardwareAddr) (macKey, bool) {
	var k macKey
	if len(mac) != 6 {
		return k, false
	}
	copy(k[:], mac)
	return k, true
}

func keyOfString(s string) (macKey, bool) {
	mac, ok := ipxe.ParseMAC(s)
	if !ok {
		return macKey{}, false
	}
	return keyOf(mac)
}

// Option configures a Table.
type Option func(*Table)

// WithNeighbors sets the neighbour table Authorize consults to bind a
// requester's address to a MAC (production: ProcNeighbors).
func WithNeighbors(n Neighbors) Option { return func(t *Table) { t.neighbors = n } }

// WithoutRequiredToken lets Authorize accept a request without a token (an
// external DHCP server that cannot hand out tokens); a wrong token is still
// refused, and the address must still be bound to the MAC.
func WithoutRequiredToken() Option { return func(t *Table) { t.tokenOptional = true } }

// WithoutRequiredBinding lets Authorize accept a request with a right token
// from an address not bound to the MAC: the token alone authorizes. It is
// for proxy mode without neighbour binding, where the agent hands out no
// address and nothing else could bind one; it never applies to a request
// without a token (WithoutRequiredToken).
func WithoutRequiredBinding() Option { return func(t *Table) { t.bindingOptional = true } }

// WithClock sets the table's clock (tests of RetiredTokenTTL).
func WithClock(now func() time.Time) Option { return func(t *Table) { t.now = now } }

// Table is safe for concurrent use.
type Table struct {
	mu    sync.RWMutex
	byMAC map[macKey]*entry
	// machineMAC and sessionMAC remember each object's MAC so that a MAC
	// change or a delete finds the old entry.
	machineMAC map[string]macKey
	sessionMAC map[string]macKey
	// secrets by session key.
	secrets map[string]Secret
	// discovered holds the keys of discovered Machines.
	discovered map[string]struct{}
	// handOvers by session key: the retiring sessions seen (see handOver),
	// kept while the session is in the table so that a token once dropped
	// or expired is never good again.
	handOvers map[string]*handOver
	// now is the clock (WithClock).
	now func() time.Time

	neighbors       Neighbors
	tokenOptional   bool
	bindingOptional bool
}

// New returns an empty table.
func New(opts ...Option) *Table {
	t := &Table{byMAC: map[macKey]*entry{}, machineMAC: map[string]macKey{}, sessionMAC: map[string]macKey{},
		secrets: map[string]Secret{}, discovered: map[string]struct{}{}, handOvers: map[string]*handOver{}, now: time.Now}
	for _, o := range opts {
		o(t)
	}
	return t
}

func (t *Table) entryLocked(mac macKey) *entry {
	e := t.byMAC[mac]
	if e == nil {
		e = &entry{machines: map[string]*Machine{}, sessions: map[string]*Session{}, changed: make(chan struct{})}
		t.byMAC[mac] = e
	}
	return e
}

// newNonce returns a token-shaped random string (20 bytes from crypto/rand,
// base32 in lowercase without padding).
func newNonce() string {
	var b [20]byte
	_, _ = rand.Read(b[:]) // never fails (crypto/rand)
	return base32.NewEncoding("abcdefghijklmnopqrstuvwxyz234567").WithPadding(base32.NoPadding).EncodeToString(b[:])
}

// notifyLocked recomputes a MAC's answering machine, served session and
// reservation, and wakes its waiters.
func (t *Table) notifyLocked(mac macKey) {
	e := t.byMAC[mac]
	if e == nil {
		return
	}
	e.machine = nil
	for _, m := range e.machines {
		if e.machine == nil || m.better(e.machine) {
			e.machine = m
		}
	}
	e.session, e.secret, e.retiring = nil, Secret{}, false
	now := t.now()
	if e.machine.owner() {
		for _, s := range e.sessions {
			if s.retiring() && s.MachineKey == e.machine.Key {
				e.retiring = e.retiring || s.Live
			}
			if !s.Bootable || s.retiring() || s.MachineKey != e.machine.Key {
				continue
			}
			sec, ok := t.secrets[s.Key]
			if !ok || !sec.valid() {
				continue
			}
			if e.session == nil || s.CreatedUnix > e.session.CreatedUnix || (s.CreatedUnix == e.session.CreatedUnix && s.Key > e.session.Key) {
				e.session, e.secret = s, sec
			}
		}
	}
	if e.session != nil {
		// The machine's next session is served while an older one still
		// retires (its storage agent did not answer within the manager's
		// --retire-timeout): a failure reported with the served session's
		// token is that session's own, not the retire's.
		e.retiring = false
	}
	t.handOversLocked(mac, e, now)
	e.reservation = dhcp.Reservation{}
	if e.machine != nil {
		if e.nonce == "" {
			e.nonce = newNonce()
		}
		e.reservation = e.machine.Reservation
		e.reservation.Token = e.nonce
		if e.session != nil {
			e.reservation.Token = e.secret.Token
		}
	}
	close(e.changed)
	e.changed = make(chan struct{})
	if e.machine == nil && len(e.sessions) == 0 {
		delete(t.byMAC, mac)
	}
}

// handOversLocked keeps the retiring sessions' tokens of a MAC (see
// handOver): it records a session of the owner seen retiring for the first
// time with its token, and drops for good the token of a session that no
// longer hands over, moved to another MAC, no longer belongs to the MAC's
// owner (another Machine, or the same name made again) or whose TTL passed.
// e.handOvers is then the MAC's tokens that may be good. (A session that
// leaves the table is forgotten in DeleteSession, its token with it.)
func (t *Table) handOversLocked(mac macKey, e *entry, now time.Time) {
	e.handOvers = e.handOvers[:0]
	for _, s := range e.sessions {
		h := t.handOvers[s.Key]
		if h == nil {
			if !s.handsOver() || !e.machine.owner() || s.MachineKey != e.machine.Key {
				continue
			}
			h = &handOver{mac: mac, machineKey: e.machine.Key, machineUID: e.machine.UID, since: now}
			t.handOvers[s.Key] = h
		}
		if h.token == "" && !h.dropped {
			if sec, ok := t.secrets[s.Key]; ok && sec.valid() {
				h.token = sec.Token
			}
		}
		if h.mac != mac || !s.handsOver() || s.MachineKey != h.machineKey || !h.valid(e.machine, now) {
			h.dropped, h.token = true, ""
			continue
		}
		e.handOvers = append(e.handOvers, h)
	}
}

// UpsertMachine adds or replaces a machine; one without a valid MAC is
// removed.
func (t *Table) UpsertMachine(m Machine) {
	mac, ok := keyOf(m.Reservation.MAC)
	if !ok {
		t.DeleteMachine(m.Key)
		return
	}
	m.Reservation.Token = ""
	t.mu.Lock()
	defer t.mu.Unlock()
	if old, ok := t.machineMAC[m.Key]; ok && old != mac {
		if e := t.byMAC[old]; e != nil {
			delete(e.machines, m.Key)
			t.notifyLocked(old)
		}
	}
	t.machineMAC[m.Key] = mac
	if m.Discovered {
		t.discovered[m.Key] = struct{}{}
	} else {
		delete(t.discovered, m.Key)
	}
	t.entryLocked(mac).machines[m.Key] = &m
	t.notifyLocked(mac)
}

// DeleteMachine removes a machine by key.
func (t *Table) DeleteMachine(key string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	mac, ok := t.machineMAC[key]
	if !ok {
		return
	}
	delete(t.machineMAC, key)
	delete(t.discovered, key)
	if e := t.byMAC[mac]; e != nil {
		delete(e.machines, key)
		t.notifyLocked(mac)
	}
}

// UpsertSession adds or replaces a session; one without a valid MAC (not
// yet checked by the controller) is held under no MAC.
func (t *Table) UpsertSession(s Session) {
	mac, valid := keyOfString(s.MAC)
	s.Boot.Credentials = nil
	t.mu.Lock()
	defer t.mu.Unlock()
	if old, ok := t.sessionMAC[s.Key]; ok && (!valid || old != mac) {
		if e := t.byMAC[old]; e != nil {
			delete(e.sessions, s.Key)
			t.notifyLocked(old)
		}
	}
	if !valid {
		delete(t.sessionMAC, s.Key)
		return
	}
	t.sessionMAC[s.Key] = mac
	t.entryLocked(mac).sessions[s.Key] = &s
	t.notifyLocked(mac)
}

// DeleteSession removes a session by key.
func (t *Table) DeleteSession(key string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.handOvers, key) // the session left the table: its token is no more
	mac, ok := t.sessionMAC[key]
	if !ok {
		return
	}
	delete(t.sessionMAC, key)
	if e := t.byMAC[mac]; e != nil {
		delete(e.sessions, key)
		t.notifyLocked(mac)
	}
}

// UpsertSecret adds or replaces the Secret of the session with key
// sessionKey (namespace/name). A session is served only once its Secret is
// here with a valid token and credentials.
func (t *Table) UpsertSecret(sessionKey string, s Secret) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.secrets[sessionKey] = s
	if mac, ok := t.sessionMAC[sessionKey]; ok {
		t.notifyLocked(mac)
	}
}

// DeleteSecret removes the Secret of a session.
func (t *Table) DeleteSecret(sessionKey string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if _, ok := t.secrets[sessionKey]; !ok {
		return
	}
	delete(t.secrets, sessionKey)
	if mac, ok := t.sessionMAC[sessionKey]; ok {
		t.notifyLocked(mac)
	}
}

// LookupMAC implements dhcp.Backend: the answering machine's reservation
// with the token of the script URL. It allocates nothing.
func (t *Table) LookupMAC(mac net.HardwareAddr) (dhcp.Reservation, bool) {
	k, _ := keyOf(mac)
	t.mu.RLock()
	defer t.mu.RUnlock()
	e := t.byMAC[k]
	if e == nil || e.machine == nil {
		return dhcp.Reservation{}, false
	}
	return e.reservation, true
}

// Machine returns the machine that answers for this MAC.
func (t *Table) Machine(mac net.HardwareAddr) (Machine, bool) {
	k, _ := keyOf(mac)
	t.mu.RLock()
	defer t.mu.RUnlock()
	e := t.byMAC[k]
	if e == nil || e.machine == nil {
		return Machine{}, false
	}
	return *e.machine, true
}

// Session returns the session served for this MAC: the newest bootable
// session of the MAC's owner whose Secret is in the table.
func (t *Table) Session(mac net.HardwareAddr) (Session, bool) {
	k, _ := keyOf(mac)
	t.mu.RLock()
	defer t.mu.RUnlock()
	e := t.byMAC[k]
	if e == nil || e.session == nil {
		return Session{}, false
	}
	return *e.session, true
}

// Changed returns a channel closed at the next change of this MAC's
// machines, sessions or their Secrets, for long polls.
func (t *Table) Changed(mac net.HardwareAddr) <-chan struct{} {
	k, _ := keyOf(mac)
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.entryLocked(k).changed
}

// Len returns the numbers of machines and sessions held.
func (t *Table) Len() (machines, sessions int) {
	t.mu.RLock()
	defer t.mu.RUnlock()
	return len(t.machineMAC), len(t.sessionMAC)
}

// Discovered returns the number of discovered Machines held.
func (t *Table) Discovered() int {
	t.mu.RLock()
	defer t.mu.RUnlock()
	return len(t.discovered)
}

// HasMachine reports whether any Machine has this MAC, discovered ones
// included.
func (t *Table) HasMachine(mac net.HardwareAddr) bool {
	k, _ := keyOf(mac)
	t.mu.RLock()
	defer t.mu.RUnlock()
	e := t.byMAC[k]
	return e != nil && e.machine != nil
}

// HasConfiguredMachine reports whether a Machine that is not a discovered
// placeholder has this MAC (with Conflict=True or not): a host the cluster
// was told about, not one the agent recorded because it asked. With
// discovery on, any MAC a LAN host makes up becomes a discovered Machine;
// the IPv6 router advertisement responder answers only these.
func (t *Table) HasConfiguredMachine(mac net.HardwareAddr) bool {
	k, ok := keyOf(mac)
	if !ok {
		return false
	}
	t.mu.RLock()
	defer t.mu.RUnlock()
	e := t.byMAC[k]
	if e == nil {
		return false
	}
	for _, m := range e.machines {
		if !m.Discovered {
			return true
		}
	}
	return false
}
