package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/go-logr/logr"
	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	bootv1 "github.com/ggnet/ggnet/api/v1alpha1"
	"github.com/ggnet/ggnet/bootagent/dhcp"
	"github.com/ggnet/ggnet/bootagent/table"
)

// FieldOwner is the agent's field manager.
const FieldOwner = "ggnet-bootagent"

// recorder writes what the protocol servers observed to the API server, off
// their request paths: a bounded queue, one pending write per key, dropped
// (and counted) when the queue is full.
type recorder struct {
	c       client.Client
	tbl     *table.Table
	log     logr.Logger
	queue   chan func(context.Context) error
	pending sync.Map
	dropped prometheus.Counter
	writes  *prometheus.CounterVec

	// dhcpLimit paces the DHCP timeline writes (5/s): a boot storm of
	// hundreds of PCs must not turn into as many API writes at once. Each
	// write, and the watch event it comes back as, holds the core that
	// answers DHCP for a moment: at 20/s that delayed 2% of requests by
	// ~2 ms (docs/benchmarks.md). The
	// ACK times wait in dhcpPending, one per session, and are written at
	// this pace with the time of the ACK, so a storm delays them but loses
	// none unless maxPendingDHCP sessions are waiting.
	dhcpLimit   *rate.Limiter
	dhcpMu      sync.Mutex
	dhcpPending map[string]time.Time
	dhcpKick    chan struct{}

	discovery          bool
	discoveryNamespace string
	discoverLimit      *rate.Limiter
	discovered         sync.Map
	// discoveryMax bounds the discovered Machines in total: those in the
	// table and those being created (creating, by MAC bytes).
	discoveryMax    int
	creatingMu      sync.Mutex
	creating        map[string]net.HardwareAddr
	discoveryCapped prometheus.Counter

	// forbiddenMu guards lastForbidden: the time of the last ScriptForbidden
	// Event per Machine key, at most one a minute each.
	forbiddenMu   sync.Mutex
	lastForbidden map[string]time.Time
	// component names the agent in Events (the node's name when known).
	component string
}

func newRecorder(c client.Client, tbl *table.Table, log logr.Logger, reg prometheus.Registerer) *recorder {
	r := &recorder{
		c: c, tbl: tbl, log: log, queue: make(chan func(context.Context) error, 4096),
		dropped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ggnet_agent_records_dropped_total",
			Help: "Boot progress records dropped because the write queue was full.",
		}),
		writes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ggnet_agent_record_writes_total",
			Help: "Writes of boot progress to the API server by kind and result.",
		}, []string{"kind", "result"}),
		discoveryCapped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ggnet_agent_discovery_capped_total",
			Help: "Unknown PXE clients not recorded because the discovered Machines reached --discovery-max.",
		}),
		discoveryMax:  1000,
		creating:      map[string]net.HardwareAddr{},
		lastForbidden: map[string]time.Time{},
		component:     FieldOwner,
		discoverLimit: rate.NewLimiter(rate.Limit(5), 10),
		dhcpLimit:     rate.NewLimiter(rate.Limit(5), 5),
		dhcpPending:   map[string]time.Time{},
		dhcpKick:      make(chan struct{}, 1),
	}
	if reg != nil {
		reg.MustRegister(r.dropped, r.writes, r.discoveryCapped)
	}
	return r
}

// maxPendingDHCP bounds the DHCP ACK times waiting to be written.
const maxPendingDHCP = 100000

// run drains the queue with a few workers, and the DHCP times at their pace,
// until ctx ends.
func (r *recorder) run(ctx context.Context, workers int) {
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		r.runDHCP(ctx)
	}()
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-ctx.Done():
					return
				case f := <-r.queue:
					wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
					_ = f(wctx)
					cancel()
				}
			}
		}()
	}
	wg.Wait()
}

// enqueue adds a write unless one for key is already pending.
func (r *recorder) enqueue(key string, f func(context.Context) error) {
	if _, busy := r.pending.LoadOrStore(key, struct{}{}); busy {
		return
	}
	task := func(ctx context.Context) error {
		r.pending.Delete(key)
		return f(ctx)
	}
	select {
	case r.queue <- task:
	default:
		r.pending.Delete(key)
		r.dropped.Inc()
	}
}

func (r *recorder) result(kind string, err error) error {
	res := "ok"
	if err != nil {
		res = "error"
		r.log.V(1).Info("Recording boot progress failed", "kind", kind, "error", err.Error())
	}
	r.writes.WithLabelValues(kind, res).Inc()
	return err
}

// ScriptServed implements httpboot.Recorder.
func (r *recorder) ScriptServed(sessionKey string) {
	r.enqueue("script/"+sessionKey, func(ctx context.Context) error {
		return r.result("scriptServed", r.stamp(ctx, sessionKey, "scriptServed", time.Now()))
	})
}

