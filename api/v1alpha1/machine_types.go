package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Firmware is the client PC's firmware type; Auto follows the client's DHCP
// option 93.
// +kubebuilder:validation:Enum=Auto;BIOS;UEFI
type Firmware string

const (
	FirmwareAuto Firmware = "Auto"
	FirmwareBIOS Firmware = "BIOS"
	FirmwareUEFI Firmware = "UEFI"
)

// BootPolicy says what a Machine does when it network-boots.
// +kubebuilder:validation:Enum=Manual;AutoSession;LocalBoot
type BootPolicy string

const (
	// BootPolicyManual boots only into BootSessions someone created; with none
	// the machine gets the fallback script.
	BootPolicyManual BootPolicy = "Manual"
	// BootPolicyAutoSession creates a BootSession of the default image when the
	// machine network-boots without one.
	BootPolicyAutoSession BootPolicy = "AutoSession"
	// BootPolicyLocalBoot sends the machine to its local disk.
	BootPolicyLocalBoot BootPolicy = "LocalBoot"
)

// IPv4Reservation is a fixed address handed out by the agent's DHCP server in
// reservation mode.
// +kubebuilder:validation:XValidation:rule="!has(self.gateway) || self.gateway != self.address",message="gateway must differ from the reserved address"
type IPv4Reservation struct {
	// address is the machine's IPv4 address, for example 10.20.0.31.
	// +required
	// +kubebuilder:validation:MaxLength=15
	// +kubebuilder:validation:XValidation:rule="isIP(self) && ip(self).family() == 4",message="address must be an IPv4 address such as 10.20.0.31"
	Address string `json:"address"`

	// prefixLength is the subnet's prefix length, 1 to 32 (24 for a /24).
	// +required
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=32
	PrefixLength int32 `json:"prefixLength"`

	// gateway is the default router handed to the machine.
	// +optional
	// +kubebuilder:validation:MaxLength=15
	// +kubebuilder:validation:XValidation:rule="isIP(self) && ip(self).family() == 4",message="gateway must be an IPv4 address such as 10.20.0.1"
	Gateway string `json:"gateway,omitempty"`

	// dns lists up to four DNS server addresses.
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=4
	// +kubebuilder:validation:items:MaxLength=15
	// +kubebuilder:validation:XValidation:rule="self.all(a, isIP(a) && ip(a).family() == 4)",message="every dns entry must be an IPv4 address such as 10.20.0.1"
	DNS []string `json:"dns,omitempty"`
}

