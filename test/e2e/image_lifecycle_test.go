package e2e

import (
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/retry"
	"sigs.k8s.io/controller-runtime/pkg/client"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"

	bootv1 "github.com/ggnet/ggnet/api/v1alpha1"
	"github.com/ggnet/ggnet/internal/lab"
	"github.com/ggnet/ggnet/internal/testenv"
)

// The image lifecycle of issue #16, as a café runs it every week: one PC
// boots the family's current version in maintenance mode (writeback
// Persist) and changes its disk (the demo disk's boot counter), the stopped
// session is captured as the family's next version, a PC that follows the
// family boots it and sees the change, pinning the previous version rolls
// back, and a second storage node gets the new version from the first by
// replication and boots a PC from it.
var _ = Describe("Image lifecycle", func() {
	It("captures a maintenance boot as the family's next version; a follower boots it, a pin rolls it back, a second storage node replicates it and boots it", func() {
		By("adding a second storage node to the lab")
		n2, err := l.AddStorageNode(ctx)
		Expect(err).NotTo(HaveOccurred())
		nodes := l.StorageNodes()
		n1 := nodes[0]
		rememberReplicationKey()
		for _, n := range []lab.StorageNode{n1, n2} {
			Eventually(func() string {
				var node corev1.Node
				_ = l.Client.Get(ctx, client.ObjectKey{Name: n.Node}, &node)
				return node.Annotations[bootv1.ReplicationEndpointAnnotation]
			}, time.Minute, 200*time.Millisecond).Should(Equal(fmt.Sprintf("%s:%d", n.IP, lab.ReplicationPort)),
				"the storage agent of %s advertises where it serves replicas", n.Node)
		}

		// The page's plain-kubectl commands, with the lab's names.
		doc := updateImageDoc(strings.NewReplacer("games-v12", "games-v1", "games-v13", "games-v2", "main-hall", "lifecycle"))

		By("the family's first version: the demo disk, labelled games (docs: make a family)")
		var demo bootv1.Image
		Expect(l.Client.Get(ctx, client.ObjectKey{Namespace: lab.Namespace, Name: "demo"}, &demo)).To(Succeed())
		v1 := &bootv1.Image{ObjectMeta: metav1.ObjectMeta{Namespace: lab.Namespace, Name: "games-v1"},
			Spec: bootv1.ImageSpec{Source: bootv1.ImageSource{Path: &bootv1.PathSource{Path: demo.Spec.Source.Path.Path}}, Format: bootv1.ImageFormatRaw}}
		Expect(l.Client.Create(ctx, v1)).To(Succeed())
		doc.run("kubectl label image")
		readyReplica(v1, n1.Node, time.Minute)
		Eventually(version(v1), 30*time.Second, 200*time.Millisecond).Should(Equal(int64(1)), "the manager numbers the family's first Image")

		follower := familyMachine("", "")
		patchMachine(follower, func(m *bootv1.Machine) { m.Labels = map[string]string{"boot.ggnet.io/room": "lifecycle"} })
		doc.run(`"imageFamily":"games","imageRef":null`)
		Eventually(machineImage(follower), time.Minute, 200*time.Millisecond).Should(Equal("games-v1"), "a follower of a family with one Ready version boots it")

		By("a maintenance boot (writeback Persist) of the first version changes the disk (docs: the maintenance session, the stop)")
		maint := familyMachine("", "games-v1")
		doc.with("maint-1", maint.Name).run("kind: BootSession")
		ms := onlySession(maint)
		Eventually(phase(ms), time.Minute).Should(Equal(bootv1.SessionReady), func() string { return fmt.Sprintf("conditions: %+v", ms.Status.Conditions) })
		rememberCredentials(ms)
		Expect(ms.Spec.Writeback).To(Equal(bootv1.WritebackPersist))
		Expect(ms.Spec.ImageRef.Name).To(Equal("games-v1"))
		Expect(boot(maint).Count).To(Equal(1), "the maintenance boot counts itself on the machine's persistent disk")
		doc.with("maint-1-x7k2p", ms.Name).run(`"stopped":true`)
		Expect(phase(ms)()).To(Equal(bootv1.SessionStopped))
		// The node that holds the disk captures it; the other replicates it.
		capNode, other := n1, n2
		if ms.Status.StorageNode == n2.Node {
			capNode, other = n2, n1
		}
		Expect(ms.Status.StorageNode).To(Equal(capNode.Node))

		By("capturing the stopped session as the family's next version (docs: the capture's YAML)")
		watch := watchReplicas("games-v2")
		captured := time.Now()
		doc.with("maint-1-x7k2p", ms.Name).run("kind: Image")
		v2 := &bootv1.Image{ObjectMeta: metav1.ObjectMeta{Namespace: lab.Namespace, Name: "games-v2"}}
		r1 := readyReplica(v2, capNode.Node, time.Minute)
		Expect(v2.Labels).To(HaveKeyWithValue(bootv1.FamilyLabel, "games"))
		Expect(v2.Spec.Source.Writeback.SessionRef.Name).To(Equal(ms.Name))
		Eventually(version(v2), 30*time.Second, 200*time.Millisecond).Should(Equal(int64(2)), "the capture is the family's next version")
		Expect(counters(r1.Path).Boots).To(Equal(uint16(1)), "the captured disk holds the maintenance boot's write")
		Expect(r1.SHA256).To(MatchRegexp("^[0-9a-f]{64}$"))
		Expect(r1.SourceNode).To(BeEmpty(), "captured on the session's node, not replicated")

		By("the follower takes the new version and boots it: the write is there")
		Eventually(machineImage(follower), time.Minute, 200*time.Millisecond).Should(Equal("games-v2"))
		fs := sessionOf(follower, "follow-v2", "games-v2", bootv1.WritebackDiscard, "")
		Expect(boot(follower).Count).To(Equal(2), "the captured boot counter, plus this boot")
		stop(fs)

		By("rolling back: pinning the previous version, the write is gone (docs: roll back)")
		doc.run(`"imageRef":{"name":"games-v1"}`)
		Eventually(machineImage(follower), time.Minute, 200*time.Millisecond).Should(Equal("games-v1"))
		rs := sessionOf(follower, "rollback-v1", "games-v1", bootv1.WritebackDiscard, "")
		Expect(boot(follower).Count).To(Equal(1), "the first version never saw the maintenance boot")
		stop(rs)

		By("the other storage node replicated the new version from the capturing one; a PC boots from it there")
		r2 := readyReplica(v2, other.Node, 2*time.Minute)
		Expect(watch.sources()).To(HaveKeyWithValue(other.Node, capNode.Node), "the replica on %s came from %s", other.Node, capNode.Node)
		Expect(r2.SHA256).To(Equal(r1.SHA256))
		Expect(r2.SizeBytes).To(Equal(r1.SizeBytes))
		Expect(counters(r2.Path).Boots).To(Equal(uint16(1)))
		Expect(allocated(r2.Path)).To(BeNumerically("<=", allocated(r1.Path)+1<<20), "holes stay holes: no more allocated than the source")
		doc.run(`"imageFamily":"games","imageRef":null`)
		Eventually(machineImage(follower), time.Minute, 200*time.Millisecond).Should(Equal("games-v2"), "unpinned, it follows the family again")
		ns := sessionOf(follower, "on-the-other-node", "games-v2", bootv1.WritebackDiscard, other.Node)
		Expect(ns.Status.StorageNode).To(Equal(other.Node))
		Expect(ns.Status.Target.Portal).To(Equal(other.Portal))
		Expect(boot(follower).Count).To(Equal(2), "the replica holds the captured write")
		stop(ns)

		Expect(l.Client.Get(ctx, client.ObjectKeyFromObject(v2), v2)).To(Succeed())
		Expect(v2.Status.Progress).To(BeEmpty(), "no replica is on its way")
		Eventually(func() bool { return watch.readyAt(other.Node).IsZero() }).Should(BeFalse(), "the watch saw both replicas Ready")
		AddReportEntry("image lifecycle", fmt.Sprintf("capture: created to Ready on %s %s; replication: Ready on %s %s later (a 64 MiB disk)",
			capNode.Node, watch.readyAt(capNode.Node).Sub(captured).Round(10*time.Millisecond), other.Node,
			watch.readyAt(other.Node).Sub(watch.readyAt(capNode.Node)).Round(10*time.Millisecond)))
	})
})

