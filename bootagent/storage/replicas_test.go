package storage

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/client-go/util/retry"
	"sigs.k8s.io/controller-runtime/pkg/client"

	bootv1 "github.com/ggnet/ggnet/api/v1alpha1"
	"github.com/ggnet/ggnet/bootagent/target"
	"github.com/ggnet/ggnet/internal/fixture"
)

// newRoleWith builds the storage role as runRole does, changed by mod; it
// does not run it (the test may look at what New did first).
func newRoleWith(mod func(*Config)) *Role {
	cfg := Config{NodeName: nodeName, DataDir: dataDir, IQNPrefix: "iqn.2026-11.io.ggnet:",
		Driver: &target.TGT{ControlPort: tgtd.ControlPort}, Resync: time.Second, Portal: tgtd.Portal, ImagePathRoot: imagePathRoot(),
		Controller: rebuilt}
	mod(&cfg)
	r, err := New(restCfg, cfg, log.WithName("storage"))
	Expect(err).NotTo(HaveOccurred())
	return r
}

// start runs a role built by newRoleWith until the spec ends (a crash: nothing
// is cleaned up on the way out).
func start(r *Role) {
	role = r
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
}

// replica is this node's entry of an Image's status.
func replica(l *lab, name string) bootv1.ImageReplica {
	img := &bootv1.Image{}
	if err := k8sClient.Get(l.ctx, client.ObjectKey{Namespace: l.ns, Name: name}, img); err != nil {
		return bootv1.ImageReplica{}
	}
	for _, r := range img.Status.Replicas {
		if r.Node == nodeName {
			return r
		}
	}
	return bootv1.ImageReplica{}
}

func httpImage(l *lab, name, url, sha string) {
	Expect(k8sClient.Create(l.ctx, fixture.Image(l.ns, name, fixture.WithHTTPSource(url, sha)))).To(Succeed())
}

