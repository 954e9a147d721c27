package storage

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/retry"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/metrics"

	bootv1 "github.com/ggnet/ggnet/api/v1alpha1"
	bootac "github.com/ggnet/ggnet/api/v1alpha1/applyconfiguration/api/v1alpha1"
	"github.com/ggnet/ggnet/internal/fixture"
)

// machineWith creates a Machine like machine does, changed by opts.
func (l *lab) machineWith(name string, opts ...fixture.MachineOption) *bootv1.Machine {
	machines++
	opts = append([]fixture.MachineOption{fixture.WithMAC(fmt.Sprintf("52:54:00:00:%02x:%02x", machines/256, machines%256)),
		fixture.WithAddress(fmt.Sprintf("10.20.0.%d", 40+machines))}, opts...)
	m := fixture.Machine(l.ns, name, opts...)
	Expect(k8sClient.Create(l.ctx, m)).To(Succeed())
	return m
}

func onDelete(p bootv1.PersistentDiskDeletePolicy) fixture.MachineOption {
	return func(m *bootv1.Machine) { m.Spec.PersistentDisks = &bootv1.PersistentDiskPolicy{OnDelete: p} }
}

// imageWith creates an Image whose first bytes are marker and waits for its
// replica.
func (l *lab) imageWith(name, marker string) *bootv1.Image {
	p := goldenImage(32 << 20)
	writeAt(p, marker, 0)
	img := fixture.Image(l.ns, name, func(i *bootv1.Image) { i.Spec.Source.Path.Path = p })
	Expect(k8sClient.Create(l.ctx, img)).To(Succeed())
	Eventually(func() int32 {
		_ = k8sClient.Get(l.ctx, client.ObjectKeyFromObject(img), img)
		return img.Status.ReadyReplicas
	}, eventually).Should(Equal(int32(1)))
	return img
}

func writeAt(path, s string, off int64) {
	GinkgoHelper()
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	Expect(err).NotTo(HaveOccurred())
	_, err = f.WriteAt([]byte(s), off)
	Expect(err).NotTo(HaveOccurred())
	Expect(f.Close()).To(Succeed())
}