// Answered implements dhcp.Observer: it binds the address this agent handed
// the client (yiaddr, reservation mode only; the DHCP server reports none in
// proxy mode, where the client's addresses are only its claims) to its MAC
// in the table and notes the time of a session's DHCP ACK for
// runDHCP to write. It runs on the DHCP server's path: table lookups and a
// map insert, no allocation for a session already waiting.
func (r *recorder) Answered(mac net.HardwareAddr, msg dhcpv4.MessageType, addr netip.Addr) {
	if msg != dhcpv4.MessageTypeAck {
		return
	}
	if addr.IsValid() {
		r.tbl.SawAddress(mac, addr)
	}
	s, ok := r.tbl.Session(mac)
	if !ok {
		return
	}
	now := time.Now()
	r.dhcpMu.Lock()
	_, waiting := r.dhcpPending[s.Key]
	full := !waiting && len(r.dhcpPending) >= maxPendingDHCP
	if !waiting && !full {
		r.dhcpPending[s.Key] = now
	}
	r.dhcpMu.Unlock()
	switch {
	case full:
		r.dropped.Inc()
	case !waiting:
		select {
		case r.dhcpKick <- struct{}{}:
		default:
		}
	}
}

// runDHCP writes the waiting DHCP ACK times at dhcpLimit's pace.
func (r *recorder) runDHCP(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-r.dhcpKick:
		}
		for {
			r.dhcpMu.Lock()
			var (
				key string
				at  time.Time
			)
			for k, t := range r.dhcpPending {
				key, at = k, t
				break
			}
			r.dhcpMu.Unlock()
			if key == "" {
				break
			}
			if r.dhcpLimit.Wait(ctx) != nil {
				return
			}
			wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			_ = r.result("dhcp", r.stamp(wctx, key, "dhcp", at))
			cancel()
			r.dhcpMu.Lock()
			delete(r.dhcpPending, key)
			r.dhcpMu.Unlock()
		}
	}
}

// stamp sets status.timeline.<field> of a session to at, once (the DHCP
// time again after a minute: a reboot of the same session).
func (r *recorder) stamp(ctx context.Context, key, field string, at time.Time) error {
	ns, name, _ := strings.Cut(key, "/")
	var s bootv1.BootSession
	if err := r.c.Get(ctx, types.NamespacedName{Namespace: ns, Name: name}, &s); err != nil {
		return client.IgnoreNotFound(err)
	}
	t := s.Status.Timeline
	switch {
	case field == "scriptServed" && t.ScriptServed != nil, field == "dhcp" && t.DHCP != nil && at.Sub(t.DHCP.Time) < time.Minute:
		return nil
	}
	patch, _ := json.Marshal(map[string]any{"status": map[string]any{"timeline": map[string]any{field: metav1.NewTime(at)}}})
	return r.c.Status().Patch(ctx, &s, client.RawPatch(types.MergePatchType, patch), client.FieldOwner(FieldOwner))
}

// BootFailed implements httpboot.Recorder: it applies the session's
// BootFailed condition with the boot agent's field manager.
func (r *recorder) BootFailed(sessionKey, errno string) {
	r.enqueue("failed/"+sessionKey, func(ctx context.Context) error {
		ns, name, _ := strings.Cut(sessionKey, "/")
		u := &unstructured.Unstructured{}
		u.SetAPIVersion(bootv1.GroupVersion.String())
		u.SetKind("BootSession")
		u.SetNamespace(ns)
		u.SetName(name)
		u.Object["status"] = map[string]any{"conditions": []any{map[string]any{
			"type": bootv1.BootFailedCondition, "status": "True", "reason": bootv1.SANBootFailedReason,
			"message":            "the machine's iPXE could not boot from the iSCSI target (iPXE error " + errno + "): check the CHAP Secret, the initiator and the portal",
			"lastTransitionTime": time.Now().UTC().Format(time.RFC3339),
		}}}
		r.log.Info("Recording a failed boot", "BootSession", sessionKey, "errno", errno)
		return r.result("bootFailed", r.c.Status().Apply(ctx, client.ApplyConfigurationFromUnstructured(u), client.FieldOwner(FieldOwner), client.ForceOwnership))
	})
}

// RequestSession implements httpboot.Recorder: it annotates the Machine so
// that the Machine controller creates a session.
func (r *recorder) RequestSession(m table.Machine) {
	r.enqueue("request/"+m.Key, func(ctx context.Context) error {
		patch, _ := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": map[string]string{
			bootv1.SessionRequestedAnnotation: time.Now().UTC().Format(time.RFC3339),
		}}})
		obj := &bootv1.Machine{}
		obj.Namespace, obj.Name = m.Namespace, m.Name
		return r.result("requestSession", r.c.Patch(ctx, obj, client.RawPatch(types.MergePatchType, patch), client.FieldOwner(FieldOwner)))
	})
}

