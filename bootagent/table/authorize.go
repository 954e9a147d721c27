package table

import (
	"crypto/subtle"
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/ggnet/ggnet/internal/ipxe"
)

// Reasons a script request is refused. Each wraps ErrForbidden; none
// contains the token.
var (
	ErrForbidden = errors.New("forbidden")
	// ErrUnknownMAC: no Machine has the MAC.
	ErrUnknownMAC = fmt.Errorf("%w: unknown MAC", ErrForbidden)
	// ErrBadToken: the token is neither the served session's nor the MAC's
	// nonce (or missing while tokens are required).
	ErrBadToken = fmt.Errorf("%w: wrong or missing script token", ErrForbidden)
	// ErrUnbound: the requester's address is not bound to the MAC.
	ErrUnbound = fmt.Errorf("%w: the requester's address is not bound to the MAC", ErrForbidden)
)

// ErrScript is returned when an allowed request's session script cannot be
// rendered (a bad field or Secret); the error says which field, never a
// value.
var ErrScript = errors.New("the session's script cannot be rendered")

// Grant is what an allowed script request gets.
type Grant struct {
	// Machine answers for the MAC; it is also set for refusals of a known
	// MAC, for the Event about them.
	Machine Machine
	// Owner is true when Machine owns the MAC (no conflict, not discovered).
	Owner bool
	// SessionKey and Script are the served session's key and its script,
	// credentials included; empty when the owner has no bootable session.
	SessionKey string
	Script     string
	// StorageUnreachable is true, with SessionKey and no Script, when the
	// served session's storage node is unreachable (Session.StorageUnreachable).
	StorageUnreachable bool
	// Live is true when the owner has a session on its way to Ready.
	Live bool
	// Retired is true when the request's token is a retiring or retired
	// session's that still hands over (see Authorize): the PC was sent to a
	// session that is no longer handed out. Retiring is true while the owner has a retiring
	// session not yet stopped and no other session is served.
	Retired, Retiring bool
}

// Authorize decides a script request (HTTP, TFTP, failure reports): the
// token must be the served session's token, the MAC's nonce or the token of
// one of its retiring sessions while it still hands over (Grant.Retired:
// the session is in the table, still retiring or stopped as the retire's
// answer, the MAC's owner is the Machine it was when the retire was first
// seen, and less than RetiredTokenTTL passed since), compared in
// constant time ("" only with WithoutRequiredToken), and the requester's
// address remote must be bound to the MAC: the owner's reserved IPv4, the
// address the agent's DHCP last handed the MAC, or (WithNeighbors) the
// neighbour table's entry for remote; with WithoutRequiredBinding a right
// token suffices. A refusal is an error wrapping ErrForbidden, with the
// Grant's Machine set when the MAC is known. Authorize has no side effect.
func (t *Table) Authorize(mac net.HardwareAddr, token string, remote netip.Addr) (Grant, error) {
	k, ok := keyOf(mac)
	if !ok {
		return Grant{}, ErrUnknownMAC
	}
	remote = remote.Unmap()
	t.mu.RLock()
	e := t.byMAC[k]
	if e == nil || e.machine == nil {
		t.mu.RUnlock()
		return Grant{}, ErrUnknownMAC
	}
	g := Grant{Machine: *e.machine, Owner: e.machine.owner(), Retiring: e.retiring}
	var (
		sess   Session
		secret = e.secret
	)
	if e.session != nil {
		sess = *e.session
	}
	if g.Owner {
		for _, s := range e.sessions {
			if s.Live && s.MachineKey == g.Machine.Key {
				g.Live = true
				break
			}
		}
	}
	tokenOK := false
	switch {
	case token != "":
		tokenOK = equal(token, e.nonce) || (e.session != nil && equal(token, secret.Token))
		if !tokenOK && len(e.handOvers) > 0 {
			now := t.now()
			for _, h := range e.handOvers {
				if h.valid(e.machine, now) && equal(token, h.token) {
					tokenOK, g.Retired = true, true
				}
			}
		}
	default:
		tokenOK = t.tokenOptional
	}
	bound := false
	if remote.Is4() {
		if a := e.seen.Load(); a>>32 == 1 && uint32(a) == ip4Uint(remote) {
			bound = true
		}
		if g.Owner {
			if ip := e.machine.Reservation.Address.To4(); ip != nil && netip.AddrFrom4([4]byte(ip)) == remote {
				bound = true
			}
		}
	}
	t.mu.RUnlock()

	if !tokenOK {
		return g, ErrBadToken
	}
	if !bound && remote.IsValid() && t.neighbors != nil {
		if hw, ok := t.neighbors.Lookup(remote); ok && string(hw) == string(mac) {
			bound = true
		}
	}
	if !bound && !(t.bindingOptional && token != "") {
		return g, ErrUnbound
	}
	if sess.Key == "" {
		return g, nil
	}
	if sess.StorageUnreachable {
		g.SessionKey, g.StorageUnreachable = sess.Key, true
		return g, nil
	}
	b := sess.Boot
	creds := secret.Credentials
	b.Credentials = &creds
	script, err := ipxe.Render(b)
	if err != nil {
		// Render's errors name the field, never a credential.
		return g, fmt.Errorf("%w: %w", ErrScript, err)
	}
	g.SessionKey, g.Script = sess.Key, script
	return g, nil
}

func equal(a, b string) bool {
	return b != "" && subtle.ConstantTimeCompare([]byte(a), []byte(b)) == 1
}

func ip4Uint(a netip.Addr) uint32 {
	b := a.As4()
	return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
}

// SawAddress records the IPv4 address the agent's DHCP handed a MAC
// (dhcp.Observer.Answered: the yiaddr of reservation mode, never a client's
// own claim such as ciaddr or option 50): the address is then bound to the
// MAC until the next one. It allocates nothing and takes only the read lock, for the DHCP
// path; an invalid or non-IPv4 address or an unknown MAC is ignored.
func (t *Table) SawAddress(mac net.HardwareAddr, addr netip.Addr) {
	addr = addr.Unmap()
	if !addr.Is4() || addr.IsUnspecified() {
		return
	}
	k, ok := keyOf(mac)
	if !ok {
		return
	}
	t.mu.RLock()
	defer t.mu.RUnlock()
	if e := t.byMAC[k]; e != nil && e.machine != nil {
		e.seen.Store(1<<32 | uint64(ip4Uint(addr)))
	}
}
