package controllers

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sort"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	logf "sigs.k8s.io/controller-runtime/pkg/log"

	bootv1 "github.com/ggnet/ggnet/api/v1alpha1"
	"github.com/ggnet/ggnet/internal/ipxe"
)

// reconcileRefs checks the Machine and the Image.
//
// A session not yet scheduled waits while its Machine or Image is being
// deleted, and is never scheduled then: their deletion waits only for the
// sessions that have seen it (see blocksDeletion), so these are checked
// first. It also waits while its Machine is in conflict (another Machine in
// the cluster holds its MAC or address), and until both exist and the Image
// has a Ready replica.
//
// A scheduled session goes on (a running PC's disk is sacred): while its
// Machine or Image is being deleted, whose deletion then waits for it, and
// when its Image is gone (its disk is its own copy-on-write overlay), with a
// note in its Ready message; while its Machine is in conflict, which the
// boot agent does not serve. It waits only when its Machine is gone: the
// boot agent has nothing to serve it from; its target stays.
//
// Conditions: Ready=False MachineDeleting, ImageDeleting, MachineNotFound,
// MachineConflict, ImageNotFound, ImageNotReady.
func (r *BootSessionReconciler) reconcileRefs(ctx context.Context, sc *sessionScope) (bool, error) {
	s := sc.session
	scheduled := s.Status.StorageNode != ""
	machine := &bootv1.Machine{}
	machineFound, err := r.getRef(ctx, s.Namespace, s.Spec.MachineRef.Name, machine)
	if err != nil {
		return false, err
	}
	image := &bootv1.Image{}
	imageFound, err := r.getRef(ctx, s.Namespace, s.Spec.ImageRef.Name, image)
	if err != nil {
		return false, err
	}
	if !scheduled {
		switch {
		case machineFound && machine.DeletionTimestamp != nil:
			r.wait(s, bootv1.SessionPending, bootv1.MachineDeletingReason,
				fmt.Sprintf("Machine %s is being deleted; the session is not started (it would be, were a Machine %s made again)", machine.Name, machine.Name))
			return false, nil
		case imageFound && image.DeletionTimestamp != nil:
			r.wait(s, bootv1.SessionPending, bootv1.ImageDeletingReason,
				fmt.Sprintf("Image %s is being deleted; the session is not started (it would be, were an Image %s made again)", image.Name, image.Name))
			return false, nil
		}
	}
	if !machineFound {
		msg := fmt.Sprintf("Machine %s does not exist", s.Spec.MachineRef.Name)
		if scheduled {
			msg += "; the boot agent cannot serve the session, whose target stays until it is stopped or deleted"
		}
		r.wait(s, bootv1.SessionPending, bootv1.MachineNotFoundReason, msg)
		return false, nil
	}
	sc.machine = machine
	s.Status.MAC = machine.Spec.MAC
	conflict, err := machineConflict(ctx, r.Client, machine)
	if err != nil {
		return false, err
	}
	sc.conflict = conflict
	if conflict != "" && !scheduled {
		r.wait(s, bootv1.SessionPending, bootv1.MachineConflictReason,
			fmt.Sprintf("Machine %s has Conflict=True (%s); the session waits until the conflict is resolved", machine.Name, conflict))
		return false, nil
	}
	if machine.DeletionTimestamp != nil {
		sc.notes = append(sc.notes, sessionNote{corev1.EventTypeNormal, bootv1.MachineDeletingReason,
			fmt.Sprintf("Machine %s is being deleted: its deletion waits until this session ends", machine.Name)})
	}
	switch {
	case !imageFound && !scheduled:
		r.wait(s, bootv1.SessionPending, bootv1.ImageNotFoundReason, fmt.Sprintf("Image %s does not exist", s.Spec.ImageRef.Name))
		return false, nil
	case !imageFound:
		sc.notes = append(sc.notes, sessionNote{corev1.EventTypeNormal, bootv1.ImageNotFoundReason,
			fmt.Sprintf("Image %s no longer exists; this session's disk is its own overlay and goes on", s.Spec.ImageRef.Name)})
		return true, nil
	case image.DeletionTimestamp != nil:
		sc.notes = append(sc.notes, sessionNote{corev1.EventTypeNormal, bootv1.ImageDeletingReason,
			fmt.Sprintf("Image %s is being deleted: its deletion waits until this session ends", image.Name)})
	case !scheduled && image.Status.ReadyReplicas == 0:
		r.wait(s, bootv1.SessionPending, bootv1.ImageNotReadyReason, fmt.Sprintf("Image %s has no Ready replica on any storage node", image.Name))
		return false, nil
	}
	sc.image = image
	return true, nil
}

