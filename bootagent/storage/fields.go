package storage

import (
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/selection"

	bootv1 "github.com/ggnet/ggnet/api/v1alpha1"
)

func fieldsOneName(name string) fields.Selector {
	return fields.OneTermEqualSelector("metadata.name", name)
}

// sessionSecrets selects the session Secrets (the label, any value).
func sessionSecrets() labels.Selector {
	req, err := labels.NewRequirement(bootv1.SessionSecretLabel, selection.Exists, nil)
	if err != nil {
		panic(err) // a constant label key
	}
	return labels.NewSelector().Add(*req)
}
