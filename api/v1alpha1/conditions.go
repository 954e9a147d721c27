package v1alpha1

import (
	"crypto/sha256"
	"encoding/hex"
	"strings"
)

// Every condition type and reason of the three kinds, and every Event reason,
// by kind and writer. An Event that goes with a condition has the
// condition's reason; the Events that go with none have their own reasons
// below. All conditions are of positive polarity unless their comment says
// otherwise. The reason strings are API: the agents, kubectl plugins and
// alerts match them.

// Shared by every kind.
const (
	// ReadyCondition is True when the object is fully usable: a Machine has a
	// valid reservation, an Image has at least one Ready replica, a
	// BootSession can be booted.
	ReadyCondition = "Ready"

	// SucceededReason: Ready=True, Scheduled=True. A session's happy path
	// (scheduled, Ready, stopping, stopped) records no Event: its
	// conditions and timeline say it, and at a thousand sessions those
	// Events were a fifth of all API writes. Warnings are always recorded.
	SucceededReason = "Succeeded"
	// ProgressingReason is used while an operation is under way (an Image
	// replica being placed).
	ProgressingReason = "Progressing"
	// InUseReason: Ready=False on a Machine or an Image being deleted while
	// sessions use it (with a Warning Event when the wait starts).
	InUseReason = "InUse"
)

// BootSession conditions: Ready and Scheduled (the manager), StorageReady
// (the storage agent), BootFailed (the boot agent).
const (
	// ScheduledCondition is True once a storage node is chosen.
	ScheduledCondition = "Scheduled"
	// StorageReadyCondition is set by the storage agent: True once the overlay,
	// target, ACL and CHAP exist.
	StorageReadyCondition = "StorageReady"
	// BootFailedCondition (negative polarity) is set True by the boot agent
	// when the machine's iPXE reported that it could not sanboot the target
	// (wrong credentials, unreachable portal); the message has iPXE's error.
	BootFailedCondition = "BootFailed"
	// StorageReachableCondition is set by the manager on a scheduled
	// session from its storage node's liveness (the storage agent renews a
	// Lease, StorageLeaseName): False, reason StorageNodeUnreachableReason,
	// once the Lease expired (the session is not failed: the disk may come
	// back; the grace counts from the expiry); True, reason
	// StorageNodeReachableReason, while it is renewed. Absent while the node
	// has no Lease (an older agent).
	StorageReachableCondition = "StorageReachable"
	// RetireCondition is the storage agent's answer to RetireAnnotation:
	// True, reason RetireUnusedReason, when the initiator was unbound and
	// no PC ever logged in (the manager may stop the session); False, reason
	// InUseReason, when a PC logged in (the session is kept and the
	// initiator bound again).
	RetireCondition = "Retire"
)

// Storage node liveness: each storage agent holds a coordination.k8s.io
// Lease named StorageLeaseName(node) in the namespace it watches, renewed
// every StorageLeaseRenew with spec.leaseDurationSeconds
// StorageLeaseDurationSeconds and spec.holderIdentity the node's name.
const (
	StorageLeasePrefix          = "ggnet-storage-"
	StorageLeaseDurationSeconds = 40
	StorageLeaseRenewSeconds    = 10
)

// StorageLeaseLabel ("true") is on every storage agent's Lease: the
// manager caches only Leases with it (not the kubelets' Leases of every
// node, renewed every 10 s each).
const StorageLeaseLabel = "boot.ggnet.io/storage-lease"

// StorageLeaseName is the name of node's storage agent's Lease:
// StorageLeasePrefix and the node's name. A Lease's name is at most 253
// characters, a Node's too: a name that would be longer is cut and ends in
// a hash of the whole node name, so that it stays one node's (the manager
// finds a node's Lease by spec.holderIdentity, the whole name).
func StorageLeaseName(node string) string {
	const maxLen = 253
	if len(StorageLeasePrefix)+len(node) <= maxLen {
		return StorageLeasePrefix + node
	}
	sum := sha256.Sum256([]byte(node))
	h := hex.EncodeToString(sum[:])[:16]
	cut := strings.TrimRight(node[:maxLen-len(StorageLeasePrefix)-1-len(h)], ".-")
	return StorageLeasePrefix + cut + "-" + h
}