// MachineSpec is the desired state of one client PC.
//
// mac and ipv4.address are claims: when two Machines claim the same one the
// older Machine keeps it. Were they mutable, the
// admin of one namespace could edit an old Machine to a victim's MAC and boot
// the victim's PC into their image, or take its address. So neither can be
// set or changed after creation (the rules below also refuse adding one the
// Machine was created without); a reservation can be removed.
// +kubebuilder:validation:XValidation:rule="!has(self.mac) || has(oldSelf.mac) && self.mac == oldSelf.mac",message="mac is immutable: a new NIC is a new Machine — create one",fieldPath=".mac",reason=FieldValueForbidden
// +kubebuilder:validation:XValidation:rule="!has(self.ipv4) || has(oldSelf.ipv4) && self.ipv4.address == oldSelf.ipv4.address",message="ipv4.address is immutable: it cannot be added or changed after creation (the older Machine wins an address) — create a new Machine; removing the reservation is allowed",fieldPath=".ipv4.address",reason=FieldValueForbidden
// +kubebuilder:validation:XValidation:rule="!has(oldSelf.persistentDisks) || !has(oldSelf.persistentDisks.resetGeneration) || has(self.persistentDisks) && has(self.persistentDisks.resetGeneration) && self.persistentDisks.resetGeneration >= oldSelf.persistentDisks.resetGeneration",message="persistentDisks.resetGeneration may only grow: raise it by one to reset the machine's persistent disks",fieldPath=".persistentDisks.resetGeneration",reason=FieldValueForbidden
type MachineSpec struct {
	// mac is the boot NIC's MAC address: lowercase, colon-separated, like
	// 52:54:00:12:34:56. Immutable: a new NIC is a new Machine.
	// +required
	// +kubebuilder:validation:MaxLength=17
	// +kubebuilder:validation:XValidation:rule="self.matches('^([0-9a-f]{2}:){5}[0-9a-f]{2}$')",message="mac must be six lowercase hex pairs separated by colons, like 52:54:00:12:34:56"
	MAC string `json:"mac"`

	// ipv4 is the address reserved for this machine. Leave it out when another
	// DHCP server hands out addresses (proxyDHCP). Its address is immutable
	// and cannot be added after creation; the reservation can be removed.
	// +optional
	IPv4 *IPv4Reservation `json:"ipv4,omitempty"`

	// hostname is handed to the machine in DHCP option 12.
	// +optional
	// +kubebuilder:validation:MaxLength=63
	// +kubebuilder:validation:XValidation:rule="self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')",message="hostname must be a DNS label: lowercase letters, digits and '-', starting and ending with a letter or digit"
	Hostname string `json:"hostname,omitempty"`

	// firmware overrides the firmware type the client announces.
	// +optional
	// +kubebuilder:default=Auto
	Firmware Firmware `json:"firmware,omitempty"`

	// imageRef is the Image booted by AutoSession sessions and by `kubectl
	// ggnet start`; when imageFamily is set too, imageRef pins the machine to
	// that version (rolling back is pinning the previous one).
	// +optional
	ImageRef *LocalObjectReference `json:"imageRef,omitempty"`

	// imageFamily makes the machine follow its family's latest version: the
	// Ready Image with the FamilyLabel of this value and the highest
	// status.version, unless imageRef pins one. status.image says which.
	// +optional
	// +kubebuilder:validation:MaxLength=63
	// +kubebuilder:validation:XValidation:rule="self.matches('^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$')",message="imageFamily must be a label value: at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit"
	ImageFamily string `json:"imageFamily,omitempty"`

	// bootPolicy says what happens when the machine network-boots.
	// +optional
	// +kubebuilder:default=Manual
	BootPolicy BootPolicy `json:"bootPolicy,omitempty"`

	// writeback is the writeback policy of sessions made by AutoSession.
	// +optional
	// +kubebuilder:default=Discard
	Writeback WritebackPolicy `json:"writeback,omitempty"`

	// persistentDisks is the lifecycle of the machine's persistent disks: the
	// overlays its Persist sessions keep, one per (image, storage node).
	// +optional
	PersistentDisks *PersistentDiskPolicy `json:"persistentDisks,omitempty"`

	// wakeOnLAN is how the machine is woken when a session asks for it
	// (BootSession spec.wake); the magic packet needs nothing of it.
	// +optional
	WakeOnLAN *WakeOnLAN `json:"wakeOnLAN,omitempty"`
}

// WakeOnLAN is how a Machine is woken.
type WakeOnLAN struct {
	// secureOnSecretRef names a Secret in the Machine's namespace, of type
	// boot.ggnet.io/secureon (SecureOnSecretType), whose key "password" is
	// the NIC's SecureOn password: six bytes written aa:bb:cc:dd:ee:ff,
	// appended to every magic packet. A Secret of any other type is refused:
	// the boot agent, which may read Secrets, must not broadcast one that
	// was never meant for the wire. The boot agent reads it only to send; it
	// never writes it to a CR, Event or log.
	// +optional
	SecureOnSecretRef *LocalObjectReference `json:"secureOnSecretRef,omitempty"`
}

// PersistentDiskDeletePolicy says what happens to a Machine's persistent
// disks when the Machine is deleted.
// +kubebuilder:validation:Enum=Retain;Delete
type PersistentDiskDeletePolicy string

const (
	// PersistentDiskRetain keeps the disks on their storage nodes; they are
	// reported as orphans (the storage Node's
	// OrphanedPersistentDisksCondition and the
	// ggnet_storage_orphaned_persistent_disks metric) until an operator
	// removes the files.
	PersistentDiskRetain PersistentDiskDeletePolicy = "Retain"
	// PersistentDiskDelete deletes the disks once no session of the Machine
	// uses them; each storage node holding some keeps NodeFinalizer(node) on
	// the Machine until its disks are gone.
	PersistentDiskDelete PersistentDiskDeletePolicy = "Delete"
)

