package storage

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/go-logr/logr"
	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/config"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	bootv1 "github.com/ggnet/ggnet/api/v1alpha1"
	"github.com/ggnet/ggnet/bootagent/target"
	"github.com/ggnet/ggnet/controllers"
	"github.com/ggnet/ggnet/internal/scheme"
	"github.com/ggnet/ggnet/internal/testenv"
	"github.com/ggnet/ggnet/internal/testfs"
	"github.com/ggnet/ggnet/internal/testtgt"
)

func TestStorage(t *testing.T) {
	RegisterFailHandler(Fail)
	RunSpecs(t, "Storage role suite (real kube-apiserver, tgtd, XFS with reflink)")
}

var (
	env       *envtest.Environment
	restCfg   *rest.Config
	k8sClient client.Client
	tgtd      *testtgt.TGTD
	dataDir   string
	nodeName  = "storage-1"
	log       logr.Logger
)

var _ = BeforeSuite(func() {
	log = zap.New(zap.WriteTo(GinkgoWriter), zap.UseDevMode(true))
	ctrl.SetLogger(log)
	var err error
	env, restCfg, err = testenv.Start()
	Expect(err).NotTo(HaveOccurred())
	k8sClient, err = client.New(restCfg, client.Options{Scheme: scheme.New()})
	Expect(err).NotTo(HaveOccurred())

	// tgtd and the data directory live for the whole suite.
	t := GinkgoT()
	tgtd = testtgt.Start(t)
	dataDir = testfs.XFS(t, 2<<30)

	// The storage node, reachable on loopback at tgtd's portal.
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: nodeName, Labels: map[string]string{bootv1.StorageNodeLabel: "true"}}}
	Expect(k8sClient.Create(context.Background(), node)).To(Succeed())
	node.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: "127.0.0.1"}}
	Expect(k8sClient.Status().Update(context.Background(), node)).To(Succeed())

	// The real controllers, pointed at tgtd's port.
	_, port, _ := splitPort(tgtd.Portal)
	mgr, err := ctrl.NewManager(restCfg, ctrl.Options{Scheme: scheme.New(), Cache: controllers.CacheOptions(), Client: controllers.ClientOptions(),
		Metrics: metricsserver.Options{BindAddress: "0"}})
	Expect(err).NotTo(HaveOccurred())
	ctx, cancel := context.WithCancel(context.Background())
	stopManager = cancel
	Expect(controllers.Setup(ctx, mgr, controllers.Options{MaxConcurrentReconciles: 2, IQNPrefix: "iqn.2026-11.io.ggnet", ISCSIPort: port})).To(Succeed())
	go func() {
		defer GinkgoRecover()
		Expect(mgr.Start(ctx)).To(Succeed())
	}()
})

var stopManager context.CancelFunc

// role is the storage role runRole started last.
var role *Role

var _ = AfterSuite(func() {
	if stopManager != nil {
		stopManager()
	}
	if env != nil {
		Expect(env.Stop()).To(Succeed())
	}
})

func splitPort(portal string) (string, int, error) {
	i := len(portal) - 1
	for portal[i] != ':' {
		i--
	}
	p, err := strconv.Atoi(portal[i+1:])
	return portal[:i], p, err
}

// rebuilt lets the specs build the role again in one process (a restart):
// its controllers' names are registered once per build.
var rebuilt = config.Controller{SkipNameValidation: new(true)}

// runRole starts the storage role and returns a func that stops it (as a
// crash would: nothing is cleaned up on the way out).
func runRole() (stop func()) { return runRoleOn(restCfg) }

// runRoleOn is runRole against the API server of cfg.
func runRoleOn(cfg *rest.Config) (stop func()) {
	r, err := New(cfg, Config{NodeName: nodeName, DataDir: dataDir, IQNPrefix: "iqn.2026-11.io.ggnet:",
		Driver: &target.TGT{ControlPort: tgtd.ControlPort}, Resync: time.Second, Portal: tgtd.Portal, ImagePathRoot: imagePathRoot(),
		Controller: rebuilt}, log.WithName("storage"))
	Expect(err).NotTo(HaveOccurred())
	role = r
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer GinkgoRecover()
		defer close(done)
		Expect(r.Run(ctx)).To(Succeed())
	}()
	stopped := false
	stop = func() {
		if !stopped {
			stopped = true
			cancel()
			Eventually(done, 20*time.Second).Should(BeClosed())
		}
	}
	DeferCleanup(stop)
	return stop
}

// goldenImage writes a file to import as an image.
func goldenImage(size int64) string {
	p := filepath.Join(imageDir(), "golden.raw")
	f, err := os.Create(p)
	Expect(err).NotTo(HaveOccurred())
	_, err = f.WriteAt([]byte("GGNET GOLDEN IMAGE"), 0)
	Expect(err).NotTo(HaveOccurred())
	Expect(f.Truncate(size)).To(Succeed())
	Expect(f.Close()).To(Succeed())
	return p
}

// login is what a libiscsi tool logs in with.
type login struct {
	targetIQN, initiator, user, password, targetUser, targetPassword string
}

// env passes the CHAP credentials the way libiscsi reads them from the
// environment (lib/init.c), so that no command line carries a secret.
func (l login) env() []string {
	env := append(os.Environ(), "LIBISCSI_CHAP_USERNAME="+l.user, "LIBISCSI_CHAP_PASSWORD="+l.password)
	if l.targetUser != "" {
		env = append(env, "LIBISCSI_CHAP_TARGET_USERNAME="+l.targetUser, "LIBISCSI_CHAP_TARGET_PASSWORD="+l.targetPassword)
	}
	return env
}

func iscsiTool(tool string, l login, path string) (string, error) {
	cmd := exec.Command(tool, "-i", l.initiator, "iscsi://"+tgtd.Portal+"/"+path)
	cmd.Env = l.env()
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// iscsiPerf starts a reader that stays logged in until killed.
func iscsiPerf(l login) *exec.Cmd {
	cmd := exec.Command("iscsi-perf", "-i", l.initiator, "-t", "600", "iscsi://"+tgtd.Portal+"/"+l.targetIQN+"/1")
	cmd.Env = l.env()
	return cmd
}

// imagePathRoot is the storage role's image path root in this suite, apart
// from the data directory: path-source Images come from under it. A fixed
// name, shared by runs, each file in a directory of its own (imageDir).
func imagePathRoot() string {
	root := filepath.Join(os.TempDir(), "ggnet-storage-suite-images")
	Expect(os.MkdirAll(root, 0o755)).To(Succeed())
	return root
}

// imageDir is a new directory under imagePathRoot, removed after the spec.
func imageDir() string {
	dir, err := os.MkdirTemp(imagePathRoot(), "golden-")
	Expect(err).NotTo(HaveOccurred())
	DeferCleanup(os.RemoveAll, dir)
	return dir
}