// getRef reads a Machine or Image of the session's namespace from the cache;
// found is false when it does not exist.
func (r *BootSessionReconciler) getRef(ctx context.Context, ns, name string, obj client.Object) (found bool, err error) {
	err = r.Get(ctx, types.NamespacedName{Namespace: ns, Name: name}, obj)
	if apierrors.IsNotFound(err) {
		return false, nil
	}
	return err == nil, err
}

// reconcileExclusive lets only the oldest unfinished session of a machine go
// on, but for a retiring one whose answer is overdue (retireOverdue): the
// Machine controller prepared the next session without waiting for it.
// Conditions: Ready=False MachineBusy naming the active session.
func (r *BootSessionReconciler) reconcileExclusive(ctx context.Context, sc *sessionScope) (bool, error) {
	s := sc.session
	var list bootv1.BootSessionList
	if err := r.List(ctx, &list, client.InNamespace(s.Namespace), client.MatchingFields{indexSessionMachine: s.Spec.MachineRef.Name}, client.UnsafeDisableDeepCopy); err != nil {
		return false, err
	}
	now := time.Now()
	for i := range list.Items {
		o := &list.Items[i]
		if o.Name == s.Name || finished(o) || o.DeletionTimestamp != nil && o.Status.StorageNode == "" {
			continue
		}
		if _, overdue := retireOverdue(o, now, r.Options.retireTimeout()); overdue {
			continue
		}
		// Another session that already holds the machine, or an older one
		// that will, goes first.
		if (holdsMachine(o) && o.Status.StorageNode != "") || (!o.Spec.Stopped && olderFirst(o, s) && s.Status.StorageNode == "") {
			if s.Status.StorageNode != "" {
				continue // this one already holds storage: it keeps going
			}
			r.wait(s, bootv1.SessionPending, bootv1.MachineBusyReason,
				fmt.Sprintf("Machine %s is in session %s; this session waits until it stops", s.Spec.MachineRef.Name, o.Name))
			return false, nil
		}
	}
	return true, nil
}

