package storage

import (
	"context"
	"fmt"
	"net/http"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	bootv1 "github.com/ggnet/ggnet/api/v1alpha1"
	"github.com/ggnet/ggnet/bootagent/images"
	"github.com/ggnet/ggnet/bootagent/target"
	"github.com/ggnet/ggnet/internal/fixture"
)

// ownedBy is the fields a field manager owns on obj's subresource ("" or
// "status"), as the API server's managedFields say (FieldsV1, raw).
func ownedBy(obj client.Object, manager, subresource string) string {
	var out []string
	for _, e := range obj.GetManagedFields() {
		if e.Manager == manager && e.Subresource == subresource && e.FieldsV1 != nil {
			out = append(out, e.FieldsV1.GetRawString())
		}
	}
	return strings.Join(out, "\n")
}

var _ = Describe("The storage agent's status writes", func() {
	It("apply a session's StorageReady, overlay path and logins in one shape: the reconciler's and the login watcher's keep each other's, a stale read takes none back, the manager's stay", func() {
		runRole()
		l := newLab()
		// No Machine: the manager never schedules the session, so the
		// running role leaves it alone; the manager writes its conditions.
		s := fixture.Session(l.ns, "s", "nobody", "win11")
		Expect(k8sClient.Create(l.ctx, s)).To(Succeed())
		Eventually(func() []metav1.Condition {
			_ = k8sClient.Get(l.ctx, client.ObjectKeyFromObject(s), s)
			return s.Status.Conditions
		}, eventually).ShouldNot(BeEmpty())
		managers := map[string]bool{}
		for _, c := range s.Status.Conditions {
			managers[c.Type] = true
		}
		stale := s.DeepCopy() // every write below reads the session as it was before them
		rs := &sessionReconciler{Role: role, Client: role.mgr.GetClient()}
		path := dataDir + "/overlays/" + l.ns + "/s-x.raw"
		at := time.Now().Add(-10 * time.Second)
		conn := target.Connection{Initiator: "iqn.2026-11.io.ggnet:initiator:" + l.ns + ":nobody", Address: "10.20.0.9", Session: "7"}
		when := func(string) time.Time { return at }

		Expect(rs.storageReady(l.ctx, stale, metav1.ConditionTrue, ReasonTargetReady, "overlay and iSCSI target ready", path)).To(Succeed())
		Expect(rs.recordLogins(l.ctx, stale, []target.Connection{conn}, when)).To(Succeed())
		Expect(rs.storageReady(l.ctx, stale, metav1.ConditionFalse, bootv1.TargetUnavailableReason, "cannot make the iSCSI target", path)).To(Succeed())

		get := func() *bootv1.BootSession {
			got := &bootv1.BootSession{}
			Expect(k8sClient.Get(l.ctx, client.ObjectKeyFromObject(s), got)).To(Succeed())
			return got
		}
		got := get()
		c := meta.FindStatusCondition(got.Status.Conditions, bootv1.StorageReadyCondition)
		Expect(c).NotTo(BeNil())
		Expect(c.Reason).To(Equal(bootv1.TargetUnavailableReason))
		Expect(got.Status.OverlayPath).To(Equal(path))
		Expect(got.Status.Timeline.Logins).To(HaveLen(1), "the watcher's row survived the reconciler's next write")
		Expect(got.Status.Timeline.Logins[0].LoggedOutAt).To(BeNil())
		Expect(got.Status.Timeline.ISCSILogin).NotTo(BeNil())
		for typ := range managers {
			Expect(meta.FindStatusCondition(got.Status.Conditions, typ)).NotTo(BeNil(), "the manager's %s", typ)
		}

		By("the logout: the reconciler's condition and path stay")
		Expect(rs.recordLogins(l.ctx, stale, nil, func(string) time.Time { return at.Add(5 * time.Second) })).To(Succeed())
		got = get()
		Expect(got.Status.Timeline.Logins).To(HaveLen(1))
		Expect(got.Status.Timeline.Logins[0].LoggedOutAt).NotTo(BeNil())
		Expect(got.Status.Timeline.ISCSILogout).NotTo(BeNil())
		Expect(meta.FindStatusCondition(got.Status.Conditions, bootv1.StorageReadyCondition).Reason).To(Equal(bootv1.TargetUnavailableReason))
		Expect(got.Status.OverlayPath).To(Equal(path))

		owned := ownedBy(got, nodeFieldOwner(), "status")
		for _, f := range []string{`k:{\"type\":\"StorageReady\"}`, `"f:overlayPath"`, `"f:logins"`, `"f:iscsiLogin"`, `"f:iscsiLogout"`} {
			Expect(owned).To(ContainSubstring(f))
		}
		for typ := range managers {
			Expect(owned).NotTo(ContainSubstring(`k:{\"type\":\"` + typ + `\"}`))
		}

		By("the manager's next write leaves the agent's fields")
		base := got.DeepCopy()
		meta.SetStatusCondition(&got.Status.Conditions, metav1.Condition{Type: bootv1.ReadyCondition, Status: metav1.ConditionFalse,
			Reason: "Testing", Message: "a manager write"})
		Expect(k8sClient.Status().Patch(l.ctx, got, client.MergeFromWithOptions(base, client.MergeFromWithOptimisticLock{}),
			client.FieldOwner("manager"))).To(Succeed())
		got = get()
		Expect(meta.FindStatusCondition(got.Status.Conditions, bootv1.StorageReadyCondition)).NotTo(BeNil())
		Expect(got.Status.Timeline.Logins).To(HaveLen(1))
		Expect(got.Status.OverlayPath).To(Equal(path))
	})

	It("apply the Node's portal and storage annotations together, and each node's replica row of an Image", func() {
		runRole()
		ctx := context.Background()
		node := &corev1.Node{}
		annotations := func() map[string]string {
			Expect(k8sClient.Get(ctx, client.ObjectKey{Name: nodeName}, node)).To(Succeed())
			return node.Annotations
		}
		Eventually(annotations, eventually).Should(And(HaveKeyWithValue(bootv1.ISCSIPortalAnnotation, tgtd.Portal), HaveKey(bootv1.StorageAnnotation)))
		By("a capacity report keeps the portal")
		before := annotations()[bootv1.StorageAnnotation]
		time.Sleep(time.Second) // a later second in the measure
		// Noticeable, so written at once — set just before the report: a
		// periodic report in between would have made it unnoticeable again
		// (and, if one lands after this, it writes the later second too).
		role.node.mu.Lock()
		role.node.storage.Updated = metav1.Time{}
		role.node.mu.Unlock()
		Expect(role.reportCapacityOnce(ctx)).To(Succeed())
		Expect(annotations()[bootv1.StorageAnnotation]).NotTo(Equal(before))
		Expect(annotations()).To(HaveKeyWithValue(bootv1.ISCSIPortalAnnotation, tgtd.Portal))
		By("a portal announcement keeps the storage annotation")
		Expect(role.announcePortal(ctx)).To(Succeed())
		Expect(annotations()).To(HaveKey(bootv1.StorageAnnotation))
		owned := ownedBy(node, nodeFieldOwner(), "")
		Expect(owned).To(ContainSubstring(`"f:` + bootv1.ISCSIPortalAnnotation + `"`))
		Expect(owned).To(ContainSubstring(`"f:` + bootv1.StorageAnnotation + `"`))

		By("another node's replica row beside this node's, and the manager's summary")
		l := newLab()
		img := l.image("win11", 16<<20)
		other := &imageReconciler{Role: &Role{cfg: Config{NodeName: "storage-2"}, mgr: role.mgr}}
		Expect(other.report(ctx, img, bootv1.ReplicaFailed, images.Result{}, images.ReasonUnsupportedFormat, "not here")).To(Succeed())
		mine := &imageReconciler{Role: role, Client: role.mgr.GetClient()}
		Expect(k8sClient.Get(ctx, client.ObjectKeyFromObject(img), img)).To(Succeed())
		Expect(mine.report(ctx, img, bootv1.ReplicaReady, images.Result{Path: img.Status.Replicas[0].Path, SizeBytes: 16 << 20,
			SHA256: img.Status.Replicas[0].SHA256}, bootv1.SucceededReason, "re-reported")).To(Succeed())
		Expect(k8sClient.Get(ctx, client.ObjectKeyFromObject(img), img)).To(Succeed())
		// The running role may already have applied its own row again (the
		// other node's write woke it): its message is then back to none.
		Expect(img.Status.Replicas).To(ConsistOf(
			And(HaveField("Node", nodeName), HaveField("State", bootv1.ReplicaReady), HaveField("Message", Or(Equal("re-reported"), BeEmpty()))),
			And(HaveField("Node", "storage-2"), HaveField("State", bootv1.ReplicaFailed))))
		Expect(img.Status.ReadyReplicas).To(Equal(int32(1)), "the manager's summary")
		By("the running role applies its own row again (its message back to none): the other node's row stays")
		Eventually(func() []bootv1.ImageReplica {
			Expect(k8sClient.Get(ctx, client.ObjectKeyFromObject(img), img)).To(Succeed())
			return img.Status.Replicas
		}, eventually).Should(ConsistOf(
			And(HaveField("Node", nodeName), HaveField("State", bootv1.ReplicaReady), HaveField("Message", "")),
			And(HaveField("Node", "storage-2"), HaveField("State", bootv1.ReplicaFailed))))
	})

	It("makes two API writes per session (StorageReady, the storage finalizer off by a JSON patch; the manager put it on), none that says nothing new", func() {
		w := &writeCounter{n: map[string]int{}}
		runRoleOn(w.wrap(restCfg))
		l := newLab()
		l.image("win11", 16<<20)
		const n = 4
		var names []string
		for i := range n + 1 {
			l.machine(fmt.Sprintf("seat-%d", i))
			names = append(names, fmt.Sprintf("s-%d", i))
		}
		var sessions []*bootv1.BootSession
		for i, name := range names[:n] {
			sessions = append(sessions, l.session(name, fmt.Sprintf("seat-%d", i), "win11", bootv1.WritebackDiscard))
		}
		By("a session as an older manager made it (its finalizer only): the agent adds the storage finalizer")
		old := fixture.Session(l.ns, names[n], fmt.Sprintf("seat-%d", n), "win11")
		old.Finalizers = []string{bootv1.SessionFinalizer}
		Expect(k8sClient.Create(l.ctx, old)).To(Succeed())
		Eventually(func() string {
			_ = k8sClient.Get(l.ctx, client.ObjectKeyFromObject(old), old)
			return string(old.Status.Phase)
		}, eventually).Should(Equal("Ready"))
		Expect(old.Finalizers).To(ConsistOf(bootv1.SessionFinalizer, bootv1.StorageFinalizer))
		sessions = append(sessions, old)
		time.Sleep(3 * time.Second) // later reconciles (the manager's stamps, the resync) write nothing
		for _, s := range sessions {
			l.stop(s)
		}
		want := map[string][]string{}
		for _, name := range names[:n] {
			want[name] = []string{"PATCH bootsessions/status", "PATCH bootsessions"}
		}
		want[names[n]] = []string{"PUT bootsessions", "PATCH bootsessions/status", "PATCH bootsessions"}
		// The finalizer's removal lands when it lands (a loaded machine):
		// wait for it, then check that nothing more comes.
		for _, name := range names {
			Eventually(func() []string { writes, _ := w.of(l.ns, name); return writes }, time.Minute, 100*time.Millisecond).
				Should(HaveLen(len(want[name])), "session %s", name)
		}
		time.Sleep(2 * time.Second)
		for _, name := range names {
			writes, refused := w.of(l.ns, name)
			fmt.Fprintf(GinkgoWriter, "storage agent's writes of session %s: %s; refused: %s\n", name, strings.Join(writes, ", "), strings.Join(refused, ", "))
			Expect(writes).To(ConsistOf(want[name]), "session %s", name)
		}
	})
})

