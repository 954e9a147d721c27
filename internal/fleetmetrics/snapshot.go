package fleetmetrics

import (
	"encoding/json"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	bootv1 "github.com/ggnet/ggnet/api/v1alpha1"
)

// The gauges are computed from lists of the manager's cache by pure
// functions: snapshot takes the objects and the time and returns every
// series' value, so the tests check them without an API server.

// sessionKey labels ggnet_fleet_sessions.
type sessionKey struct{ namespace, phase, storageNode, image string }

// phaseKey labels ggnet_fleet_session_phase_longest_seconds.
type phaseKey struct{ namespace, phase string }

// machineKey labels ggnet_fleet_machines.
type machineKey struct{ namespace, state string }

// replicaKey labels ggnet_fleet_image_replicas.
type replicaKey struct{ namespace, image, state string }

// snapshotData is every gauge's series at one scrape.
type snapshotData struct {
	sessions      map[sessionKey]float64
	phaseLongest  map[phaseKey]float64
	machines      map[machineKey]float64
	replicas      map[replicaKey]float64
	storage       map[string]bootv1.NodeStorage // by storage node
	storageErrors int                           // Nodes whose annotation is not a NodeStorage
}

// Machine states (ggnet_fleet_machines{state}) that are not a session
// phase: a Machine with an active session has that session's phase.
const (
	// MachineDiscovered: recorded by the boot agent for an unknown PXE
	// client (bootv1.DiscoveredLabel), waiting for an operator.
	MachineDiscovered = "Discovered"
	// MachineConflict: Conflict=True, another Machine has its MAC or
	// address.
	MachineConflict = "Conflict"
	// MachineNotReady: Ready is not True (no valid reservation yet, being
	// deleted, or not reconciled yet).
	MachineNotReady = "NotReady"
	// MachineLocalBoot: boot policy LocalBoot and no session.
	MachineLocalBoot = "LocalBoot"
	// MachineIdle: ready, no active session.
	MachineIdle = "Idle"
)

// phaseOf is a session's phase for the gauges: a session the manager has
// not reconciled yet has none and counts as Pending.
func phaseOf(s *bootv1.BootSession) bootv1.BootSessionPhase {
	if s.Status.Phase == "" {
		return bootv1.SessionPending
	}
	return s.Status.Phase
}

// terminal phases are not timed by ggnet_fleet_session_phase_longest_seconds:
// a finished session may be kept for ever.
func terminal(p bootv1.BootSessionPhase) bool {
	return p == bootv1.SessionStopped || p == bootv1.SessionFailed
}

// phaseSince is when a session entered its current phase, from its
// timeline: Pending since creation, Provisioning since it was scheduled,
// Ready since timeline.ready, Booting since the script was served, Active
// since the first iSCSI login, Stopping since timeline.stopping (or the
// deletion). A step the timeline lacks falls back to the one before it.
func phaseSince(s *bootv1.BootSession) time.Time {
	t := s.Status.Timeline
	created := s.CreationTimestamp.Time
	first := func(ts ...*metav1.Time) time.Time {
		for _, x := range ts {
			if x != nil {
				return x.Time
			}
		}
		return created
	}
	switch phaseOf(s) {
	case bootv1.SessionProvisioning:
		return first(t.Scheduled)
	case bootv1.SessionReady:
		return first(t.Ready, t.StorageReady, t.Scheduled)
	case bootv1.SessionBooting:
		return first(t.ScriptServed, t.Ready, t.StorageReady, t.Scheduled)
	case bootv1.SessionActive:
		return first(t.ISCSILogin, t.ScriptServed, t.Ready)
	case bootv1.SessionStopping:
		if t.Stopping == nil && s.DeletionTimestamp != nil {
			return s.DeletionTimestamp.Time
		}
		return first(t.Stopping)
	default:
		return created
	}
}

// machineState is a Machine's state for ggnet_fleet_machines. phases maps
// "namespace/name" of each session to its phase.
func machineState(m *bootv1.Machine, phases map[string]bootv1.BootSessionPhase) string {
	switch {
	case m.Labels[bootv1.DiscoveredLabel] != "":
		return MachineDiscovered
	case meta.IsStatusConditionTrue(m.Status.Conditions, bootv1.ConflictCondition):
		return MachineConflict
	case m.Status.ActiveSession != "":
		if p, ok := phases[m.Namespace+"/"+m.Status.ActiveSession]; ok {
			return string(p)
		}
		return string(bootv1.SessionPending)
	case !meta.IsStatusConditionTrue(m.Status.Conditions, bootv1.ReadyCondition):
		return MachineNotReady
	case m.Spec.BootPolicy == bootv1.BootPolicyLocalBoot:
		return MachineLocalBoot
	default:
		return MachineIdle
	}
}

// nodeStorage reads a Node's storage annotation, written by its storage
// agent; ok is false on a Node that has none.
func nodeStorage(n *corev1.Node) (ns bootv1.NodeStorage, ok bool, err error) {
	v, ok := n.Annotations[bootv1.StorageAnnotation]
	if !ok {
		return ns, false, nil
	}
	return ns, true, json.Unmarshal([]byte(v), &ns)
}

// snapshot computes every gauge from the objects at now.
func snapshot(sessions []bootv1.BootSession, machines []bootv1.Machine, images []bootv1.Image, nodes []corev1.Node, now time.Time) snapshotData {
	d := snapshotData{
		sessions:     map[sessionKey]float64{},
		phaseLongest: map[phaseKey]float64{},
		machines:     map[machineKey]float64{},
		replicas:     map[replicaKey]float64{},
		storage:      map[string]bootv1.NodeStorage{},
	}
	phases := make(map[string]bootv1.BootSessionPhase, len(sessions))
	for i := range sessions {
		s := &sessions[i]
		p := phaseOf(s)
		phases[s.Namespace+"/"+s.Name] = p
		d.sessions[sessionKey{s.Namespace, string(p), s.Status.StorageNode, s.Spec.ImageRef.Name}]++
		if terminal(p) {
			continue
		}
		k := phaseKey{s.Namespace, string(p)}
		age := max(0, now.Sub(phaseSince(s)).Seconds())
		if cur, ok := d.phaseLongest[k]; !ok || age > cur {
			d.phaseLongest[k] = age
		}
	}
	for i := range machines {
		m := &machines[i]
		d.machines[machineKey{m.Namespace, machineState(m, phases)}]++
	}
	for i := range images {
		img := &images[i]
		for _, r := range img.Status.Replicas {
			d.replicas[replicaKey{img.Namespace, img.Name, string(r.State)}]++
		}
	}
	for i := range nodes {
		ns, ok, err := nodeStorage(&nodes[i])
		switch {
		case !ok:
		case err != nil:
			d.storageErrors++
		default:
			d.storage[nodes[i].Name] = ns
		}
	}
	return d
}
