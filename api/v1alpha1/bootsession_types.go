package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// BootSessionSpec is the desired state of one boot of one Machine from one
// Image.
// +kubebuilder:validation:XValidation:rule="!has(oldSelf.stopped) || !oldSelf.stopped || (has(self.stopped) && self.stopped)",message="a stopped session cannot be restarted: create a new BootSession"
// +kubebuilder:validation:XValidation:rule="has(self.storageNode) == has(oldSelf.storageNode)",message="storageNode is immutable"
type BootSessionSpec struct {
	// machineRef is the Machine that boots; immutable.
	// +required
	// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="machineRef is immutable: create a new BootSession"
	MachineRef LocalObjectReference `json:"machineRef"`

	// imageRef is the Image it boots; immutable.
	// +required
	// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="imageRef is immutable: create a new BootSession"
	ImageRef LocalObjectReference `json:"imageRef"`

	// writeback says what happens to the machine's writes when the session
	// ends; immutable.
	// +optional
	// +kubebuilder:default=Discard
	// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="writeback is immutable"
	Writeback WritebackPolicy `json:"writeback,omitempty"`

	// storageNode pins the session to one storage node; empty lets the
	// controller choose. Immutable.
	// +optional
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="storageNode is immutable"
	StorageNode string `json:"storageNode,omitempty"`

	// stopped ends the session: the target is removed and, for Discard, the
	// overlay. A stopped session cannot be started again.
	// +optional
	Stopped bool `json:"stopped,omitempty"`

	// ttlSecondsAfterFinished deletes the session this long after it stopped
	// or failed; unset keeps it.
	// +optional
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=31536000
	TTLSecondsAfterFinished *int32 `json:"ttlSecondsAfterFinished,omitempty"`

	// wake asks for the machine to be powered on: once the session is
	// Ready, the boot agent on the machine's network broadcasts a
	// Wake-on-LAN magic packet for its MAC (with the Machine's SecureOn
	// password, spec.wakeOnLAN), stamps timeline.wakeSent, and sends again
	// while no DHCP request of the machine arrives.
	// +optional
	Wake bool `json:"wake,omitempty"`
}

// BootSessionPhase says where a session is.
// +kubebuilder:validation:Enum=Pending;Provisioning;Ready;Booting;Active;Stopping;Stopped;Failed
type BootSessionPhase string

const (
	// SessionPending: waiting for the machine, the image, a storage node, or
	// another session of the same machine to end.
	SessionPending BootSessionPhase = "Pending"
	// SessionProvisioning: a storage node is making the overlay and target.
	SessionProvisioning BootSessionPhase = "Provisioning"
	// SessionReady: the script is rendered; the machine may boot.
	SessionReady BootSessionPhase = "Ready"
	// SessionBooting: the machine fetched its script.
	SessionBooting BootSessionPhase = "Booting"
	// SessionActive: the machine logged in to its iSCSI target.
	SessionActive BootSessionPhase = "Active"
	// SessionStopping: the target and overlay are being removed.
	SessionStopping BootSessionPhase = "Stopping"
	// SessionStopped: everything is cleaned up.
	SessionStopped BootSessionPhase = "Stopped"
	// SessionFailed: the session cannot go on; the conditions say why.
	SessionFailed BootSessionPhase = "Failed"
)

// ISCSITarget is where the machine's disk is.
type ISCSITarget struct {
	// portal is host:port of the iSCSI portal.
	Portal string `json:"portal,omitempty"`
	// iqn is the target's name.
	IQN string `json:"iqn,omitempty"`
	// lun is the logical unit number of the disk.
	LUN int32 `json:"lun,omitempty"`
}

// SessionTimeline records when each step of the session happened.
type SessionTimeline struct {
	Scheduled    *metav1.Time `json:"scheduled,omitempty"`
	StorageReady *metav1.Time `json:"storageReady,omitempty"`
	Ready        *metav1.Time `json:"ready,omitempty"`
	// wakeSent is when a boot agent first sent the machine a Wake-on-LAN
	// magic packet for this session (spec.wake).
	WakeSent     *metav1.Time `json:"wakeSent,omitempty"`
	DHCP         *metav1.Time `json:"dhcp,omitempty"`
	ScriptServed *metav1.Time `json:"scriptServed,omitempty"`
	// iscsiLogin is the machine's first iSCSI login to its target (normally
	// the firmware's); it is never moved by a later login.
	ISCSILogin *metav1.Time `json:"iscsiLogin,omitempty"`
	// iscsiLogout is when the machine's last iSCSI session ended, leaving
	// none: set while no session is logged in (after at least one was),
	// removed by the next login.
	ISCSILogout *metav1.Time `json:"iscsiLogout,omitempty"`
	// logins are the machine's iSCSI sessions to its target, newest last,
	// each stamped when the storage agent saw it (it samples its target
	// about twice a second). A boot normally shows two: the firmware's
	// (iPXE's sanboot), then the OS's own login from the iBFT (a new session,
	// same initiator). The firmware's may end before the OS logs in (UEFI)
	// or linger after it (BIOS). At most 8 rows: the oldest logged-out rows
	// go first.
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=8
	Logins   []SessionLogin `json:"logins,omitempty"`
	Stopping *metav1.Time   `json:"stopping,omitempty"`
	Stopped  *metav1.Time   `json:"stopped,omitempty"`
}

// MaxSessionLogins is how many rows timeline.logins keeps.
const MaxSessionLogins = 8