// updateImageDoc is docs/update-image.md's plain-kubectl side, names
// replaced by names: run runs the page's sh block that contains a string
// with the lab's kubectl (envtest's binary, the lab's admin, the lab's
// namespace).
func updateImageDoc(names *strings.Replacer) docPage {
	GinkgoHelper()
	b, err := os.ReadFile(filepath.Join(testenv.RepoRoot(), "docs", "update-image.md"))
	Expect(err).NotTo(HaveOccurred())
	assets, err := testenv.AssetsDir()
	Expect(err).NotTo(HaveOccurred())
	bin := GinkgoT().TempDir()
	wrapper := fmt.Sprintf("#!/bin/sh\nexec %s --kubeconfig %s -n %s \"$@\"\n", filepath.Join(assets, "kubectl"), l.Kubeconfig, lab.Namespace)
	Expect(os.WriteFile(filepath.Join(bin, "kubectl"), []byte(wrapper), 0o755)).To(Succeed())
	var blocks []string
	for _, m := range regexp.MustCompile("(?s)```sh\n(.*?)```").FindAllStringSubmatch(string(b), -1) {
		if !strings.Contains(m[1], "kubectl ggnet") {
			blocks = append(blocks, names.Replace(m[1]))
		}
	}
	return docPage{blocks: blocks, path: bin}
}

