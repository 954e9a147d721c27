package storage

// The storage role reconciles sessions, images and machines on its node:
// their finalizers (the storage finalizer on sessions, released by a JSON
// patch, NodeFinalizer(node) on
// Images with a replica here and on Machines with persistent disks here and
// onDelete: Delete), its own status fields (server-side apply with its field
// manager), the CHAP Secrets and the replication Secret, its Node's labels.
// It patches its Node with its annotations, the iSCSI portal it listens on
// (bootv1.ISCSIPortalAnnotation), where it serves replicas
// (bootv1.ReplicationEndpointAnnotation) and its storage
// (bootv1.StorageAnnotation), and one condition, bootv1.OrphanedPersistentDisksCondition, and records
// Events on sessions, Machines and its Node. It holds its node's Lease
// (bootv1.StorageLeaseName, lease.go), read straight from the API server:
// create, get and update on Leases only in the namespace that Lease lives
// in (leaseNamespace), never cluster-wide, where it could rewrite any
// Lease (other leaders', the kubelets'). Its marker's namespace= makes
// controller-gen write a Role; ggnet-system stands for that namespace, the
// chart puts the rule in a Role in the watched namespace, else the release's.
// +kubebuilder:rbac:groups=boot.ggnet.io,resources=bootsessions;images;machines,verbs=get;list;watch;update
// +kubebuilder:rbac:groups=boot.ggnet.io,resources=bootsessions,verbs=patch
// +kubebuilder:rbac:groups=boot.ggnet.io,resources=bootsessions/status;images/status;machines/status,verbs=get;patch
// +kubebuilder:rbac:groups="",resources=secrets,verbs=get;list;watch
// +kubebuilder:rbac:groups="",resources=nodes,verbs=get;list;watch;patch
// +kubebuilder:rbac:groups="",resources=nodes/status,verbs=patch
// +kubebuilder:rbac:groups="";events.k8s.io,resources=events,verbs=create;patch
// +kubebuilder:rbac:groups=coordination.k8s.io,resources=leases,verbs=get;create;update,namespace=ggnet-system