// BootSession reasons.
const (
	// SANBootFailedReason: BootFailed=True (the boot agent).
	SANBootFailedReason = "SANBootFailed"
	// StorageNodeUnreachableReason: StorageReachable=False, the storage
	// node's Lease expired (see StorageReachableCondition).
	StorageNodeUnreachableReason = "StorageNodeUnreachable"
	// StorageNodeReachableReason: StorageReachable=True.
	StorageNodeReachableReason = "StorageNodeReachable"
	// RetireUnusedReason: Retire=True (see RetireCondition).
	RetireUnusedReason = "Unused"

	// MachineNotFoundReason: Ready=False, the session's Machine does not
	// exist.
	MachineNotFoundReason = "MachineNotFound"
	// ImageNotFoundReason: Ready=False, the session's Image does not exist
	// (a scheduled session goes on, with a note).
	ImageNotFoundReason = "ImageNotFound"
	// ImageNotReadyReason: Ready=False, the Image has no Ready replica.
	ImageNotReadyReason = "ImageNotReady"
	// MachineBusyReason: Ready=False, an older session of the Machine holds
	// it; the message names it.
	MachineBusyReason = "MachineBusy"
	// NoStorageNodeReason: Ready=False and Scheduled=False, no storage node
	// can take the session.
	NoStorageNodeReason = "NoStorageNode"
	// StorageNodeLostReason: phase Failed, the session's storage node has
	// been gone longer than the manager's --storage-node-grace.
	StorageNodeLostReason = "StorageNodeLost"
	// WaitingForStorageReason: Ready=False while the storage agent makes the
	// overlay and the target (no Event: it is the expected step).
	WaitingForStorageReason = "WaitingForStorage"
	// StorageFailedReason: StorageReady=False from the storage agent, and the
	// manager's Ready=False and phase Failed when the storage was never
	// ready.
	StorageFailedReason = "StorageFailed"
	// SecretConflictReason: Ready=False, the session's Secret name
	// (<session>-chap) is taken by a Secret no session owns; GGnet never
	// adopts it.
	SecretConflictReason = "SecretConflict"
	// StoppingReason: Ready=False while the storage agent tears a stopped or
	// deleted session's target down.
	StoppingReason = "Stopping"
	// StoppedReason: Ready=False, phase Stopped.
	StoppedReason = "Stopped"
	// ScriptInvalidReason: Ready=False, the boot script cannot be rendered;
	// phase Failed, unless the storage was ready once (the disk is kept).
	ScriptInvalidReason = "ScriptInvalid"
	// MachineConflictReason: the session's Machine has Conflict=True (another
	// Machine in the cluster has its MAC or address); the session is not
	// scheduled. A session already Ready stays, but the boot agent does not
	// serve it.
	MachineConflictReason = "MachineConflict"

	// MachineDeletingReason: the session's Machine is being deleted. A
	// session not yet scheduled waits (Ready=False) and is never scheduled
	// while the deletion lasts; a scheduled one goes on (Ready stays True and
	// its message says so), and the Machine's deletion waits for it
	// (MachineFinalizer). Also the reason of the Normal Event on a scheduled
	// session when its Machine's deletion starts.
	MachineDeletingReason = "MachineDeleting"
	// ImageDeletingReason: the session's Image is being deleted; as
	// MachineDeletingReason, with ImageFinalizer.
	ImageDeletingReason = "ImageDeleting"
	// StorageNodeGoneReason is the reason of the Warning Events the manager
	// records on sessions, Images and Machines whose storage node's Node
	// object is gone: when it first sees it missing (naming when it will
	// release the node's finalizer on the object) and when, after the
	// manager's --storage-node-grace, it releases that finalizer (the files
	// the object had on that node, if the node's disk comes back, are then no
	// longer tracked). A session on a node gone longer than the grace fails
	// with StorageNodeLostReason.
	StorageNodeGoneReason = "StorageNodeGone"

	// PersistentDiskUnavailableReason: a Persist session waits because the
	// Machine's persistent disk for its Image is on a storage node that
	// cannot serve it now (gone, or without a Ready replica of the Image).
	// The session is not started on another node from a fresh disk: the
	// machine's writes are on that disk. Raising the Machine's
	// spec.persistentDisks.resetGeneration lets it start afresh anywhere.
	PersistentDiskUnavailableReason = "PersistentDiskUnavailable"

	// TargetUnavailableReason: StorageReady=False while the storage agent
	// cannot drive its iSCSI target (the target daemon restarting, a failed
	// request). The agent retries with backoff and the overlay is kept; a
	// session that was StorageReady once stays Ready (a running PC's disk is
	// sacred) and StorageReady returns to True when the target is back.
	TargetUnavailableReason = "TargetUnavailable"
)

