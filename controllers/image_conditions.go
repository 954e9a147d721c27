package controllers

import (
	"fmt"

	bootv1 "github.com/ggnet/ggnet/api/v1alpha1"
)

// The Image's conditions, as pure setters: Ready. Each reports whether the
// condition's status or reason changed.

// setImageInUse says that the Image's deletion waits for sessions:
// Ready=False InUse with msg.
func setImageInUse(img *bootv1.Image, msg string) bool {
	return setCondition(&img.Status.Conditions, img.Generation, bootv1.ReadyCondition, false, bootv1.InUseReason, msg)
}

// summarizeImage computes an Image's phase, ready count and Ready condition
// from its replicas.
func summarizeImage(img *bootv1.Image) {
	var ready, failed int32
	img.Status.SizeBytes, img.Status.SHA256 = 0, ""
	for _, r := range img.Status.Replicas {
		switch r.State {
		case bootv1.ReplicaReady:
			ready++
			if img.Status.SizeBytes == 0 {
				img.Status.SizeBytes, img.Status.SHA256 = r.SizeBytes, r.SHA256
			}
		case bootv1.ReplicaFailed:
			failed++
		}
	}
	img.Status.ReadyReplicas = ready
	n := int32(len(img.Status.Replicas))
	switch {
	case img.DeletionTimestamp != nil:
		img.Status.Phase = bootv1.ImageDeleting
	case ready > 0:
		img.Status.Phase = bootv1.ImageReady
		setCondition(&img.Status.Conditions, img.Generation, bootv1.ReadyCondition, true, bootv1.SucceededReason, plural(ready, "storage node holds", "storage nodes hold")+" a Ready replica")
	case n > 0 && failed == n:
		img.Status.Phase = bootv1.ImageFailed
		setCondition(&img.Status.Conditions, img.Generation, bootv1.ReadyCondition, false, bootv1.ReplicaFailedReason, "every replica failed; see status.replicas")
	case n > 0:
		img.Status.Phase = bootv1.ImageReplicating
		setCondition(&img.Status.Conditions, img.Generation, bootv1.ReadyCondition, false, bootv1.NoReadyReplicaReason, "replicas are being made")
	default:
		img.Status.Phase = bootv1.ImagePending
		setCondition(&img.Status.Conditions, img.Generation, bootv1.ReadyCondition, false, bootv1.NoReadyReplicaReason, "no storage node has reported a replica yet")
	}
}

func plural(n int32, one, many string) string {
	if n == 1 {
		return "1 " + one
	}
	return fmt.Sprintf("%d %s", n, many)
}
