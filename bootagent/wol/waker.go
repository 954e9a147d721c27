package wol

import (
	"context"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	corev1 "k8s.io/api/core/v1"

	bootv1 "github.com/ggnet/ggnet/api/v1alpha1"
	bootac "github.com/ggnet/ggnet/api/v1alpha1/applyconfiguration/api/v1alpha1"
	"github.com/ggnet/ggnet/internal/ipxe"
)

// FieldOwner is the field manager of timeline.wakeSent. It is not the boot
// agent's ggnet-bootagent: the agent's recorder applies its whole shape of
// a session's status (dhcp, scriptServed, BootFailed) with that manager, and
// a server-side apply removes every field its manager applied before and
// leaves out, so a wakeSent applied as ggnet-bootagent would vanish at the
// next DHCP stamp.
const FieldOwner = "ggnet-bootagent-wol"

// Defaults of Config.
const (
	DefaultResend   = 30 * time.Second
	DefaultMaxSends = 5
	DefaultInterval = time.Second
)

// Config configures a Waker.
type Config struct {
	// Interfaces are the boot interfaces to broadcast on. A Machine with a
	// reserved address is woken only on the interfaces whose subnets hold
	// it; one without, on all of them.
	Interfaces []string
	// Resend is how long after a packet, with no DHCP request of the
	// machine recorded, it is sent again (default 30 s).
	Resend time.Duration
	// MaxSends is how many packets a session gets at most (default 5).
	MaxSends int
	// Interval is how often the sessions are looked at (default 1 s).
	Interval time.Duration
	// FieldOwner applies timeline.wakeSent (default FieldOwner).
	FieldOwner string
}

// Waker sends the magic packet for every Ready session that asks for it
// (spec.wake) and whose machine has not sent a DHCP request yet, stamps
// the session's timeline.wakeSent at the first, and sends again every
// Resend, at most MaxSends times, while timeline.dhcp stays empty and the
// session stays Ready (a script fetched moves it on).
type Waker struct {
	// Reader lists BootSessions and gets Machines (the agent's cache).
	Reader client.Reader
	// Secrets gets a Machine's SecureOn Secret (uncached: the agent's cache
	// holds only session Secrets).
	Secrets client.Reader
	// Writer applies timeline.wakeSent.
	Writer client.Client
	Sender Sender
	Log    logr.Logger
	// Packets counts packets by result (ggnet_wol_packets_total{result});
	// nil counts nothing.
	Packets *prometheus.CounterVec
	Config  Config
	// Indexed says Reader has the field index WantsIndex (IndexWants, the
	// agent's cache): each Tick then lists only the sessions that want
	// waking, instead of every session (a copy of each session struct per
	// Interval: 1.5 MB a second with 1,000 sessions, and on the boot
	// agent's one core a list that held it for up to 13 ms while DHCP
	// requests waited, docs/benchmarks.md).
	Indexed bool

	mu   sync.Mutex
	sent map[types.UID]*sendState
}

// sendState is what the Waker sent for one session.
type sendState struct {
	count int
	last  time.Time
}

// NewPacketsCounter makes and registers ggnet_wol_packets_total{result}:
// sent, send_failed, no_password (the SecureOn Secret is missing or bad).
func NewPacketsCounter(reg prometheus.Registerer) *prometheus.CounterVec {
	c := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ggnet_wol_packets_total",
		Help: "Wake-on-LAN magic packets by result: sent, send_failed, no_password."}, []string{"result"})
	reg.MustRegister(c)
	return c
}

func (w *Waker) defaults() {
	if w.Config.Resend <= 0 {
		w.Config.Resend = DefaultResend
	}
	if w.Config.MaxSends <= 0 {
		w.Config.MaxSends = DefaultMaxSends
	}
	if w.Config.Interval <= 0 {
		w.Config.Interval = DefaultInterval
	}
	if w.Config.FieldOwner == "" {
		w.Config.FieldOwner = FieldOwner
	}
	if w.Sender == nil {
		w.Sender = UDPSender{}
	}
}

