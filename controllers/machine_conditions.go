package controllers

import (
	"fmt"
	"time"

	bootv1 "github.com/ggnet/ggnet/api/v1alpha1"
)

// The Machine's conditions, as pure setters: Ready here, Conflict in
// conflict.go (setConflictCondition, from the other Machines' claims). Each
// reports whether the condition's status or reason changed.

// setMachineReady sets Ready from the reservation and the conflict:
// Ready=False with the Conflict reason while in conflict, False
// InvalidReservation when the gateway is outside the subnet, False
// NoReadyImageInFamily when the machine follows a family (and pins no
// Image) that has no Ready version (status.image empty), else True.
func setMachineReady(m *bootv1.Machine, conflictReason, conflict string) bool {
	switch {
	case conflict != "":
		return setCondition(&m.Status.Conditions, m.Generation, bootv1.ReadyCondition, false, conflictReason, conflict)
	case m.Spec.IPv4 != nil && !gatewayInSubnet(m.Spec.IPv4):
		return setCondition(&m.Status.Conditions, m.Generation, bootv1.ReadyCondition, false, bootv1.InvalidReservationReason,
			fmt.Sprintf("gateway %s is outside %s/%d", m.Spec.IPv4.Gateway, m.Spec.IPv4.Address, m.Spec.IPv4.PrefixLength))
	case m.Spec.ImageRef == nil && m.Spec.ImageFamily != "" && m.Status.Image == "":
		return setCondition(&m.Status.Conditions, m.Generation, bootv1.ReadyCondition, false, bootv1.NoReadyImageInFamilyReason,
			fmt.Sprintf("image family %s has no Ready version yet", m.Spec.ImageFamily))
	default:
		return setCondition(&m.Status.Conditions, m.Generation, bootv1.ReadyCondition, true, bootv1.SucceededReason, "the reservation is served")
	}
}

// setMachineInUse says that the Machine's deletion waits for sessions:
// Ready=False InUse with msg.
func setMachineInUse(m *bootv1.Machine, msg string) bool {
	return setCondition(&m.Status.Conditions, m.Generation, bootv1.ReadyCondition, false, bootv1.InUseReason, msg)
}

// setMachineReservation renders status.reservation from the spec.
func setMachineReservation(m *bootv1.Machine) {
	m.Status.Reservation = &bootv1.DHCPReservation{MAC: m.Spec.MAC, Hostname: m.Spec.Hostname}
	if ip := m.Spec.IPv4; ip != nil {
		m.Status.Reservation.Address, m.Status.Reservation.PrefixLength = ip.Address, ip.PrefixLength
		m.Status.Reservation.Gateway, m.Status.Reservation.DNS = ip.Gateway, ip.DNS
	}
}

// setMachineSessions fills activeSession and lastBoot from the machine's
// sessions. A retiring session whose answer is overdue (retireOverdue, after
// retireTimeout at now) is not the active one: it no longer holds the
// machine.
func setMachineSessions(m *bootv1.Machine, sessions []bootv1.BootSession, now time.Time, retireTimeout time.Duration) {
	m.Status.ActiveSession = ""
	var newest *bootv1.BootSession
	var active *bootv1.BootSession
	for i := range sessions {
		s := &sessions[i]
		if _, overdue := retireOverdue(s, now, retireTimeout); holdsMachine(s) && !overdue && s.Status.StorageNode != "" && (active == nil || olderFirst(s, active)) {
			active = s
		}
		if newest == nil || olderFirst(newest, s) {
			newest = s
		}
	}
	if active != nil {
		m.Status.ActiveSession = active.Name
	}
	if newest != nil {
		t := newest.Status.Timeline
		created := newest.CreationTimestamp
		m.Status.LastBoot = &bootv1.BootTimeline{Session: newest.Name, Created: &created, Ready: t.Ready, DHCP: t.DHCP,
			ScriptServed: t.ScriptServed, ISCSILogin: t.ISCSILogin, Stopped: t.Stopped}
	}
}
