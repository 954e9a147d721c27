package agent

import (
	"net"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"

	bootv1 "github.com/ggnet/ggnet/api/v1alpha1"
	"github.com/ggnet/ggnet/bootagent/dhcp"
	"github.com/ggnet/ggnet/bootagent/table"
	"github.com/ggnet/ggnet/internal/ipxe"
)

// machineEntry converts a Machine for the table. The API server validated the
// formats; anything that still does not parse is left out rather than served.
func machineEntry(m *bootv1.Machine) (table.Machine, bool) {
	mac, ok := ipxe.ParseMAC(m.Spec.MAC)
	if !ok {
		return table.Machine{}, false
	}
	r := dhcp.Reservation{MAC: mac, Hostname: m.Spec.Hostname, LocalBoot: m.Spec.BootPolicy == bootv1.BootPolicyLocalBoot}
	switch m.Spec.Firmware {
	case bootv1.FirmwareBIOS:
		r.Firmware = dhcp.FirmwareBIOS
	case bootv1.FirmwareUEFI:
		r.Firmware = dhcp.FirmwareUEFI
	}
	if ip := m.Spec.IPv4; ip != nil && !conflicted(m) {
		r.Address = net.ParseIP(ip.Address).To4()
		r.Mask = net.CIDRMask(int(ip.PrefixLength), 32)
		if gw := net.ParseIP(ip.Gateway).To4(); gw != nil {
			r.Gateway = gw
		}
		for _, d := range ip.DNS {
			if a := net.ParseIP(d).To4(); a != nil {
				r.DNS = append(r.DNS, a)
			}
		}
	}
	policy := table.PolicyManual
	switch m.Spec.BootPolicy {
	case bootv1.BootPolicyAutoSession:
		policy = table.PolicyAutoSession
	case bootv1.BootPolicyLocalBoot:
		policy = table.PolicyLocalBoot
	}
	return table.Machine{
		Key: m.Namespace + "/" + m.Name, Namespace: m.Namespace, Name: m.Name, UID: string(m.UID), Conflict: conflicted(m),
		Reservation: r, Policy: policy, HasImage: m.Spec.ImageRef != nil || m.Status.Image != "",
		Discovered: m.Labels[bootv1.DiscoveredLabel] == "true", CreatedUnix: m.CreationTimestamp.Unix(),
	}, true
}

// conflicted is true when the Machine controller found another Machine in
// the cluster with the same MAC or address: the agent then hands out no
// address for it rather than two machines the same one, and serves none of
// its sessions.
func conflicted(m *bootv1.Machine) bool {
	for _, c := range m.Status.Conditions {
		if c.Type == bootv1.ConflictCondition && c.Status == "True" {
			return true
		}
	}
	return false
}

// sessionEntry converts a BootSession for the table: what its script is
// rendered from at serve time, without credentials (they come from its
// Secret).
func sessionEntry(s *bootv1.BootSession) table.Session {
	live := !s.Spec.Stopped && s.DeletionTimestamp == nil
	bootable := live
	switch s.Status.Phase {
	case bootv1.SessionReady, bootv1.SessionBooting, bootv1.SessionActive:
	case bootv1.SessionStopping, bootv1.SessionStopped, bootv1.SessionFailed:
		live, bootable = false, false
	default:
		bootable = false
	}
	isRetiring := retiring(s)
	e := table.Session{
		Key: s.Namespace + "/" + s.Name, MAC: s.Status.MAC, MachineKey: s.Namespace + "/" + s.Spec.MachineRef.Name,
		Live: live, Bootable: bootable, CreatedUnix: s.CreationTimestamp.Unix(),
		AutoSession: s.Labels[bootv1.AutoSessionLabel] == "true", Retiring: isRetiring,
		// Retired (Retire=True Unused) keeps the token through the stop that
		// answers it, not through a failure or a deletion.
		Retired: isRetiring && s.DeletionTimestamp == nil && s.Status.Phase != bootv1.SessionFailed &&
			meta.IsStatusConditionTrue(s.Status.Conditions, bootv1.RetireCondition),
		Boot: ipxe.Session{Name: s.Namespace + "/" + s.Name, Image: s.Spec.ImageRef.Name, InitiatorIQN: s.Status.InitiatorIQN},
	}
	if t := s.Status.Target; t != nil {
		e.Boot.Portal, e.Boot.TargetIQN, e.Boot.LUN = t.Portal, t.IQN, t.LUN
	} else {
		e.Bootable = false
	}
	e.StorageUnreachable = storageUnreachable(s)
	return e
}

// storageUnreachable reports whether the manager found the session's storage
// node unreachable (StorageReachable=False: its Lease expired): its script is
// not handed out, the PC gets a retry instead of logging in to a dead portal.
func storageUnreachable(s *bootv1.BootSession) bool {
	return meta.IsStatusConditionFalse(s.Status.Conditions, bootv1.StorageReachableCondition)
}

// retiring reports whether the manager asked to retire the session
// (RetireAnnotation) or its storage agent retired it (Retire=True): it is not
// handed out. Only an AutoSession session (bootv1.AutoSessionLabel) is ever
// retired: on any other (a user's) the annotation and the condition mean
// nothing, as for the storage agent.
func retiring(s *bootv1.BootSession) bool {
	if s.Labels[bootv1.AutoSessionLabel] != "true" {
		return false
	}
	if _, ok := s.Annotations[bootv1.RetireAnnotation]; ok {
		return true
	}
	return meta.IsStatusConditionTrue(s.Status.Conditions, bootv1.RetireCondition)
}

// secretEntry converts a session's Secret for the table: the key of its
// session and its credentials and token. Only a Secret named
// <session>-chap, as the manager makes it, counts: another Secret carrying
// the label cannot stand in for it.
func secretEntry(s *corev1.Secret) (string, table.Secret, bool) {
	session := s.Labels[bootv1.SessionSecretLabel]
	if session == "" || s.Name != session+"-chap" {
		return "", table.Secret{}, false
	}
	d := s.Data
	return s.Namespace + "/" + session, table.Secret{
		Token: string(d[bootv1.SecretKeyToken]),
		Credentials: ipxe.Credentials{
			Username: string(d[bootv1.SecretKeyUsername]), Password: string(d[bootv1.SecretKeyPassword]),
			TargetUsername: string(d[bootv1.SecretKeyTargetUsername]), TargetPassword: string(d[bootv1.SecretKeyTargetPassword]),
		},
	}, true
}
