package agent

import (
	"context"
	"strings"
	"time"

	apiequality "k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	metav1ac "k8s.io/client-go/applyconfigurations/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	bootv1 "github.com/ggnet/ggnet/api/v1alpha1"
	bootac "github.com/ggnet/ggnet/api/v1alpha1/applyconfiguration/api/v1alpha1"
)

// bootFields are the fields of a session's status the boot agent writes:
// timeline.dhcp, timeline.scriptServed and the BootFailed condition. Each
// write is one server-side apply of all of them with the agent's field
// manager (an apply removes what the same manager applied before and leaves
// out), so a DHCP time never removes the script's, nor a failure either.
// Times are to the second, as the API server keeps them.
type bootFields struct {
	UID          types.UID
	DHCP         *metav1.Time
	ScriptServed *metav1.Time
	BootFailed   *metav1.Condition
	// used is when the record was last read or written.
	used time.Time
}

// fieldsOf reads the boot agent's fields from a session.
func fieldsOf(s *bootv1.BootSession) *bootFields {
	f := &bootFields{UID: s.UID, DHCP: s.Status.Timeline.DHCP.DeepCopy(), ScriptServed: s.Status.Timeline.ScriptServed.DeepCopy()}
	if c := meta.FindStatusCondition(s.Status.Conditions, bootv1.BootFailedCondition); c != nil {
		f.BootFailed = c.DeepCopy()
	}
	return f
}

// with is f with what p observed: the script's time once, the DHCP time
// again a minute after the one recorded (a reboot of the same session), the
// failure with iPXE's error number.
func (f bootFields) with(p *pendingRecord) bootFields {
	second := func(t time.Time) *metav1.Time { return &metav1.Time{Time: t.Truncate(time.Second)} }
	if !p.served.IsZero() && f.ScriptServed == nil {
		f.ScriptServed = second(p.served)
	}
	if !p.dhcp.IsZero() && (f.DHCP == nil || p.dhcp.Sub(f.DHCP.Time) >= time.Minute) {
		f.DHCP = second(p.dhcp)
	}
	if p.failed != "" {
		msg := "the machine's iPXE could not boot from the iSCSI target (iPXE error " + p.failed +
			"): check the CHAP Secret, the initiator and the portal"
		c := &metav1.Condition{Type: bootv1.BootFailedCondition, Status: metav1.ConditionTrue,
			Reason: bootv1.SANBootFailedReason, Message: msg, LastTransitionTime: *second(p.failedAt)}
		if f.BootFailed != nil && f.BootFailed.Status == metav1.ConditionTrue {
			c.LastTransitionTime = f.BootFailed.LastTransitionTime
		}
		f.BootFailed = c
	}
	return f
}

// same reports whether f and o say the same.
func (f bootFields) same(o bootFields) bool {
	return apiequality.Semantic.DeepEqual([]any{f.DHCP, f.ScriptServed, f.BootFailed}, []any{o.DHCP, o.ScriptServed, o.BootFailed})
}

// applyConfig is f as the apply of the session's status.
func (f bootFields) applyConfig(namespace, name string) *bootac.BootSessionApplyConfiguration {
	status := bootac.BootSessionStatus()
	if f.DHCP != nil || f.ScriptServed != nil {
		tl := bootac.SessionTimeline()
		if f.DHCP != nil {
			tl.WithDHCP(*f.DHCP)
		}
		if f.ScriptServed != nil {
			tl.WithScriptServed(*f.ScriptServed)
		}
		status.WithTimeline(tl)
	}
	if c := f.BootFailed; c != nil {
		status.WithConditions(metav1ac.Condition().WithType(c.Type).WithStatus(c.Status).WithReason(c.Reason).
			WithMessage(c.Message).WithLastTransitionTime(c.LastTransitionTime))
	}
	return bootac.BootSession(name, namespace).WithStatus(status)
}

// appliedIdle is how long the record of a session's fields is kept after
// its last use once there are appliedKeep of them: by then the cache shows
// the agent's last write, and a record read again from it is right.
const (
	appliedIdle = time.Minute
	appliedKeep = 1024
)

// fields is the record of a session's fields: the agent's own since its
// last apply, else read from s (the cache).
func (r *recorder) fields(key string, s *bootv1.BootSession) bootFields {
	r.appliedMu.Lock()
	defer r.appliedMu.Unlock()
	now := time.Now()
	f := r.applied[key]
	if f == nil || f.UID != s.UID {
		if len(r.applied) >= appliedKeep {
			for k, g := range r.applied {
				if now.Sub(g.used) > appliedIdle {
					delete(r.applied, k)
				}
			}
		}
		f = fieldsOf(s)
		r.applied[key] = f
	}
	f.used = now
	return *f
}

// setFields records what the agent applied.
func (r *recorder) setFields(key string, f bootFields) {
	r.appliedMu.Lock()
	defer r.appliedMu.Unlock()
	f.used = time.Now()
	r.applied[key] = &f
}

// forget drops the record of a session (deleted).
func (r *recorder) forget(key string) {
	r.appliedMu.Lock()
	defer r.appliedMu.Unlock()
	delete(r.applied, key)
}

// dhcpRecorded reports whether the session's record has a DHCP time within
// a minute before at (a later ACK would not be written).
func (r *recorder) dhcpRecorded(key string, at time.Time) bool {
	r.appliedMu.Lock()
	defer r.appliedMu.Unlock()
	f := r.applied[key]
	return f != nil && f.DHCP != nil && at.Sub(f.DHCP.Time) < time.Minute
}

// writeSession applies the session's boot agent fields with what p
// observed, unless they say so already.
func (r *recorder) writeSession(ctx context.Context, key string, p *pendingRecord) error {
	ns, name, _ := strings.Cut(key, "/")
	var s bootv1.BootSession
	if err := r.c.Get(ctx, types.NamespacedName{Namespace: ns, Name: name}, &s); err != nil {
		if client.IgnoreNotFound(err) == nil {
			r.forget(key)
		}
		return client.IgnoreNotFound(err)
	}
	cur := r.fields(key, &s)
	next := cur.with(p)
	if cur.same(next) {
		return nil
	}
	kind := "dhcp" // the metric's kinds: what the write carries news of
	switch {
	case p.failed != "":
		kind = "bootFailed"
		r.log.Info("Recording a failed boot", "BootSession", key, "errno", p.failed)
	case !p.served.IsZero():
		kind = "scriptServed"
	}
	err := r.c.Status().Apply(ctx, next.applyConfig(ns, name), client.FieldOwner(r.owner), client.ForceOwnership)
	if err == nil {
		r.setFields(key, next)
	}
	return r.result(kind, client.IgnoreNotFound(err))
}
