package main

import (
	"context"
	"math/rand/v2"
	"os/exec"
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