// PersistentDiskPolicy is the lifecycle of a Machine's persistent disks.
type PersistentDiskPolicy struct {
	// onDelete says what happens to the disks when the Machine is deleted:
	// Retain (the default) keeps them, Delete removes them once no session
	// of the Machine uses them.
	// +optional
	// +kubebuilder:default=Retain
	OnDelete PersistentDiskDeletePolicy `json:"onDelete,omitempty"`

	// resetGeneration resets the machine's persistent disks when raised: a
	// disk made at a lower generation is deleted as soon as no session uses
	// it (a running session keeps its disk; the disk's state says
	// ResetPending), and the next Persist session starts from a fresh clone
	// of its image. It applies to every image and every storage node. It may
	// only grow.
	// +optional
	// +kubebuilder:validation:Minimum=0
	ResetGeneration int64 `json:"resetGeneration,omitempty"`
}

// OnDeleteOrDefault is onDelete, Retain when unset.
func (p *PersistentDiskPolicy) OnDeleteOrDefault() PersistentDiskDeletePolicy {
	if p == nil || p.OnDelete == "" {
		return PersistentDiskRetain
	}
	return p.OnDelete
}

// ResetGenerationOrZero is resetGeneration, 0 when unset.
func (p *PersistentDiskPolicy) ResetGenerationOrZero() int64 {
	if p == nil {
		return 0
	}
	return p.ResetGeneration
}

// PersistentDiskState is what a persistent disk is doing.
// +kubebuilder:validation:Enum=Available;InUse;ResetPending;DeletePending;Orphaned
type PersistentDiskState string

const (
	// PersistentDiskAvailable: no session uses the disk; the machine's next
	// Persist session of the image on this node continues from it.
	PersistentDiskAvailable PersistentDiskState = "Available"
	// PersistentDiskInUse: a session of the machine uses the disk.
	PersistentDiskInUse PersistentDiskState = "InUse"
	// PersistentDiskResetPending: resetGeneration was raised while a
	// session uses the disk; it is deleted when that session ends.
	PersistentDiskResetPending PersistentDiskState = "ResetPending"
	// PersistentDiskDeletePending: the Machine is being deleted with
	// onDelete: Delete while a session uses the disk; it is deleted when
	// that session ends.
	PersistentDiskDeletePending PersistentDiskState = "DeletePending"
	// PersistentDiskOrphaned: the disk's Image (by UID) no longer exists. A
	// new Image of the same name gets a new disk; this one is kept until an
	// operator removes it (or resets the machine's disks).
	PersistentDiskOrphaned PersistentDiskState = "Orphaned"
)

// PersistentDisk is one persistent disk of the machine on one storage node,
// reported by that node's storage agent with its own field manager
// (ggnet-storage-<node>).
type PersistentDisk struct {
	// node is the storage node that holds the disk.
	// +required
	// +kubebuilder:validation:MaxLength=253
	Node string `json:"node"`
	// image is the name of the Image the disk was cloned from (empty when
	// the agent no longer knows it).
	// +optional
	// +kubebuilder:validation:MaxLength=253
	Image string `json:"image,omitempty"`
	// imageUID is the UID of that Image: a disk is never used with another
	// Image, even one recreated with the same name.
	// +required
	// +kubebuilder:validation:MaxLength=64
	ImageUID string `json:"imageUID"`
	// path of the disk file on the node.
	// +optional
	// +kubebuilder:validation:MaxLength=4096
	Path string `json:"path,omitempty"`
	// sizeBytes is the disk's size as the PC sees it (the file's length;
	// blocks shared with the image are not counted apart).
	// +optional
	SizeBytes int64 `json:"sizeBytes,omitempty"`
	// generation is the spec.persistentDisks.resetGeneration the disk was
	// made at.
	// +optional
	Generation int64 `json:"generation,omitempty"`
	// lastUsed is when a session last started or stopped using the disk.
	// +optional
	LastUsed *metav1.Time `json:"lastUsed,omitempty"`
	// state of the disk.
	// +optional
	State PersistentDiskState `json:"state,omitempty"`
}

