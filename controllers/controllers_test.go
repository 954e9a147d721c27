package controllers

import (
	"context"
	"fmt"
	"strings"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"

	bootv1 "github.com/ggnet/ggnet/api/v1alpha1"
	"github.com/ggnet/ggnet/internal/fixture"
	"github.com/ggnet/ggnet/internal/ipxe"
)

func readyReason(conds []metav1.Condition) string {
	if c := meta.FindStatusCondition(conds, bootv1.ReadyCondition); c != nil {
		return string(c.Status) + "/" + c.Reason
	}
	return ""
}

func (s sessionView) String() string { return fmt.Sprintf("%s %s", s.Phase, s.Ready) }

type sessionView struct {
	Phase bootv1.BootSessionPhase
	Ready string
}

func view(ctx context.Context, s *bootv1.BootSession) func() sessionView {
	return func() sessionView {
		_ = k8sClient.Get(ctx, client.ObjectKeyFromObject(s), s)
		return sessionView{s.Status.Phase, readyReason(s.Status.Conditions)}
	}
}

func kstatus(obj client.Object) status.Status {
	u, err := runtime.DefaultUnstructuredConverter.ToUnstructured(obj)
	Expect(err).NotTo(HaveOccurred())
	res, err := status.Compute(&unstructured.Unstructured{Object: u})
	Expect(err).NotTo(HaveOccurred())
	return res.Status
}

func events(ctx context.Context, ns, name string) []string {
	var list corev1.EventList
	Expect(k8sClient.List(ctx, &list, client.InNamespace(ns))).To(Succeed())
	var out []string
	for _, e := range list.Items {
		if e.InvolvedObject.Name == name {
			out = append(out, e.Reason+": "+e.Message)
		}
	}
	return out
}