// WantsIndex is the field index of the BootSessions that want waking
// (Wants): "true" for those, nothing for the others.
const WantsIndex = "wol.wants"

// IndexWants registers WantsIndex on an informer cache, before it starts.
func IndexWants(ctx context.Context, idx client.FieldIndexer) error {
	return idx.IndexField(ctx, &bootv1.BootSession{}, WantsIndex, func(o client.Object) []string {
		if s, ok := o.(*bootv1.BootSession); ok && Wants(s) {
			return []string{"true"}
		}
		return nil
	})
}

// Run looks at the sessions every Interval until ctx ends.
func (w *Waker) Run(ctx context.Context) error {
	w.defaults()
	t := time.NewTicker(w.Config.Interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		w.Tick(ctx, time.Now())
	}
}

// Wants reports whether s asks for its machine to be woken now: it asks
// (spec.wake), it is Ready and not being stopped or deleted, and no DHCP
// request of its machine has been recorded.
func Wants(s *bootv1.BootSession) bool {
	return s.Spec.Wake && !s.Spec.Stopped && s.DeletionTimestamp == nil &&
		s.Status.Phase == bootv1.SessionReady && s.Status.Timeline.DHCP == nil
}

// due reports whether a session that wants waking gets a packet at now,
// given what was sent for it (st; a fresh one for a session this Waker has
// not sent for: wakeSent, set by an earlier run, counts as one packet sent
// then).
func due(st *sendState, wakeSent *metav1.Time, now time.Time, cfg Config) bool {
	if st.count == 0 && st.last.IsZero() && wakeSent != nil {
		st.count, st.last = 1, wakeSent.Time
	}
	if st.count >= cfg.MaxSends {
		return false
	}
	return st.last.IsZero() || now.Sub(st.last) >= cfg.Resend
}