// reconcileSchedule picks a storage node. A scheduled session whose node's
// Node object is missing goes on for the manager's storage node grace (a
// Node deleted by mistake or re-registered by its kubelet comes back, and a
// failed session would have its disk torn down): its Ready message says when
// it fails unless the node returns. Conditions: Scheduled; Ready=False
// NoStorageNode, or Failed StorageNodeLost when the chosen node has been gone
// longer than the grace (the StorageNodeReconciler then releases its
// storage finalizer). A node whose Node exists but whose Lease expired
// (storage_liveness.go) is treated the same with the grace counted from the
// expiry, and is never chosen for a new session.
func (r *BootSessionReconciler) reconcileSchedule(ctx context.Context, sc *sessionScope) (bool, error) {
	s := sc.session
	if name := s.Status.StorageNode; name != "" {
		node := &corev1.Node{}
		err := r.Get(ctx, types.NamespacedName{Name: name}, node)
		switch {
		case err == nil:
			r.gone.present("node/" + name)
			sc.node = node
			return r.reachable(s, name, sc)
		case !apierrors.IsNotFound(err):
			return false, err
		}
		since := r.gone.missing("node/"+name, time.Now())
		end := since.Add(r.grace())
		if left := time.Until(end); left > 0 {
			sc.requeueAfter = left
			sc.notes = append(sc.notes, sessionNote{corev1.EventTypeWarning, bootv1.StorageNodeGoneReason,
				fmt.Sprintf("storage node %s is missing since %s: unless it returns within the %s grace, the session fails at %s",
					name, since.UTC().Format(time.RFC3339), r.grace(), end.UTC().Format(time.RFC3339))})
			return true, nil
		}
		r.wait(s, bootv1.SessionFailed, bootv1.StorageNodeLostReason,
			fmt.Sprintf("storage node %s no longer exists (missing since %s, longer than the %s grace); the session cannot continue: create a new one",
				name, since.UTC().Format(time.RFC3339), r.grace()))
		now := metav1.Now()
		s.Status.Timeline.Stopped = &now
		return false, nil
	}
	load := map[string]int{}
	for _, rep := range sc.image.Status.Replicas {
		var on bootv1.BootSessionList
		// Read-only: no deep copy of every session on the node.
		if err := r.List(ctx, &on, client.MatchingFields{indexSessionNode: rep.Node}, client.UnsafeDisableDeepCopy); err != nil {
			return false, err
		}
		for i := range on.Items {
			if !finished(&on.Items[i]) {
				load[rep.Node]++
			}
		}
	}
	nodes := map[string]*corev1.Node{}
	unreachable := false
	exists := func(name string) bool {
		n := &corev1.Node{}
		if err := r.Get(ctx, types.NamespacedName{Name: name}, n); err != nil {
			return false
		}
		if _, down := r.gone.live.unreachableSince(name); down {
			unreachable = true
			return false
		}
		nodes[name] = n
		return true
	}
	pin := s.Spec.StorageNode
	if s.Spec.Writeback == bootv1.WritebackPersist {
		if disk := persistentDisk(sc.machine, sc.image); disk != nil {
			if pin != "" && pin != disk.Node {
				msg := fmt.Sprintf("Machine %s's persistent disk for Image %s is on storage node %s, but the session is pinned to %s; "+
					"raise the Machine's spec.persistentDisks.resetGeneration to start from a fresh disk", sc.machine.Name, sc.image.Name, disk.Node, pin)
				r.wait(s, bootv1.SessionPending, bootv1.PersistentDiskUnavailableReason, msg)
				return false, nil
			}
			pin = disk.Node
			if scheduleNode(sc.image.Status.Replicas, pin, load, exists) == "" {
				msg := fmt.Sprintf("Machine %s's persistent disk for Image %s is on storage node %s, which is gone, unreachable or holds no Ready replica of the Image; "+
					"the session waits for it (raise the Machine's spec.persistentDisks.resetGeneration to start from a fresh disk elsewhere)", sc.machine.Name, sc.image.Name, pin)
				if unreachable {
					sc.requeueAfter = bootv1.StorageLeaseRenewSeconds * time.Second
				}
				r.unschedulable(s, bootv1.PersistentDiskUnavailableReason, msg)
				return false, nil
			}
		}
	}
	chosen := scheduleNode(sc.image.Status.Replicas, pin, load, exists)
	if chosen == "" && unreachable {
		// Nothing wakes the session when a Lease is renewed again: look
		// again after a renewal period.
		sc.requeueAfter = bootv1.StorageLeaseRenewSeconds * time.Second
	}
	if chosen == "" {
		msg := fmt.Sprintf("no storage node holds a Ready replica of Image %s", sc.image.Name)
		if s.Spec.StorageNode != "" {
			msg = fmt.Sprintf("storage node %s does not hold a Ready replica of Image %s", s.Spec.StorageNode, sc.image.Name)
		}
		if unreachable {
			msg += " that is reachable: a storage node that holds one has not renewed its Lease"
		}
		r.unschedulable(s, bootv1.NoStorageNodeReason, msg)
		return false, nil
	}
	sc.node = nodes[chosen]
	// No Event: Scheduled=True and timeline.scheduled say it (a session's
	// happy path records none).
	setSessionScheduled(s, chosen, metav1.Now())
	return true, nil
}

