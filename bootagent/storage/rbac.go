package storage

// The storage role reconciles sessions and images on its node: their
// finalizers, its own status fields, the CHAP Secrets, its Node's labels.
// +kubebuilder:rbac:groups=boot.ggnet.io,resources=bootsessions;images,verbs=get;list;watch;update
// +kubebuilder:rbac:groups=boot.ggnet.io,resources=bootsessions/status;images/status,verbs=get;patch
// +kubebuilder:rbac:groups="",resources=secrets,verbs=get;list;watch
// +kubebuilder:rbac:groups="",resources=nodes,verbs=get;list;watch
