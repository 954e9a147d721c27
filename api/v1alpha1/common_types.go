package v1alpha1

// LocalObjectReference names an object of a known kind in the same namespace.
type LocalObjectReference struct {
	// name of the referenced object.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	Name string `json:"name"`
}

// WritebackPolicy says what happens to a session's writes when it ends.
// +kubebuilder:validation:Enum=Discard;Persist
type WritebackPolicy string

const (
	// WritebackDiscard throws the overlay away when the session ends: the next
	// boot starts from the clean image.
	WritebackDiscard WritebackPolicy = "Discard"
	// WritebackPersist keeps the overlay for the (machine, image) pair; the
	// machine's next session continues from it.
	WritebackPersist WritebackPolicy = "Persist"
)

// Condition types and reasons shared by every kind. All conditions are of
// positive polarity unless their comment says otherwise.
const (
	// ReadyCondition is True when the object is fully usable: a Machine has a
	// valid reservation, an Image has at least one Ready replica, a
	// BootSession can be booted.
	ReadyCondition = "Ready"

	// SucceededReason is used when an operation completed.
	SucceededReason = "Succeeded"
	// ProgressingReason is used while an operation is under way.
	ProgressingReason = "Progressing"
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