// unschedulable records why no storage node can take the session
// (setSessionUnschedulable), with an Event when the reason is new.
func (r *BootSessionReconciler) unschedulable(s *bootv1.BootSession, reason, msg string) {
	if setSessionUnschedulable(s, reason, msg) {
		r.Recorder.Event(s, corev1.EventTypeNormal, reason, msg)
	}
}

// reconcileCredentials fills the target and the initiator, and makes the
// session's Secret (owned by the session) with every key of
// bootv1.SecretKey*; a Secret that lacks keys (made by an older manager)
// gets the missing ones, the others are kept. No credential leaves the
// Secret. A session that has a target keeps its portal while its node is
// missing (within the grace) or reports no address. Conditions: Ready=False
// NoStorageNode when the node has no address and the session no target yet;
// WaitingForStorage when its node is missing and it has no target yet.
func (r *BootSessionReconciler) reconcileCredentials(ctx context.Context, sc *sessionScope) (bool, error) {
	s := sc.session
	var portal string
	switch {
	case sc.node != nil:
		p, err := nodePortal(sc.node, r.ISCSIPort)
		switch {
		case err == nil:
			portal = p
		case s.Status.Target != nil:
			// A Node that reports no address for a while (re-registered,
			// its status not yet written) does not stop a session that has
			// its portal.
			portal = s.Status.Target.Portal
		default:
			r.wait(s, bootv1.SessionPending, bootv1.NoStorageNodeReason, err.Error())
			return false, nil
		}
	case s.Status.Target != nil:
		// The node is missing, within the grace: the session keeps its portal.
		portal = s.Status.Target.Portal
	default:
		r.wait(s, bootv1.SessionProvisioning, bootv1.WaitingForStorageReason, sc.withNotes("waiting for storage node "+s.Status.StorageNode))
		return false, nil
	}
	s.Status.Target = &bootv1.ISCSITarget{Portal: portal, IQN: TargetIQN(r.IQNPrefix, s), LUN: 1}
	s.Status.InitiatorIQN = fmt.Sprintf("%s:initiator:%s:%s", r.IQNPrefix, s.Namespace, s.Spec.MachineRef.Name)
	if err := r.ensureSecret(ctx, s); err != nil {
		if fe := (*foreignSecretError)(nil); errors.As(err, &fe) {
			// Secrets are not watched: look again for its deletion.
			r.wait(s, bootv1.SessionProvisioning, bootv1.SecretConflictReason, fe.Error())
			sc.requeueAfter = 15 * time.Second
			return false, nil
		}
		return false, err
	}
	s.Status.CHAPSecretRef = &bootv1.LocalObjectReference{Name: sessionSecretName(s.Name)}
	return true, nil
}

