package main_test

import (
	"context"
	"encoding/base64"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/ggnet/ggnet/internal/scheme"
	"github.com/ggnet/ggnet/internal/testbin"
	"github.com/ggnet/ggnet/internal/testenv"
)

// TestManagerStarts runs the real manager binary against a real API server
// and checks its probes, its metrics, its profiler (--pprof-bind-address),
// that it takes the leader Lease and that it makes the replication Secret
// (--replication-secret) in its namespace without logging the key.
func TestManagerStarts(t *testing.T) {
	g := NewWithT(t)
	env, cfg, err := testenv.Start()
	g.Expect(err).NotTo(HaveOccurred())
	t.Cleanup(func() { _ = env.Stop() })

	user, err := env.AddUser(envtest.User{Name: "ggnet-manager", Groups: []string{"system:masters"}}, nil)
	g.Expect(err).NotTo(HaveOccurred())
	kc, err := user.KubeConfig()
	g.Expect(err).NotTo(HaveOccurred())
	kubeconfig := filepath.Join(t.TempDir(), "kubeconfig")
	g.Expect(os.WriteFile(kubeconfig, kc, 0o600)).To(Succeed())

	bin := testbin.Build(t, "./cmd/manager")
	metrics, probes, pprof := testbin.FreePort(t), testbin.FreePort(t), testbin.FreePort(t)
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, bin, "--kubeconfig", kubeconfig,
		"--leader-elect", "--leader-election-namespace", "default", "--storage-node-grace=2m",
		"--replication-secret=ggnet-replication", "--image-retention=5",
		fmt.Sprintf("--metrics-bind-address=127.0.0.1:%d", metrics),
		fmt.Sprintf("--health-probe-bind-address=127.0.0.1:%d", probes),
		fmt.Sprintf("--pprof-bind-address=127.0.0.1:%d", pprof))
	var logs lockedBuilder
	cmd.Stdout, cmd.Stderr = &logs, &logs
	g.Expect(cmd.Start()).To(Succeed())
	t.Cleanup(func() { cancel(); _ = cmd.Wait(); t.Logf("manager log:\n%s", logs.String()) })

	_, err = testbin.WaitHTTP(fmt.Sprintf("http://127.0.0.1:%d/healthz", probes), 30*time.Second)
	g.Expect(err).NotTo(HaveOccurred())
	_, err = testbin.WaitHTTP(fmt.Sprintf("http://127.0.0.1:%d/readyz", probes), 30*time.Second)
	g.Expect(err).NotTo(HaveOccurred())
	body, err := testbin.WaitHTTP(fmt.Sprintf("http://127.0.0.1:%d/metrics", metrics), 30*time.Second)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(body).To(ContainSubstring("leader_election_master_status"))
	body, err = testbin.WaitHTTP(fmt.Sprintf("http://127.0.0.1:%d/debug/pprof/goroutine?debug=1", pprof), 30*time.Second)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(body).To(ContainSubstring("goroutine profile"))

	c, err := client.New(cfg, client.Options{Scheme: scheme.New()})
	g.Expect(err).NotTo(HaveOccurred())
	g.Eventually(func() string {
		var lease coordinationv1.Lease
		if err := c.Get(ctx, types.NamespacedName{Namespace: "default", Name: "manager.boot.ggnet.io"}, &lease); err != nil {
			return ""
		}
		if lease.Spec.HolderIdentity == nil {
			return ""
		}
		return *lease.Spec.HolderIdentity
	}, 30*time.Second, 200*time.Millisecond).ShouldNot(BeEmpty(), "the manager took the leader Lease")

	var key []byte
	g.Eventually(func() []byte {
		var sec corev1.Secret
		if err := c.Get(ctx, types.NamespacedName{Namespace: "default", Name: "ggnet-replication"}, &sec); err != nil {
			return nil
		}
		key = sec.Data["key"]
		return key
	}, 30*time.Second, 200*time.Millisecond).Should(HaveLen(32), "the manager made the replication Secret")
	g.Expect(logs.String()).NotTo(ContainSubstring(base64.StdEncoding.EncodeToString(key)))
	g.Expect(logs.String()).NotTo(ContainSubstring(string(key)))
}

// lockedBuilder is a strings.Builder the test reads while the process
// writes to it.
type lockedBuilder struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuilder) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuilder) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
