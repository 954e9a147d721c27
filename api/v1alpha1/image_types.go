package v1alpha1

import (
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// ImageFormat is the format of an Image's source; every format other than raw
// is converted to raw with qemu-img on the storage node.
// +kubebuilder:validation:Enum=raw;qcow2;vmdk;vhdx;vpc
type ImageFormat string

const (
	ImageFormatRaw   ImageFormat = "raw"
	ImageFormatQCOW2 ImageFormat = "qcow2"
	ImageFormatVMDK  ImageFormat = "vmdk"
	ImageFormatVHDX  ImageFormat = "vhdx"
	ImageFormatVPC   ImageFormat = "vpc"
)

// HTTPSource downloads the image over HTTP(S).
type HTTPSource struct {
	// url of the image file.
	// +required
	// +kubebuilder:validation:MaxLength=2048
	// +kubebuilder:validation:XValidation:rule="isURL(self) && (url(self).getScheme() == 'http' || url(self).getScheme() == 'https')",message="url must be an http:// or https:// URL"
	URL string `json:"url"`

	// sha256 is the expected checksum of the downloaded file, 64 lowercase hex
	// digits.
	// +required
	// +kubebuilder:validation:MaxLength=64
	// +kubebuilder:validation:XValidation:rule="self.matches('^[0-9a-f]{64}$')",message="sha256 must be 64 lowercase hex digits"
	SHA256 string `json:"sha256"`
}

// PathSource adopts a file already present on the storage nodes.
type PathSource struct {
	// path is the absolute path of the file on every selected storage node,
	// under the storage agents' image path root (--image-path-root, chart
	// value agent.storage.imagePathRoot): /srv/ggnet-images/win11.raw with
	// the root /srv/ggnet-images. The root is empty by default: path sources
	// are then refused (reason PathNotAllowed). The file is opened through
	// the root: a symbolic link or ".." leading out of it, and anything but
	// a regular file, are refused.
	// +required
	// +kubebuilder:validation:MaxLength=4096
	// +kubebuilder:validation:XValidation:rule="self.startsWith('/') && !self.contains('/../') && !self.endsWith('/..')",message="path must be absolute and must not contain '..'"
	Path string `json:"path"`

	// sha256, when set, is checked against the file.
	// +optional
	// +kubebuilder:validation:MaxLength=64
	// +kubebuilder:validation:XValidation:rule="self.matches('^[0-9a-f]{64}$')",message="sha256 must be 64 lowercase hex digits"
	SHA256 string `json:"sha256,omitempty"`
}

// WritebackSource captures a stopped Persist session's disk as a new image:
// the storage agent of the node that holds the disk (the session's
// status.storageNode) clones it by reflink (instant, no copy), checksums the
// clone, and every other selected storage node replicates it from a node
// with a Ready replica. The session must use writeback Persist and be
// Stopped; until it is, the replica waits (reason SessionNotStopped). The
// captured disk stays the Machine's persistent disk.
type WritebackSource struct {
	// sessionRef is the stopped Persist BootSession whose disk becomes the image.
	// +required
	SessionRef LocalObjectReference `json:"sessionRef"`
}

// ImageSource says where the image's bytes come from; exactly one field is set.
// +kubebuilder:validation:XValidation:rule="[has(self.http), has(self.path), has(self.writeback)].filter(x, x).size() == 1",message="exactly one of http, path or writeback must be set"
type ImageSource struct {
	// +optional
	HTTP *HTTPSource `json:"http,omitempty"`
	// +optional
	Path *PathSource `json:"path,omitempty"`
	// +optional
	Writeback *WritebackSource `json:"writeback,omitempty"`
}

// ImageSpec is the desired state of a golden image.
type ImageSpec struct {
	// source of the image; immutable once set: make a new Image for a new version.
	// +required
	// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="source is immutable: create a new Image for a new version"
	Source ImageSource `json:"source"`

	// format of the source file.
	// +optional
	// +kubebuilder:default=raw
	// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="format is immutable"
	Format ImageFormat `json:"format,omitempty"`

	// storageNodeSelector selects the storage nodes that hold a replica; empty
	// selects every storage node.
	// +optional
	StorageNodeSelector *metav1.LabelSelector `json:"storageNodeSelector,omitempty"`

	// maxVirtualSize caps the image's virtual size (the disk size a PC
	// sees), for example 600Gi: a source whose virtual size is larger, or a
	// source file larger than that (plus 1/8 and 64 MiB for the metadata of
	// formats other than raw), is refused with reason TooLarge. Unset: the
	// storage agent's default (--image-max-virtual-size-gib, chart value
	// agent.storage.imageMaxVirtualSizeGiB, 512 GiB).
	// +optional
	// +kubebuilder:validation:XValidation:rule="quantity(string(self)).isGreaterThan(quantity('0'))",message="maxVirtualSize must be positive"
	MaxVirtualSize *resource.Quantity `json:"maxVirtualSize,omitempty"`
}

// ReplicaState is the state of one storage node's copy of an image.
// +kubebuilder:validation:Enum=Pending;Downloading;Converting;Ready;Failed;Deleting
type ReplicaState string

const (
	ReplicaPending     ReplicaState = "Pending"
	ReplicaDownloading ReplicaState = "Downloading"
	ReplicaConverting  ReplicaState = "Converting"
	ReplicaReady       ReplicaState = "Ready"
	ReplicaFailed      ReplicaState = "Failed"
	ReplicaDeleting    ReplicaState = "Deleting"
)

// ImageReplica is one storage node's copy of the image, reported by that
// node's agent with its own field manager.
type ImageReplica struct {
	// node is the storage node's name.
	// +required
	// +kubebuilder:validation:MaxLength=253
	Node string `json:"node"`
	// state of the replica.
	// +required
	State ReplicaState `json:"state"`
	// path of the raw file on the node.
	// +optional
	Path string `json:"path,omitempty"`
	// sizeBytes of the raw file.
	// +optional
	SizeBytes int64 `json:"sizeBytes,omitempty"`
	// sha256 of the source file as verified.
	// +optional
	SHA256 string `json:"sha256,omitempty"`
	// reason is a CamelCase word for the state, for example ChecksumMismatch.
	// +optional
	Reason string `json:"reason,omitempty"`
	// message says what happened in words.
	// +optional
	// +kubebuilder:validation:MaxLength=1024
	Message string `json:"message,omitempty"`
	// lastTransitionTime is when state last changed.
	// +optional
	LastTransitionTime *metav1.Time `json:"lastTransitionTime,omitempty"`
	// bytesDone is how many bytes of bytesTotal the running download,
	// conversion, capture or replication has handled.
	// +optional
	BytesDone int64 `json:"bytesDone,omitempty"`
	// bytesTotal is the size of the running transfer, when known.
	// +optional
	BytesTotal int64 `json:"bytesTotal,omitempty"`
	// bytesPerSecond is the running transfer's recent rate.
	// +optional
	BytesPerSecond int64 `json:"bytesPerSecond,omitempty"`
	// sourceNode is the storage node a running replication copies from
	// (cleared, with the byte counts, once the replica is Ready).
	// +optional
	// +kubebuilder:validation:MaxLength=253
	SourceNode string `json:"sourceNode,omitempty"`
}

// ImagePhase summarizes an Image.
// +kubebuilder:validation:Enum=Pending;Replicating;Ready;Failed;Deleting
type ImagePhase string

const (
	ImagePending     ImagePhase = "Pending"
	ImageReplicating ImagePhase = "Replicating"
	ImageReady       ImagePhase = "Ready"
	ImageFailed      ImagePhase = "Failed"
	ImageDeleting    ImagePhase = "Deleting"
)

// ImageStatus is the observed state of an Image.
type ImageStatus struct {
	// conditions: Ready when at least one replica is Ready.
	// +optional
	// +listType=map
	// +listMapKey=type
	Conditions []metav1.Condition `json:"conditions,omitempty"`
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`
	// phase summarizes the replicas.
	// +optional
	Phase ImagePhase `json:"phase,omitempty"`
	// sizeBytes of the raw image.
	// +optional
	SizeBytes int64 `json:"sizeBytes,omitempty"`
	// sha256 of the source as verified.
	// +optional
	SHA256 string `json:"sha256,omitempty"`
	// readyReplicas counts Ready replicas.
	// +optional
	ReadyReplicas int32 `json:"readyReplicas,omitempty"`
	// replicas, one per storage node.
	// +optional
	// +listType=map
	// +listMapKey=node
	Replicas []ImageReplica `json:"replicas,omitempty"`
	// version is the Image's place in its family (the FamilyLabel): the
	// manager gives each Image of a family, in creation order, one more than
	// the highest version among the family's Images, and never changes it.
	// Retention never deletes the newest versions, so numbers go up; only
	// deleting the newest Image by hand frees its number for the next one.
	// Unset for an Image without a family.
	// +optional
	Version int64 `json:"version,omitempty"`
	// progress summarizes the replicas still on their way, for example
	// "node-b 3.2 GiB/10 GiB at 110 MiB/s"; empty when none is.
	// +optional
	// +kubebuilder:validation:MaxLength=1024
	Progress string `json:"progress,omitempty"`
}

// NodeStorage is the value of StorageAnnotation: the data directory's file
// system as the storage agent last measured it.
type NodeStorage struct {
	// CapacityBytes is the size of the data directory's file system.
	CapacityBytes int64 `json:"capacityBytes"`
	// FreeBytes is its free space (available to the agent).
	FreeBytes int64 `json:"freeBytes"`
	// ReserveBytes is the free space kept for running sessions' writes: new
	// overlays and replicas are refused below it.
	ReserveBytes int64 `json:"reserveBytes"`
	// ReplicaBytes is the space the image replicas take.
	ReplicaBytes int64 `json:"replicaBytes"`
	// OverlayBytes is the space the overlays' own writes take: the used
	// space less the replicas (a fresh overlay shares all its blocks with
	// its replica).
	OverlayBytes int64 `json:"overlayBytes"`
	// Overlays counts the overlay files (running sessions and persistent
	// disks).
	Overlays int `json:"overlays"`
	// Updated is when it was measured.
	Updated metav1.Time `json:"updated"`
}

// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=img,categories=ggnet
// +kubebuilder:printcolumn:name="Family",type=string,JSONPath=`.metadata.labels.boot\.ggnet\.io/family`
// +kubebuilder:printcolumn:name="Version",type=integer,JSONPath=`.status.version`
// +kubebuilder:printcolumn:name="Format",type=string,JSONPath=`.spec.format`,priority=1
// +kubebuilder:printcolumn:name="Size",type=integer,JSONPath=`.status.sizeBytes`
// +kubebuilder:printcolumn:name="Replicas",type=integer,JSONPath=`.status.readyReplicas`
// +kubebuilder:printcolumn:name="Ready",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].status`
// +kubebuilder:printcolumn:name="Progress",type=string,JSONPath=`.status.progress`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
// +kubebuilder:printcolumn:name="Phase",type=string,JSONPath=`.status.phase`,priority=1
// +kubebuilder:printcolumn:name="SHA256",type=string,JSONPath=`.status.sha256`,priority=1
// +kubebuilder:printcolumn:name="Reason",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].reason`,priority=1

// Image is a golden disk image, immutable once Ready.
type Image struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// +required
	Spec   ImageSpec   `json:"spec"`
	Status ImageStatus `json:"status,omitempty"`
}

// +kubebuilder:object:root=true

// ImageList is a list of Images.
type ImageList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []Image `json:"items"`
}

func init() {
	SchemeBuilder.Register(&Image{}, &ImageList{})
}