// ensureSecret creates the session's Secret, or adds the keys and label an
// existing one lacks. The Secret is read from the API server, not a cache.
// Errors name the Secret, never its data.
func (r *BootSessionReconciler) ensureSecret(ctx context.Context, s *bootv1.BootSession) error {
	log := logf.FromContext(ctx)
	name := sessionSecretName(s.Name)
	create := func() error {
		data, err := missingSecretData(nil, s.UID)
		if err != nil {
			return fmt.Errorf("making credentials: %w", err)
		}
		sec := &corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{Namespace: s.Namespace, Name: name, Labels: map[string]string{bootv1.SessionSecretLabel: s.Name}},
			Type:       corev1.SecretTypeOpaque,
			StringData: data,
		}
		if err := controllerutil.SetControllerReference(s, sec, r.Scheme()); err != nil {
			return err
		}
		log.V(1).Info("Creating the session Secret", "secret", name)
		return r.Create(ctx, sec)
	}
	key := client.ObjectKeyFromObject(s)
	if s.Status.CHAPSecretRef != nil && r.ownWrites.secretMade(key, s.UID) &&
		meta.IsStatusConditionTrue(s.Status.Conditions, bootv1.StorageReadyCondition) {
		// This manager made it, complete, in an earlier reconcile of the
		// session, and the storage agent read it (StorageReady=True): no
		// read back in the Ready reconcile (a round trip). In any other
		// state (the agent waits for credentials: someone deleted the
		// Secret) it is read back and made again.
		return nil
	}
	if s.Status.CHAPSecretRef == nil {
		// A new session: create at once (one call, not a read that finds
		// nothing and then a create); an existing Secret is checked below.
		err := create()
		if err == nil {
			r.ownWrites.madeSecret(key, s.UID)
			return nil
		} else if !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("creating Secret %s: %w", name, redact(err))
		}
	}
	sec := &corev1.Secret{}
	err := r.Get(ctx, types.NamespacedName{Namespace: s.Namespace, Name: name}, sec)
	if apierrors.IsNotFound(err) {
		if err := create(); err != nil {
			return fmt.Errorf("creating Secret %s: %w", name, redact(err))
		}
		return nil
	} else if err != nil {
		return fmt.Errorf("reading Secret %s: %w", name, redact(err))
	}
	owner := metav1.GetControllerOf(sec)
	if owner != nil && owner.UID != s.UID {
		// A Secret of an earlier session of the same name, which the
		// garbage collector removes, or someone else's: never reused.
		return fmt.Errorf("Secret %s belongs to %s %s, not to this session", name, owner.Kind, owner.Name)
	}
	if owner == nil {
		// GGnet makes every session Secret with its session as controller:
		// one without is someone else's, maybe planted by whoever may create
		// Secrets here to learn the credentials of a session to come. Never
		// adopted, never overwritten: it must go first.
		return &foreignSecretError{name}
	}
	add, err := missingSecretData(sec.Data, s.UID)
	if err != nil {
		return fmt.Errorf("making credentials: %w", err)
	}
	if len(add) == 0 && sec.Labels[bootv1.SessionSecretLabel] == s.Name {
		return nil
	}
	base := sec.DeepCopy()
	if sec.Labels == nil {
		sec.Labels = map[string]string{}
	}
	sec.Labels[bootv1.SessionSecretLabel] = s.Name
	if sec.Data == nil {
		sec.Data = map[string][]byte{}
	}
	keys := make([]string, 0, len(add))
	for k, v := range add {
		sec.Data[k] = []byte(v)
		keys = append(keys, k)
	}
	sort.Strings(keys)
	log.Info("Completing the session Secret", "secret", name, "addedKeys", keys)
	// Optimistic lock: two reconciles never both add a key.
	if err := r.Patch(ctx, sec, client.MergeFromWithOptions(base, client.MergeFromWithOptimisticLock{})); err != nil {
		return fmt.Errorf("adding keys to Secret %s: %w", name, redact(err))
	}
	if len(keys) > 0 {
		r.Recorder.Eventf(s, corev1.EventTypeNormal, "SecretUpgraded", "Added keys %s to Secret %s", strings.Join(keys, ", "), name)
	}
	return nil
}

// foreignSecretError: the session's Secret name is taken by a Secret no
// session owns.
type foreignSecretError struct{ name string }

func (e *foreignSecretError) Error() string {
	return "Secret " + e.name + " exists and no session owns it: GGnet never adopts credentials it did not make; delete it and the session gets its own"
}

// redact keeps an API error's kind for the callers' checks (conflict, not
// found) but drops its text, which might quote a value.
func redact(err error) error {
	if st, ok := err.(apierrors.APIStatus); ok {
		return &apierrors.StatusError{ErrStatus: metav1.Status{Status: metav1.StatusFailure, Code: st.Status().Code,
			Reason: st.Status().Reason, Message: string(st.Status().Reason)}}
	}
	return err
}

