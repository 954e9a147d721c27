package storage

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"os"
	"time"
	"unsafe"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	"golang.org/x/sys/unix"
	"sigs.k8s.io/controller-runtime/pkg/client"

	bootv1 "github.com/ggnet/ggnet/api/v1alpha1"
)

// captureImage creates an Image that captures session's disk.
func (l *lab) captureImage(name, session string, opts ...func(*bootv1.Image)) *bootv1.Image {
	GinkgoHelper()
	img := &bootv1.Image{}
	img.Namespace, img.Name = l.ns, name
	img.Spec.Source.Writeback = &bootv1.WritebackSource{SessionRef: bootv1.LocalObjectReference{Name: session}}
	for _, o := range opts {
		o(img)
	}
	Expect(k8sClient.Create(l.ctx, img)).To(Succeed())
	return img
}

// replicaOf polls this node's entry of an Image's status.
func (l *lab) replicaOf(name string) func() bootv1.ImageReplica {
	return func() bootv1.ImageReplica { return replica(l, name) }
}

func fileSHA256(path string) string {
	GinkgoHelper()
	f, err := os.Open(path)
	Expect(err).NotTo(HaveOccurred())
	defer f.Close()
	h := sha256.New()
	_, err = io.Copy(h, f)
	Expect(err).NotTo(HaveOccurred())
	return hex.EncodeToString(h.Sum(nil))
}

// writeRandom writes n random bytes at off.
func writeRandom(path string, off int64, n int) {
	GinkgoHelper()
	b := make([]byte, n)
	_, _ = rand.Read(b)
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	Expect(err).NotTo(HaveOccurred())
	_, err = f.WriteAt(b, off)
	Expect(err).NotTo(HaveOccurred())
	Expect(f.Sync()).To(Succeed())
	Expect(f.Close()).To(Succeed())
}

// sharedBytes counts the bytes of path's extents that share their blocks
// with another file (FIEMAP, FIEMAP_EXTENT_SHARED), and all its mapped
// bytes.
func sharedBytes(path string) (shared, mapped int64) {
	GinkgoHelper()
	f, err := os.Open(path)
	Expect(err).NotTo(HaveOccurred())
	defer f.Close()
	Expect(f.Sync()).To(Succeed())
	const (
		fsIocFiemap  = 0xC020660B
		fiemapSync   = 0x1
		extentLast   = 0x1
		extentShared = 0x2000
		maxExtents   = 512
	)
	type extent struct {
		Logical, Physical, Length uint64
		_                         [2]uint64
		Flags                     uint32
		_                         [3]uint32
	}
	type fiemap struct {
		Start, Length                        uint64
		Flags, Mapped, ExtentCount, Reserved uint32
		Extents                              [maxExtents]extent
	}
	var start uint64
	for {
		fm := &fiemap{Start: start, Length: ^uint64(0) - start, Flags: fiemapSync, ExtentCount: maxExtents}
		_, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), fsIocFiemap, uintptr(unsafe.Pointer(fm)))
		Expect(errno).To(BeZero())
		if fm.Mapped == 0 {
			return shared, mapped
		}
		for _, e := range fm.Extents[:fm.Mapped] {
			mapped += int64(e.Length)
			if e.Flags&extentShared != 0 {
				shared += int64(e.Length)
			}
			start = e.Logical + e.Length
			if e.Flags&extentLast != 0 {
				return shared, mapped
			}
		}
	}
}

// freeBytes is the data directory's free space.
func freeBytes() int64 {
	GinkgoHelper()
	var st unix.Statfs_t
	Expect(unix.Statfs(dataDir, &st)).To(Succeed())
	return int64(st.Bavail) * st.Bsize
}