// SessionLogin is one iSCSI session (login to logout) of the machine to its
// target. It holds no credential.
type SessionLogin struct {
	// at is when the storage agent first saw the session logged in.
	// +required
	At metav1.Time `json:"at"`
	// initiator is the initiator's iSCSI name (the session's InitiatorName).
	// +optional
	// +kubebuilder:validation:MaxLength=223
	Initiator string `json:"initiator,omitempty"`
	// address is the initiator's IP address, as the target saw it.
	// +optional
	// +kubebuilder:validation:MaxLength=64
	Address string `json:"address,omitempty"`
	// sessionID is the target's own id of the session (tgtd's I_T nexus id,
	// LIO's session id): opaque, it tells two sessions of the same initiator
	// apart.
	// +optional
	// +kubebuilder:validation:MaxLength=64
	SessionID string `json:"sessionID,omitempty"`
	// loggedOutAt is when the storage agent saw the session gone; unset
	// while it is logged in.
	// +optional
	LoggedOutAt *metav1.Time `json:"loggedOutAt,omitempty"`
}

// BootSessionStatus is the observed state of a BootSession.
type BootSessionStatus struct {
	// conditions: Ready, Scheduled, StorageReady (set by the storage agent
	// with its own field manager).
	// +optional
	// +listType=map
	// +listMapKey=type
	Conditions []metav1.Condition `json:"conditions,omitempty"`
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`
	// phase says where the session is.
	// +optional
	Phase BootSessionPhase `json:"phase,omitempty"`
	// mac is the machine's MAC, copied for the agents' indexes.
	// +optional
	MAC string `json:"mac,omitempty"`
	// storageNode is the node that serves the disk.
	// +optional
	StorageNode string `json:"storageNode,omitempty"`
	// target is the iSCSI target of the disk.
	// +optional
	Target *ISCSITarget `json:"target,omitempty"`
	// initiatorIQN is the only initiator the target accepts.
	// +optional
	InitiatorIQN string `json:"initiatorIQN,omitempty"`
	// chapSecretRef names the session's Secret (labelled
	// boot.ggnet.io/session), the only place its credentials are kept: keys
	// username, password, targetUsername, targetPassword (mutual CHAP) and
	// token (the script token).
	// +optional
	CHAPSecretRef *LocalObjectReference `json:"chapSecretRef,omitempty"`
	// overlayPath is the overlay file on the storage node.
	// +optional
	OverlayPath string `json:"overlayPath,omitempty"`
	// script is a preview of the session's iPXE script, without the CHAP
	// credentials, which the boot agent adds when it serves it.
	// +optional
	Script string `json:"script,omitempty"`
	// timeline of the session's steps.
	// +optional
	Timeline SessionTimeline `json:"timeline,omitempty"`
}

// The session Secret: one per BootSession, named <session>-chap, in the
// session's namespace, owned by the session and labelled
// SessionSecretLabel=<session name>. Only the manager, the boot agent and the
// storage agent read it; no credential is ever copied into a custom
// resource, an Event, a log line or a command line.
const (
	// SessionSecretLabel marks a session's Secret; its value is the
	// session's name. The manager and the agents cache only Secrets with
	// this label.
	SessionSecretLabel = "boot.ggnet.io/session"
	// SecretKeyUsername is the initiator's CHAP username.
	SecretKeyUsername = "username"
	// SecretKeyPassword is the initiator's CHAP secret: 16 characters of
	// [A-Za-z0-9].
	SecretKeyPassword = "password"
	// SecretKeyTargetUsername is the target's username for mutual CHAP.
	SecretKeyTargetUsername = "targetUsername"
	// SecretKeyTargetPassword is the target's mutual CHAP secret: 16
	// characters of [A-Za-z0-9], different from the password.
	SecretKeyTargetPassword = "targetPassword"
	// SecretKeyToken is the script token in the script's path
	// (boot/<token>/<mac>.ipxe): 32 characters of [a-z2-7].
	SecretKeyToken = "token"
)

// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=bs;bsess,categories=ggnet
// +kubebuilder:selectablefield:JSONPath=`.spec.machineRef.name`
// +kubebuilder:selectablefield:JSONPath=`.spec.imageRef.name`
// +kubebuilder:selectablefield:JSONPath=`.status.phase`
// +kubebuilder:selectablefield:JSONPath=`.status.storageNode`
// +kubebuilder:printcolumn:name="Machine",type=string,JSONPath=`.spec.machineRef.name`
// +kubebuilder:printcolumn:name="Image",type=string,JSONPath=`.spec.imageRef.name`
// +kubebuilder:printcolumn:name="Phase",type=string,JSONPath=`.status.phase`
// +kubebuilder:printcolumn:name="Node",type=string,JSONPath=`.status.storageNode`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
// +kubebuilder:printcolumn:name="Writeback",type=string,JSONPath=`.spec.writeback`,priority=1
// +kubebuilder:printcolumn:name="Target",type=string,JSONPath=`.status.target.iqn`,priority=1
// +kubebuilder:printcolumn:name="Initiator",type=string,JSONPath=`.status.initiatorIQN`,priority=1
// +kubebuilder:printcolumn:name="Reason",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].reason`,priority=1

// BootSession is one boot of one Machine from one Image.
type BootSession struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// +required
	Spec   BootSessionSpec   `json:"spec"`
	Status BootSessionStatus `json:"status,omitempty"`
}

// +kubebuilder:object:root=true

// BootSessionList is a list of BootSessions.
type BootSessionList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []BootSession `json:"items"`
}

func init() {
	SchemeBuilder.Register(&BootSession{}, &BootSessionList{})
}
