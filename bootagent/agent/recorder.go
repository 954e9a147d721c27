package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/go-logr/logr"
	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	bootv1 "github.com/ggnet/ggnet/api/v1alpha1"
	"github.com/ggnet/ggnet/bootagent/dhcp"
	"github.com/ggnet/ggnet/bootagent/table"
)

// SessionRequestedAnnotation is set on an AutoSession Machine by the agent
// when the machine network-boots without a session; the Machine controller
// answers by creating one.
const SessionRequestedAnnotation = "boot.ggnet.io/session-requested"

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
		discoverLimit: rate.NewLimiter(rate.Limit(5), 10),
		dhcpLimit:     rate.NewLimiter(rate.Limit(5), 5),
		dhcpPending:   map[string]time.Time{},
		dhcpKick:      make(chan struct{}, 1),
	}
	if reg != nil {
		reg.MustRegister(r.dropped, r.writes)
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

// Answered implements dhcp.Observer: it notes the time of a session's DHCP
// ACK for runDHCP to write. It runs on the DHCP server's path: a table lookup
// and a map insert, no allocation for a session already waiting.
func (r *recorder) Answered(mac net.HardwareAddr, msg dhcpv4.MessageType) {
	if msg != dhcpv4.MessageTypeAck {
		return
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
			SessionRequestedAnnotation: time.Now().UTC().Format(time.RFC3339),
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
	r.discovered.Store(key, struct{}{})
	r.enqueue("discover/"+key, func(ctx context.Context) error {
		m := &bootv1.Machine{}
		m.Namespace = r.discoveryNamespace
		m.Name = "discovered-" + strings.ReplaceAll(key, ":", "")
		m.Labels = map[string]string{bootv1.DiscoveredLabel: "true"}
		m.Annotations = map[string]string{"boot.ggnet.io/discovered-at": time.Now().UTC().Format(time.RFC3339),
			"boot.ggnet.io/client": clientDescription(c)}
		m.Spec = bootv1.MachineSpec{MAC: key, BootPolicy: bootv1.BootPolicyLocalBoot}
		err := r.c.Create(ctx, m, client.FieldOwner(FieldOwner))
		if apierrors.IsAlreadyExists(err) {
			err = nil
		}
		if err != nil {
			r.discovered.Delete(key)
		} else {
			r.log.Info("Recorded a discovered machine", "mac", key, "Machine", m.Namespace+"/"+m.Name)
		}
		return r.result("discover", err)
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
