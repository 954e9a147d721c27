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