// DHCPReservation is what the agent's DHCP server hands this machine, as
// rendered by the Machine controller.
type DHCPReservation struct {
	MAC          string   `json:"mac"`
	Address      string   `json:"address,omitempty"`
	PrefixLength int32    `json:"prefixLength,omitempty"`
	Gateway      string   `json:"gateway,omitempty"`
	DNS          []string `json:"dns,omitempty"`
	Hostname     string   `json:"hostname,omitempty"`
}

// BootTimeline is when each step of one boot happened.
type BootTimeline struct {
	// session is the BootSession of this boot.
	Session string `json:"session,omitempty"`
	// created is when the session was created.
	Created *metav1.Time `json:"created,omitempty"`
	// ready is when the session became Ready.
	Ready *metav1.Time `json:"ready,omitempty"`
	// dhcp is when the agent last answered the machine's DHCP request.
	DHCP *metav1.Time `json:"dhcp,omitempty"`
	// scriptServed is when the agent served the session's iPXE script.
	ScriptServed *metav1.Time `json:"scriptServed,omitempty"`
	// iscsiLogin is when the machine logged in to its iSCSI target.
	ISCSILogin *metav1.Time `json:"iscsiLogin,omitempty"`
	// stopped is when the session stopped.
	Stopped *metav1.Time `json:"stopped,omitempty"`
}

// MachineStatus is the observed state of a Machine.
type MachineStatus struct {
	// conditions: Ready, and Conflict (negative polarity) when another Machine
	// claims the same MAC or IPv4 address.
	// +optional
	// +listType=map
	// +listMapKey=type
	Conditions []metav1.Condition `json:"conditions,omitempty"`

	// observedGeneration is the generation the last completed reconcile saw.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`

	// reservation is the DHCP reservation the agents serve.
	// +optional
	Reservation *DHCPReservation `json:"reservation,omitempty"`

	// image is the Image the machine boots when a session is made for it
	// (AutoSession, `kubectl ggnet start`): spec.imageRef, or else the latest
	// Ready version of spec.imageFamily. Empty when neither gives one.
	// +optional
	Image string `json:"image,omitempty"`

	// activeSession names the BootSession the machine boots into now.
	// +optional
	ActiveSession string `json:"activeSession,omitempty"`

	// lastBoot is the timeline of the most recent boot.
	// +optional
	LastBoot *BootTimeline `json:"lastBoot,omitempty"`

	// persistentDisks lists the machine's persistent disks, one per storage
	// node and Image; each storage agent applies its node's entries with its
	// own field manager.
	// +optional
	// +listType=map
	// +listMapKey=node
	// +listMapKey=imageUID
	// +kubebuilder:validation:MaxItems=256
	PersistentDisks []PersistentDisk `json:"persistentDisks,omitempty"`
}

// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=mach,categories=ggnet
// +kubebuilder:printcolumn:name="MAC",type=string,JSONPath=`.spec.mac`
// +kubebuilder:printcolumn:name="IP",type=string,JSONPath=`.spec.ipv4.address`
// +kubebuilder:printcolumn:name="Image",type=string,JSONPath=`.status.image`
// +kubebuilder:printcolumn:name="Session",type=string,JSONPath=`.status.activeSession`
// +kubebuilder:printcolumn:name="Ready",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].status`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
// +kubebuilder:printcolumn:name="Family",type=string,JSONPath=`.spec.imageFamily`,priority=1
// +kubebuilder:printcolumn:name="Pinned",type=string,JSONPath=`.spec.imageRef.name`,priority=1
// +kubebuilder:printcolumn:name="Policy",type=string,JSONPath=`.spec.bootPolicy`,priority=1
// +kubebuilder:printcolumn:name="Hostname",type=string,JSONPath=`.spec.hostname`,priority=1
// +kubebuilder:printcolumn:name="Firmware",type=string,JSONPath=`.spec.firmware`,priority=1
// +kubebuilder:printcolumn:name="Reason",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].reason`,priority=1

// Machine is one diskless client PC.
type Machine struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// +required
	Spec   MachineSpec   `json:"spec"`
	Status MachineStatus `json:"status,omitempty"`
}

// +kubebuilder:object:root=true

// MachineList is a list of Machines.
type MachineList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []Machine `json:"items"`
}

func init() {
	SchemeBuilder.Register(&Machine{}, &MachineList{})
}
