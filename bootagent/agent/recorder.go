package agent

import (
	"context"
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
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/util/workqueue"
	"sigs.k8s.io/controller-runtime/pkg/client"

	bootv1 "github.com/ggnet/ggnet/api/v1alpha1"
	bootac "github.com/ggnet/ggnet/api/v1alpha1/applyconfiguration/api/v1alpha1"
	"github.com/ggnet/ggnet/bootagent/dhcp"
	"github.com/ggnet/ggnet/bootagent/table"
)

// FieldOwner is the agent's field manager, followed by "-<node>" when the
// agent knows its node (Config.NodeName).
const FieldOwner = "ggnet-bootagent"

// fieldOwner is the field manager of the agent on node.
func fieldOwner(node string) string {
	if node == "" {
		return FieldOwner
	}
	return truncateOwner(FieldOwner + "-" + node)
}

// truncateOwner keeps a field manager within the API server's 128 bytes.
func truncateOwner(s string) string {
	if len(s) > 128 {
		return s[:128]
	}
	return s
}

// recorder writes what the protocol servers observed to the API server, off
// their request paths, through a client-go work queue: each key (a
// session, a Machine, a discovered MAC, a refused Machine's Event) is in the
// queue once however often it is added and is written by one worker at a
// time; what it writes waits in pending (the ACK times of DHCP first in
// dhcpAt, at dhcpLimit's pace). A failed write is retried with the queue's
// rate limiter (per key, exponential from retryBase to retryCap, at most
// maxRetries times). The protocol servers' calls (Answered, ScriptServed,
// BootFailed, RequestSession, Unknown, Forbidden) take a mutex and add to a
// map and a queue: no API call, no wait for one.
//
// Bounds, whatever the rate of requests: pending holds at most maxPending
// keys and dhcpAt maxPendingDHCP sessions; past them a record is dropped
// and counted (ggnet_agent_records_dropped_total); the queues hold no key
// twice, so neither holds more keys than those maps; applied holds a
// session's fields while they may be written again (appliedIdle).
type recorder struct {
	c     client.Client
	tbl   *table.Table
	log   logr.Logger
	queue workqueue.TypedRateLimitingInterface[recordKey]

	mu      sync.Mutex
	pending map[recordKey]*pendingRecord

	dropped prometheus.Counter
	writes  *prometheus.CounterVec

	// dhcpQueue holds the sessions with a DHCP ACK time waiting in dhcpAt
	// to be recorded: dhcpLimit paces them (5/s) into the write queue. A
	// boot storm of hundreds of PCs must not turn into as many API writes
	// at once: each write, and the watch event it comes back as, holds the
	// core that answers DHCP for a moment (at 20/s that delayed 2% of
	// requests by ~2 ms, docs/benchmarks.md). The times wait with the time
	// of the ACK, so a storm delays them but loses none unless
	// maxPendingDHCP sessions are waiting.
	dhcpQueue workqueue.TypedInterface[string]
	dhcpLimit *rate.Limiter
	dhcpMu    sync.Mutex
	dhcpAt    map[string]time.Time

	// applied is the boot agent's fields of each session as the API server
	// holds them after the agent's last apply (the agent is their only
	// writer; its cache may not show its last write yet).
	appliedMu sync.Mutex
	applied   map[string]*bootFields

	// owner is the agent's field manager (fieldOwner).
	owner string

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

// recordKey is one thing to write.
type recordKey struct {
	kind recordKind
	// key is the session's or the Machine's namespace/name, or a MAC.
	key string
}

type recordKind uint8

const (
	// sessionRecord: the session's timeline.dhcp, timeline.scriptServed
	// and BootFailed condition, in one apply (bootFields).
	sessionRecord recordKind = iota
	// requestRecord: the Machine's session-requested annotation.
	requestRecord
	// discoverRecord: a discovered Machine.
	discoverRecord
	// forbiddenRecord: a ScriptForbidden Event on the Machine.
	forbiddenRecord
)

// pendingRecord is what a queued key writes: for a session, what was
// observed (the earliest of each); for the others, the write.
type pendingRecord struct {
	dhcp, served time.Time
	failed       string // iPXE's error number
	failedAt     time.Time
	write        func(context.Context) error
}

// merge adds o's observations to p, keeping the earliest of each.
func (p *pendingRecord) merge(o *pendingRecord) {
	earliest := func(a *time.Time, b time.Time) {
		if !b.IsZero() && (a.IsZero() || b.Before(*a)) {
			*a = b
		}
	}
	earliest(&p.dhcp, o.dhcp)
	earliest(&p.served, o.served)
	if o.failed != "" && (p.failed == "" || o.failedAt.Before(p.failedAt)) {
		p.failed, p.failedAt = o.failed, o.failedAt
	}
	if p.write == nil {
		p.write = o.write
	}
}

// Limits of the recorder (see recorder).
const (
	maxPending     = 10000
	maxPendingDHCP = 100000
	maxRetries     = 5
	retryBase      = 100 * time.Millisecond
	retryCap       = 30 * time.Second
	writeTimeout   = 10 * time.Second
)

func newRecorder(c client.Client, tbl *table.Table, log logr.Logger, reg prometheus.Registerer) *recorder {
	r := &recorder{
		c: c, tbl: tbl, log: log, owner: FieldOwner,
		queue: workqueue.NewTypedRateLimitingQueueWithConfig(
			workqueue.NewTypedItemExponentialFailureRateLimiter[recordKey](retryBase, retryCap),
			workqueue.TypedRateLimitingQueueConfig[recordKey]{Name: "ggnet_agent_records"}),
		pending: map[recordKey]*pendingRecord{},
		dropped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ggnet_agent_records_dropped_total",
			Help: "Boot progress records dropped because too many were waiting, or their writes kept failing.",
		}),
		writes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ggnet_agent_record_writes_total",
			Help: "Writes of boot progress to the API server by kind and result.",
		}, []string{"kind", "result"}),
		discoveryCapped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ggnet_agent_discovery_capped_total",
			Help: "Unknown PXE clients not recorded because the discovered Machines reached --discovery-max.",
		}),
		dhcpQueue:     workqueue.NewTyped[string](),
		dhcpLimit:     rate.NewLimiter(rate.Limit(5), 5),
		dhcpAt:        map[string]time.Time{},
		applied:       map[string]*bootFields{},
		discoveryMax:  1000,
		creating:      map[string]net.HardwareAddr{},
		lastForbidden: map[string]time.Time{},
		component:     FieldOwner,
		discoverLimit: rate.NewLimiter(rate.Limit(5), 10),
	}
	if reg != nil {
		reg.MustRegister(r.dropped, r.writes, r.discoveryCapped)
	}
	return r
}