// reconcileStorage waits for the storage agent's StorageReady.
// Conditions: Ready=False WaitingForStorage, or Failed StorageFailed — only
// before the storage was ready once. A session whose timeline.storageReady is
// set may have a PC running on its disk: StorageReady=False (whatever its
// reason, e.g. TargetUnavailable while tgtd restarts) never fails it; it goes
// on, and its Ready message says that the storage agent is retrying. Only its
// stop or deletion tears it down.
func (r *BootSessionReconciler) reconcileStorage(_ context.Context, sc *sessionScope) (bool, error) {
	s := sc.session
	c := meta.FindStatusCondition(s.Status.Conditions, bootv1.StorageReadyCondition)
	switch {
	case c != nil && c.Status == metav1.ConditionTrue:
		if s.Status.Timeline.StorageReady == nil {
			t := c.LastTransitionTime
			s.Status.Timeline.StorageReady = &t
		}
		return true, nil
	case s.Status.Timeline.StorageReady != nil:
		sc.storageDown = "storage node " + s.Status.StorageNode + " reports StorageReady=False"
		if c != nil {
			sc.storageDown += " " + c.Reason
		}
		if c != nil && c.Reason == bootv1.OverlayLostReason {
			sc.storageDown += ": the overlay file is gone from the node; a PC still running keeps its open disk until the session stops, " +
				"but the session cannot boot again: stop it"
		} else {
			sc.storageDown += "; the disk is kept and the storage agent retries"
		}
		if prev := meta.FindStatusCondition(s.Status.Conditions, bootv1.ReadyCondition); c != nil &&
			(prev == nil || !strings.Contains(prev.Message, "reports StorageReady=False")) {
			r.Recorder.Event(s, corev1.EventTypeWarning, c.Reason, sc.storageDown)
		}
		return true, nil
	case c != nil && c.Reason == bootv1.StorageFailedReason:
		r.wait(s, bootv1.SessionFailed, bootv1.StorageFailedReason, "the storage agent on "+s.Status.StorageNode+" could not make the disk: "+c.Message)
		now := metav1.Now()
		s.Status.Timeline.Stopped = &now
		return false, nil
	default:
		r.wait(s, bootv1.SessionProvisioning, bootv1.WaitingForStorageReason,
			sc.withNotes("waiting for storage node "+s.Status.StorageNode+" to make the overlay and the iSCSI target"))
		return false, nil
	}
}

// reconcileScript renders the script's preview (no credentials: the boot
// agent adds them from the Secret when it serves the script) and sets Ready.
// Conditions: Ready=True Succeeded (its message says when the machine is in
// conflict and the agent does not serve the session); Ready=False
// ScriptInvalid.
func (r *BootSessionReconciler) reconcileScript(_ context.Context, sc *sessionScope) (bool, error) {
	s := sc.session
	script, err := ipxe.Render(ipxe.Session{
		Name: s.Namespace + "/" + s.Name, Image: s.Spec.ImageRef.Name,
		Portal: s.Status.Target.Portal, TargetIQN: s.Status.Target.IQN, LUN: s.Status.Target.LUN,
		InitiatorIQN: s.Status.InitiatorIQN,
	})
	if err != nil {
		if s.Status.Timeline.StorageReady != nil {
			// A PC may run on the disk: a failed session would have its
			// storage torn down (say, by a manager upgrade with stricter
			// checks). It stays, not Ready, until someone stops it.
			r.wait(s, phaseOf(s), bootv1.ScriptInvalidReason, "the boot script cannot be rendered (the disk is kept); see the manager's log")
			return false, err
		}
		r.wait(s, bootv1.SessionFailed, bootv1.ScriptInvalidReason, "the boot script cannot be rendered; see the manager's log")
		return false, err
	}
	s.Status.Script = script
	first := s.Status.Timeline.Ready == nil
	if first {
		now := metav1.Now()
		s.Status.Timeline.Ready = &now
		// No Event: Ready=True and timeline.ready say it (a session's
		// happy path records none).
		sessionReadySeconds.Observe(now.Sub(s.CreationTimestamp.Time).Seconds())
		r.ownWrites.forgetSecret(client.ObjectKeyFromObject(s))
	}
	phase := phaseOf(s)
	msg := "the machine can boot; phase " + string(phase)
	if sc.conflict != "" {
		msg = "phase " + string(phase) + "; Machine " + sc.machine.Name + " has Conflict=True, so the boot agent does not serve this session until the conflict is resolved"
	}
	if sc.storageDown != "" {
		msg += "; " + sc.storageDown
	}
	setSessionReady(s, sc.withNotes(msg))
	return true, nil
}