type docPage struct {
	blocks []string
	path   string
}

// with returns the page with old replaced by new in its blocks.
func (d docPage) with(old, new string) docPage {
	out := docPage{path: d.path}
	for _, b := range d.blocks {
		out.blocks = append(out.blocks, strings.ReplaceAll(b, old, new))
	}
	return out
}

// run runs the one block that contains s.
func (d docPage) run(s string) {
	GinkgoHelper()
	var found []string
	for _, b := range d.blocks {
		if strings.Contains(b, s) {
			found = append(found, b)
		}
	}
	Expect(found).To(HaveLen(1), "docs/update-image.md has one plain-kubectl block with %q", s)
	cmd := exec.CommandContext(ctx, "sh", "-ec", found[0])
	cmd.Env = append(os.Environ(), "PATH="+d.path+":"+os.Getenv("PATH"))
	out, err := cmd.CombinedOutput()
	Expect(err).NotTo(HaveOccurred(), "docs/update-image.md:\n%s\n%s", found[0], out)
}

// onlySession waits until m has one session and returns it.
func onlySession(m *bootv1.Machine) *bootv1.BootSession {
	GinkgoHelper()
	var list bootv1.BootSessionList
	Eventually(func() []bootv1.BootSession {
		_ = l.Client.List(ctx, &list, client.InNamespace(lab.Namespace), client.MatchingFields{"spec.machineRef.name": m.Name})
		return list.Items
	}, 30*time.Second, 200*time.Millisecond).Should(HaveLen(1))
	return &list.Items[0]
}

