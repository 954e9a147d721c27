package controllers

import (
	"context"
	"strings"

	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	bootv1 "github.com/ggnet/ggnet/api/v1alpha1"
)

// Field indexes the reconcilers list by; tests install the same ones through
// SetupIndexes.
const (
	indexSessionMachine = "spec.machineRef.name"
	indexSessionImage   = "spec.imageRef.name"
	indexSessionNode    = "status.storageNode"
	indexMachineMAC     = "spec.mac"
	indexMachineIP      = "spec.ipv4.address"
	indexMachineFamily  = "spec.imageFamily"
	// indexNodeFinalizer holds, for each bootv1.NodeFinalizer on an Image or
	// a Machine, the part after bootv1.NodeFinalizerPrefix.
	indexNodeFinalizer = "metadata.finalizers.storageNode"
)

// SetupIndexes registers the field indexes on the manager's cache.
func SetupIndexes(ctx context.Context, mgr ctrl.Manager) error {
	fi := mgr.GetFieldIndexer()
	for _, ix := range []struct {
		obj   client.Object
		field string
		fn    client.IndexerFunc
	}{
		{&bootv1.BootSession{}, indexSessionMachine, func(o client.Object) []string {
			return []string{o.(*bootv1.BootSession).Spec.MachineRef.Name}
		}},
		{&bootv1.BootSession{}, indexSessionImage, func(o client.Object) []string {
			return []string{o.(*bootv1.BootSession).Spec.ImageRef.Name}
		}},
		{&bootv1.BootSession{}, indexSessionNode, func(o client.Object) []string {
			if n := o.(*bootv1.BootSession).Status.StorageNode; n != "" {
				return []string{n}
			}
			return nil
		}},
		{&bootv1.Machine{}, indexMachineMAC, func(o client.Object) []string {
			return []string{o.(*bootv1.Machine).Spec.MAC}
		}},
		{&bootv1.Machine{}, indexMachineIP, func(o client.Object) []string {
			if ip := o.(*bootv1.Machine).Spec.IPv4; ip != nil {
				return []string{ip.Address}
			}
			return nil
		}},
		{&bootv1.Machine{}, indexMachineFamily, func(o client.Object) []string {
			if f := o.(*bootv1.Machine).Spec.ImageFamily; f != "" {
				return []string{f}
			}
			return nil
		}},
		{&bootv1.Image{}, indexNodeFinalizer, nodeFinalizerKeys},
		{&bootv1.Machine{}, indexNodeFinalizer, nodeFinalizerKeys},
	} {
		if err := fi.IndexField(ctx, ix.obj, ix.field, ix.fn); err != nil {
			return err
		}
	}
	return nil
}

// nodeFinalizerKeys indexes an object by its node finalizers.
func nodeFinalizerKeys(o client.Object) []string {
	var out []string
	for _, f := range o.GetFinalizers() {
		if k, ok := strings.CutPrefix(f, bootv1.NodeFinalizerPrefix); ok && k != "" {
			out = append(out, k)
		}
	}
	return out
}