var _ = Describe("BootSession", func() {
	var (
		ctx  context.Context
		ns   string
		node string
		img  *bootv1.Image
	)
	BeforeEach(func() {
		ctx = context.Background()
		ns = newNamespace(ctx)
		node = "storage-" + ns
		storageNode(ctx, node, "10.20.0.5")
		img = fixture.Image(ns, "win11")
		Expect(k8sClient.Create(ctx, img)).To(Succeed())
		readyReplica(ctx, img, node)
		// The manager's cache has the Ready replica once its Image
		// controller says so (one informer for all controllers): a session
		// made before could first wait with ImageNotReady.
		Eventually(func() bootv1.ImagePhase { return get(ctx, img)().Status.Phase }, eventually).Should(Equal(bootv1.ImageReady))
		Expect(k8sClient.Create(ctx, fixture.Machine(ns, "seat-1"))).To(Succeed())
	})

	It("goes from Pending to Ready with a target, credentials and a script, and stops cleanly", func() {
		s := fixture.Session(ns, "seat-1-a", "seat-1", "win11")
		finalizers := watchFinalizers(ctx, ns, s.Name)
		Expect(k8sClient.Create(ctx, s)).To(Succeed())
		Eventually(view(ctx, s), eventually).Should(Equal(sessionView{bootv1.SessionReady, "True/Succeeded"}))

		By("adding both finalizers in the manager's first metadata write, the storage agent's not written again")
		Expect(finalizers()).To(HaveExactElements(
			BeEmpty(), ConsistOf(bootv1.SessionFinalizer, bootv1.StorageFinalizer)), "each version's finalizers, deduplicated")

		Expect(s.Status.StorageNode).To(Equal(node))
		Expect(s.Status.MAC).To(Equal("52:54:00:12:34:56"))
		Expect(s.Status.Target.IQN).To(Equal("iqn.2026-11.io.ggnet:" + ns + ":seat-1-a"))
		Expect(s.Status.Target.Portal).To(Equal("10.20.0.5:3260"))
		Expect(s.Status.InitiatorIQN).To(Equal("iqn.2026-11.io.ggnet:initiator:" + ns + ":seat-1"))
		Expect(s.Status.Timeline.Scheduled).NotTo(BeNil())
		Expect(s.Status.Timeline.StorageReady).NotTo(BeNil())
		Expect(s.Status.Timeline.Ready).NotTo(BeNil())
		Expect(s.Status.ObservedGeneration).To(Equal(s.Generation))
		Expect(kstatus(s)).To(Equal(status.CurrentStatus))

		var sec corev1.Secret
		Expect(k8sClient.Get(ctx, client.ObjectKey{Namespace: ns, Name: s.Status.CHAPSecretRef.Name}, &sec)).To(Succeed())
		Expect(sec.OwnerReferences).To(HaveLen(1))
		Expect(sec.OwnerReferences[0].Name).To(Equal(s.Name))
		Expect(sec.Labels).To(HaveKeyWithValue(bootv1.SessionSecretLabel, s.Name))
		uid := strings.ReplaceAll(string(s.UID), "-", "")
		Expect(sec.Data).To(HaveKeyWithValue(bootv1.SecretKeyUsername, BeEquivalentTo("ggnet-"+uid)), "named after the session's UID")
		Expect(sec.Data).To(HaveKeyWithValue(bootv1.SecretKeyTargetUsername, BeEquivalentTo("ggnet-"+uid+"-t")))
		Expect(sec.Data).To(HaveKeyWithValue(bootv1.SecretKeyPassword, MatchRegexp(`^[A-Za-z0-9]{16}$`)))
		Expect(sec.Data).To(HaveKeyWithValue(bootv1.SecretKeyTargetPassword, MatchRegexp(`^[A-Za-z0-9]{16}$`)))
		Expect(sec.Data[bootv1.SecretKeyTargetPassword]).NotTo(Equal(sec.Data[bootv1.SecretKeyPassword]))
		Expect(ipxe.ValidToken(string(sec.Data[bootv1.SecretKeyToken]))).To(BeTrue())

		By("keeping the credentials out of the script, which is a preview")
		info, err := ipxe.Parse(s.Status.Script)
		Expect(err).NotTo(HaveOccurred())
		Expect(info.TargetIQN).To(Equal(s.Status.Target.IQN))
		Expect(info.Username).To(BeEmpty())
		Expect(info.Password).To(BeEmpty())
		Expect(s.Status.Script).To(ContainSubstring(ipxe.CredentialsComment))
		for _, v := range sec.Data {
			Expect(s.Status.Script).NotTo(ContainSubstring(string(v)))
		}
		full, err := ipxe.AddCredentials(s.Status.Script, ipxe.Credentials{
			Username: string(sec.Data[bootv1.SecretKeyUsername]), Password: string(sec.Data[bootv1.SecretKeyPassword]),
			TargetUsername: string(sec.Data[bootv1.SecretKeyTargetUsername]), TargetPassword: string(sec.Data[bootv1.SecretKeyTargetPassword])})
		Expect(err).NotTo(HaveOccurred(), "the boot agent can complete the preview")
		info, err = ipxe.Parse(full)
		Expect(err).NotTo(HaveOccurred())
		Expect(info.Password).To(Equal(string(sec.Data[bootv1.SecretKeyPassword])))
		Expect(info.TargetPassword).To(Equal(string(sec.Data[bootv1.SecretKeyTargetPassword])))
		Expect(s.Status.Script).NotTo(ContainSubstring("Secret"))

		m := &bootv1.Machine{}
		m.Namespace, m.Name = ns, "seat-1"
		Eventually(func() string { return get(ctx, m)().Status.ActiveSession }, eventually).Should(Equal("seat-1-a"))
		Expect(kstatus(m)).To(Equal(status.CurrentStatus))

		By("moving to Booting and Active as the agents record progress")
		now := metav1.Now()
		change(ctx, s, true, func(x *bootv1.BootSession) { x.Status.Timeline.ScriptServed = &now })
		Eventually(view(ctx, s), eventually).Should(Equal(sessionView{bootv1.SessionBooting, "True/Succeeded"}))
		change(ctx, s, true, func(x *bootv1.BootSession) { x.Status.Timeline.ISCSILogin = &now })
		Eventually(view(ctx, s), eventually).Should(Equal(sessionView{bootv1.SessionActive, "True/Succeeded"}))

		By("stopping")
		change(ctx, s, false, func(x *bootv1.BootSession) { x.Spec.Stopped = true })
		Eventually(view(ctx, s), eventually).Should(Equal(sessionView{bootv1.SessionStopped, "False/Stopped"}))
		Expect(s.Status.Script).To(BeEmpty())
		Expect(s.Status.Timeline.Stopped).NotTo(BeNil())
		Eventually(func() string { return get(ctx, m)().Status.ActiveSession }, eventually).Should(BeEmpty())
		Expect(m.Status.LastBoot.Session).To(Equal("seat-1-a"))
		Expect(m.Status.LastBoot.ISCSILogin).NotTo(BeNil())
		Expect(finalizers()).To(HaveExactElements(BeEmpty(), ConsistOf(bootv1.SessionFinalizer, bootv1.StorageFinalizer),
			ConsistOf(bootv1.SessionFinalizer)), "the storage finalizer was never written again: only the stop released it")

		By("recording no Event on the happy path (scheduled, Ready, stopping, stopped): the TTL's Expired is the session's first")
		// The recorder sends a session's Events in order, asynchronously:
		// once Expired is there, any Event before it is too.
		change(ctx, s, false, func(x *bootv1.BootSession) {
			var zero int32
			x.Spec.TTLSecondsAfterFinished = &zero
		})
		Eventually(func() []string { return events(ctx, ns, s.Name) }, eventually).ShouldNot(BeEmpty())
		Expect(events(ctx, ns, s.Name)).To(ConsistOf(HavePrefix(bootv1.ExpiredReason + ": ")))

		By("deleting (its TTL): every finalizer is released")
		Eventually(func() error { return k8sClient.Get(ctx, client.ObjectKeyFromObject(s), s) }, eventually).ShouldNot(Succeed())
	})

	It("adds the missing keys to its Secret made before mutual CHAP and tokens, keeping the old ones", func() {
		By("a session whose Machine is not there yet, so that its Secret can be made first, as an earlier version made it")
		s := fixture.Session(ns, "old", "seat-old", "win11")
		Expect(k8sClient.Create(ctx, s)).To(Succeed())
		Eventually(view(ctx, s), eventually).Should(Equal(sessionView{bootv1.SessionPending, "False/" + bootv1.MachineNotFoundReason}))
		old := &corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "old-chap", Labels: map[string]string{bootv1.SessionSecretLabel: "old"}},
			Data:       map[string][]byte{bootv1.SecretKeyUsername: []byte("legacy-user"), bootv1.SecretKeyPassword: []byte("LegacyPassw0rd16")},
		}
		Expect(controllerutil.SetControllerReference(s, old, k8sClient.Scheme())).To(Succeed())
		Expect(k8sClient.Create(ctx, old)).To(Succeed())
		Expect(k8sClient.Create(ctx, fixture.Machine(ns, "seat-old", fixture.WithMAC("52:54:00:12:34:0f"), fixture.WithAddress("10.20.0.99")))).To(Succeed())
		Eventually(view(ctx, s), eventually).Should(Equal(sessionView{bootv1.SessionReady, "True/Succeeded"}))
		Expect(s.Status.CHAPSecretRef.Name).To(Equal("old-chap"))
		sec := &corev1.Secret{}
		Expect(k8sClient.Get(ctx, client.ObjectKeyFromObject(old), sec)).To(Succeed())
		Expect(sec.Data).To(HaveKeyWithValue(bootv1.SecretKeyUsername, BeEquivalentTo("legacy-user")))
		Expect(sec.Data).To(HaveKeyWithValue(bootv1.SecretKeyPassword, BeEquivalentTo("LegacyPassw0rd16")))
		Expect(sec.Data).To(HaveKeyWithValue(bootv1.SecretKeyTargetUsername,
			BeEquivalentTo("ggnet-"+strings.ReplaceAll(string(s.UID), "-", "")+"-t")), "named after the session's UID")
		Expect(sec.Data).To(HaveKeyWithValue(bootv1.SecretKeyTargetPassword, MatchRegexp(`^[A-Za-z0-9]{16}$`)))
		Expect(ipxe.ValidToken(string(sec.Data[bootv1.SecretKeyToken]))).To(BeTrue())
		Expect(metav1.GetControllerOf(sec)).NotTo(BeNil())
		Expect(metav1.GetControllerOf(sec).UID).To(Equal(s.UID), "adopted by its session")
		Eventually(func() []string { return events(ctx, ns, "old") }, eventually).Should(ContainElement("SecretUpgraded: Added keys targetPassword, targetUsername, token to Secret old-chap"))
		rv := sec.ResourceVersion
		Consistently(func() string { return get(ctx, sec)().ResourceVersion }, 2*time.Second).Should(Equal(rv), "a complete Secret is left alone")
	})

	It("never adopts a Secret of its name that it did not make (planted credentials)", func() {
		planted := &corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "next-chap", Labels: map[string]string{bootv1.SessionSecretLabel: "next"}},
			Data:       map[string][]byte{bootv1.SecretKeyUsername: []byte("known-user"), bootv1.SecretKeyPassword: []byte("KnownPassw0rd123")},
		}
		Expect(k8sClient.Create(ctx, planted)).To(Succeed())
		s := fixture.Session(ns, "next", "seat-1", "win11")
		Expect(k8sClient.Create(ctx, s)).To(Succeed())
		Eventually(view(ctx, s), eventually).Should(Equal(sessionView{bootv1.SessionProvisioning, "False/" + bootv1.SecretConflictReason}))
		Expect(meta.FindStatusCondition(s.Status.Conditions, bootv1.ReadyCondition).Message).To(ContainSubstring("Secret next-chap exists and no session owns it"))
		Consistently(view(ctx, s), 2*time.Second).Should(Equal(sessionView{bootv1.SessionProvisioning, "False/" + bootv1.SecretConflictReason}))
		Expect(s.Status.CHAPSecretRef).To(BeNil())
		sec := &corev1.Secret{}
		Expect(k8sClient.Get(ctx, client.ObjectKeyFromObject(planted), sec)).To(Succeed())
		Expect(sec.OwnerReferences).To(BeEmpty(), "not adopted")
		Expect(sec.Data).To(HaveLen(2), "left as it was")

		By("once it is deleted, the session gets credentials of its own")
		Expect(k8sClient.Delete(ctx, sec)).To(Succeed())
		Eventually(view(ctx, s), eventually).Should(Equal(sessionView{bootv1.SessionReady, "True/Succeeded"}))
		Expect(k8sClient.Get(ctx, client.ObjectKeyFromObject(planted), sec)).To(Succeed())
		Expect(metav1.GetControllerOf(sec).UID).To(Equal(s.UID))
		Expect(sec.Data[bootv1.SecretKeyPassword]).NotTo(BeEquivalentTo("KnownPassw0rd123"))
	})

	It("lets one session per machine run; the next waits, naming the active one", func() {
		a := fixture.Session(ns, "a", "seat-1", "win11")
		Expect(k8sClient.Create(ctx, a)).To(Succeed())
		Eventually(view(ctx, a), eventually).Should(Equal(sessionView{bootv1.SessionReady, "True/Succeeded"}))
		b := fixture.Session(ns, "b", "seat-1", "win11")
		Expect(k8sClient.Create(ctx, b)).To(Succeed())
		Eventually(view(ctx, b), eventually).Should(Equal(sessionView{bootv1.SessionPending, "False/MachineBusy"}))
		Expect(meta.FindStatusCondition(b.Status.Conditions, bootv1.ReadyCondition).Message).To(ContainSubstring("in session a"))
		Eventually(func() []string { return events(ctx, ns, "b") }, eventually).Should(ContainElement(ContainSubstring("MachineBusy")))
		Consistently(view(ctx, b), 2*time.Second).Should(Equal(sessionView{bootv1.SessionPending, "False/MachineBusy"}))

		change(ctx, a, false, func(x *bootv1.BootSession) { x.Spec.Stopped = true })
		Eventually(view(ctx, b), eventually).Should(Equal(sessionView{bootv1.SessionReady, "True/Succeeded"}))
	})

	It("waits for missing references and an image without a Ready replica", func() {
		s := fixture.Session(ns, "s", "seat-9", "win11")
		Expect(k8sClient.Create(ctx, s)).To(Succeed())
		Eventually(view(ctx, s), eventually).Should(Equal(sessionView{bootv1.SessionPending, "False/MachineNotFound"}))
		Expect(kstatus(s)).To(Equal(status.InProgressStatus))

		s2 := fixture.Session(ns, "s2", "seat-1", "win10")
		Expect(k8sClient.Create(ctx, s2)).To(Succeed())
		Eventually(view(ctx, s2), eventually).Should(Equal(sessionView{bootv1.SessionPending, "False/ImageNotFound"}))
		win10 := fixture.Image(ns, "win10")
		Expect(k8sClient.Create(ctx, win10)).To(Succeed())
		Eventually(view(ctx, s2), eventually).Should(Equal(sessionView{bootv1.SessionPending, "False/ImageNotReady"}))
		readyReplica(ctx, win10, node)
		Eventually(view(ctx, s2), eventually).Should(Equal(sessionView{bootv1.SessionReady, "True/Succeeded"}))
	})

	It("stays Pending when the pinned node has no replica, and schedules on the least loaded node", func() {
		other := "other-" + ns
		storageNode(ctx, other, "10.20.0.6")
		s := fixture.Session(ns, "pinned", "seat-1", "win11", fixture.WithStorageNode(other))
		Expect(k8sClient.Create(ctx, s)).To(Succeed())
		Eventually(view(ctx, s), eventually).Should(Equal(sessionView{bootv1.SessionPending, "False/NoStorageNode"}))
		Expect(meta.FindStatusCondition(s.Status.Conditions, bootv1.ScheduledCondition).Message).To(ContainSubstring(other + " does not hold a Ready replica"))

		readyReplica(ctx, img, other)
		Eventually(view(ctx, s), eventually).Should(Equal(sessionView{bootv1.SessionReady, "True/Succeeded"}))
		Expect(s.Status.StorageNode).To(Equal(other))

		Expect(k8sClient.Create(ctx, fixture.Machine(ns, "seat-2", fixture.WithMAC("52:54:00:00:00:02"), fixture.WithAddress("10.20.0.32")))).To(Succeed())
		s2 := fixture.Session(ns, "free", "seat-2", "win11")
		Expect(k8sClient.Create(ctx, s2)).To(Succeed())
		Eventually(view(ctx, s2), eventually).Should(Equal(sessionView{bootv1.SessionReady, "True/Succeeded"}))
		Expect(s2.Status.StorageNode).To(Equal(node), "the node without sessions")
	})

	It("fails sessions whose storage node disappears or whose storage fails", func() {
		s := fixture.Session(ns, "s", "seat-1", "win11")
		Expect(k8sClient.Create(ctx, s)).To(Succeed())
		Eventually(view(ctx, s), eventually).Should(Equal(sessionView{bootv1.SessionReady, "True/Succeeded"}))
		Expect(k8sClient.Delete(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: node}})).To(Succeed())
		Eventually(view(ctx, s), eventually).Should(Equal(sessionView{bootv1.SessionFailed, "False/StorageNodeLost"}))
		Expect(meta.FindStatusCondition(s.Status.Conditions, bootv1.ReadyCondition).Message).To(ContainSubstring("no longer exists"))

		broken := "broken-" + ns
		storageNode(ctx, broken, "10.20.0.7")
		readyReplica(ctx, img, broken)
		Expect(k8sClient.Create(ctx, fixture.Machine(ns, "seat-2", fixture.WithMAC("52:54:00:00:00:02"), fixture.WithAddress("10.20.0.32")))).To(Succeed())
		s2 := fixture.Session(ns, "s2", "seat-2", "win11", fixture.WithStorageNode(broken))
		Expect(k8sClient.Create(ctx, s2)).To(Succeed())
		Eventually(view(ctx, s2), eventually).Should(Equal(sessionView{bootv1.SessionFailed, "False/StorageFailed"}))
	})

	It("deletes a finished session once its TTL passed", func() {
		s := fixture.Session(ns, "s", "seat-1", "win11")
		ttl := int32(1)
		s.Spec.TTLSecondsAfterFinished = &ttl
		Expect(k8sClient.Create(ctx, s)).To(Succeed())
		Eventually(view(ctx, s), eventually).Should(Equal(sessionView{bootv1.SessionReady, "True/Succeeded"}))
		change(ctx, s, false, func(x *bootv1.BootSession) { x.Spec.Stopped = true })
		Eventually(func() error { return k8sClient.Get(ctx, client.ObjectKeyFromObject(s), &bootv1.BootSession{}) }, eventually).ShouldNot(Succeed())
	})
})

