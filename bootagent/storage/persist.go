package storage

import (
	ctrl "sigs.k8s.io/controller-runtime"

	bootv1 "github.com/ggnet/ggnet/api/v1alpha1"
)

// setupPersist registers what keeps the persistent (Persist) disks of this
// node.
func (r *Role) setupPersist(ctrl.Manager) error { return nil }

// OverlayPath is the overlay of a session: its own for Discard, the
// (machine, image) pair's for Persist, so that the machine's next session
// finds it.
func (r *Role) OverlayPath(s *bootv1.BootSession) string {
	if s.Spec.Writeback == bootv1.WritebackPersist {
		return r.overlays.Path(s.Namespace, "persist-"+s.Spec.MachineRef.Name+"-"+s.Spec.ImageRef.Name)
	}
	return r.overlays.Path(s.Namespace, s.Name+"-"+string(s.UID))
}
