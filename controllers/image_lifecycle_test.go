package controllers

import (
	"context"
	"slices"
	"strings"
	"sync"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	bootv1 "github.com/ggnet/ggnet/api/v1alpha1"
	"github.com/ggnet/ggnet/internal/fixture"
)

// familyImage is an Image of family (the FamilyLabel).
func familyImage(ns, name, family string) *bootv1.Image {
	img := fixture.Image(ns, name)
	img.Labels = map[string]string{bootv1.FamilyLabel: family}
	return img
}

// versionOf waits for img's status.version and returns it.
func versionOf(ctx context.Context, img *bootv1.Image) int64 {
	GinkgoHelper()
	Eventually(func() int64 { return get(ctx, img)().Status.Version }, eventually).ShouldNot(BeZero())
	return img.Status.Version
}

// readyCondition is an object's Ready condition as "Status/Reason".
func readyCondition(conds []metav1.Condition) string {
	c := meta.FindStatusCondition(conds, bootv1.ReadyCondition)
	if c == nil {
		return ""
	}
	return string(c.Status) + "/" + c.Reason
}

var _ = Describe("Image families", func() {
	var (
		ctx  context.Context
		ns   string
		node string
	)
	BeforeEach(func() {
		ctx = context.Background()
		ns = newNamespace(ctx)
		node = "storage-" + ns
		storageNode(ctx, node, "10.20.0.5")
	})

	It("numbers a family's Images in creation order, concurrent creates included, and never renumbers one", func() {
		By("creating six Images of one family at once, and one of another family and one without a family")
		names := []string{"games-f", "games-c", "games-a", "games-e", "games-b", "games-d"}
		var wg sync.WaitGroup
		for _, n := range names {
			wg.Add(1)
			go func() {
				defer GinkgoRecover()
				defer wg.Done()
				Expect(k8sClient.Create(ctx, familyImage(ns, n, "games"))).To(Succeed())
			}()
		}
		wg.Wait()
		office := familyImage(ns, "office-1", "office")
		Expect(k8sClient.Create(ctx, office)).To(Succeed())
		plain := fixture.Image(ns, "plain")
		Expect(k8sClient.Create(ctx, plain)).To(Succeed())

		By("giving them 1 to 6, in the order of creationTimestamp, then name")
		var list bootv1.ImageList
		Eventually(func(g Gomega) {
			g.Expect(k8sClient.List(ctx, &list, client.InNamespace(ns), client.MatchingLabels{bootv1.FamilyLabel: "games"})).To(Succeed())
			g.Expect(list.Items).To(HaveLen(6))
			for _, x := range list.Items {
				g.Expect(x.Status.Version).NotTo(BeZero(), x.Name)
			}
		}, eventually).Should(Succeed())
		slices.SortFunc(list.Items, func(a, b bootv1.Image) int {
			if c := a.CreationTimestamp.Compare(b.CreationTimestamp.Time); c != 0 {
				return c
			}
			return strings.Compare(a.Name, b.Name)
		})
		for i, x := range list.Items {
			Expect(x.Status.Version).To(Equal(int64(i+1)), x.Name)
		}
		Expect(versionOf(ctx, office)).To(Equal(int64(1)), "each family counts on its own")
		Consistently(func() int64 { return get(ctx, plain)().Status.Version }, time.Second).Should(BeZero(), "no family, no version")

		By("numbering the next one 7, and keeping every version as the replicas change")
		seven := familyImage(ns, "games-g", "games")
		Expect(k8sClient.Create(ctx, seven)).To(Succeed())
		Expect(versionOf(ctx, seven)).To(Equal(int64(7)))
		readyReplica(ctx, seven, node)
		Eventually(func() string { return readyCondition(get(ctx, seven)().Status.Conditions) }, eventually).Should(Equal("True/Succeeded"))
		Expect(seven.Status.Version).To(Equal(int64(7)))
	})

	It("summarizes the replicas on their way in status.progress, and empties it when they are done", func() {
		img := familyImage(ns, "games-1", "games")
		Expect(k8sClient.Create(ctx, img)).To(Succeed())
		change(ctx, img, true, func(x *bootv1.Image) {
			x.Status.Replicas = []bootv1.ImageReplica{
				{Node: "node-a", State: bootv1.ReplicaReady, SizeBytes: 10 << 30, SHA256: "ab"},
				{Node: "node-b", State: bootv1.ReplicaDownloading, BytesDone: 3435973837, BytesTotal: 10 << 30, BytesPerSecond: 110 << 20, SourceNode: "node-a"},
				{Node: "node-c", State: bootv1.ReplicaPending},
			}
		})
		Eventually(func() string { return get(ctx, img)().Status.Progress }, eventually).Should(Equal("node-b 3.2 GiB/10 GiB at 110 MiB/s"))
		change(ctx, img, true, func(x *bootv1.Image) {
			x.Status.Replicas[1] = bootv1.ImageReplica{Node: "node-b", State: bootv1.ReplicaReady, SizeBytes: 10 << 30, SHA256: "ab", SourceNode: "node-a"}
		})
		Eventually(func() string { return get(ctx, img)().Status.Progress }, eventually).Should(BeEmpty())
	})
})

