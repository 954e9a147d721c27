// Package scheme builds the runtime scheme shared by both binaries and the
// tests: the built-in kinds and the GGnet kinds.
package scheme

import (
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"

	bootv1 "github.com/ggnet/ggnet/api/v1alpha1"
)

// New returns a scheme with the built-in kinds and the GGnet kinds.
func New() *runtime.Scheme {
	s := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(s); err != nil {
		panic(err)
	}
	if err := bootv1.AddToScheme(s); err != nil {
		panic(err)
	}
	return s
}