var _ = Describe("Machine", func() {
	var (
		ctx context.Context
		ns  string
	)
	BeforeEach(func() {
		ctx = context.Background()
		ns = newNamespace(ctx)
	})

	It("renders the reservation; of two Machines with one MAC or address the older keeps it", func() {
		a := fixture.Machine(ns, "seat-1")
		Expect(k8sClient.Create(ctx, a)).To(Succeed())
		Eventually(func() string { return readyReason(get(ctx, a)().Status.Conditions) }, eventually).Should(Equal("True/Succeeded"))
		Expect(a.Status.Reservation.Address).To(Equal("10.20.0.31"))
		Expect(kstatus(a)).To(Equal(status.CurrentStatus))

		b := fixture.Machine(ns, "seat-2", fixture.WithAddress("10.20.0.32"))
		Expect(k8sClient.Create(ctx, b)).To(Succeed())
		Eventually(func() string { return readyReason(get(ctx, b)().Status.Conditions) }, eventually).Should(Equal("False/DuplicateMAC"))
		Eventually(func() string {
			return meta.FindStatusCondition(get(ctx, a)().Status.Conditions, bootv1.ConflictCondition).Message
		}, eventually).Should(ContainSubstring("the newer Machines " + ns + "/seat-2"))
		Expect(readyReason(a.Status.Conditions)).To(Equal("True/Succeeded"), "the older Machine keeps its MAC")
		Eventually(func() []string { return events(ctx, ns, "seat-2") }, eventually).Should(ContainElement(ContainSubstring("DuplicateMAC: conflicts with MAC 52:54:00:12:34:56 of Machine " + ns + "/seat-1")))

		c := fixture.Machine(ns, "seat-3", fixture.WithMAC("52:54:00:00:00:03"), fixture.WithAddress("10.20.0.32"))
		Expect(k8sClient.Create(ctx, c)).To(Succeed())
		Eventually(func() string { return readyReason(get(ctx, c)().Status.Conditions) }, eventually).Should(Equal("False/DuplicateIP"))

		By("clearing once the duplicate is gone")
		Expect(k8sClient.Delete(ctx, b)).To(Succeed())
		Eventually(func() string { return readyReason(get(ctx, a)().Status.Conditions) }, eventually).Should(Equal("True/Succeeded"))
		Eventually(func() string { return readyReason(get(ctx, c)().Status.Conditions) }, eventually).Should(Equal("True/Succeeded"))
	})

	It("refuses a gateway outside the subnet with a condition", func() {
		m := fixture.Machine(ns, "seat-1", func(m *bootv1.Machine) { m.Spec.IPv4.Gateway = "10.21.0.1" })
		Expect(k8sClient.Create(ctx, m)).To(Succeed())
		Eventually(func() string { return readyReason(get(ctx, m)().Status.Conditions) }, eventually).Should(Equal("False/InvalidReservation"))
		Expect(meta.FindStatusCondition(m.Status.Conditions, bootv1.ReadyCondition).Message).To(Equal("gateway 10.21.0.1 is outside 10.20.0.31/24"))
	})

	It("replaces a discovered placeholder when the operator adds the real machine", func() {
		d := fixture.Machine(ns, "discovered-525400123456", func(m *bootv1.Machine) {
			m.Labels = map[string]string{bootv1.DiscoveredLabel: "true"}
			m.Spec.IPv4 = nil
			m.Spec.BootPolicy = bootv1.BootPolicyLocalBoot
		})
		Expect(k8sClient.Create(ctx, d)).To(Succeed())
		Expect(k8sClient.Create(ctx, fixture.Machine(ns, "seat-1"))).To(Succeed())
		Eventually(func() error { return k8sClient.Get(ctx, client.ObjectKeyFromObject(d), d) }, eventually).ShouldNot(Succeed())
	})

	It("creates a session when the agent asks for an AutoSession machine", func() {
		m := fixture.Machine(ns, "seat-1", fixture.WithImage("win11"), fixture.WithBootPolicy(bootv1.BootPolicyAutoSession))
		m.Annotations = map[string]string{bootv1.SessionRequestedAnnotation: "2026-11-26T12:00:00Z"}
		Expect(k8sClient.Create(ctx, m)).To(Succeed())
		var list bootv1.BootSessionList
		Eventually(func() int {
			_ = k8sClient.List(ctx, &list, client.InNamespace(ns))
			return len(list.Items)
		}, eventually).Should(Equal(1))
		Expect(list.Items[0].Spec.MachineRef.Name).To(Equal("seat-1"))
		Expect(list.Items[0].Spec.ImageRef.Name).To(Equal("win11"))
		Eventually(func() map[string]string { return get(ctx, m)().Annotations }, eventually).ShouldNot(HaveKey(bootv1.SessionRequestedAnnotation))
		Consistently(func() int {
			_ = k8sClient.List(ctx, &list, client.InNamespace(ns))
			return len(list.Items)
		}, time.Second).Should(Equal(1), "one request, one session")
	})
})

var _ = Describe("Image", func() {
	It("summarizes replicas and blocks deletion while a session uses it", func() {
		ctx := context.Background()
		ns := newNamespace(ctx)
		node := "storage-" + ns
		storageNode(ctx, node, "10.20.0.5")
		img := fixture.Image(ns, "win11")
		Expect(k8sClient.Create(ctx, img)).To(Succeed())
		Eventually(func() string { return readyReason(get(ctx, img)().Status.Conditions) }, eventually).Should(Equal("False/NoReadyReplica"))
		Expect(img.Status.Phase).To(Equal(bootv1.ImagePending))
		readyReplica(ctx, img, node)
		Eventually(func() string { return readyReason(get(ctx, img)().Status.Conditions) }, eventually).Should(Equal("True/Succeeded"))
		Expect(img.Status.ReadyReplicas).To(Equal(int32(1)))
		Expect(img.Status.SizeBytes).To(Equal(int64(10 << 30)))
		Expect(kstatus(img)).To(Equal(status.CurrentStatus))

		Expect(k8sClient.Create(ctx, fixture.Machine(ns, "seat-1"))).To(Succeed())
		s := fixture.Session(ns, "s", "seat-1", "win11")
		Expect(k8sClient.Create(ctx, s)).To(Succeed())
		Eventually(view(ctx, s), eventually).Should(Equal(sessionView{bootv1.SessionReady, "True/Succeeded"}))

		Expect(k8sClient.Delete(ctx, img)).To(Succeed())
		Eventually(func() string { return readyReason(get(ctx, img)().Status.Conditions) }, eventually).Should(Equal("False/InUse"))
		Eventually(func() []string { return events(ctx, ns, "win11") }, eventually).Should(ContainElement(ContainSubstring("InUse: deletion waits for 1 unfinished session")))

		change(ctx, s, false, func(x *bootv1.BootSession) { x.Spec.Stopped = true })
		Eventually(func() error { return k8sClient.Get(ctx, client.ObjectKeyFromObject(img), img) }, eventually).ShouldNot(Succeed())
	})
})
