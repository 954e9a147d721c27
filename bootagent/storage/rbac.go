package storage

// The storage role reconciles sessions and images on its node: their
// finalizers, its own status fields, the CHAP Secrets, its Node's labels.
// It patches its Node with one annotation: the iSCSI portal it listens on
// (bootv1.ISCSIPortalAnnotation).
// +kubebuilder:rbac:groups=boot.ggnet.io,resources=bootsessions;images,verbs=get;list;watch;update
// +kubebuilder:rbac:groups=boot.ggnet.io,resources=bootsessions/status;images/status,verbs=get;patch
// +kubebuilder:rbac:groups="",resources=secrets,verbs=get;list;watch
// +kubebuilder:rbac:groups="",resources=nodes,verbs=get;list;watch;patch