// run writes the queued records with a few workers, and moves the DHCP
// times into the queue at their pace, until ctx ends.
func (r *recorder) run(ctx context.Context, workers int) {
	var wg sync.WaitGroup
	wg.Go(func() { r.runDHCP(ctx) })
	for range workers {
		wg.Go(func() {
			for r.writeNext(ctx) {
			}
		})
	}
	<-ctx.Done()
	r.queue.ShutDown()
	r.dhcpQueue.ShutDown()
	wg.Wait()
}

// add merges rec into the key's pending record and queues the key; past
// maxPending keys a new one is dropped.
func (r *recorder) add(k recordKey, rec pendingRecord) {
	r.mu.Lock()
	p := r.pending[k]
	if p == nil {
		if len(r.pending) >= maxPending {
			r.mu.Unlock()
			r.dropped.Inc()
			return
		}
		p = &pendingRecord{}
		r.pending[k] = p
	}
	p.merge(&rec)
	r.mu.Unlock()
	r.queue.Add(k)
}

// writeNext writes one queued key; false once the queue is shut down.
func (r *recorder) writeNext(ctx context.Context) bool {
	k, shutdown := r.queue.Get()
	if shutdown {
		return false
	}
	defer r.queue.Done(k)
	r.mu.Lock()
	p := r.pending[k]
	delete(r.pending, k)
	r.mu.Unlock()
	if p == nil {
		r.queue.Forget(k)
		return true
	}
	wctx, cancel := context.WithTimeout(ctx, writeTimeout)
	err := r.write(wctx, k, p)
	cancel()
	switch {
	case err == nil || !retriable(err) || ctx.Err() != nil:
		r.queue.Forget(k)
	case r.queue.NumRequeues(k) < maxRetries:
		r.mu.Lock()
		if cur := r.pending[k]; cur != nil {
			cur.merge(p)
		} else {
			r.pending[k] = p
		}
		r.mu.Unlock()
		r.queue.AddRateLimited(k)
	default:
		r.queue.Forget(k)
		r.dropped.Inc()
	}
	return true
}

// retriable reports whether a failed write may succeed when tried again.
func retriable(err error) bool {
	return !apierrors.IsInvalid(err) && !apierrors.IsBadRequest(err) && !apierrors.IsNotFound(err) &&
		!apierrors.IsMethodNotSupported(err) && !apierrors.IsAlreadyExists(err)
}

