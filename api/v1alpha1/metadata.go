package v1alpha1

// Every label, annotation and finalizer GGnet sets, by the object it is on.
// (The session Secret's label and keys are with the Secret's description in
// bootsession_types.go.)

// RetireAnnotation on a BootSession asks its storage agent to retire it if
// no PC uses it (its value is why, for people): the manager sets it on an
// AutoSession machine's prepared session that no longer fits the Machine (a
// new image version, another writeback) instead of stopping it blind. The
// boot agent stops handing out the session's script; the storage agent
// unbinds the target's initiator and then looks for a login, and answers
// with the RetireCondition. The manager stops the session only on
// Retire=True (Unused); on Retire=False (InUse) it keeps it and removes the
// annotation: a PC boots from it.
const RetireAnnotation = "boot.ggnet.io/retire"

// RetireAskedAnnotation is when the manager asked the retire (RFC 3339, set
// with RetireAnnotation): once the storage agent has not answered for the
// manager's --retire-timeout, the machine's next session is prepared anyway
// (nobody waits for an agent that is down or too old to answer), and the
// retiring session is kept, still not handed out, until its agent answers.
const RetireAskedAnnotation = "boot.ggnet.io/retire-asked"

// Labels on BootSessions. The manager sets MachineLabel, ImageLabel and,
// once the session is scheduled, StorageNodeOfSessionLabel on every session
// (values are object names), so that `kubectl get bs -l
// boot.ggnet.io/machine=pc-01` works; they mirror spec.machineRef,
// spec.imageRef and status.storageNode, which stay the truth.
const (
	// AutoSessionLabel ("true") marks a session the Machine controller
	// created for an AutoSession Machine.
	AutoSessionLabel = "boot.ggnet.io/auto-session"
	// MachineLabel is the name of the session's Machine (spec.machineRef).
	MachineLabel = "boot.ggnet.io/machine"
	// ImageLabel is the name of the session's Image (spec.imageRef).
	ImageLabel = "boot.ggnet.io/image"
	// StorageNodeOfSessionLabel is the storage node that serves the
	// session's disk (status.storageNode), set when it is scheduled.
	StorageNodeOfSessionLabel = "boot.ggnet.io/storage-node"
)

// SecureOnSecretType is the type a Machine's SecureOn Secret must have
// (spec.wakeOnLAN.secureOnSecretRef).
const SecureOnSecretType = "boot.ggnet.io/secureon"

// Labels and annotations on Images.
const (
	// FamilyLabel groups the versions of one image ("games"): the manager
	// numbers a family's Images in status.version, Machines with
	// spec.imageFamily follow its latest Ready version, and the retention
	// setting garbage-collects its old versions once nothing uses them.
	FamilyLabel = "boot.ggnet.io/family"
	// KeepAnnotation ("true") on an Image exempts it from retention.
	KeepAnnotation = "boot.ggnet.io/keep"
)

// Labels on Machines.
const (
	// DiscoveredLabel marks a Machine the boot agent recorded for an unknown
	// PXE client; it waits for an operator to approve it by setting a boot
	// policy other than LocalBoot and removing the label.
	DiscoveredLabel = "boot.ggnet.io/discovered"
)

// Annotations on Machines.
const (
	// SessionRequestedAnnotation is set on an AutoSession Machine by the boot
	// agent when the machine network-boots without a session (its value is
	// the time, RFC 3339); the Machine controller answers by creating one and
	// removes the annotation.
	SessionRequestedAnnotation = "boot.ggnet.io/session-requested"
	// DiscoveredAtAnnotation on a discovered Machine is when the boot agent
	// recorded it (RFC 3339).
	DiscoveredAtAnnotation = "boot.ggnet.io/discovered-at"
	// ClientAnnotation on a discovered Machine describes the PXE client the
	// boot agent saw (architecture, vendor class, user class).
	ClientAnnotation = "boot.ggnet.io/client"
)

// Labels and annotations on Nodes.
const (
	// StorageNodeLabel ("true") is the label the Helm chart's storage agent
	// and the sample Images select storage nodes by (an Image's
	// nodeSelector); the code does not require it.
	StorageNodeLabel = "ggnet.io/storage"
	// ISCSIPortalAnnotation on a storage node is the iSCSI portal its storage
	// agent's target listens on, <IPv4>:<port> (the agent's --portal, set
	// when the agent starts). The manager hands PCs this portal, and the
	// node's InternalIP with the manager's --iscsi-port only when the
	// annotation is missing or not a valid IPv4 address and port.
	ISCSIPortalAnnotation = "boot.ggnet.io/iscsi-portal"
)

// ReplicationEndpointAnnotation on a storage node is where its storage
// agent serves its Ready replicas to the other storage agents,
// <IPv4>:<port> (the agent's --replication-address, set when the agent
// starts). Every request is signed with the key in the replication Secret
// (ReplicationSecretKey); nothing is served to an unsigned request.
const ReplicationEndpointAnnotation = "boot.ggnet.io/replication-endpoint"

// ReplicationSecretKey is the key, in the replication Secret (chart:
// <release>-replication in the release namespace, made by the manager when
// missing), of the storage agents' shared signing key.
const ReplicationSecretKey = "key"

// StorageAnnotation on a storage node is the node's storage capacity and
// use, a JSON NodeStorage written by its storage agent.
const StorageAnnotation = "boot.ggnet.io/storage"

// Finalizers.
const (
	// SessionFinalizer is held by the manager until a session's Secret and
	// Machine bookkeeping are released.
	SessionFinalizer = "boot.ggnet.io/session"
	// StorageFinalizer guards a session's target and, for Discard, its
	// overlay: the manager adds it in its first metadata write of a new
	// session (with SessionFinalizer, one write; the storage agent adds it
	// only to a scheduled session that lacks it), the storage agent removes
	// it once the target and overlay are gone, the manager removes it from a
	// session that was never scheduled (no storage was made), and, for a
	// storage node lost longer than the grace, the StorageNodeReconciler.
	StorageFinalizer = "boot.ggnet.io/storage"
	// ImageFinalizer is held by the manager on every Image; an Image being
	// deleted keeps it while sessions use it: scheduled sessions that have
	// not finished, and unscheduled ones that have not yet seen the deletion
	// (their Ready reason is not ImageDeletingReason or
	// MachineDeletingReason).
	ImageFinalizer = "boot.ggnet.io/image"
	// MachineFinalizer is held by the manager on every Machine; a Machine
	// being deleted keeps it, as ImageFinalizer, while sessions use it, so
	// that a running PC keeps its reservation and its script until its
	// session stops.
	MachineFinalizer = "boot.ggnet.io/machine"
)

// NodeFinalizerPrefix starts the per-node finalizers a storage agent holds on
// the objects it keeps files for on its node (an Image's replica, a Machine's
// persistent disks): NodeFinalizer(node).
const NodeFinalizerPrefix = "storage.boot.ggnet.io/"

// NodeFinalizer is the finalizer the storage agent of node holds on an
// object while it keeps files for it on that node. A finalizer name is at
// most 63 characters after the prefix's domain, so long node names are cut
// at 50. The manager releases the finalizers of a node that is gone.
func NodeFinalizer(node string) string {
	if len(node) > 50 {
		node = node[:50]
	}
	return NodeFinalizerPrefix + node
}