var _ = Describe("A Machine following an image family", func() {
	var (
		ctx  context.Context
		ns   string
		node string
	)
	BeforeEach(func() {
		ctx = context.Background()
		ns = newNamespace(ctx)
		node = "storage-" + ns
		storageNode(ctx, node, "10.20.0.5")
	})
	// live lists the machine's sessions that are not stopped or finished.
	live := func(machine string) []bootv1.BootSession {
		var list bootv1.BootSessionList
		Expect(k8sClient.List(ctx, &list, client.InNamespace(ns), client.MatchingLabels{bootv1.MachineLabel: machine})).To(Succeed())
		var out []bootv1.BootSession
		for _, s := range list.Items {
			if !s.Spec.Stopped && !finished(&s) {
				out = append(out, s)
			}
		}
		return out
	}
	liveImages := func(machine string) func() []string {
		return func() []string {
			var out []string
			for _, s := range live(machine) {
				out = append(out, s.Spec.ImageRef.Name)
			}
			return out
		}
	}
	newVersion := func(name string) *bootv1.Image {
		GinkgoHelper()
		img := familyImage(ns, name, "games")
		Expect(k8sClient.Create(ctx, img)).To(Succeed())
		versionOf(ctx, img)
		readyReplica(ctx, img, node)
		return img
	}

	It("waits with NoReadyImageInFamily, follows each new Ready version, never stops a booted session for it, and pins a version to roll back", func() {
		m := fixture.Machine(ns, "seat-1", fixture.WithBootPolicy(bootv1.BootPolicyAutoSession))
		m.Spec.ImageFamily = "games"
		Expect(k8sClient.Create(ctx, m)).To(Succeed())

		By("saying Ready=False NoReadyImageInFamily, with no session, while the family has no Ready version")
		Eventually(func() string { return readyCondition(get(ctx, m)().Status.Conditions) }, eventually).Should(Equal("False/" + bootv1.NoReadyImageInFamilyReason))
		pending := familyImage(ns, "games-1", "games")
		Expect(k8sClient.Create(ctx, pending)).To(Succeed())
		Expect(versionOf(ctx, pending)).To(Equal(int64(1)))
		Consistently(func() string { return get(ctx, m)().Status.Image }, time.Second).Should(BeEmpty(), "a version not Ready is not followed")
		Expect(live(m.Name)).To(BeEmpty())

		By("resolving to version 1 once it is Ready, and preparing a session from it")
		readyReplica(ctx, pending, node)
		Eventually(func() string { return get(ctx, m)().Status.Image }, eventually).Should(Equal("games-1"))
		Eventually(func() string { return readyCondition(get(ctx, m)().Status.Conditions) }, eventually).Should(Equal("True/Succeeded"))
		Eventually(liveImages(m.Name), eventually).Should(Equal([]string{"games-1"}))

		By("replacing the unbooted prepared session when version 2 becomes Ready")
		newVersion("games-2")
		Eventually(func() string { return get(ctx, m)().Status.Image }, eventually).Should(Equal("games-2"))
		Eventually(liveImages(m.Name), eventually).Should(Equal([]string{"games-2"}))

		By("keeping a booted session when version 3 becomes Ready: a running PC's disk is sacred")
		var booted bootv1.BootSession
		Eventually(func(g Gomega) {
			l := live(m.Name)
			g.Expect(l).To(HaveLen(1))
			g.Expect(l[0].Status.Phase).To(Equal(bootv1.SessionReady))
			booted = l[0]
		}, eventually).Should(Succeed())
		now := metav1.Now()
		change(ctx, &booted, true, func(x *bootv1.BootSession) { x.Status.Timeline.ScriptServed = &now })
		Eventually(func() bootv1.BootSessionPhase { return get(ctx, &booted)().Status.Phase }, eventually).Should(Equal(bootv1.SessionBooting))
		newVersion("games-3")
		Eventually(func() string { return get(ctx, m)().Status.Image }, eventually).Should(Equal("games-3"))
		Consistently(liveImages(m.Name), 2*time.Second).Should(Equal([]string{"games-2"}))
		Expect(get(ctx, &booted)().Spec.Stopped).To(BeFalse())

		By("booting version 3 at the next session, once the user stops the running one")
		change(ctx, &booted, false, func(x *bootv1.BootSession) { x.Spec.Stopped = true })
		Eventually(liveImages(m.Name), eventually).Should(Equal([]string{"games-3"}))

		By("rolling back: pinning version 2 resolves to it, whatever is newer, and replaces the unbooted session")
		change(ctx, m, false, func(x *bootv1.Machine) { x.Spec.ImageRef = &bootv1.LocalObjectReference{Name: "games-2"} })
		Eventually(func() string { return get(ctx, m)().Status.Image }, eventually).Should(Equal("games-2"))
		Eventually(liveImages(m.Name), eventually).Should(Equal([]string{"games-2"}))
		newVersion("games-4")
		Consistently(func() string { return get(ctx, m)().Status.Image }, time.Second).Should(Equal("games-2"))

		By("following the latest again when the pin is removed")
		change(ctx, m, false, func(x *bootv1.Machine) { x.Spec.ImageRef = nil })
		Eventually(func() string { return get(ctx, m)().Status.Image }, eventually).Should(Equal("games-4"))
		Eventually(liveImages(m.Name), eventually).Should(Equal([]string{"games-4"}))
	})
})