// nodeFieldOwner is the suite's role's field manager.
func nodeFieldOwner() string { return "ggnet-storage-" + nodeName }

// writeCounter records the API writes made through a rest.Config: method
// and resource of each request that is not a read.
type writeCounter struct {
	mu sync.Mutex
	n  map[string]int // "METHOD namespace/name resource[/subresource]"
}

var objectPath = regexp.MustCompile(`/apis/boot\.ggnet\.io/v1alpha1/namespaces/([^/]+)/([^/]+)/([^/?]+)(/status)?`)

func (w *writeCounter) wrap(cfg *rest.Config) *rest.Config {
	c := rest.CopyConfig(cfg)
	c.WrapTransport = func(rt http.RoundTripper) http.RoundTripper {
		return roundTripFunc(func(req *http.Request) (*http.Response, error) {
			resp, err := rt.RoundTrip(req)
			if req.Method != http.MethodGet {
				if m := objectPath.FindStringSubmatch(req.URL.Path); m != nil {
					code := "error"
					if err == nil {
						code = strconv.Itoa(resp.StatusCode)
					}
					w.mu.Lock()
					w.n[req.Method+" "+m[1]+"/"+m[3]+" "+m[2]+m[4]+" "+code]++
					w.mu.Unlock()
				}
			}
			return resp, err
		})
	}
	return c
}

// of lists the writes of one object, "METHOD resource[/subresource]", once
// per write, sorted, and the requests the API server refused
// (conflicts: nothing written), with their status code.
func (w *writeCounter) of(namespace, name string) (writes, refused []string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for k, n := range w.n {
		f := strings.Fields(k) // method, object, resource, code
		if f[1] != namespace+"/"+name {
			continue
		}
		for range n {
			if strings.HasPrefix(f[3], "2") {
				writes = append(writes, f[0]+" "+f[2])
			} else {
				refused = append(refused, f[0]+" "+f[2]+" "+f[3])
			}
		}
	}
	sort.Strings(writes)
	sort.Strings(refused)
	return writes, refused
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }
