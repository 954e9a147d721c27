package storage

import (
	"context"
	"fmt"
	"os"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/retry"
	"sigs.k8s.io/controller-runtime/pkg/client"

	bootv1 "github.com/ggnet/ggnet/api/v1alpha1"
	"github.com/ggnet/ggnet/bootagent/target"
	"github.com/ggnet/ggnet/internal/fixture"
)

const eventually = 30 * time.Second

type lab struct {
	ctx context.Context
	ns  string
}

func newLab() *lab {
	ctx := context.Background()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "ggnet-storage-"}}
	Expect(k8sClient.Create(ctx, ns)).To(Succeed())
	return &lab{ctx: ctx, ns: ns.Name}
}

// machines counts the Machines the suite made: MACs and addresses are
// cluster-wide, and a Machine reusing another's is in conflict and gets no
// session.
var machines int

// machine creates a Machine with a MAC and an address of its own.
func (l *lab) machine(name string) {
	machines++
	m := fixture.Machine(l.ns, name, fixture.WithMAC(fmt.Sprintf("52:54:00:00:%02x:%02x", machines/256, machines%256)),
		fixture.WithAddress(fmt.Sprintf("10.20.0.%d", 40+machines)))
	Expect(k8sClient.Create(l.ctx, m)).To(Succeed())
}

// image creates an Image from a file on the node and waits for this node's
// replica.
func (l *lab) image(name string, size int64) *bootv1.Image {
	img := fixture.Image(l.ns, name, func(i *bootv1.Image) { i.Spec.Source.Path.Path = goldenImage(size) })
	Expect(k8sClient.Create(l.ctx, img)).To(Succeed())
	Eventually(func() int32 {
		_ = k8sClient.Get(l.ctx, client.ObjectKeyFromObject(img), img)
		return img.Status.ReadyReplicas
	}, eventually).Should(Equal(int32(1)))
	return img
}

func (l *lab) session(name, machine, image string, wb bootv1.WritebackPolicy) *bootv1.BootSession {
	s := fixture.Session(l.ns, name, machine, image, fixture.WithWriteback(wb))
	Expect(k8sClient.Create(l.ctx, s)).To(Succeed())
	Eventually(func() string {
		_ = k8sClient.Get(l.ctx, client.ObjectKeyFromObject(s), s)
		return string(s.Status.Phase)
	}, eventually).Should(Equal("Ready"))
	return s
}

func (l *lab) stop(s *bootv1.BootSession) {
	Expect(retry.RetryOnConflict(retry.DefaultRetry, func() error {
		if err := k8sClient.Get(l.ctx, client.ObjectKeyFromObject(s), s); err != nil {
			return err
		}
		s.Spec.Stopped = true
		return k8sClient.Update(l.ctx, s)
	})).To(Succeed())
	Eventually(func() string {
		_ = k8sClient.Get(l.ctx, client.ObjectKeyFromObject(s), s)
		return string(s.Status.Phase)
	}, eventually).Should(Equal("Stopped"))
}

// credentials reads a session's login from its status and its Secret (the
// script in the status is a preview without them).
func credentials(s *bootv1.BootSession) login {
	Expect(s.Status.CHAPSecretRef).NotTo(BeNil())
	var sec corev1.Secret
	Expect(k8sClient.Get(context.Background(), client.ObjectKey{Namespace: s.Namespace, Name: s.Status.CHAPSecretRef.Name}, &sec)).To(Succeed())
	return login{
		targetIQN: s.Status.Target.IQN, initiator: s.Status.InitiatorIQN,
		user: string(sec.Data[bootv1.SecretKeyUsername]), password: string(sec.Data[bootv1.SecretKeyPassword]),
		targetUser: string(sec.Data[bootv1.SecretKeyTargetUsername]), targetPassword: string(sec.Data[bootv1.SecretKeyTargetPassword]),
	}
}

func targets() []target.Target {
	list, err := (&target.TGT{ControlPort: tgtd.ControlPort}).List(context.Background(), "iqn.2026-11.io.ggnet:")
	Expect(err).NotTo(HaveOccurred())
	return list
}

func targetIQNs() []string {
	var out []string
	for _, t := range targets() {
		out = append(out, t.IQN)
	}
	return out
}