var _ = Describe("Capture of a session's disk (writeback Images)", func() {
	It("waits for the session to stop, clones its disk by reflink (blocks shared, no space used), checksums it, leaves the disk alone and keeps it across a restart", func() {
		stop := runRole()
		l := newLab()
		l.imageWith("win11", "GOLDEN")
		l.machineWith("seat-1")
		s := l.session("maint", "seat-1", "win11", bootv1.WritebackPersist)
		disk := s.Status.OverlayPath
		writeAt(disk, "MAINTENANCE WRITE", 4096)
		writeRandom(disk, 4<<20, 24<<20) // the new game's files

		By("an Image of the running session waits for it to stop")
		l.captureImage("win11-v2", "maint")
		Eventually(l.replicaOf("win11-v2"), eventually).Should(And(HaveField("State", bootv1.ReplicaPending),
			HaveField("Reason", bootv1.SessionNotStoppedReason), HaveField("Message", ContainSubstring("waiting for BootSession maint to stop"))))
		img := &bootv1.Image{}
		Expect(k8sClient.Get(l.ctx, client.ObjectKey{Namespace: l.ns, Name: "win11-v2"}, img)).To(Succeed())
		final := role.images.Path(l.ns, "win11-v2", string(img.UID))
		Consistently(func() bool { return exists(final) }, 2*time.Second).Should(BeFalse(), "a running PC's disk is never captured")

		By("stopping the session: the disk is captured")
		free := freeBytes()
		l.stop(s)
		want := fileSHA256(disk)
		Eventually(l.replicaOf("win11-v2"), eventually).Should(And(HaveField("State", bootv1.ReplicaReady),
			HaveField("SHA256", want), HaveField("Path", final), HaveField("SizeBytes", int64(32<<20)),
			HaveField("BytesDone", BeZero()), HaveField("BytesTotal", BeZero()), HaveField("BytesPerSecond", BeZero())))
		Expect(readAt(final, 0, 6)).To(Equal("GOLDEN"))
		Expect(readAt(final, 4096, 17)).To(Equal("MAINTENANCE WRITE"))
		Expect(fileSHA256(final)).To(Equal(want))
		shared, mapped := sharedBytes(final)
		Expect(shared).To(BeNumerically(">=", 24<<20), "the replica shares the disk's blocks (mapped %d)", mapped)
		Expect(free-freeBytes()).To(BeNumerically("<", 4<<20), "a reflink clone takes no space for the data")
		Expect(fileSHA256(disk)).To(Equal(want), "the disk is untouched")
		Expect(exists(disk)).To(BeTrue())

		By("the Machine's next session writes to its disk: the Image does not change")
		writeAt(disk, "NEXT SESSION WRITE", 4096)
		Expect(readAt(final, 4096, 17)).To(Equal("MAINTENANCE WRITE"))
		Expect(fileSHA256(final)).To(Equal(want))

		By("restarting the agent: the replica is found in place, not captured again")
		stop()
		runRole()
		Consistently(l.replicaOf("win11-v2"), 3*time.Second).Should(And(HaveField("State", bootv1.ReplicaReady), HaveField("SHA256", want)))
		Expect(fileSHA256(final)).To(Equal(want))

		By("a session of a Machine boots from the captured Image")
		l.machineWith("seat-2")
		s2 := l.session("play", "seat-2", "win11-v2", bootv1.WritebackDiscard)
		Expect(readAt(s2.Status.OverlayPath, 4096, 17)).To(Equal("MAINTENANCE WRITE"))
		l.stop(s2)
	})

	It("refuses a missing session, a Discard session and a disk that is gone", func() {
		runRole()
		l := newLab()
		l.imageWith("win11", "GOLDEN")
		l.machineWith("seat-1")
		l.machineWith("seat-2")

		l.captureImage("from-nothing", "nope")
		Eventually(l.replicaOf("from-nothing"), eventually).Should(And(HaveField("State", bootv1.ReplicaFailed),
			HaveField("Reason", bootv1.InvalidCaptureSourceReason), HaveField("Message", ContainSubstring("BootSession nope does not exist"))))

		d := l.session("discard", "seat-1", "win11", bootv1.WritebackDiscard)
		l.stop(d)
		l.captureImage("from-discard", "discard")
		Eventually(l.replicaOf("from-discard"), eventually).Should(And(HaveField("State", bootv1.ReplicaFailed),
			HaveField("Reason", bootv1.InvalidCaptureSourceReason), HaveField("Message", ContainSubstring("uses writeback Discard"))))

		By("a Persist session whose disk was reset after it stopped")
		m := &bootv1.Machine{}
		Expect(k8sClient.Get(l.ctx, client.ObjectKey{Namespace: l.ns, Name: "seat-2"}, m)).To(Succeed())
		p := l.session("persist", "seat-2", "win11", bootv1.WritebackPersist)
		l.stop(p)
		l.updateMachine(m, func(m *bootv1.Machine) { m.Spec.PersistentDisks = &bootv1.PersistentDiskPolicy{ResetGeneration: 1} })
		Eventually(func() bool { return exists(p.Status.OverlayPath) }, eventually).Should(BeFalse())
		l.captureImage("from-reset", "persist")
		Eventually(l.replicaOf("from-reset"), eventually).Should(And(HaveField("State", bootv1.ReplicaFailed),
			HaveField("Reason", bootv1.InvalidCaptureSourceReason), HaveField("Message", ContainSubstring("is gone"))))
	})

	It("never captures a disk while a session uses it", func() {
		runRole()
		l := newLab()
		l.imageWith("win11", "GOLDEN")
		l.machineWith("seat-1")
		s1 := l.session("s1", "seat-1", "win11", bootv1.WritebackPersist)
		disk := s1.Status.OverlayPath
		writeAt(disk, "FIRST SESSION", 4096)
		l.stop(s1)
		s2 := l.session("s2", "seat-1", "win11", bootv1.WritebackPersist)
		Expect(s2.Status.OverlayPath).To(Equal(disk), "the Machine's next session runs on the same disk")

		img := l.captureImage("win11-v2", "s1")
		Eventually(l.replicaOf("win11-v2"), eventually).Should(And(HaveField("State", bootv1.ReplicaPending),
			HaveField("Reason", bootv1.PersistentDiskInUseReason), HaveField("Message", ContainSubstring("in use by session s2"))))
		Expect(k8sClient.Get(l.ctx, client.ObjectKeyFromObject(img), img)).To(Succeed())
		final := role.images.Path(l.ns, "win11-v2", string(img.UID))
		Consistently(func() bool { return exists(final) }, 3*time.Second).Should(BeFalse())

		By("the session stops: the disk is captured, with what the Machine wrote last")
		writeAt(disk, "SECOND SESSION", 4096)
		l.stop(s2)
		Eventually(l.replicaOf("win11-v2"), eventually).Should(HaveField("State", bootv1.ReplicaReady))
		Expect(readAt(final, 4096, 14)).To(Equal("SECOND SESSION"))
	})
})