// Unknown implements dhcp.Observer: with discovery on, each unknown PXE client
// is recorded once as a Machine awaiting approval (LocalBoot, labelled
// discovered), at most a few per second.
func (r *recorder) Unknown(mac net.HardwareAddr, c dhcp.Client) {
	if !r.discovery {
		return
	}
	key := mac.String()
	if _, seen := r.discovered.Load(key); seen {
		return
	}
	if !r.discoverLimit.Allow() {
		return
	}
	if !r.reserveDiscovery(mac) {
		r.discoveryCapped.Inc()
		return
	}
	r.discovered.Store(key, struct{}{})
	mac = slices.Clone(mac) // the DHCP worker reuses its buffer
	r.enqueue("discover/"+key, func(ctx context.Context) error {
		m := &bootv1.Machine{}
		m.Namespace = r.discoveryNamespace
		m.Name = "discovered-" + strings.ReplaceAll(key, ":", "")
		m.Labels = map[string]string{bootv1.DiscoveredLabel: "true"}
		m.Annotations = map[string]string{bootv1.DiscoveredAtAnnotation: time.Now().UTC().Format(time.RFC3339),
			bootv1.ClientAnnotation: clientDescription(c)}
		m.Spec = bootv1.MachineSpec{MAC: key, BootPolicy: bootv1.BootPolicyLocalBoot}
		err := r.c.Create(ctx, m, client.FieldOwner(FieldOwner))
		if apierrors.IsAlreadyExists(err) {
			err = nil
		}
		if err != nil {
			r.discovered.Delete(key)
			r.releaseDiscovery(mac)
		} else {
			r.log.Info("Recorded a discovered machine", "mac", key, "Machine", m.Namespace+"/"+m.Name)
		}
		return r.result("discover", err)
	})
}

// reserveDiscovery takes one of the discoveryMax places for mac: the
// discovered Machines in the table and the creations not yet in it count.
func (r *recorder) reserveDiscovery(mac net.HardwareAddr) bool {
	r.creatingMu.Lock()
	defer r.creatingMu.Unlock()
	for k, m := range r.creating {
		if r.tbl.HasMachine(m) {
			delete(r.creating, k) // counted by the table now
		}
	}
	if r.tbl.Discovered()+len(r.creating) >= r.discoveryMax {
		return false
	}
	r.creating[string(mac)] = slices.Clone(mac)
	return true
}

func (r *recorder) releaseDiscovery(mac net.HardwareAddr) {
	r.creatingMu.Lock()
	defer r.creatingMu.Unlock()
	delete(r.creating, string(mac))
}

// Forbidden implements httpboot.Recorder (and serves TFTP refusals): a
// Warning Event ScriptForbidden on the Machine, at most one per Machine per
// minute. Its message names the MAC, the requester and why, never a token.
func (r *recorder) Forbidden(m table.Machine, peer netip.Addr, reason error) {
	now := time.Now()
	r.forbiddenMu.Lock()
	if last, ok := r.lastForbidden[m.Key]; ok && now.Sub(last) < time.Minute {
		r.forbiddenMu.Unlock()
		return
	}
	if len(r.lastForbidden) >= 10000 {
		for k, t := range r.lastForbidden {
			if now.Sub(t) >= time.Minute {
				delete(r.lastForbidden, k)
			}
		}
	}
	r.lastForbidden[m.Key] = now
	r.forbiddenMu.Unlock()

	why := strings.TrimPrefix(reason.Error(), table.ErrForbidden.Error()+": ")
	msg := fmt.Sprintf("Refused a boot script request for MAC %s from %s: %s (further refusals for this Machine are not reported for a minute)",
		m.Reservation.MAC, peer, why)
	r.enqueue("forbidden/"+m.Key, func(ctx context.Context) error {
		t := metav1.NewTime(now)
		ev := &corev1.Event{
			ObjectMeta: metav1.ObjectMeta{Namespace: m.Namespace, GenerateName: m.Name + "."},
			InvolvedObject: corev1.ObjectReference{APIVersion: bootv1.GroupVersion.String(), Kind: "Machine",
				Namespace: m.Namespace, Name: m.Name, UID: types.UID(m.UID)},
			Reason: bootv1.ScriptForbiddenReason, Message: msg, Type: corev1.EventTypeWarning,
			Source:         corev1.EventSource{Component: r.component},
			FirstTimestamp: t, LastTimestamp: t, Count: 1,
		}
		r.log.Info("Refused a boot script request", "Machine", m.Key, "mac", m.Reservation.MAC.String(), "peer", peer.String(), "reason", why)
		return r.result("forbiddenEvent", r.c.Create(ctx, ev))
	})
}

func clientDescription(c dhcp.Client) string {
	kind := "PXE"
	switch {
	case c.IPXE:
		kind = "iPXE"
	case c.HTTP:
		kind = "UEFI HTTP"
	}
	if c.HasArch {
		return fmt.Sprintf("%s, arch %d", kind, c.Arch)
	}
	return kind
}
