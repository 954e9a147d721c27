package storage

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	bootv1 "github.com/ggnet/ggnet/api/v1alpha1"
	"github.com/ggnet/ggnet/bootagent/images"
	"github.com/ggnet/ggnet/bootagent/replication"
	"github.com/ggnet/ggnet/bootagent/target"
)

// runReplicatingRole starts the storage role serving replicas on loopback
// with the key of the Secret ref (read again every 200ms).
func runReplicatingRole(ref types.NamespacedName) *Role {
	r, err := New(restCfg, Config{NodeName: nodeName, DataDir: dataDir, IQNPrefix: "iqn.2026-11.io.ggnet:",
		Driver: &target.TGT{ControlPort: tgtd.ControlPort}, Resync: time.Second, Portal: tgtd.Portal, ImagePathRoot: imagePathRoot(),
		ReplicationAddress: "127.0.0.1:0", ReplicationSecret: ref, ReplicationKeyInterval: 200 * time.Millisecond,
		Controller: rebuilt}, log.WithName("storage"))
	Expect(err).NotTo(HaveOccurred())
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer GinkgoRecover()
		defer close(done)
		Expect(r.Run(ctx)).To(Succeed())
	}()
	DeferCleanup(func() {
		cancel()
		Eventually(done, 20*time.Second).Should(BeClosed())
	})
	return r
}

func newKey() []byte {
	b := make([]byte, 32)
	_, err := rand.Read(b)
	Expect(err).NotTo(HaveOccurred())
	return b
}

var _ = Describe("Replication between storage agents", func() {
	It("serves Ready replicas with the Secret's key, announces its endpoint, and follows a rotated key", func(ctx SpecContext) {
		ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "repl-"}}
		Expect(k8sClient.Create(ctx, ns)).To(Succeed())
		ref := types.NamespacedName{Namespace: ns.Name, Name: "ggnet-replication"}
		r := runReplicatingRole(ref)
		Expect(r.Replication).NotTo(BeNil())
		endpoint := r.ReplicationAddr().String()

		By("announcing the endpoint on the Node, beside the iSCSI portal")
		Eventually(func(g Gomega) {
			var node corev1.Node
			g.Expect(k8sClient.Get(ctx, types.NamespacedName{Name: nodeName}, &node)).To(Succeed())
			g.Expect(node.Annotations).To(HaveKeyWithValue(bootv1.ReplicationEndpointAnnotation, endpoint))
			g.Expect(node.Annotations).To(HaveKeyWithValue(bootv1.ISCSIPortalAnnotation, tgtd.Portal))
		}, 20*time.Second).Should(Succeed())

		By("placing a Ready replica on this node")
		uid := string(ns.UID)
		content := make([]byte, 6<<20)
		_, err := rand.Read(content[1<<20 : 2<<20])
		Expect(err).NotTo(HaveOccurred())
		p := r.images.Path(ns.Name, "games", uid)
		Expect(os.MkdirAll(filepath.Dir(p), 0o700)).To(Succeed())
		f, err := os.Create(p)
		Expect(err).NotTo(HaveOccurred())
		_, err = f.WriteAt(content[1<<20:2<<20], 1<<20)
		Expect(err).NotTo(HaveOccurred())
		Expect(f.Truncate(int64(len(content)))).To(Succeed())
		Expect(f.Close()).To(Succeed())
		h := sha256.Sum256(content)
		sum := hex.EncodeToString(h[:])
		Expect(os.WriteFile(p+".sha256", []byte(sum+"\n"), 0o600)).To(Succeed())
		DeferCleanup(r.images.Remove, ns.Name, "games", uid)

		peer := images.New(GinkgoT().TempDir(), log.WithName("peer"))
		fill := func(c *replication.Client) (images.Result, error) {
			return peer.Ensure(ctx, ns.Name, "games", uid, images.Source{Format: "raw", SHA256: sum,
				Fill: c.Fill(endpoint, ns.Name, "games", uid, sum)}, nil)
		}
		reason := func(err error) string {
			var ie *images.Error
			if errors.As(err, &ie) {
				return ie.Reason
			}
			return ""
		}

		By("refusing everything while the Secret does not exist")
		noKey := replication.NewClient(&replication.Key{}, 0, log)
		_, err = fill(noKey)
		Expect(err).To(HaveOccurred())
		_, err = fill(r.Replication)
		Expect(err).To(HaveOccurred(), "the role has no key yet")

		By("serving the replica once the manager made the Secret")
		first := newKey()
		sec := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ref.Namespace, Name: ref.Name},
			Data: map[string][]byte{bootv1.ReplicationSecretKey: first}}
		Expect(k8sClient.Create(ctx, sec)).To(Succeed())
		old := &replication.Key{}
		old.Set(first)
		peerClient := replication.NewClient(old, 0, log)
		peerClient.Retries = 0
		Eventually(func() error { _, err := fill(peerClient); return err }, 10*time.Second, 200*time.Millisecond).Should(Succeed())
		got, err := os.ReadFile(peer.Path(ns.Name, "games", uid))
		Expect(err).NotTo(HaveOccurred())
		Expect(bytes.Equal(got, content)).To(BeTrue())
		// The role's own client signs with the key it read, too.
		Expect(peer.Remove(ns.Name, "games", uid)).To(Succeed())
		_, err = fill(r.Replication)
		Expect(err).NotTo(HaveOccurred())

		By("refusing the old key once the Secret's key was rotated")
		second := newKey()
		sec.Data[bootv1.ReplicationSecretKey] = second
		Expect(k8sClient.Update(ctx, sec)).To(Succeed())
		Eventually(func() string {
			Expect(peer.Remove(ns.Name, "games", uid)).To(Succeed())
			_, err := fill(peerClient)
			return reason(err)
		}, 10*time.Second, 200*time.Millisecond).Should(Equal(images.ReasonUnreachable))
		old.Set(second)
		_, err = fill(peerClient)
		Expect(err).NotTo(HaveOccurred())
	})
})
