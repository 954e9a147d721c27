// Package v1alpha1 holds the GGnet API: Machine, Image and BootSession in the
// group boot.ggnet.io.
//
// +kubebuilder:object:generate=true
// +kubebuilder:ac:generate=true
// +groupName=boot.ggnet.io
package v1alpha1

import (
	"k8s.io/apimachinery/pkg/runtime/schema"
	"sigs.k8s.io/controller-runtime/pkg/scheme"
)

var (
	// GroupVersion is the group and version of every GGnet kind.
	GroupVersion = schema.GroupVersion{Group: "boot.ggnet.io", Version: "v1alpha1"}

	// SchemeGroupVersion is GroupVersion under the name the generated apply
	// configurations (applyconfiguration/, `make generate`) refer to.
	SchemeGroupVersion = GroupVersion

	// SchemeBuilder registers the GGnet kinds with a scheme.
	SchemeBuilder = &scheme.Builder{GroupVersion: GroupVersion}

	// AddToScheme adds the GGnet kinds to a scheme.
	AddToScheme = SchemeBuilder.AddToScheme
)
