package ggctl

import (
	"errors"
	"fmt"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
)

// The chart's user roles (charts/ggnet/templates/rbac.yaml).
const (
	viewerRole   = "ggnet-viewer"
	operatorRole = "ggnet-operator"
	adminRole    = "ggnet-admin"
)

// explain turns an API error into one that says what to do: a Forbidden
// error names the role that allows the action; a missing object says which
// command lists them. what is what the command tried ("create bootsessions
// in namespace cafe").
func explain(err error, verb, resource, namespace string) error {
	if err == nil {
		return nil
	}
	where := "in namespace " + namespace
	if namespace == "" {
		where = "in any namespace (-A)"
	}
	switch {
	case apierrors.IsForbidden(err):
		role := viewerRole
		switch {
		case verb == "get" || verb == "list" || verb == "watch":
		case resource == "machines" || resource == "images":
			role = adminRole
		default:
			role = operatorRole
		}
		return fmt.Errorf("%w\nYou may not %s %s %s: this needs the ClusterRole %s bound to you there "+
			"(kubectl create rolebinding <name> --clusterrole=%s --user=<you> -n %s); ask your cluster admin",
			err, verb, resource, where, role, role, orPlaceholder(namespace))
	case apierrors.IsUnauthorized(err):
		return fmt.Errorf("%w\nThe API server did not accept your credentials: check your kubeconfig (--kubeconfig, --context)", err)
	case meta.IsNoMatchError(err) || apierrors.IsNotFound(err) && isNoKind(err):
		return fmt.Errorf("%w\nThe GGnet CRDs are not installed in this cluster (helm install ggnet charts/ggnet)", err)
	}
	return err
}

func orPlaceholder(ns string) string {
	if ns == "" {
		return "<namespace>"
	}
	return ns
}

// isNoKind says whether a NotFound is the API server not knowing the
// resource at all (the CRDs are missing), not a missing object.
func isNoKind(err error) bool {
	var se apierrors.APIStatus
	if !errors.As(err, &se) {
		return false
	}
	d := se.Status().Details
	return d == nil || d.Name == ""
}