func (r *recorder) write(ctx context.Context, k recordKey, p *pendingRecord) error {
	if k.kind == sessionRecord {
		return r.writeSession(ctx, k.key, p)
	}
	if p.write == nil {
		return nil
	}
	return p.write(ctx)
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
	r.add(recordKey{sessionRecord, sessionKey}, pendingRecord{served: time.Now()})
}

// BootFailed implements httpboot.Recorder: the session's BootFailed
// condition, with the boot agent's other fields (bootFields).
func (r *recorder) BootFailed(sessionKey, errno string) {
	r.add(recordKey{sessionRecord, sessionKey}, pendingRecord{failed: errno, failedAt: time.Now()})
}

// Answered implements dhcp.Observer: it binds the address this agent handed
// the client (yiaddr, reservation mode only; the DHCP server reports none in
// proxy mode, where the client's addresses are only its claims) to its MAC
// in the table and notes the time of a session's DHCP ACK for runDHCP. It
// runs on the DHCP server's path: table lookups, a map insert and a queue's
// add under their mutexes; no allocation for a session already waiting.
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
	_, waiting := r.dhcpAt[s.Key]
	full := !waiting && len(r.dhcpAt) >= maxPendingDHCP
	if !waiting && !full {
		r.dhcpAt[s.Key] = now
	}
	r.dhcpMu.Unlock()
	switch {
	case full:
		r.dropped.Inc()
	case !waiting:
		r.dhcpQueue.Add(s.Key)
	}
}

// runDHCP moves the waiting DHCP ACK times into the write queue at
// dhcpLimit's pace; a time the session has already (an ACK within a minute
// of the one recorded, as iPXE's after the firmware's) takes no turn.
func (r *recorder) runDHCP(ctx context.Context) {
	for {
		key, shutdown := r.dhcpQueue.Get()
		if shutdown {
			return
		}
		r.dhcpMu.Lock()
		at := r.dhcpAt[key]
		r.dhcpMu.Unlock()
		if !r.dhcpRecorded(key, at) && r.dhcpLimit.Wait(ctx) != nil {
			r.dhcpQueue.Done(key)
			return
		}
		r.dhcpMu.Lock()
		delete(r.dhcpAt, key)
		r.dhcpMu.Unlock()
		if !r.dhcpRecorded(key, at) {
			r.add(recordKey{sessionRecord, key}, pendingRecord{dhcp: at})
		}
		r.dhcpQueue.Done(key)
	}
}

// RequestSession implements httpboot.Recorder: it applies the Machine's
// session-requested annotation (the boot agent's one field on a Machine) so
// that the Machine controller creates a session.
func (r *recorder) RequestSession(m table.Machine) {
	at := time.Now()
	r.add(recordKey{requestRecord, m.Key}, pendingRecord{write: func(ctx context.Context) error {
		ac := bootac.Machine(m.Name, m.Namespace).WithAnnotations(map[string]string{
			bootv1.SessionRequestedAnnotation: at.UTC().Format(time.RFC3339)})
		return r.result("requestSession", r.c.Apply(ctx, ac, client.FieldOwner(r.owner), client.ForceOwnership))
	}})
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
	r.add(recordKey{discoverRecord, key}, pendingRecord{write: func(ctx context.Context) error {
		m := &bootv1.Machine{}
		m.Namespace = r.discoveryNamespace
		m.Name = "discovered-" + strings.ReplaceAll(key, ":", "")
		m.Labels = map[string]string{bootv1.DiscoveredLabel: "true"}
		m.Annotations = map[string]string{bootv1.DiscoveredAtAnnotation: time.Now().UTC().Format(time.RFC3339),
			bootv1.ClientAnnotation: clientDescription(c)}
		m.Spec = bootv1.MachineSpec{MAC: key, BootPolicy: bootv1.BootPolicyLocalBoot}
		err := r.c.Create(ctx, m, client.FieldOwner(r.owner))
		if apierrors.IsAlreadyExists(err) {
			err = nil
		}
		if err != nil {
			// Not retried here: the MAC's next DHCP packet asks again.
			r.discovered.Delete(key)
			r.releaseDiscovery(mac)
		} else {
			r.log.Info("Recorded a discovered machine", "mac", key, "Machine", m.Namespace+"/"+m.Name)
		}
		_ = r.result("discover", err)
		return nil
	}})
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
	r.add(recordKey{forbiddenRecord, m.Key}, pendingRecord{write: func(ctx context.Context) error {
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
	}})
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