// BootSession Events that go with no condition (the manager).
const (
	// SecretUpgradedReason: Normal Event when the manager added keys to a
	// session Secret made by an older manager.
	SecretUpgradedReason = "SecretUpgraded"
	// ExpiredReason: Normal Event when the manager deletes a finished
	// session whose ttlSecondsAfterFinished passed.
	ExpiredReason = "Expired"
)

// Machine conditions and reasons.
const (
	// ConflictCondition (negative polarity) is True when another Machine in
	// the cluster (any namespace) has the same MAC or reserved IPv4 address;
	// the older Machine keeps them, the newer one has Conflict=True and no
	// session of it is scheduled or served. A Warning Event with the same
	// reason goes with each new conflict.
	ConflictCondition = "Conflict"
	// DuplicateMACReason: Conflict=True (and Ready=False), another Machine
	// has the same MAC.
	DuplicateMACReason = "DuplicateMAC"
	// DuplicateIPReason: Conflict=True (and Ready=False), another Machine
	// reserves the same address.
	DuplicateIPReason = "DuplicateIP"
	// NoConflictReason: Conflict=False, the MAC and address are unique.
	NoConflictReason = "NoConflict"
	// InvalidReservationReason: Ready=False, the reservation cannot be
	// served (its gateway is outside its subnet).
	InvalidReservationReason = "InvalidReservation"
)

// Machine Events that go with no condition.
const (
	// ScriptForbiddenReason is the reason of the Event the boot agent records
	// on a Machine when it refused a script request for its MAC (wrong or
	// missing token, or a requester not bound to the MAC).
	ScriptForbiddenReason = "ScriptForbidden"
	// DiscoveredReplacedReason: Normal Event on a Machine when the manager
	// deletes the discovered placeholder that had its MAC.
	DiscoveredReplacedReason = "DiscoveredReplaced"
	// AutoSessionReason: Normal Event on an AutoSession Machine when the
	// manager created a session for it.
	AutoSessionReason = "AutoSession"
	// RetireTimedOutReason: Warning Event on an AutoSession Machine when
	// the storage agent did not answer the retire of its prepared session
	// within the manager's --retire-timeout, and the next session was
	// prepared without waiting for it.
	RetireTimedOutReason = "RetireTimedOut"
)

// Image conditions and reasons (Ready; InUse above).
const (
	// NoReadyReplicaReason: Ready=False, no storage node holds a Ready
	// replica yet.
	NoReadyReplicaReason = "NoReadyReplica"
	// SessionNotStoppedReason: a writeback Image's replica waits for its
	// source session to stop.
	SessionNotStoppedReason = "SessionNotStopped"
	// InvalidCaptureSourceReason: a writeback Image's source session cannot
	// be captured (not found, not Persist, or its disk is gone).
	InvalidCaptureSourceReason = "InvalidCaptureSource"
	// NoSourceReplicaReason: a replica that is replicated from another
	// storage node waits for one to have a Ready replica.
	NoSourceReplicaReason = "NoSourceReplica"
	// RetentionReason: the manager deleted an old version of a family that
	// nothing used (an Event on the Image).
	RetentionReason = "Retention"
	// NoReadyImageInFamilyReason: a Machine follows a family that has no
	// Ready version yet.
	NoReadyImageInFamilyReason = "NoReadyImageInFamily"
	// ReplicaFailedReason: Ready=False, every replica failed.
	ReplicaFailedReason = "ReplicaFailed"
)