// Tick sends what is due at now.
func (w *Waker) Tick(ctx context.Context, now time.Time) {
	w.defaults()
	var list bootv1.BootSessionList
	// Read only: no deep copy of each session each tick; with the index, only
	// the sessions that want waking (Indexed).
	opts := []client.ListOption{client.UnsafeDisableDeepCopy}
	if w.Indexed {
		opts = append(opts, client.MatchingFields{WantsIndex: "true"})
	}
	if err := w.Reader.List(ctx, &list, opts...); err != nil {
		w.Log.Error(err, "Listing BootSessions for wake-on-LAN")
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.sent == nil {
		w.sent = map[types.UID]*sendState{}
	}
	wanted := map[types.UID]bool{}
	for i := range list.Items {
		s := &list.Items[i]
		if !Wants(s) {
			continue
		}
		wanted[s.UID] = true
		st := w.sent[s.UID]
		if st == nil {
			st = &sendState{}
			w.sent[s.UID] = st
		}
		if !due(st, s.Status.Timeline.WakeSent, now, w.Config) {
			continue
		}
		// Whatever happens, not again before Resend.
		st.last = now
		if w.wake(ctx, s, st.count+1) {
			st.count++
			if s.Status.Timeline.WakeSent == nil {
				w.stamp(ctx, s, now)
			}
		}
	}
	for uid := range w.sent {
		if !wanted[uid] {
			delete(w.sent, uid)
		}
	}
}

func (w *Waker) count(result string) {
	if w.Packets != nil {
		w.Packets.WithLabelValues(result).Inc()
	}
}

// wake sends session s's machine its magic packet on each of its boot
// interfaces and reports whether one went out.
func (w *Waker) wake(ctx context.Context, s *bootv1.BootSession, attempt int) bool {
	log := w.Log.WithValues("BootSession", s.Namespace+"/"+s.Name, "Machine", s.Spec.MachineRef.Name, "attempt", attempt)
	var m bootv1.Machine
	if err := w.Reader.Get(ctx, types.NamespacedName{Namespace: s.Namespace, Name: s.Spec.MachineRef.Name}, &m); err != nil {
		log.Error(err, "Not waking the machine: reading its Machine")
		return false
	}
	mac, ok := ipxe.ParseMAC(m.Spec.MAC)
	if !ok {
		log.Info("Not waking the machine: its MAC does not parse", "mac", m.Spec.MAC)
		return false
	}
	ifaces := w.interfacesFor(&m)
	if len(ifaces) == 0 {
		// Another agent's network.
		return false
	}
	var password []byte
	if wl := m.Spec.WakeOnLAN; wl != nil && wl.SecureOnSecretRef != nil {
		var sec corev1.Secret
		err := w.Secrets.Get(ctx, types.NamespacedName{Namespace: m.Namespace, Name: wl.SecureOnSecretRef.Name}, &sec)
		if err == nil {
			password, err = SecureOnPassword(&sec)
		}
		if err != nil {
			// The error names the Secret at most, never its data.
			log.Error(err, "Not waking the machine: its SecureOn Secret", "Secret", wl.SecureOnSecretRef.Name, "key", PasswordKey)
			w.count("no_password")
			return false
		}
	}
	packet, err := MagicPacket(mac, password)
	if err != nil {
		log.Error(err, "Not waking the machine")
		return false
	}
	sent := false
	for _, iface := range ifaces {
		if err := w.Sender.Send(ctx, iface, packet); err != nil {
			log.Error(err, "Sending a wake-on-LAN magic packet", "interface", iface)
			w.count("send_failed")
			continue
		}
		sent = true
		w.count("sent")
		log.Info("Sent a wake-on-LAN magic packet", "mac", m.Spec.MAC, "interface", iface, "secureOn", password != nil)
	}
	return sent
}

// interfacesFor returns the boot interfaces m is woken on: those whose
// subnets hold its reserved address, or all without one.
func (w *Waker) interfacesFor(m *bootv1.Machine) []string {
	if m.Spec.IPv4 == nil {
		return w.Config.Interfaces
	}
	ip := net.ParseIP(m.Spec.IPv4.Address)
	var out []string
	for _, name := range w.Config.Interfaces {
		ifi, err := net.InterfaceByName(name)
		if err != nil {
			continue
		}
		addrs, _ := ifi.Addrs()
		for _, a := range addrs {
			if n, ok := a.(*net.IPNet); ok && n.Contains(ip) {
				out = append(out, name)
				break
			}
		}
	}
	return out
}

// stamp applies timeline.wakeSent = at (to the second, as the API server
// keeps times) with the Waker's field manager.
func (w *Waker) stamp(ctx context.Context, s *bootv1.BootSession, at time.Time) {
	ac := bootac.BootSession(s.Name, s.Namespace).WithStatus(bootac.BootSessionStatus().
		WithTimeline(bootac.SessionTimeline().WithWakeSent(metav1.NewTime(at.Truncate(time.Second)))))
	if err := w.Writer.Status().Apply(ctx, ac, client.FieldOwner(w.Config.FieldOwner), client.ForceOwnership); err != nil {
		w.Log.Error(err, "Stamping timeline.wakeSent", "BootSession", s.Namespace+"/"+s.Name)
	}
}

// SecureOnPassword is the password of a Machine's SecureOn Secret: its key
// PasswordKey, in a Secret of type bootv1.SecureOnSecretType only — the
// boot agent may read any Secret, and must not broadcast one that was not
// made for the wire. The error never holds the Secret's data.
func SecureOnPassword(sec *corev1.Secret) ([]byte, error) {
	if sec.Type != bootv1.SecureOnSecretType {
		return nil, fmt.Errorf("the Secret is of type %q, not %s: only a Secret made for SecureOn is sent on the wire", sec.Type, bootv1.SecureOnSecretType)
	}
	return ParsePassword(string(sec.Data[PasswordKey]))
}