// familyMachine makes a Manual machine that follows family and is pinned
// to the Image pin (each unless "").
func familyMachine(family, pin string) *bootv1.Machine {
	GinkgoHelper()
	nextMAC++
	name := fmt.Sprintf("seat-%d", nextMAC)
	m := &bootv1.Machine{ObjectMeta: metav1.ObjectMeta{Namespace: lab.Namespace, Name: name}, Spec: bootv1.MachineSpec{
		MAC: fmt.Sprintf("52:54:00:67:68:%02x", nextMAC), Hostname: name, ImageFamily: family,
		IPv4:       &bootv1.IPv4Reservation{Address: fmt.Sprintf("10.99.0.%d", 100+nextMAC), PrefixLength: 24},
		BootPolicy: bootv1.BootPolicyManual, Writeback: bootv1.WritebackDiscard,
	}}
	if pin != "" {
		m.Spec.ImageRef = &bootv1.LocalObjectReference{Name: pin}
	}
	Expect(l.Client.Create(ctx, m)).To(Succeed())
	return m
}

func patchMachine(m *bootv1.Machine, change func(*bootv1.Machine)) {
	GinkgoHelper()
	Expect(retry.RetryOnConflict(retry.DefaultRetry, func() error {
		if err := l.Client.Get(ctx, client.ObjectKeyFromObject(m), m); err != nil {
			return err
		}
		change(m)
		return l.Client.Update(ctx, m)
	})).To(Succeed())
}

// machineImage is the Image the manager resolved for m (status.image).
func machineImage(m *bootv1.Machine) func() string {
	return func() string {
		_ = l.Client.Get(ctx, client.ObjectKeyFromObject(m), m)
		return m.Status.Image
	}
}

// sessionOf makes a session of m from image, pinned to node unless it is
// "", and waits until it is Ready.
func sessionOf(m *bootv1.Machine, name, image string, wb bootv1.WritebackPolicy, node string) *bootv1.BootSession {
	GinkgoHelper()
	s := &bootv1.BootSession{ObjectMeta: metav1.ObjectMeta{Namespace: lab.Namespace, Name: name}, Spec: bootv1.BootSessionSpec{
		MachineRef: bootv1.LocalObjectReference{Name: m.Name}, ImageRef: bootv1.LocalObjectReference{Name: image},
		Writeback: wb, StorageNode: node}}
	Expect(l.Client.Create(ctx, s)).To(Succeed())
	Eventually(phase(s), time.Minute).Should(Equal(bootv1.SessionReady), func() string {
		return fmt.Sprintf("conditions: %+v", s.Status.Conditions)
	})
	rememberCredentials(s)
	return s
}

// readyReplica waits until img (updated in place) is Ready with a Ready
// replica on node, and returns that replica.
func readyReplica(img *bootv1.Image, node string, timeout time.Duration) bootv1.ImageReplica {
	GinkgoHelper()
	var found bootv1.ImageReplica
	Eventually(func(g Gomega) {
		g.Expect(l.Client.Get(ctx, client.ObjectKeyFromObject(img), img)).To(Succeed())
		g.Expect(meta.IsStatusConditionTrue(img.Status.Conditions, bootv1.ReadyCondition)).To(BeTrue(), "Ready")
		ok := false
		for _, r := range img.Status.Replicas {
			if r.Node == node && r.State == bootv1.ReplicaReady {
				found, ok = r, true
			}
		}
		g.Expect(ok).To(BeTrue(), "a Ready replica on %s", node)
	}, timeout, 200*time.Millisecond).Should(Succeed(), func() string { return fmt.Sprintf("status: %+v", img.Status) })
	return found
}

// version is img's status.version (img updated in place).
func version(img *bootv1.Image) func() int64 {
	return func() int64 {
		_ = l.Client.Get(ctx, client.ObjectKeyFromObject(img), img)
		return img.Status.Version
	}
}

// replicaWatch is what a watch of one Image saw of its replicas, per node.
type replicaWatch struct {
	mu sync.Mutex
	// source is the last non-empty sourceNode of the node's replica (shown
	// while its transfer ran, or after).
	source map[string]string
	// ready is when the watch first saw the node's replica Ready.
	ready map[string]time.Time
}

