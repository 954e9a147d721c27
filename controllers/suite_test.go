package controllers

import (
	"bytes"
	"context"
	"io"
	"sync"
	"testing"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	"go.uber.org/zap/zapcore"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/util/retry"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	bootv1 "github.com/ggnet/ggnet/api/v1alpha1"
	"github.com/ggnet/ggnet/internal/scheme"
	"github.com/ggnet/ggnet/internal/standin"
	"github.com/ggnet/ggnet/internal/testenv"
)

func TestControllers(t *testing.T) {
	RegisterFailHandler(Fail)
	RunSpecs(t, "Controllers suite (real kube-apiserver, stand-in storage agent)")
}

var (
	env       *envtest.Environment
	cfg       *rest.Config
	k8sClient client.Client
	mgrCache  client.Reader
	cancelMgr context.CancelFunc
	// managerLog holds everything the manager logged, for the specs that
	// check no credential is in it.
	managerLog syncBuffer
)

// syncBuffer is a bytes.Buffer safe for the manager's goroutines.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

var _ = BeforeSuite(func() {
	// Verbose, so that the credentials check sees every line.
	ctrl.SetLogger(zap.New(zap.WriteTo(io.MultiWriter(GinkgoWriter, &managerLog)), zap.UseDevMode(true), zap.Level(zapcore.Level(-5))))
	e, c, err := testenv.Start()
	cfg = c
	Expect(err).NotTo(HaveOccurred())
	env = e
	mgr, err := ctrl.NewManager(cfg, ctrl.Options{Scheme: scheme.New(), Cache: CacheOptions(), Client: ClientOptions(), Metrics: metricsserver.Options{BindAddress: "0"}})
	Expect(err).NotTo(HaveOccurred())
	ctx, cancel := context.WithCancel(context.Background())
	cancelMgr = cancel
	// The same indexes and reconcilers as cmd/manager.
	Expect(Setup(ctx, mgr, Options{MaxConcurrentReconciles: 4, IQNPrefix: "iqn.2026-11.io.ggnet", ISCSIPort: 3260,
		StorageNodeGrace: storageNodeGrace, StorageLeaseDuration: testLeaseDuration * time.Second, ImageRetention: imageRetention,
		RetireTimeout: retireTimeout})).To(Succeed())
	Expect((&standin.Storage{Client: mgr.GetClient()}).SetupWithManager(mgr)).To(Succeed())
	Expect((&standin.Retire{Client: mgr.GetClient()}).SetupWithManager(mgr)).To(Succeed())
	go func() {
		defer GinkgoRecover()
		Expect(mgr.Start(ctx)).To(Succeed())
	}()
	// The specs read and write straight to the API server, not the cache.
	mgrCache = mgr.GetCache()
	k8sClient, err = client.New(cfg, client.Options{Scheme: scheme.New()})
	Expect(err).NotTo(HaveOccurred())
	Expect(mgr.GetCache().WaitForCacheSync(ctx)).To(BeTrue())
})

var _ = AfterSuite(func() {
	if cancelMgr != nil {
		cancelMgr()
	}
	if env != nil {
		Expect(env.Stop()).To(Succeed())
	}
})

// storageNodeGrace is the suite manager's --storage-node-grace: long enough
// for a spec to bring a Node back within it, short enough to wait for.
const storageNodeGrace = 5 * time.Second

// retireTimeout is the manager's --retire-timeout in the suite: long enough
// for a spec to answer a retire by hand first.
const retireTimeout = 8 * time.Second

// newNamespace makes a namespace for one spec. A MAC and an address belong
// to one Machine in the whole cluster, and envtest has no namespace
// controller: the spec's sessions and Machines are deleted when it ends
// (a Machine goes once no session uses it), and the next spec starts once
// the manager saw them go.
func newNamespace(ctx context.Context) string {
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "ggnet-ctrl-"}}
	Expect(k8sClient.Create(ctx, ns)).To(Succeed())
	DeferCleanup(func(ctx context.Context) {
		Expect(k8sClient.DeleteAllOf(ctx, &bootv1.BootSession{}, client.InNamespace(ns.Name))).To(Succeed())
		Expect(k8sClient.DeleteAllOf(ctx, &bootv1.Machine{}, client.InNamespace(ns.Name))).To(Succeed())
		Eventually(func() []bootv1.Machine {
			var list bootv1.MachineList
			_ = mgrCache.List(ctx, &list, client.InNamespace(ns.Name))
			return list.Items
		}, eventually).Should(BeEmpty())
	})
	return ns.Name
}

// storageNode makes a Node with an InternalIP; nodes are cluster-scoped, so
// each spec uses its own names.
func storageNode(ctx context.Context, name, ip string) *corev1.Node {
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}}
	Expect(k8sClient.Create(ctx, n)).To(Succeed())
	n.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: ip}}
	Expect(k8sClient.Status().Update(ctx, n)).To(Succeed())
	DeferCleanup(func() { _ = k8sClient.Delete(context.Background(), n) })
	return n
}

// readyReplica plays the storage agent's image part: a Ready replica on node.
func readyReplica(ctx context.Context, img *bootv1.Image, nodes ...string) {
	change(ctx, img, true, func(img *bootv1.Image) {
		for _, n := range nodes {
			now := metav1.Now()
			img.Status.Replicas = append(img.Status.Replicas, bootv1.ImageReplica{Node: n, State: bootv1.ReplicaReady,
				Path: "/var/lib/ggnet/images/" + img.Name + ".raw", SizeBytes: 10 << 30, SHA256: "ab", LastTransitionTime: &now})
		}
	})
}

// change re-reads obj and applies mutate until the update does not conflict
// with the controllers' own writes; status selects the status subresource.
func change[T client.Object](ctx context.Context, obj T, status bool, mutate func(T)) {
	GinkgoHelper()
	Expect(retry.RetryOnConflict(retry.DefaultRetry, func() error {
		if err := k8sClient.Get(ctx, client.ObjectKeyFromObject(obj), obj); err != nil {
			return err
		}
		mutate(obj)
		if status {
			return k8sClient.Status().Update(ctx, obj)
		}
		return k8sClient.Update(ctx, obj)
	})).To(Succeed())
}

func get[T client.Object](ctx context.Context, obj T) func() T {
	return func() T {
		_ = k8sClient.Get(ctx, client.ObjectKeyFromObject(obj), obj)
		return obj
	}
}

const eventually = 20 * time.Second

// imageRetention is the suite manager's --image-retention: the newest two
// Ready versions of a family are kept (image_lifecycle_test.go).
const imageRetention = 2
