package agent

import (
	"net"

	bootv1 "github.com/ggnet/ggnet/api/v1alpha1"
	"github.com/ggnet/ggnet/bootagent/dhcp"
	"github.com/ggnet/ggnet/bootagent/table"
)

// machineEntry converts a Machine for the table. The API server validated the
// formats; anything that still does not parse is left out rather than served.
func machineEntry(m *bootv1.Machine) (table.Machine, bool) {
	mac, err := net.ParseMAC(m.Spec.MAC)
	if err != nil || len(mac) != 6 {
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
		Key: m.Namespace + "/" + m.Name, Namespace: m.Namespace, Name: m.Name,
		Reservation: r, Policy: policy, HasImage: m.Spec.ImageRef != nil,
		Discovered: m.Labels[bootv1.DiscoveredLabel] == "true", CreatedUnix: m.CreationTimestamp.Unix(),
	}, true
}

// conflicted is true when the Machine controller found another Machine with
// the same MAC or address: the agent then hands out no address for it rather
// than two machines the same one.
func conflicted(m *bootv1.Machine) bool {
	for _, c := range m.Status.Conditions {
		if c.Type == bootv1.ConflictCondition && c.Status == "True" {
			return true
		}
	}
	return false
}

// sessionEntry converts a BootSession for the table.
func sessionEntry(s *bootv1.BootSession) table.Session {
	bootable := !s.Spec.Stopped && s.DeletionTimestamp == nil
	switch s.Status.Phase {
	case bootv1.SessionReady, bootv1.SessionBooting, bootv1.SessionActive:
	default:
		bootable = false
	}
	return table.Session{
		Key: s.Namespace + "/" + s.Name, MAC: s.Status.MAC, Script: s.Status.Script,
		Bootable: bootable, CreatedUnix: s.CreationTimestamp.Unix(),
	}
}
