package main

import (
	"context"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	bootv1 "github.com/ggnet/ggnet/api/v1alpha1"
	"github.com/ggnet/ggnet/internal/testfs"
)

// TestPortalOnNamedAddress runs the storage role with --start-tgtd and
// --portal on the node's boot address: tgtd listens there and on no other
// address of the node, and the agent announces the portal on its Node. It
// needs root and tgtd.
func TestPortalOnNamedAddress(t *testing.T) {
	g := NewWithT(t)
	c, bin := setup(t)
	ctx := context.Background()
	l := newNetLab(t)
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "portal-" + string(l.node)}}
	g.Expect(c.Create(ctx, node)).To(Succeed())
	t.Cleanup(func() { _ = c.Delete(context.Background(), node) })

	controlPort := 20000 + rand.IntN(9000)
	p := l.start(bin, "--storage", "--node-name", node.Name, "--data-dir", testfs.XFS(t, 1<<30),
		"--start-tgtd", "--tgt-control-port", strconv.Itoa(controlPort), "--portal", addrA+":3260")
	// tgtd runs in a session of its own and outlives the agent by design:
	// the test kills the tgtd its agent started (tgtd ignores SIGTERM).
	var tgtds []int
	t.Cleanup(func() {
		for _, pid := range tgtds {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	})
	g.Eventually(func() error {
		conn, err := l.lan.dial("tcp", addrA+":3260")
		if err == nil {
			conn.Close()
		}
		return err
	}, 30*time.Second, 200*time.Millisecond).Should(Succeed(), "tgtd listens on the named portal")
	tgtds = p.children("tgtd")
	g.Expect(tgtds).To(HaveLen(1))

	_, err := l.lan.dial("tcp", addrB+":3260")
	g.Expect(err).To(MatchError(syscall.ECONNREFUSED), "not on the node's other address")
	_, err = l.node.dial("tcp", "127.0.0.1:3260")
	g.Expect(err).To(MatchError(syscall.ECONNREFUSED), "not on loopback: not 0.0.0.0")

	g.Eventually(func() string {
		_ = c.Get(ctx, client.ObjectKeyFromObject(node), node)
		return node.Annotations[bootv1.ISCSIPortalAnnotation]
	}, 20*time.Second).Should(Equal(addrA+":3260"), "the portal is announced on the Node for the manager")

	t.Run("refuses 0.0.0.0 and a missing portal", func(t *testing.T) {
		for _, args := range [][]string{{"--portal", "0.0.0.0:3260"}, {"--portal", ":3260"}, {}} {
			g := NewWithT(t)
			args = append([]string{"--storage", "--node-name", node.Name, "--kubeconfig", l.kubeconfig}, args...)
			out, err := exec.Command(bin, args...).CombinedOutput()
			g.Expect(err).To(HaveOccurred(), "%v", args)
			g.Expect(string(out)).To(ContainSubstring("--portal"), "%v", args)
			g.Expect(string(out)).NotTo(ContainSubstring("Starting tgtd"))
		}
	})
}

// TestBothRolesServeProbesAndMetrics runs the boot and the storage role in
// one process: each serves /healthz, /readyz and /metrics on its own
// listener (--metrics-listen, --storage-metrics-listen), and the storage
// role shows its capacity on its Node. It needs root (network namespaces).
func TestBothRolesServeProbesAndMetrics(t *testing.T) {
	g := NewWithT(t)
	c, bin := setup(t)
	ctx := context.Background()
	l := newNetLab(t)
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "both-" + string(l.node)}}
	g.Expect(c.Create(ctx, node)).To(Succeed())
	t.Cleanup(func() { _ = c.Delete(context.Background(), node) })
	root := t.TempDir()
	for _, f := range []string{"undionly.kpxe", "ipxe.efi", "snponly.efi"} {
		g.Expect(os.WriteFile(filepath.Join(root, f), []byte("binary "+f), 0o644)).To(Succeed())
	}
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "ggnet-both-"}}
	g.Expect(c.Create(ctx, ns)).To(Succeed())

	l.start(bin, "--boot", "--storage", "--namespace", ns.Name, "--node-name", node.Name, "--data-dir", testfs.XFS(t, 1<<30),
		"--tgt-control-port", strconv.Itoa(20000+rand.IntN(9000)), "--portal", addrA+":3260",
		"--server-ip", addrA, "--dhcp-interfaces", "boot0", "--ipxe-root", root,
		"--metrics-listen", "127.0.0.1:8881", "--storage-metrics-listen", "127.0.0.1:8882", "--image-path-root", t.TempDir())
	for port, metric := range map[string]string{"8881": "ggnet_dhcp_reply_seconds", "8882": "ggnet_storage_capacity_bytes"} {
		base := "http://127.0.0.1:" + port
		g.Eventually(func() int { code, _, _ := l.node.get(base + "/readyz"); return code }, 30*time.Second, 200*time.Millisecond).
			Should(Equal(http.StatusOK), port)
		code, _, err := l.node.get(base + "/healthz")
		g.Expect(err).NotTo(HaveOccurred())
		g.Expect(code).To(Equal(http.StatusOK), port)
		code, body, err := l.node.get(base + "/metrics")
		g.Expect(err).NotTo(HaveOccurred())
		g.Expect(code).To(Equal(http.StatusOK), port)
		g.Expect(body).To(ContainSubstring(metric), port)
	}
	g.Eventually(func() string {
		_ = c.Get(ctx, client.ObjectKeyFromObject(node), node)
		return node.Annotations[bootv1.StorageAnnotation]
	}, 20*time.Second).Should(ContainSubstring(`"capacityBytes":`), "the capacity is on the Node")
}

// TestStorageFlagsRefused: the storage role does not start with an image
// path root that is relative, missing, or holds the data directory or lies
// in it, nor with limits out of range.
func TestStorageFlagsRefused(t *testing.T) {
	_, bin := setup(t)
	data := testfs.XFS(t, 1<<30)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--image-path-root", "images"}, "--image-path-root images: want an absolute path"},
		{[]string{"--image-path-root", "/nonexistent/ggnet"}, "--image-path-root: stat /nonexistent/ggnet: no such file or directory"},
		{[]string{"--image-path-root", filepath.Dir(data)}, "must not hold one another"},
		{[]string{"--image-path-root", filepath.Join(data, "overlays")}, "must not hold one another"},
		{[]string{"--image-max-virtual-size-gib", "0"}, "--image-max-virtual-size-gib 0: want 1 or more"},
		{[]string{"--image-stall-timeout", "10ms"}, "--image-stall-timeout 10ms: want 1s or more"},
	} {
		g := NewWithT(t)
		g.Expect(os.MkdirAll(filepath.Join(data, "overlays"), 0o700)).To(Succeed())
		args := append([]string{"--storage", "--node-name", "n1", "--data-dir", data, "--portal", "10.0.0.1:3260",
			"--storage-metrics-listen", "-", "--kubeconfig", writeKubeconfig(t)}, tc.args...)
		out, err := exec.Command(bin, args...).CombinedOutput()
		g.Expect(err).To(HaveOccurred(), "%v", tc.args)
		g.Expect(string(out)).To(ContainSubstring(tc.want), "%v", tc.args)
	}
}

// writeKubeconfig is a kubeconfig of the test's API server (not reached by
// an agent that refuses to start).
func writeKubeconfig(t *testing.T) string {
	p := filepath.Join(t.TempDir(), "kubeconfig")
	if err := os.WriteFile(p, shared.kc, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}