var _ = Describe("Image replicas", func() {
	It("holds no reconcile worker on a stalled download: two Images whose sources stall, a third placed meanwhile", func() {
		good := []byte(strings.Repeat("GGNET GOLDEN IMAGE", 1<<16))
		release := make(chan struct{})
		var mu sync.Mutex
		stalling := map[string]bool{}
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/good.raw" {
				_, _ = w.Write(good)
				return
			}
			w.Header().Set("Content-Length", "67108864")
			_, _ = w.Write(make([]byte, 1<<20))
			w.(http.Flusher).Flush()
			mu.Lock()
			stalling[r.URL.Path] = true
			mu.Unlock()
			select { // then nothing
			case <-release:
			case <-r.Context().Done():
			}
		}))
		DeferCleanup(srv.Close)
		DeferCleanup(func() { close(release) })
		const stall = 8 * time.Second
		r := newRoleWith(func(c *Config) { c.ImageStallTimeout = stall })
		r.images.Retries = 0
		start(r)
		l := newLab()

		httpImage(l, "stall-1", srv.URL+"/stall-1.raw", strings.Repeat("a", 64))
		httpImage(l, "stall-2", srv.URL+"/stall-2.raw", strings.Repeat("b", 64))
		Eventually(func() int { mu.Lock(); defer mu.Unlock(); return len(stalling) }, eventually).Should(Equal(2), "both downloads are under way")
		created := time.Now()
		httpImage(l, "good", srv.URL+"/good.raw", sha(good))
		Eventually(func() bootv1.ReplicaState { return replica(l, "good").State }, stall).Should(Equal(bootv1.ReplicaReady),
			"placed while both stalled downloads still hold on, within their stall timeout")
		Expect(time.Since(created)).To(BeNumerically("<", stall))
		for _, name := range []string{"stall-1", "stall-2"} {
			Expect(replica(l, name).State).To(Equal(bootv1.ReplicaDownloading), name)
		}

		for _, name := range []string{"stall-1", "stall-2"} {
			Eventually(func() bootv1.ReplicaState { return replica(l, name).State }, eventually).Should(Equal(bootv1.ReplicaFailed), name)
			rep := replica(l, name)
			Expect(rep.Reason).To(Equal(bootv1.SourceUnreachableReason), name)
			Expect(rep.Message).To(ContainSubstring("no data for 8s (stall timeout)"), name)
		}
	})

	It("refuses path sources outside the image path root, unsafe images and images over maxVirtualSize, with the reason in the replica", func() {
		root := imageDir()
		outside := GinkgoT().TempDir()
		shadow := filepath.Join(outside, "shadow")
		Expect(os.WriteFile(shadow, []byte("root:$6$secret\n"), 0o600)).To(Succeed())
		raw := filepath.Join(root, "good.raw")
		Expect(os.WriteFile(raw, []byte(strings.Repeat("GGNET GOLDEN IMAGE", 1<<16)), 0o644)).To(Succeed())
		for _, args := range [][]string{
			{"convert", "-f", "raw", "-O", "qcow2", raw, filepath.Join(root, "good.qcow2")},
			{"create", "-f", "qcow2", "-b", shadow, "-F", "raw", filepath.Join(root, "backing.qcow2")},
		} {
			out, err := exec.Command("qemu-img", args...).CombinedOutput()
			Expect(err).NotTo(HaveOccurred(), string(out))
		}
		Expect(os.Symlink(shadow, filepath.Join(root, "shadow.raw"))).To(Succeed())
		start(newRoleWith(func(*Config) {}))
		l := newLab()
		pathImage := func(name, path string, format bootv1.ImageFormat, max string) {
			img := fixture.Image(l.ns, name, func(i *bootv1.Image) {
				i.Spec.Source.Path.Path, i.Spec.Format = path, format
				if max != "" {
					q := resource.MustParse(max)
					i.Spec.MaxVirtualSize = &q
				}
			})
			Expect(k8sClient.Create(l.ctx, img)).To(Succeed())
		}
		pathImage("outside", shadow, bootv1.ImageFormatRaw, "")
		pathImage("symlink", filepath.Join(root, "shadow.raw"), bootv1.ImageFormatRaw, "")
		pathImage("backing", filepath.Join(root, "backing.qcow2"), bootv1.ImageFormatQCOW2, "")
		pathImage("small", filepath.Join(root, "good.qcow2"), bootv1.ImageFormatQCOW2, "512Ki")
		for name, want := range map[string][2]string{
			"outside": {bootv1.PathNotAllowedReason, shadow + " is not under the image path root " + imagePathRoot()},
			"symlink": {bootv1.PathNotAllowedReason, "path escapes from parent"},
			"backing": {bootv1.UnsafeImageReason, "backing file " + shadow + " is not allowed: an image must be one self-contained file"},
			"small":   {bootv1.TooLargeReason, "the virtual size is 1.1 MiB, over the Image's maxVirtualSize of 512.0 KiB"},
		} {
			Eventually(func() bootv1.ReplicaState { return replica(l, name).State }, eventually).Should(Equal(bootv1.ReplicaFailed), name)
			rep := replica(l, name)
			Expect(rep.Reason).To(Equal(want[0]), name)
			Expect(rep.Message).To(ContainSubstring(want[1]), name)
			Expect(rep.Message).NotTo(ContainSubstring("$6$"))
		}

		By("raising maxVirtualSize: a new generation is placed at once")
		Expect(retry.RetryOnConflict(retry.DefaultRetry, func() error {
			img := &bootv1.Image{}
			if err := k8sClient.Get(l.ctx, client.ObjectKey{Namespace: l.ns, Name: "small"}, img); err != nil {
				return err
			}
			q := resource.MustParse("2Mi")
			img.Spec.MaxVirtualSize = &q
			return k8sClient.Update(l.ctx, img)
		})).To(Succeed())
		Eventually(func() bootv1.ReplicaState { return replica(l, "small").State }, eventually).Should(Equal(bootv1.ReplicaReady))
		Expect(replica(l, "small").SizeBytes).To(Equal(int64(18 << 16)))

		By("maxVirtualSize must be positive")
		for _, bad := range []string{"0", "-1Gi"} {
			q := resource.MustParse(bad)
			img := fixture.Image(l.ns, "bad", func(i *bootv1.Image) { i.Spec.MaxVirtualSize = &q })
			err := k8sClient.Create(l.ctx, img)
			Expect(err).To(HaveOccurred(), bad)
			Expect(err.Error()).To(ContainSubstring("maxVirtualSize must be positive"), bad)
		}
	})
})

func sha(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}