func readAt(path string, off, n int) string {
	GinkgoHelper()
	b, err := os.ReadFile(path)
	Expect(err).NotTo(HaveOccurred())
	return string(b[off : off+n])
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// disks returns the Machine's status.persistentDisks.
func (l *lab) disks(m *bootv1.Machine) []bootv1.PersistentDisk {
	cur := &bootv1.Machine{}
	if err := k8sClient.Get(l.ctx, client.ObjectKeyFromObject(m), cur); err != nil {
		return nil
	}
	return cur.Status.PersistentDisks
}

// diskState is the state of the Machine's entry for an Image on this node.
func (l *lab) diskState(m *bootv1.Machine, img *bootv1.Image) func() bootv1.PersistentDiskState {
	return func() bootv1.PersistentDiskState {
		for _, d := range l.disks(m) {
			if d.Node == nodeName && d.ImageUID == string(img.UID) {
				return d.State
			}
		}
		return ""
	}
}

// events returns the reasons of the Events about an object of the lab.
func (l *lab) events(name string) []string {
	var list corev1.EventList
	Expect(k8sClient.List(l.ctx, &list, client.InNamespace(l.ns))).To(Succeed())
	var out []string
	for _, e := range list.Items {
		if e.InvolvedObject.Name == name {
			out = append(out, e.Reason)
		}
	}
	return out
}

// orphanGauge reads ggnet_storage_orphaned_persistent_disks{namespace=ns}
// from the registry the metrics endpoint serves.
func orphanGauge(ns string) float64 {
	families, err := metrics.Registry.Gather()
	Expect(err).NotTo(HaveOccurred())
	for _, f := range families {
		if f.GetName() != "ggnet_storage_orphaned_persistent_disks" {
			continue
		}
		for _, m := range f.GetMetric() {
			for _, lp := range m.GetLabel() {
				if lp.GetName() == "namespace" && lp.GetValue() == ns {
					return m.GetGauge().GetValue()
				}
			}
		}
	}
	return -1
}

// orphanCondition is the storage Node's orphan condition.
func orphanCondition() *corev1.NodeCondition {
	node := &corev1.Node{}
	Expect(k8sClient.Get(context.Background(), client.ObjectKey{Name: nodeName}, node)).To(Succeed())
	for i := range node.Status.Conditions {
		if node.Status.Conditions[i].Type == bootv1.OrphanedPersistentDisksCondition {
			return &node.Status.Conditions[i]
		}
	}
	return nil
}

// orphanMessage is the message of the orphan condition while True. It names
// the first ten orphans by path; this suite's specs leave six on its data
// directory.
func orphanMessage() func() string {
	return func() string {
		c := orphanCondition()
		if c == nil || c.Status != corev1.ConditionTrue {
			return ""
		}
		return c.Message
	}
}

func (l *lab) updateMachine(m *bootv1.Machine, change func(*bootv1.Machine)) {
	GinkgoHelper()
	Expect(retry.RetryOnConflict(retry.DefaultRetry, func() error {
		if err := k8sClient.Get(l.ctx, client.ObjectKeyFromObject(m), m); err != nil {
			return err
		}
		change(m)
		return k8sClient.Update(l.ctx, m)
	})).To(Succeed())
}

func (l *lab) gone(o client.Object) func() bool {
	return func() bool {
		return apierrors.IsNotFound(k8sClient.Get(l.ctx, client.ObjectKeyFromObject(o), o))
	}
}

var _ = Describe("Persistent disks", func() {
	It("gives machines a-b with image c and a with image b-c two disks, keyed by UID, listed in their status", func() {
		runRole()
		l := newLab()
		c, bc := l.imageWith("c", "IMAGE C"), l.imageWith("b-c", "IMAGE B-C")
		ab, a := l.machineWith("a-b"), l.machineWith("a")
		s1 := l.session("s1", "a-b", "c", bootv1.WritebackPersist)
		s2 := l.session("s2", "a", "b-c", bootv1.WritebackPersist)
		Expect(s1.Status.OverlayPath).NotTo(Equal(s2.Status.OverlayPath), "two PCs never share one disk")
		Expect(s1.Status.OverlayPath).To(Equal(filepath.Join(dataDir, "overlays", l.ns, "persist", string(ab.UID)+"-"+string(c.UID)+"-g0.raw")))
		Expect(s2.Status.OverlayPath).To(Equal(filepath.Join(dataDir, "overlays", l.ns, "persist", string(a.UID)+"-"+string(bc.UID)+"-g0.raw")))
		Expect(readAt(s1.Status.OverlayPath, 0, 7)).To(Equal("IMAGE C"))
		Expect(readAt(s2.Status.OverlayPath, 0, 9)).To(Equal("IMAGE B-C"))
		writeAt(s1.Status.OverlayPath, "WRITTEN BY A-B", 4096)
		writeAt(s2.Status.OverlayPath, "WRITTEN BY A..", 4096)

		By("listing each disk in its Machine's status")
		Eventually(l.diskState(ab, c), eventually).Should(Equal(bootv1.PersistentDiskInUse))
		d := l.disks(ab)
		Expect(d).To(HaveLen(1))
		Expect(d[0].Node).To(Equal(nodeName))
		Expect(d[0].Image).To(Equal("c"))
		Expect(d[0].Path).To(Equal(s1.Status.OverlayPath))
		Expect(d[0].SizeBytes).To(Equal(int64(32 << 20)))
		Expect(d[0].Generation).To(BeZero())
		Expect(d[0].LastUsed).NotTo(BeNil())
		inUseSince := d[0].LastUsed.Time

		l.stop(s1)
		l.stop(s2)
		Eventually(l.diskState(ab, c), eventually).Should(Equal(bootv1.PersistentDiskAvailable))
		Eventually(l.diskState(a, bc), eventually).Should(Equal(bootv1.PersistentDiskAvailable))
		Expect(l.disks(ab)[0].LastUsed.Time).NotTo(BeTemporally("<", inUseSince), "lastUsed is stamped when the session stops")

		By("the next sessions continue from their own disk")
		s3 := l.session("s3", "a-b", "c", bootv1.WritebackPersist)
		s4 := l.session("s4", "a", "b-c", bootv1.WritebackPersist)
		Expect(s3.Status.OverlayPath).To(Equal(s1.Status.OverlayPath))
		Expect(readAt(s3.Status.OverlayPath, 4096, 14)).To(Equal("WRITTEN BY A-B"))
		Expect(readAt(s4.Status.OverlayPath, 4096, 14)).To(Equal("WRITTEN BY A.."))
		l.stop(s3)
		l.stop(s4)
	})

	It("never reuses a disk for a recreated Image: the new session starts from the new image, the old disk is kept and reported", func() {
		runRole()
		l := newLab()
		old := l.imageWith("win11", "OLD IMAGE")
		m := l.machineWith("seat-1")
		s1 := l.session("s1", "seat-1", "win11", bootv1.WritebackPersist)
		oldDisk := s1.Status.OverlayPath
		writeAt(oldDisk, "OLD WRITES", 4096)
		l.stop(s1)

		By("deleting the Image: its disk is orphaned, kept, and reported")
		Expect(k8sClient.Delete(l.ctx, old)).To(Succeed())
		Eventually(l.gone(old), eventually).Should(BeTrue())
		Eventually(l.diskState(m, old), eventually).Should(Equal(bootv1.PersistentDiskOrphaned))
		Eventually(func() []string { return l.events("seat-1") }, eventually).Should(ContainElement(bootv1.PersistentDiskOrphanedReason))
		Eventually(func() float64 { return orphanGauge(l.ns) }, eventually).Should(Equal(1.0))
		Eventually(orphanMessage(), eventually).Should(ContainSubstring(oldDisk + " (Image gone)"))

		By("recreating an Image with the same name")
		img := l.imageWith("win11", "NEW IMAGE")
		Expect(img.UID).NotTo(Equal(old.UID))
		s2 := l.session("s2", "seat-1", "win11", bootv1.WritebackPersist)
		Expect(s2.Status.OverlayPath).NotTo(Equal(oldDisk))
		Expect(readAt(s2.Status.OverlayPath, 0, 9)).To(Equal("NEW IMAGE"))
		Expect(readAt(s2.Status.OverlayPath, 4096, 10)).NotTo(Equal("OLD WRITES"))
		Expect(readAt(oldDisk, 4096, 10)).To(Equal("OLD WRITES"), "the old disk is still on the node")
		Eventually(l.diskState(m, img), eventually).Should(Equal(bootv1.PersistentDiskInUse))
		Expect(l.diskState(m, old)()).To(Equal(bootv1.PersistentDiskOrphaned), "both disks are listed")
		l.stop(s2)
		Consistently(func() float64 { return orphanGauge(l.ns) }, 2*time.Second).Should(Equal(1.0))
		Expect(exists(oldDisk)).To(BeTrue())
	})

	It("resets a machine's disks when resetGeneration grows, waiting while a session runs", func() {
		runRole()
		l := newLab()
		img := l.imageWith("win11", "GOLDEN")
		m := l.machineWith("seat-1")
		s1 := l.session("s1", "seat-1", "win11", bootv1.WritebackPersist)
		disk := s1.Status.OverlayPath
		writeAt(disk, "SAVED GAME", 4096)

		By("raising resetGeneration while the session runs: nothing happens to the disk")
		l.updateMachine(m, func(m *bootv1.Machine) { m.Spec.PersistentDisks = &bootv1.PersistentDiskPolicy{ResetGeneration: 1} })
		Eventually(l.diskState(m, img), eventually).Should(Equal(bootv1.PersistentDiskResetPending))
		Eventually(func() []string { return l.events("seat-1") }, eventually).Should(ContainElement(bootv1.PersistentDiskResetPendingReason))
		Consistently(func() string { return readAt(disk, 4096, 10) }, 2*time.Second).Should(Equal("SAVED GAME"), "the disk is sacred while its session runs")
		Expect(targets()).To(ContainElement(HaveField("Path", disk)))

		By("lowering it is refused")
		cur := &bootv1.Machine{}
		Expect(k8sClient.Get(l.ctx, client.ObjectKeyFromObject(m), cur)).To(Succeed())
		cur.Spec.PersistentDisks.ResetGeneration = 0
		err := k8sClient.Update(l.ctx, cur)
		Expect(apierrors.IsInvalid(err)).To(BeTrue(), "%v", err)
		Expect(err.Error()).To(ContainSubstring("resetGeneration may only grow"))

		By("stopping the session: the old disk goes, the next session starts from a fresh clone")
		l.stop(s1)
		Eventually(func() bool { return exists(disk) }, eventually).Should(BeFalse())
		Eventually(l.diskState(m, img), eventually).Should(BeEmpty())
		Expect(l.events("seat-1")).To(ContainElement(bootv1.PersistentDiskResetReason))
		s2 := l.session("s2", "seat-1", "win11", bootv1.WritebackPersist)
		Expect(s2.Status.OverlayPath).To(HaveSuffix("-g1.raw"))
		Expect(readAt(s2.Status.OverlayPath, 0, 6)).To(Equal("GOLDEN"))
		Expect(readAt(s2.Status.OverlayPath, 4096, 10)).NotTo(Equal("SAVED GAME"))
		Eventually(func() int64 {
			for _, d := range l.disks(m) {
				return d.Generation
			}
			return -1
		}, eventually).Should(Equal(int64(1)))
		l.stop(s2)
	})

	It("keeps the disks of a deleted Machine with onDelete: Retain and reports them", func() {
		runRole()
		l := newLab()
		l.imageWith("win11", "GOLDEN")
		m := l.machineWith("seat-1")
		s := l.session("s", "seat-1", "win11", bootv1.WritebackPersist)
		disk := s.Status.OverlayPath
		l.stop(s)
		Expect(m.Finalizers).NotTo(ContainElement(bootv1.NodeFinalizer(nodeName)), "Retain holds no finalizer")
		Expect(k8sClient.Delete(l.ctx, m)).To(Succeed())
		Eventually(l.gone(m), eventually).Should(BeTrue())
		Eventually(func() float64 { return orphanGauge(l.ns) }, eventually).Should(Equal(1.0))
		Eventually(orphanMessage(), eventually).Should(ContainSubstring(disk + " (Machine gone)"))
		Expect(exists(disk)).To(BeTrue())
	})

	It("deletes the disks of a deleted Machine with onDelete: Delete once its session ends, then releases its finalizer", func() {
		runRole()
		l := newLab()
		img := l.imageWith("win11", "GOLDEN")
		m := l.machineWith("seat-1", onDelete(bootv1.PersistentDiskDelete))
		s := l.session("s", "seat-1", "win11", bootv1.WritebackPersist)
		disk := s.Status.OverlayPath
		Expect(k8sClient.Get(l.ctx, client.ObjectKeyFromObject(m), m)).To(Succeed())
		Expect(m.Finalizers).To(ContainElement(bootv1.NodeFinalizer(nodeName)))

		By("deleting the Machine while its session runs: the disk stays")
		Expect(k8sClient.Delete(l.ctx, m)).To(Succeed())
		Eventually(l.diskState(m, img), eventually).Should(Equal(bootv1.PersistentDiskDeletePending))
		Consistently(func() bool { return exists(disk) }, 2*time.Second).Should(BeTrue())
		Expect(l.gone(m)()).To(BeFalse(), "this node's finalizer holds the Machine")
		Expect(targets()).To(ContainElement(HaveField("Path", disk)))

		By("stopping the session: the disk goes, then the Machine")
		l.stop(s)
		Eventually(func() bool { return exists(disk) }, eventually).Should(BeFalse())
		Eventually(l.gone(m), eventually).Should(BeTrue())
		Expect(l.events("seat-1")).To(ContainElements(bootv1.PersistentDiskDeletePendingReason, bootv1.PersistentDiskDeletedReason))
		Consistently(func() float64 { return orphanGauge(l.ns) }, 2*time.Second).Should(BeNumerically("<=", 0))
	})

	It("never lets the garbage collector touch a persistent disk; reports the orphans beside the kubelet's conditions", func() {
		// The kubelet's condition, which the agent's patch leaves alone.
		node := &corev1.Node{}
		Expect(k8sClient.Get(context.Background(), client.ObjectKey{Name: nodeName}, node)).To(Succeed())
		kubelet := corev1.NodeCondition{Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "KubeletReady", Message: "kubelet is posting ready status",
			LastHeartbeatTime: metav1.Now(), LastTransitionTime: metav1.Now()}
		node.Status.Conditions = append(node.Status.Conditions, kubelet)
		Expect(k8sClient.Status().Update(context.Background(), node)).To(Succeed())
		runRole()
		l := newLab()
		l.imageWith("win11", "GOLDEN")
		l.machineWith("seat-1")
		s := l.session("s", "seat-1", "win11", bootv1.WritebackPersist)
		disk := s.Status.OverlayPath
		l.stop(s)
		// A disk of nobody, a file of another name in persist/, and an
		// old-layout file no pair maps to.
		stray := filepath.Join(filepath.Dir(disk), "00000000-0000-0000-0000-000000000001-00000000-0000-0000-0000-000000000002-g0.raw")
		odd := filepath.Join(filepath.Dir(disk), "copied-by-hand.raw")
		legacy := filepath.Join(dataDir, "overlays", l.ns, "persist-nobody-nothing.raw")
		for _, p := range []string{stray, odd, legacy} {
			Expect(os.WriteFile(p, []byte("KEEP"), 0o600)).To(Succeed())
		}
		for range 3 {
			Expect(role.collectOnce(l.ctx)).To(Succeed())
		}
		for _, p := range []string{disk, stray, odd, legacy} {
			Expect(exists(p)).To(BeTrue(), p)
		}
		Eventually(func() float64 { return orphanGauge(l.ns) }, eventually).Should(Equal(3.0))
		Eventually(orphanMessage(), eventually).Should(And(ContainSubstring(stray+" (Machine gone)"),
			ContainSubstring(odd+" (not a disk name)"), ContainSubstring(legacy+" (old layout)")))
		Expect(k8sClient.Get(context.Background(), client.ObjectKey{Name: nodeName}, node)).To(Succeed())
		Expect(node.Status.Conditions).To(ContainElement(And(HaveField("Type", corev1.NodeReady), HaveField("Reason", "KubeletReady"))))
		Eventually(func() []string {
			var list corev1.EventList
			Expect(k8sClient.List(l.ctx, &list, client.InNamespace(metav1.NamespaceDefault))).To(Succeed())
			var msgs []string
			for _, e := range list.Items {
				if e.InvolvedObject.Kind == "Node" && e.Reason == bootv1.OrphanedPersistentDisksReason && e.Type == corev1.EventTypeWarning {
					msgs = append(msgs, e.Message)
				}
			}
			return msgs
		}, eventually).Should(ContainElement(ContainSubstring(odd)), "a Warning Event on the Node names new orphans")
		for _, p := range []string{disk, stray, odd, legacy} {
			Expect(exists(p)).To(BeTrue(), "reported, never removed: %s", p)
		}
	})

	It("adopts a disk of the old layout only when its name maps to exactly one (Machine, Image) pair", func() {
		runRole()
		l := newLab()
		img := l.imageWith("win11", "GOLDEN")
		l.imageWith("c", "IMAGE C")
		l.imageWith("b-c", "IMAGE B-C")
		seat := l.machineWith("seat-1")
		l.machineWith("a-b")
		l.machineWith("a")
		dir := filepath.Join(dataDir, "overlays", l.ns)
		Expect(os.MkdirAll(dir, 0o700)).To(Succeed())
		unique, ambiguous := filepath.Join(dir, "persist-seat-1-win11.raw"), filepath.Join(dir, "persist-a-b-c.raw")
		for p, content := range map[string]string{unique: "SEAT-1 LEGACY", ambiguous: "WHOSE LEGACY?"} {
			Expect(os.WriteFile(p, []byte(content), 0o600)).To(Succeed())
			Expect(os.Truncate(p, 32<<20)).To(Succeed())
		}

		By("adopting the unique one into the UID-keyed layout")
		adopted := filepath.Join(dir, "persist", string(seat.UID)+"-"+string(img.UID)+"-g0.raw")
		Eventually(func() bool { return exists(adopted) }, eventually).Should(BeTrue())
		Expect(exists(unique)).To(BeFalse())
		Eventually(l.diskState(seat, img), eventually).Should(Equal(bootv1.PersistentDiskAvailable))
		Expect(l.events("seat-1")).To(ContainElement(bootv1.PersistentDiskAdoptedReason))
		s := l.session("s", "seat-1", "win11", bootv1.WritebackPersist)
		Expect(s.Status.OverlayPath).To(Equal(adopted))
		Expect(readAt(adopted, 0, 13)).To(Equal("SEAT-1 LEGACY"))

		By("leaving the ambiguous one alone and reporting it; both machines get fresh disks")
		s1 := l.session("s1", "a-b", "c", bootv1.WritebackPersist)
		s2 := l.session("s2", "a", "b-c", bootv1.WritebackPersist)
		Expect(readAt(s1.Status.OverlayPath, 0, 7)).To(Equal("IMAGE C"))
		Expect(readAt(s2.Status.OverlayPath, 0, 9)).To(Equal("IMAGE B-C"))
		Expect(readAt(ambiguous, 0, 13)).To(Equal("WHOSE LEGACY?"))
		Eventually(func() float64 { return orphanGauge(l.ns) }, eventually).Should(Equal(1.0))
		Eventually(orphanMessage(), eventually).Should(ContainSubstring(ambiguous + " (old layout)"))
		for _, x := range []*bootv1.BootSession{s, s1, s2} {
			l.stop(x)
		}
	})

	It("makes a new session wait, never guess: an unknown Machine, a disk in use, a Machine being deleted", func() {
		runRole()
		l := newLab()
		img := l.imageWith("win11", "GOLDEN")
		m := l.machineWith("seat-1")
		running := l.session("s1", "seat-1", "win11", bootv1.WritebackPersist)
		replica := img.Status.Replicas[0].Path
		sr := &sessionReconciler{Role: role, Client: role.mgr.GetClient()}
		// newSession is a session the manager would have scheduled here.
		newSession := func(machine string) *bootv1.BootSession {
			s := fixture.Session(l.ns, "s2", machine, "win11", fixture.WithWriteback(bootv1.WritebackPersist))
			s.UID = "0f0e0d0c-0b0a-4908-8706-050403020100"
			s.Status.StorageNode = nodeName
			s.Status.Target = &bootv1.ISCSITarget{IQN: "iqn.2026-11.io.ggnet:" + l.ns + ":s2", LUN: 1}
			return s
		}
		wait := func(s *bootv1.BootSession) *waitFor {
			GinkgoHelper()
			path, created, unlock, w, err := sr.newSessionDisk(l.ctx, s, img, replica)
			Expect(err).NotTo(HaveOccurred())
			Expect(unlock).To(BeNil(), "a waiting session holds no lock")
			Expect(path).To(BeEmpty())
			Expect(created).To(BeFalse())
			return w
		}

		By("a Machine this node does not know")
		w := wait(newSession("seat-9"))
		Expect(w).NotTo(BeNil())
		Expect(w.reason).To(Equal(bootv1.MachineNotFoundReason))

		By("a disk another session runs on")
		w = wait(newSession("seat-1"))
		Expect(w).NotTo(BeNil())
		Expect(w.reason).To(Equal(bootv1.PersistentDiskInUseReason))
		Expect(w.msg).To(ContainSubstring("session s1"))
		w = wait(newSession("seat-1"))
		Expect(w).NotTo(BeNil(), "asked again: the lock was released")
		l.stop(running)

		By("a Machine being deleted without a disk for the Image here")
		other := l.imageWith("win10", "OTHER")
		l.updateMachine(m, func(m *bootv1.Machine) { m.Finalizers = append(m.Finalizers, "test.ggnet.io/hold") })
		Expect(k8sClient.Delete(l.ctx, m)).To(Succeed())
		Eventually(func() bool {
			cur := &bootv1.Machine{}
			return role.mgr.GetClient().Get(l.ctx, client.ObjectKeyFromObject(m), cur) == nil && cur.DeletionTimestamp != nil
		}, eventually).Should(BeTrue())
		s := newSession("seat-1")
		s.Spec.ImageRef.Name = "win10"
		_, _, unlock, w, err := sr.newSessionDisk(l.ctx, s, other, other.Status.Replicas[0].Path)
		Expect(err).NotTo(HaveOccurred())
		Expect(unlock).To(BeNil())
		Expect(w).NotTo(BeNil())
		Expect(w.reason).To(Equal(bootv1.MachineDeletingReason))
		entries, _ := os.ReadDir(filepath.Dir(running.Status.OverlayPath))
		Expect(entries).To(HaveLen(1), "no disk was made")
		l.updateMachine(m, func(m *bootv1.Machine) { m.Finalizers = nil })
	})

	It("writes status.persistentDisks beside the manager's status and other nodes' entries", func() {
		runRole()
		l := newLab()
		img := l.imageWith("win11", "GOLDEN")
		m := l.machineWith("seat-1")
		s := l.session("s", "seat-1", "win11", bootv1.WritebackPersist)
		Eventually(l.diskState(m, img), eventually).Should(Equal(bootv1.PersistentDiskInUse))

		By("another node's agent applies its own entry")
		other := bootac.Machine("seat-1", l.ns).WithStatus(bootac.MachineStatus().WithPersistentDisks(bootac.PersistentDisk().
			WithNode("storage-2").WithImageUID(string(img.UID)).WithImage("win11").WithPath("/elsewhere.raw").WithSizeBytes(1).
			WithState(bootv1.PersistentDiskAvailable)))
		Expect(k8sClient.Status().Apply(l.ctx, other, client.FieldOwner("ggnet-storage-storage-2"), client.ForceOwnership)).To(Succeed())

		By("the manager rewrites its status (a new hostname in the reservation); this node's disk changes state")
		l.updateMachine(m, func(m *bootv1.Machine) { m.Spec.Hostname = "renamed" })
		Eventually(func() string {
			_ = k8sClient.Get(l.ctx, client.ObjectKeyFromObject(m), m)
			if m.Status.Reservation == nil {
				return ""
			}
			return m.Status.Reservation.Hostname
		}, eventually).Should(Equal("renamed"))
		l.stop(s)
		Eventually(l.diskState(m, img), eventually).Should(Equal(bootv1.PersistentDiskAvailable))

		Expect(k8sClient.Get(l.ctx, client.ObjectKeyFromObject(m), m)).To(Succeed())
		Expect(m.Status.PersistentDisks).To(ConsistOf(HaveField("Node", nodeName), HaveField("Node", "storage-2")), "both nodes' entries are kept")
		Expect(m.Status.Reservation.Hostname).To(Equal("renamed"))
		Expect(meta.FindStatusCondition(m.Status.Conditions, bootv1.ReadyCondition)).NotTo(BeNil(), "the manager's conditions are kept")
	})
})

var _ = Describe("A session whose overlay vanished", func() {
	It("is never given a fresh overlay: StorageReady=False OverlayLost, the target is left to the PC, the stop cleans up", func() {
		runRole()
		l := newLab()
		l.image("win11", 64<<20)
		l.machine("seat-1")
		s := l.session("s", "seat-1", "win11", bootv1.WritebackDiscard)
		overlay := s.Status.OverlayPath
		info := credentials(s)
		const marker, at = "BEFORE THE LOSS!", 1 << 20 // one line of qemu-io's dump
		writeAt(overlay, marker, at)

		By("deleting the overlay file under the running session")
		Expect(os.Remove(overlay)).To(Succeed())
		Eventually(func() string {
			_ = k8sClient.Get(l.ctx, client.ObjectKeyFromObject(s), s)
			c := meta.FindStatusCondition(s.Status.Conditions, bootv1.StorageReadyCondition)
			return c.Reason
		}, eventually).Should(Equal(bootv1.OverlayLostReason))
		c := meta.FindStatusCondition(s.Status.Conditions, bootv1.StorageReadyCondition)
		Expect(c.Status).To(Equal(metav1.ConditionFalse))
		Expect(c.Message).To(ContainSubstring(overlay))
		Expect(l.events("s")).To(ContainElement(bootv1.OverlayLostReason))
		Consistently(func() bool { return exists(overlay) }, 3*time.Second).Should(BeFalse(), "no fresh overlay is made")
		Expect(s.Status.OverlayPath).To(Equal(overlay))

		By("the target still serves the deleted file the PC was using")
		Expect(targets()).To(ContainElement(And(HaveField("IQN", info.targetIQN), HaveField("Path", overlay))))
		out, err := iscsiRead(info, at, len(marker))
		Expect(err).NotTo(HaveOccurred(), out)
		Expect(out).To(ContainSubstring(fmt.Sprintf("% x", marker)))

		By("stopping the session removes the target")
		l.stop(s)
		Expect(targetIQNs()).NotTo(ContainElement(info.targetIQN))
		Expect(exists(overlay)).To(BeFalse())
	})
})

var _ = Describe("Stopping a session during a tgtd outage", func() {
	It("keeps the finalizer and the overlay until the target is really gone", func() {
		runRole()
		l := newLab()
		l.image("win11", 64<<20)
		l.machine("seat-1")
		s := l.session("s", "seat-1", "win11", bootv1.WritebackDiscard)
		overlay := s.Status.OverlayPath
		iqn := s.Status.Target.IQN

		tgtd.Kill()
		restarted := false
		DeferCleanup(func() {
			if !restarted {
				tgtd.Restart(GinkgoT())
			}
		})
		Expect(retry.RetryOnConflict(retry.DefaultRetry, func() error {
			if err := k8sClient.Get(l.ctx, client.ObjectKeyFromObject(s), s); err != nil {
				return err
			}
			s.Spec.Stopped = true
			return k8sClient.Update(l.ctx, s)
		})).To(Succeed())
		Consistently(func(g Gomega) {
			g.Expect(k8sClient.Get(l.ctx, client.ObjectKeyFromObject(s), s)).To(Succeed())
			g.Expect(s.Finalizers).To(ContainElement(bootv1.StorageFinalizer))
			g.Expect(s.Status.Phase).NotTo(Equal(bootv1.SessionStopped))
			g.Expect(exists(overlay)).To(BeTrue(), "the overlay stays while the target may exist")
		}, 4*time.Second, 250*time.Millisecond).Should(Succeed())

		tgtd.Restart(GinkgoT())
		restarted = true
		Eventually(func() string {
			_ = k8sClient.Get(l.ctx, client.ObjectKeyFromObject(s), s)
			return string(s.Status.Phase)
		}, 45*time.Second).Should(Equal("Stopped"), "the teardown is retried with backoff")
		Expect(s.Finalizers).NotTo(ContainElement(bootv1.StorageFinalizer))
		Expect(exists(overlay)).To(BeFalse())
		Expect(targetIQNs()).NotTo(ContainElement(iqn))
	})
})