// nodePortal is the portal the node's storage agent announced
// (bootv1.ISCSIPortalAnnotation, its --portal) when that is a valid IPv4
// address and port; else the node's InternalIP (else first IPv4 address) and
// port.
func nodePortal(n *corev1.Node, port int) (string, error) {
	if p, ok := announcedPortal(n); ok {
		return p, nil
	}
	var fallback string
	for _, a := range n.Status.Addresses {
		ip := net.ParseIP(a.Address)
		if ip == nil || ip.To4() == nil {
			continue
		}
		if a.Type == corev1.NodeInternalIP {
			return net.JoinHostPort(a.Address, strconv.Itoa(port)), nil
		}
		if fallback == "" {
			fallback = a.Address
		}
	}
	if fallback == "" {
		return "", fmt.Errorf("storage node %s reports no IPv4 address", n.Name)
	}
	return net.JoinHostPort(fallback, strconv.Itoa(port)), nil
}

// announcedPortal is the node's bootv1.ISCSIPortalAnnotation in canonical
// form when it is a specified IPv4 address and a port from 1 to 65535.
func announcedPortal(n *corev1.Node) (string, bool) {
	v, ok := n.Annotations[bootv1.ISCSIPortalAnnotation]
	if !ok {
		return "", false
	}
	host, p, err := net.SplitHostPort(v)
	if err != nil {
		return "", false
	}
	ip := net.ParseIP(host).To4()
	port, err := strconv.Atoi(p)
	if ip == nil || ip.IsUnspecified() || strings.Contains(host, ":") || err != nil || port < 1 || port > 65535 {
		return "", false
	}
	return net.JoinHostPort(ip.String(), strconv.Itoa(port)), true
}

// persistentDisk is the Machine's persistent disk for the Image that a
// Persist session must use: of the disks its storage agents list for the
// Image's UID at the Machine's current reset generation (older ones are
// being reset), the one used last. Nil: the session may start from a fresh
// disk on any node.
func persistentDisk(m *bootv1.Machine, img *bootv1.Image) *bootv1.PersistentDisk {
	var best *bootv1.PersistentDisk
	gen := m.Spec.PersistentDisks.ResetGenerationOrZero()
	for i := range m.Status.PersistentDisks {
		d := &m.Status.PersistentDisks[i]
		if d.ImageUID != string(img.UID) || d.Generation < gen ||
			d.State == bootv1.PersistentDiskResetPending || d.State == bootv1.PersistentDiskDeletePending {
			continue
		}
		if best == nil || lastUsed(d).After(lastUsed(best)) || (lastUsed(d).Equal(lastUsed(best)) && d.Node < best.Node) {
			best = d
		}
	}
	return best
}

func lastUsed(d *bootv1.PersistentDisk) time.Time {
	if d.LastUsed == nil {
		return time.Time{}
	}
	return d.LastUsed.Time
}

// TargetIQN is a session's target name: <prefix>:<namespace>:<session>. The
// storage agent accepts no other for the session.
func TargetIQN(prefix string, s *bootv1.BootSession) string {
	return bootv1.TargetIQN(prefix, s.Namespace, s.Name)
}
