package agent

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/go-logr/logr"
	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	"github.com/ggnet/ggnet/bootagent/dhcp"
	"github.com/ggnet/ggnet/bootagent/httpboot"
	"github.com/ggnet/ggnet/bootagent/table"
	"github.com/ggnet/ggnet/internal/scheme"
	"github.com/ggnet/ggnet/internal/testenv"
)

func TestAgent(t *testing.T) {
	RegisterFailHandler(Fail)
	RunSpecs(t, "Boot agent suite (real kube-apiserver, real sockets)")
}

var (
	env       *envtest.Environment
	restCfg   *rest.Config
	k8sClient client.Client
)

var _ = BeforeSuite(func() {
	var err error
	env, restCfg, err = testenv.Start()
	Expect(err).NotTo(HaveOccurred())
	k8sClient, err = client.New(restCfg, client.Options{Scheme: scheme.New()})
	Expect(err).NotTo(HaveOccurred())
})

var _ = AfterSuite(func() {
	if env != nil {
		Expect(env.Stop()).To(Succeed())
	}
})

func newNamespace(ctx context.Context) string {
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "ggnet-agent-"}}
	Expect(k8sClient.Create(ctx, ns)).To(Succeed())
	return ns.Name
}

// ipxeRoot makes a directory that stands in for /usr/lib/ipxe.
func ipxeRoot() string {
	dir := GinkgoT().TempDir()
	for _, f := range []string{"undionly.kpxe", "ipxe.efi", "snponly.efi"} {
		Expect(os.WriteFile(filepath.Join(dir, f), []byte("binary "+f), 0o644)).To(Succeed())
	}
	return dir
}

// startAgent runs an agent on loopback ephemeral ports against cfg until the
// spec ends, and returns it once its caches synced. Its neighbour table is
// neighbors (the test client's 127.0.0.1 is bound to a MAC there).
func startAgent(cfg *rest.Config, namespace string, neighbors table.Neighbors, mutate ...func(*Config)) *Agent {
	a := runAgent(cfg, namespace, neighbors, mutate...)
	Eventually(a.synced.Load, 20*time.Second).Should(BeTrue())
	return a
}

// runAgent runs an agent without waiting for its caches.
func runAgent(cfg *rest.Config, namespace string, neighbors table.Neighbors, mutate ...func(*Config)) *Agent {
	c := Config{Namespace: namespace, Boot: BootConfig{
		DHCPListen: "127.0.0.1:0", TFTPListen: "127.0.0.1:0", HTTPListen: "127.0.0.1:0", MetricsListen: "127.0.0.1:0",
		DHCP:      dhcp.Config{Mode: dhcp.ModeReservation, ServerIP: net.IPv4(127, 0, 0, 1)},
		HTTP:      httpboot.Config{BaseURL: "http://127.0.0.1:8880", IPXERoot: ipxeRoot(), LongPoll: 20 * time.Second},
		Discovery: true, DiscoveryNamespace: namespace, Neighbors: neighbors, BindNeighbors: true,
		DHCPClientPort: freeUDPPort(),
	}}
	for _, m := range mutate {
		m(&c)
	}
	a, err := New(cfg, c, zap.New(zap.WriteTo(GinkgoWriter), zap.UseDevMode(true)))
	Expect(err).NotTo(HaveOccurred())
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	DeferCleanup(func() {
		cancel()
		Eventually(done, 10*time.Second).Should(Receive(BeNil()))
	})
	return a
}

var _ = logr.Discard

// startOwnAPIServer starts an API server that a spec may stop; open watches
// keep kube-apiserver from a graceful stop, so it is killed after a second.
func startOwnAPIServer() (*envtest.Environment, *rest.Config, error) {
	return testenv.Start(func(e *envtest.Environment) { e.ControlPlaneStopTimeout = time.Second })
}

// freeUDPPort is a UDP port free at the time of the call, where an agent's
// DHCP replies to its test clients go (they cannot bind port 68).
func freeUDPPort() uint16 {
	c, err := net.ListenUDP("udp4", &net.UDPAddr{})
	Expect(err).NotTo(HaveOccurred())
	defer c.Close()
	return uint16(c.LocalAddr().(*net.UDPAddr).Port)
}
