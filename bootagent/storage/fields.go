package storage

import "k8s.io/apimachinery/pkg/fields"

func fieldsOneName(name string) fields.Selector {
	return fields.OneTermEqualSelector("metadata.name", name)
}