var _ = Describe("Storage role", Ordered, func() {
	It("places a replica, makes an overlay and a target that only the session's initiator with its CHAP secret can use", func() {
		runRole()
		l := newLab()
		img := l.image("win11", 256<<20)
		rep := img.Status.Replicas[0]
		Expect(rep.Node).To(Equal(nodeName))
		Expect(rep.SizeBytes).To(Equal(int64(256 << 20)))
		Expect(rep.SHA256).To(HaveLen(64))

		l.machine("seat-1")
		s := l.session("seat-1-a", "seat-1", "win11", bootv1.WritebackDiscard)
		c := meta.FindStatusCondition(s.Status.Conditions, bootv1.StorageReadyCondition)
		Expect(c.Status).To(Equal(metav1.ConditionTrue))
		Expect(s.Status.OverlayPath).To(HavePrefix(dataDir + "/overlays/" + l.ns + "/seat-1-a-"))
		Expect(s.Finalizers).To(ContainElement(bootv1.StorageFinalizer))

		info := credentials(s)
		Expect(info.targetUser).NotTo(BeEmpty(), "the session Secret has the target's credentials (mutual CHAP)")
		oneWay := info
		oneWay.targetUser, oneWay.targetPassword = "", ""
		out, err := iscsiTool("iscsi-ls", oneWay, "")
		Expect(err).NotTo(HaveOccurred(), out)
		Expect(out).To(ContainSubstring("Target:" + info.targetIQN))
		out, err = iscsiTool("iscsi-readcapacity16", info, info.targetIQN+"/1")
		Expect(err).NotTo(HaveOccurred(), out)
		Expect(out).To(ContainSubstring("Total size:268435456"), "the LUN has the image's size")
		out, err = iscsiTool("iscsi-inq", info, info.targetIQN+"/1")
		Expect(err).NotTo(HaveOccurred(), "the target proves itself with the Secret's targetPassword: "+out)
		wrong := info
		wrong.password = "WrongSecret123"
		_, err = iscsiTool("iscsi-readcapacity16", wrong, info.targetIQN+"/1")
		Expect(err).To(HaveOccurred(), "a wrong CHAP secret is refused")
		impostor := info
		impostor.targetPassword = "NotTheTarget1234"
		_, err = iscsiTool("iscsi-readcapacity16", impostor, info.targetIQN+"/1")
		Expect(err).To(HaveOccurred(), "an initiator expecting another target secret refuses the target")
		intruder := info
		intruder.initiator = "iqn.2026-11.io.ggnet:initiator:" + l.ns + ":intruder"
		_, err = iscsiTool("iscsi-readcapacity16", intruder, info.targetIQN+"/1")
		Expect(err).To(HaveOccurred(), "another initiator is refused")

		By("backing the LUN with the overlay, never the image")
		Expect(targets()).To(ContainElement(HaveField("Path", s.Status.OverlayPath)))
		f, err := os.OpenFile(s.Status.OverlayPath, os.O_WRONLY, 0)
		Expect(err).NotTo(HaveOccurred())
		_, err = f.WriteAt([]byte("SESSION WRITE"), 0)
		Expect(err).NotTo(HaveOccurred())
		f.Close()
		golden, _ := os.ReadFile(rep.Path)
		Expect(string(golden[:18])).To(Equal("GGNET GOLDEN IMAGE"))

		By("stopping: the target and the Discard overlay go, the finalizer is released")
		overlay := s.Status.OverlayPath
		l.stop(s)
		Expect(targetIQNs()).NotTo(ContainElement(info.targetIQN))
		_, err = os.Stat(overlay)
		Expect(os.IsNotExist(err)).To(BeTrue())
		Expect(s.Finalizers).NotTo(ContainElement(bootv1.StorageFinalizer))
	})

	It("keeps a Persist overlay for the machine's next session", func() {
		runRole()
		l := newLab()
		l.image("win11", 64<<20)
		l.machine("seat-1")
		a := l.session("a", "seat-1", "win11", bootv1.WritebackPersist)
		f, _ := os.OpenFile(a.Status.OverlayPath, os.O_WRONLY, 0)
		_, _ = f.WriteAt([]byte("SAVED GAME"), 4096)
		f.Close()
		l.stop(a)
		b := l.session("b", "seat-1", "win11", bootv1.WritebackPersist)
		Expect(b.Status.OverlayPath).To(Equal(a.Status.OverlayPath))
		got, _ := os.ReadFile(b.Status.OverlayPath)
		Expect(string(got[4096:4106])).To(Equal("SAVED GAME"))
		l.stop(b)
		_, err := os.Stat(b.Status.OverlayPath)
		Expect(err).NotTo(HaveOccurred(), "Persist overlays survive the stop")
	})

	It("survives its own restart and a tgtd restart, and collects what no session wants", func() {
		stop := runRole()
		l := newLab()
		l.image("win11", 64<<20)
		l.machine("seat-1")
		l.machine("seat-2")
		live := l.session("live", "seat-1", "win11", bootv1.WritebackDiscard)
		gone := l.session("gone", "seat-2", "win11", bootv1.WritebackDiscard)
		liveOverlay, goneOverlay := live.Status.OverlayPath, gone.Status.OverlayPath
		f, _ := os.OpenFile(liveOverlay, os.O_WRONLY, 0)
		_, _ = f.WriteAt([]byte("LIVE DATA"), 0)
		f.Close()

		By("killing the agent; meanwhile one session is stopped and a stray target appears")
		stop()
		Expect(retry.RetryOnConflict(retry.DefaultRetry, func() error {
			if err := k8sClient.Get(l.ctx, client.ObjectKeyFromObject(gone), gone); err != nil {
				return err
			}
			gone.Spec.Stopped = true
			return k8sClient.Update(l.ctx, gone)
		})).To(Succeed())
		stray := target.Target{IQN: "iqn.2026-11.io.ggnet:" + l.ns + ":stray", LUN: 1, Path: liveOverlay,
			InitiatorIQN: "iqn.2026-11.io.ggnet:initiator:x", CHAPUser: l.ns + "-stray", CHAPPassword: "0123456789abcd"}
		foreign := stray
		foreign.IQN, foreign.CHAPUser = "iqn.2003-01.org.example:not-ours", l.ns+"-foreign"
		d := &target.TGT{ControlPort: tgtd.ControlPort}
		Expect(d.Ensure(l.ctx, stray)).To(Succeed())
		Expect(d.Ensure(l.ctx, foreign)).To(Succeed())

		By("restarting the agent")
		runRole()
		Eventually(targetIQNs, eventually).ShouldNot(ContainElement(stray.IQN))
		Eventually(targetIQNs, eventually).ShouldNot(ContainElement(gone.Status.Target.IQN))
		Eventually(func() bool { _, err := os.Stat(goneOverlay); return os.IsNotExist(err) }, eventually).Should(BeTrue())
		Expect(targetIQNs()).To(ContainElement(live.Status.Target.IQN))
		foreignLeft, err := d.List(l.ctx, "iqn.2003-01.org.example:")
		Expect(err).NotTo(HaveOccurred())
		Expect(foreignLeft).To(HaveLen(1), "targets that are not GGnet's are never touched")
		got, _ := os.ReadFile(liveOverlay)
		Expect(string(got[:9])).To(Equal("LIVE DATA"), "the live session's overlay was kept")
		Expect(d.Remove(l.ctx, foreign.IQN)).To(Succeed())

		By("restarting tgtd: every target comes back")
		tgtd.Restart(GinkgoT())
		Eventually(targetIQNs, eventually).Should(ContainElement(live.Status.Target.IQN))
		info := credentials(live)
		Eventually(func() error {
			_, err := iscsiTool("iscsi-readcapacity16", info, info.targetIQN+"/1")
			return err
		}, eventually).Should(Succeed())
		got, _ = os.ReadFile(liveOverlay)
		Expect(string(got[:9])).To(Equal("LIVE DATA"))
	})

	It("records each iSCSI login and logout of the initiator, when it happens, across an agent restart", func() {
		stop := runRole()
		l := newLab()
		l.image("win11", 64<<20)
		l.machine("seat-1")
		s := l.session("s", "seat-1", "win11", bootv1.WritebackDiscard)
		info := credentials(s)
		logins := func() []bootv1.SessionLogin {
			_ = k8sClient.Get(l.ctx, client.ObjectKeyFromObject(s), s)
			return s.Status.Timeline.Logins
		}
		// The row's time is between the event (made; the API's times are
		// to the second) and now, just after the spec read the row: no
		// bound on how fast the watcher is (a busy CI machine once took
		// over 3 s), only that it records when the event happened.
		within := func(got metav1.Time, made time.Time) {
			ExpectWithOffset(1, got.Time).To(BeTemporally(">=", made.Truncate(time.Second)))
			ExpectWithOffset(1, got.Time).To(BeTemporally("<=", time.Now()))
		}

		By("the firmware's login: one initiator session (iscsi-perf stays logged in while it reads)")
		firstAt := time.Now()
		fw := iscsiPerf(info)
		Expect(fw.Start()).To(Succeed())
		DeferCleanup(func() { _ = fw.Process.Kill(); _ = fw.Wait() })
		Eventually(logins, eventually).Should(HaveLen(1))
		row := s.Status.Timeline.Logins[0]
		within(row.At, firstAt)
		Expect(row.Initiator).To(Equal(info.initiator))
		Expect(row.Address).To(Equal("127.0.0.1"))
		Expect(row.SessionID).NotTo(BeEmpty())
		Expect(row.LoggedOutAt).To(BeNil())
		Expect(s.Status.Timeline.ISCSILogin).NotTo(BeNil())
		Expect(s.Status.Timeline.ISCSILogin.Time).To(BeTemporally("==", row.At.Time))
		Eventually(func() string {
			_ = k8sClient.Get(l.ctx, client.ObjectKeyFromObject(s), s)
			return string(s.Status.Phase)
		}, eventually).Should(Equal("Active"))

		By("the OS's login beside it: the same initiator, a new session (another ISID)")
		time.Sleep(1500 * time.Millisecond) // a later second than the first
		secondAt := time.Now()
		osLogin := iscsiPerf(info)
		Expect(osLogin.Start()).To(Succeed())
		DeferCleanup(func() { _ = osLogin.Process.Kill(); _ = osLogin.Wait() })
		Eventually(logins, eventually).Should(HaveLen(2))
		rows := s.Status.Timeline.Logins
		within(rows[1].At, secondAt)
		Expect(rows[1].At.After(rows[0].At.Time)).To(BeTrue(), "the firmware's first, then the OS's")
		Expect(rows[1].SessionID).NotTo(Equal(rows[0].SessionID))
		Expect(rows[1].Initiator).To(Equal(info.initiator))
		Expect(s.Status.Timeline.ISCSILogin.Time).To(BeTemporally("==", rows[0].At.Time), "iscsiLogin stays the first login")

		By("the firmware's session ends: its row is logged out, the OS's stays open")
		goneAt := time.Now()
		_ = fw.Process.Kill()
		_ = fw.Wait()
		Eventually(func() *metav1.Time { return logins()[0].LoggedOutAt }, eventually).ShouldNot(BeNil())
		within(*s.Status.Timeline.Logins[0].LoggedOutAt, goneAt)
		Expect(s.Status.Timeline.Logins[1].LoggedOutAt).To(BeNil())
		Expect(s.Status.Timeline.ISCSILogout).To(BeNil(), "the OS is still logged in")

		By("an agent restart adds no row for a session already in the status")
		stop()
		runRole()
		before := s.Status.Timeline.Logins
		Consistently(logins, 3*time.Second, 250*time.Millisecond).Should(Equal(before))

		By("the OS's session ends: no session left, iscsiLogout")
		lastAt := time.Now()
		_ = osLogin.Process.Kill()
		_ = osLogin.Wait()
		Eventually(func() *metav1.Time {
			_ = k8sClient.Get(l.ctx, client.ObjectKeyFromObject(s), s)
			return s.Status.Timeline.ISCSILogout
		}, eventually).ShouldNot(BeNil())
		within(*s.Status.Timeline.ISCSILogout, lastAt)
		Expect(s.Status.Timeline.Logins).To(HaveLen(2))
		Expect(s.Status.Timeline.Logins[1].LoggedOutAt.Time).To(BeTemporally("==", s.Status.Timeline.ISCSILogout.Time))
	})

	It("holds only the session Secrets in its cache", func() {
		runRole()
		l := newLab()
		other := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: l.ns, Name: "not-a-session"},
			StringData: map[string]string{"password": "SomeoneElses1234"}}
		session := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: l.ns, Name: "s-chap",
			Labels: map[string]string{bootv1.SessionSecretLabel: "s"}}}
		Expect(k8sClient.Create(l.ctx, other)).To(Succeed())
		Expect(k8sClient.Create(l.ctx, session)).To(Succeed())
		cached := func() []string {
			var list corev1.SecretList
			Expect(role.mgr.GetCache().List(l.ctx, &list, client.InNamespace(l.ns))).To(Succeed())
			var names []string
			for _, s := range list.Items {
				names = append(names, s.Name)
			}
			return names
		}
		Eventually(cached, eventually).Should(ContainElement("s-chap"))
		Expect(cached()).To(ConsistOf("s-chap"))
		err := role.mgr.GetClient().Get(l.ctx, client.ObjectKeyFromObject(other), &corev1.Secret{})
		Expect(apierrors.IsNotFound(err)).To(BeTrue(), "an unlabelled Secret is not found through the cache: %v", err)
	})

	It("announces its iSCSI portal on its Node", func() {
		ctx := context.Background()
		node := &corev1.Node{}
		Expect(k8sClient.Get(ctx, client.ObjectKey{Name: nodeName}, node)).To(Succeed())
		patch := client.MergeFrom(node.DeepCopy())
		metav1.SetMetaDataAnnotation(&node.ObjectMeta, bootv1.ISCSIPortalAnnotation, "192.0.2.1:3260")
		Expect(k8sClient.Patch(ctx, node, patch)).To(Succeed())

		runRole()
		Eventually(func() string {
			_ = k8sClient.Get(ctx, client.ObjectKey{Name: nodeName}, node)
			return node.Annotations[bootv1.ISCSIPortalAnnotation]
		}, eventually).Should(Equal(tgtd.Portal), "the role's portal replaces a stale announcement")

		l := newLab()
		l.image("win11", 64<<20)
		l.machine("seat-1")
		s := l.session("s", "seat-1", "win11", bootv1.WritebackDiscard)
		Expect(s.Status.Target.Portal).To(Equal(tgtd.Portal), "the manager sends PCs to the announced portal")
		l.stop(s)
	})
})
