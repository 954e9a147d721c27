// Package table is the boot agent's in-memory view of Machines and their
// bootable sessions, keyed by MAC. The agent's informer handlers feed it;
// the DHCP, TFTP and HTTP servers read it on every request without waiting
// on the API server. It keeps answering from what it last saw while the API
// server is unreachable. It imports no Kubernetes package.
package table

import (
	"net"
	"sync"

	"github.com/ggnet/ggnet/bootagent/dhcp"
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
	Key         string
	Namespace   string
	Name        string
	Reservation dhcp.Reservation
	Policy      Policy
	// HasImage is true when the machine names a default image (AutoSession
	// needs one).
	HasImage bool
	// Discovered marks a placeholder the agent recorded for an unknown client.
	Discovered bool
	// CreatedUnix orders machines that share a MAC.
	CreatedUnix int64
}

// better reports whether a should answer for a MAC rather than b: a real
// Machine before a discovered placeholder, then the oldest, then by key.
func (a *Machine) better(b *Machine) bool {
	if a.Discovered != b.Discovered {
		return !a.Discovered
	}
	if a.CreatedUnix != b.CreatedUnix {
		return a.CreatedUnix < b.CreatedUnix
	}
	return a.Key < b.Key
}

// Session is what the agent keeps of one bootable session.
type Session struct {
	// Key is namespace/name.
	Key string
	MAC string
	// Script is the rendered iPXE script; empty until the session is Ready.
	Script string
	// Bootable is true in phases Ready, Booting and Active.
	Bootable bool
	// CreatedUnix orders sessions: the newest bootable one wins.
	CreatedUnix int64
}

type entry struct {
	// machine is the one of machines that answers for the MAC (see better);
	// two Machines with one MAC are a conflict the controller reports.
	machine  *Machine
	machines map[string]*Machine
	// session is the newest bootable one of sessions, kept on every change
	// so that a DHCP ACK finds it without walking the map.
	session  *Session
	sessions map[string]*Session
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
	mac, err := net.ParseMAC(s)
	if err != nil {
		return macKey{}, false
	}
	return keyOf(mac)
}

// Table is safe for concurrent use.
type Table struct {
	mu    sync.RWMutex
	byMAC map[macKey]*entry
	// machineMAC and sessionMAC remember each object's MAC so that a MAC
	// change or a delete finds the old entry.
	machineMAC map[string]macKey
	sessionMAC map[string]macKey
}

// New returns an empty table.
func New() *Table {
	return &Table{byMAC: map[macKey]*entry{}, machineMAC: map[string]macKey{}, sessionMAC: map[string]macKey{}}
}

func (t *Table) entryLocked(mac macKey) *entry {
	e := t.byMAC[mac]
	if e == nil {
		e = &entry{machines: map[string]*Machine{}, sessions: map[string]*Session{}, changed: make(chan struct{})}
		t.byMAC[mac] = e
	}
	return e
}

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
	e.session = nil
	for _, s := range e.sessions {
		if !s.Bootable || s.Script == "" {
			continue
		}
		if e.session == nil || s.CreatedUnix > e.session.CreatedUnix || (s.CreatedUnix == e.session.CreatedUnix && s.Key > e.session.Key) {
			e.session = s
		}
	}
	close(e.changed)
	e.changed = make(chan struct{})
	if e.machine == nil && len(e.sessions) == 0 {
		delete(t.byMAC, mac)
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
	t.mu.Lock()
	defer t.mu.Unlock()
	if old, ok := t.machineMAC[m.Key]; ok && old != mac {
		if e := t.byMAC[old]; e != nil {
			delete(e.machines, m.Key)
			t.notifyLocked(old)
		}
	}
	t.machineMAC[m.Key] = mac
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
	if e := t.byMAC[mac]; e != nil {
		delete(e.machines, key)
		t.notifyLocked(mac)
	}
}

// UpsertSession adds or replaces a session; one without a valid MAC (not
// yet checked by the controller) is held under no MAC.
func (t *Table) UpsertSession(s Session) {
	mac, valid := keyOfString(s.MAC)
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

// LookupMAC implements dhcp.Backend.
func (t *Table) LookupMAC(mac net.HardwareAddr) (dhcp.Reservation, bool) {
	k, _ := keyOf(mac)
	t.mu.RLock()
	defer t.mu.RUnlock()
	e := t.byMAC[k]
	if e == nil || e.machine == nil {
		return dhcp.Reservation{}, false
	}
	return e.machine.Reservation, true
}

// Machine returns the machine with this MAC.
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

// Session returns the newest bootable session of this MAC.
func (t *Table) Session(mac net.HardwareAddr) (Session, bool) {
	k, _ := keyOf(mac)
	t.mu.RLock()
	defer t.mu.RUnlock()
	return t.sessionLocked(k)
}

func (t *Table) sessionLocked(mac macKey) (Session, bool) {
	e := t.byMAC[mac]
	if e == nil || e.session == nil {
		return Session{}, false
	}
	return *e.session, true
}

// HasSession reports whether the MAC has any session, bootable or not
// (one may be on its way to Ready).
func (t *Table) HasSession(mac net.HardwareAddr) bool {
	k, _ := keyOf(mac)
	t.mu.RLock()
	defer t.mu.RUnlock()
	e := t.byMAC[k]
	return e != nil && len(e.sessions) > 0
}

// Script implements tftp.Scripts: the newest bootable session's script.
func (t *Table) Script(mac net.HardwareAddr) (string, bool) {
	s, ok := t.Session(mac)
	return s.Script, ok
}

// Changed returns a channel closed at the next change of this MAC's machine
// or sessions, for long polls.
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