// watchReplicas watches the Image name from now on (it may not exist yet)
// until the spec ends.
func watchReplicas(name string) *replicaWatch {
	GinkgoHelper()
	// The watching client logs (to the spec's output, not to stderr).
	ctrllog.SetLogger(GinkgoLogr)
	wc, err := client.NewWithWatch(l.Config, client.Options{Scheme: l.Client.Scheme()})
	Expect(err).NotTo(HaveOccurred())
	w, err := wc.Watch(ctx, &bootv1.ImageList{}, client.InNamespace(lab.Namespace), client.MatchingFields{"metadata.name": name})
	Expect(err).NotTo(HaveOccurred())
	DeferCleanup(w.Stop)
	rw := &replicaWatch{source: map[string]string{}, ready: map[string]time.Time{}}
	go func() {
		for ev := range w.ResultChan() {
			img, ok := ev.Object.(*bootv1.Image)
			if !ok {
				continue
			}
			now := time.Now()
			rw.mu.Lock()
			for _, r := range img.Status.Replicas {
				if r.SourceNode != "" {
					rw.source[r.Node] = r.SourceNode
				}
				if _, seen := rw.ready[r.Node]; !seen && r.State == bootv1.ReplicaReady {
					rw.ready[r.Node] = now
				}
			}
			rw.mu.Unlock()
		}
	}()
	return rw
}

// sources returns the source node seen per node.
func (rw *replicaWatch) sources() map[string]string {
	rw.mu.Lock()
	defer rw.mu.Unlock()
	return maps.Clone(rw.source)
}

// readyAt returns when node's replica was first seen Ready.
func (rw *replicaWatch) readyAt(node string) time.Time {
	rw.mu.Lock()
	defer rw.mu.Unlock()
	return rw.ready[node]
}

// allocated is how many bytes of the file at path are allocated.
func allocated(path string) int64 {
	GinkgoHelper()
	var st syscall.Stat_t
	Expect(syscall.Stat(path, &st)).To(Succeed())
	return st.Blocks * 512
}

func counters(path string) lab.Counters {
	GinkgoHelper()
	c, err := lab.ReadCounters(path)
	Expect(err).NotTo(HaveOccurred())
	return c
}

// rememberReplicationKey adds the storage agents' signing key, in the forms
// a leak would take (raw, hex, base64), to the credentials no log line or
// command line of the run may hold, and checks every Image and Event of the
// lab's namespace now.
func rememberReplicationKey() {
	GinkgoHelper()
	var sec corev1.Secret
	Eventually(func() error {
		return l.Client.Get(ctx, client.ObjectKey{Namespace: lab.ManagerNamespace, Name: lab.ReplicationSecret}, &sec)
	}, 30*time.Second, 200*time.Millisecond).Should(Succeed(), "the manager makes the replication Secret")
	key := sec.Data[bootv1.ReplicationSecretKey]
	Expect(key).To(HaveLen(32))
	credentials.Lock()
	if credentials.values == nil {
		credentials.values = map[string]string{}
	}
	for form, v := range map[string]string{"raw": string(key), "hex": hex.EncodeToString(key),
		"base64": base64.StdEncoding.EncodeToString(key), "base64url": base64.RawURLEncoding.EncodeToString(key)} {
		credentials.values[v] = "the replication key (" + form + ")"
	}
	credentials.Unlock()
	expectNoCredentialInCommandLines()
	DeferCleanup(func() {
		var events corev1.EventList
		Expect(l.Client.List(ctx, &events, client.InNamespace(lab.Namespace))).To(Succeed())
		var images bootv1.ImageList
		Expect(l.Client.List(ctx, &images, client.InNamespace(lab.Namespace))).To(Succeed())
		var nodes corev1.NodeList
		Expect(l.Client.List(ctx, &nodes)).To(Succeed())
		text := fmt.Sprintf("%+v %+v %+v", events.Items, images.Items, nodes.Items)
		credentials.Lock()
		defer credentials.Unlock()
		for v, which := range credentials.values {
			// A boolean, so that a failure does not print the secret.
			Expect(strings.Contains(text, v)).To(BeFalse(), "%s is in an Event, Image or Node", which)
		}
	})
}