// Reasons of a Failed replica (status.replicas[].reason), reported by the
// storage agent of the replica's node.
const (
	// ChecksumMismatchReason: the source's sha256 is not the Image's.
	ChecksumMismatchReason = "ChecksumMismatch"
	// SourceUnreachableReason: the download failed (refused, HTTP error,
	// timeouts, a stalled transfer) after its retries.
	SourceUnreachableReason = "SourceUnreachable"
	// UnsupportedFormatReason: the format or the source kind is not one
	// this agent places.
	UnsupportedFormatReason = "UnsupportedFormat"
	// DiskFullReason: placing the replica would cut into the free space
	// reserved for running sessions (or the file system is full).
	DiskFullReason = "DiskFull"
	// SourceMissingReason: the path source does not exist on the node.
	SourceMissingReason = "SourceMissing"
	// ConvertFailedReason: qemu-img could not read or convert the source.
	ConvertFailedReason = "ConvertFailed"
	// PathNotAllowedReason: a path source outside the agent's image path
	// root, one that leads out of it, not a regular file, or path sources
	// off on the node.
	PathNotAllowedReason = "PathNotAllowed"
	// UnsafeImageReason: the source refers to other files (a backing file,
	// an external data file, VMDK extents) or its header could not be
	// checked.
	UnsafeImageReason = "UnsafeImage"
	// TooLargeReason: the virtual size or the download is over the Image's
	// maxVirtualSize.
	TooLargeReason = "TooLarge"
	// StorageErrorReason: the node's data directory failed (an I/O or
	// permission error); retried.
	StorageErrorReason = "StorageError"
)

// Reasons the storage agent gives: of its StorageReady condition on
// BootSessions, of its Events on BootSessions, Machines and Nodes, and of its
// condition on storage Nodes. An Event's reason equals the condition reason
// it goes with.
const (
	// OverlayLostReason: StorageReady=False (and a Warning Event) when the
	// overlay file of a session that was StorageReady is gone from the
	// storage node. The agent never makes a fresh one in its place (the PC
	// would find another disk under it) and leaves the target alone (the
	// target daemon may still hold the deleted file open and the PC may be
	// running on it); only the session's stop ends it.
	OverlayLostReason = "OverlayLost"

	// PersistentDiskInUseReason: StorageReady=False while the Persist disk a
	// new session wants is still used by another session (or target) on the
	// node; a persistent disk is never served to two sessions. (A new Persist
	// session of a Machine being deleted that has no disk on the node gets
	// StorageReady=False MachineDeletingReason: no disk is made for a Machine
	// on its way out.)
	PersistentDiskInUseReason = "PersistentDiskInUse"

	// PersistentDiskCreatedReason: Event on a Machine when its persistent
	// disk for an Image is made (a fresh clone of the Image).
	PersistentDiskCreatedReason = "PersistentDiskCreated"
	// PersistentDiskAdoptedReason: Event on a Machine when a disk of the old
	// layout (persist-<machine>-<image>.raw) was moved into the UID-keyed
	// layout as its disk.
	PersistentDiskAdoptedReason = "PersistentDiskAdopted"
	// PersistentDiskResetPendingReason: Event on a Machine when
	// resetGeneration was raised while a session uses one of its disks.
	PersistentDiskResetPendingReason = "PersistentDiskResetPending"
	// PersistentDiskResetReason: Event on a Machine when a disk made at a
	// lower resetGeneration was deleted.
	PersistentDiskResetReason = "PersistentDiskReset"
	// PersistentDiskDeletePendingReason: Event on a Machine being deleted
	// with onDelete: Delete while a session still uses one of its disks.
	PersistentDiskDeletePendingReason = "PersistentDiskDeletePending"
	// PersistentDiskDeletedReason: Event on a Machine being deleted with
	// onDelete: Delete when one of its disks was deleted.
	PersistentDiskDeletedReason = "PersistentDiskDeleted"
	// PersistentDiskOrphanedReason: Warning Event on a Machine when the Image
	// one of its disks was cloned from no longer exists.
	PersistentDiskOrphanedReason = "PersistentDiskOrphaned"
)

// OrphanedPersistentDisksCondition (negative polarity) is the storage agent's
// condition on its Node: True while the node holds persistent disks whose
// Machine or Image (by UID) no longer exists, or disk files of the old
// layout that could not be adopted. They are never removed automatically; the
// message counts them and lists some paths. Like node-problem-detector's
// conditions it leaves the kubelet's alone. An agent limited to one
// namespace reports under OrphanedPersistentDisksCondition + "." + namespace.
const (
	OrphanedPersistentDisksCondition = "boot.ggnet.io/OrphanedPersistentDisks"
	// OrphanedPersistentDisksReason: the condition is True (and a Warning
	// Event on the Node when new orphans are found).
	OrphanedPersistentDisksReason = "OrphanedPersistentDisks"
	// NoOrphanedPersistentDisksReason: the condition is False.
	NoOrphanedPersistentDisksReason = "NoOrphanedPersistentDisks"
)
