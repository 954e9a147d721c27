// Package controllers holds the reconcilers of Machine, Image and BootSession.
package controllers

// +kubebuilder:rbac:groups=boot.ggnet.io,resources=machines;images;bootsessions,verbs=get;list;watch;update;patch
// +kubebuilder:rbac:groups=boot.ggnet.io,resources=machines/status;images/status;bootsessions/status,verbs=get;update;patch
// +kubebuilder:rbac:groups=boot.ggnet.io,resources=machines/finalizers;images/finalizers;bootsessions/finalizers,verbs=update
// +kubebuilder:rbac:groups=boot.ggnet.io,resources=bootsessions,verbs=create;delete
// +kubebuilder:rbac:groups=boot.ggnet.io,resources=images;machines,verbs=delete
// +kubebuilder:rbac:groups="",resources=secrets,verbs=get;create;patch
// +kubebuilder:rbac:groups="",resources=events,verbs=create;patch
// +kubebuilder:rbac:groups=events.k8s.io,resources=events,verbs=create;patch
// +kubebuilder:rbac:groups=coordination.k8s.io,resources=leases,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups="",resources=nodes,verbs=get;list;watch