var _ = Describe("Image retention", func() {
	var (
		ctx  context.Context
		ns   string
		node string
	)
	BeforeEach(func() {
		ctx = context.Background()
		ns = newNamespace(ctx)
		node = "storage-" + ns
		storageNode(ctx, node, "10.20.0.5")
	})
	exists := func(name string) func() bool {
		return func() bool {
			err := k8sClient.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, &bootv1.Image{})
			return !apierrors.IsNotFound(err)
		}
	}

	It("deletes only the old versions nothing uses, keeping the pinned, booted, captured, persistent and keep-annotated ones", func() {
		By("creating versions 1 to 8 of a family, in order (of creation, then of name)")
		names := []string{"v1-pinned", "v2-keep", "v3-session", "v4-disk", "v5-captured", "v6-unused", "v7", "v8"}
		imgs := map[string]*bootv1.Image{}
		for _, n := range names {
			img := familyImage(ns, n, "games")
			if n == "v2-keep" {
				img.Annotations = map[string]string{bootv1.KeepAnnotation: "true"}
			}
			Expect(k8sClient.Create(ctx, img)).To(Succeed())
			imgs[n] = img
		}
		for i, n := range names {
			Expect(versionOf(ctx, imgs[n])).To(Equal(int64(i + 1)))
		}

		By("using five of the old ones: a pin, an unfinished session, a persistent disk, a capture in flight")
		pinner := fixture.Machine(ns, "pinner", fixture.WithImage("v1-pinned"), fixture.WithMAC("52:54:00:00:16:01"), fixture.WithAddress("10.20.0.61"))
		Expect(k8sClient.Create(ctx, pinner)).To(Succeed())
		user := fixture.Machine(ns, "user", fixture.WithMAC("52:54:00:00:16:02"), fixture.WithAddress("10.20.0.62"))
		Expect(k8sClient.Create(ctx, user)).To(Succeed())
		running := fixture.Session(ns, "running", "user", "v3-session")
		Expect(k8sClient.Create(ctx, running)).To(Succeed())
		disk := fixture.Machine(ns, "disk", fixture.WithMAC("52:54:00:00:16:03"), fixture.WithAddress("10.20.0.63"))
		Expect(k8sClient.Create(ctx, disk)).To(Succeed())
		change(ctx, disk, true, func(x *bootv1.Machine) {
			x.Status.PersistentDisks = []bootv1.PersistentDisk{{Node: node, Image: "v4-disk", ImageUID: string(imgs["v4-disk"].UID)}}
		})
		maint := fixture.Machine(ns, "maint", fixture.WithMAC("52:54:00:00:16:04"), fixture.WithAddress("10.20.0.64"))
		Expect(k8sClient.Create(ctx, maint)).To(Succeed())
		source := fixture.Session(ns, "maintenance", "maint", "v5-captured", fixture.WithWriteback(bootv1.WritebackPersist))
		source.Spec.Stopped = true
		Expect(k8sClient.Create(ctx, source)).To(Succeed())
		capture := fixture.Image(ns, "capture")
		capture.Spec.Source = bootv1.ImageSource{Writeback: &bootv1.WritebackSource{SessionRef: bootv1.LocalObjectReference{Name: "maintenance"}}}
		Expect(k8sClient.Create(ctx, capture)).To(Succeed())
		Eventually(func(g Gomega) {
			var ms bootv1.MachineList
			g.Expect(mgrCache.List(ctx, &ms, client.InNamespace(ns))).To(Succeed())
			g.Expect(ms.Items).To(HaveLen(4))
			for _, x := range ms.Items {
				if x.Name == "disk" {
					g.Expect(x.Status.PersistentDisks).To(HaveLen(1))
				}
				if x.Name == "pinner" {
					g.Expect(x.Status.Image).To(Equal("v1-pinned"))
				}
			}
			var ss bootv1.BootSessionList
			g.Expect(mgrCache.List(ctx, &ss, client.InNamespace(ns))).To(Succeed())
			g.Expect(ss.Items).To(HaveLen(2))
			var is bootv1.ImageList
			g.Expect(mgrCache.List(ctx, &is, client.InNamespace(ns))).To(Succeed())
			g.Expect(is.Items).To(HaveLen(9))
		}, eventually).Should(Succeed())

		By("making every version Ready: the newest two (7, 8) are kept, and of the older ones only the unused 6 goes")
		for _, n := range names {
			readyReplica(ctx, imgs[n], node)
		}
		Eventually(exists("v6-unused"), eventually).Should(BeFalse())
		Eventually(func() []string { return events(ctx, ns, "v6-unused") }, eventually).Should(ConsistOf(
			"Retention: Deleting version 6 of family games: the newest 2 Ready versions are kept and nothing uses this one"))
		Consistently(func() []bool {
			var out []bool
			for _, n := range []string{"v1-pinned", "v2-keep", "v3-session", "v4-disk", "v5-captured", "v7", "v8"} {
				out = append(out, exists(n)())
			}
			return out
		}, 2*time.Second).Should(HaveEach(BeTrue()))

		By("deleting each of the others once it is let go")
		change(ctx, running, false, func(x *bootv1.BootSession) { x.Spec.Stopped = true })
		Eventually(exists("v3-session"), eventually).Should(BeFalse())
		change(ctx, pinner, false, func(x *bootv1.Machine) { x.Spec.ImageRef = nil })
		Eventually(exists("v1-pinned"), eventually).Should(BeFalse())
		change(ctx, disk, true, func(x *bootv1.Machine) { x.Status.PersistentDisks = nil })
		Eventually(exists("v4-disk"), eventually).Should(BeFalse())
		change(ctx, capture, true, func(x *bootv1.Image) {
			x.Status.Replicas = []bootv1.ImageReplica{{Node: node, State: bootv1.ReplicaReady, SizeBytes: 1 << 30, SHA256: "cd"}}
		})
		Eventually(exists("v5-captured"), eventually).Should(BeFalse())
		Consistently(exists("v2-keep"), time.Second).Should(BeTrue(), "keep=true is never deleted")
		Expect(exists("v7")()).To(BeTrue())
		Expect(exists("v8")()).To(BeTrue())
	})
})
