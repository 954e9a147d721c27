package agent

// The boot role reads Machines and BootSessions, stamps boot progress on
// sessions, asks for AutoSession sessions on Machines and records discovered
// Machines.
// +kubebuilder:rbac:groups=boot.ggnet.io,resources=machines,verbs=get;list;watch;create;patch
// +kubebuilder:rbac:groups=boot.ggnet.io,resources=bootsessions,verbs=get;list;watch
// +kubebuilder:rbac:groups=boot.ggnet.io,resources=bootsessions/status,verbs=get;patch
