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
