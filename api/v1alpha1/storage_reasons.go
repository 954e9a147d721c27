package v1alpha1

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
