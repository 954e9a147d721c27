package agent

// The boot role reads Machines and BootSessions, stamps boot progress on
// sessions, asks for AutoSession sessions on Machines and records discovered
// Machines. It reads the session Secrets (labelled boot.ggnet.io/session; its
// informer selects by that label) for the credentials and token it serves,
// and records ScriptForbidden Events on Machines.
// +kubebuilder:rbac:groups=boot.ggnet.io,resources=machines,verbs=get;list;watch;create;patch
// +kubebuilder:rbac:groups=boot.ggnet.io,resources=bootsessions,verbs=get;list;watch
// +kubebuilder:rbac:groups=boot.ggnet.io,resources=bootsessions/status,verbs=get;patch
// +kubebuilder:rbac:groups="",resources=secrets,verbs=get;list;watch
// +kubebuilder:rbac:groups="",resources=events,verbs=create;patch
