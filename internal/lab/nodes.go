package lab

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	bootv1 "github.com/ggnet/ggnet/api/v1alpha1"
	"github.com/ggnet/ggnet/bootagent/target"
	"github.com/ggnet/ggnet/internal/testbin"
	"github.com/ggnet/ggnet/internal/testfs"
)

// Options change what StartWith brings up. The zero value is Start's lab.
type Options struct {
	// BootAgents is how many boot agents answer on the bridge besides the
	// lab's own (which also has the storage role): each is a boot-role-only
	// agent with an address of its own on the bridge (10.99.0.11, .12, ...),
	// its own DHCP socket on the bridge, HTTP and TFTP on its address.
	BootAgents int
	// StorageNodes is how many storage nodes the lab has besides its own
	// (NodeName): each a Node object, a storage-role-only agent with its own
	// XFS data directory, and its own tgtd with a portal on an address of its
	// own on the bridge (10.99.0.21, .22, ...).
	StorageNodes int
	// ManagerArgs are extra manager flags (e.g. --storage-node-grace=20s).
	ManagerArgs []string
	// AgentArgs are extra flags for every agent the lab starts.
	AgentArgs []string
	// TGTDIOThreads is the I/O threads per logical unit of every tgtd the
	// lab starts (tgtd -t); 0: tgtd's default, 16.
	TGTDIOThreads int
	// NoOSImage leaves out the Image "os" (the real OS disk, built by
	// hack/osdisk.sh): the lab has only "demo".
	NoOSImage bool
}

// BootAgent is one boot agent on the bridge.
type BootAgent struct {
	// Process is its name for Kill and Logs (<Process>.log).
	Process string
	// IP is its address on the bridge (server identifier, HTTP, TFTP).
	IP string
	// MetricsBase is its /readyz and /metrics listener (loopback).
	MetricsBase string
}

// StorageNode is one storage node: a Node, its storage agent and its tgtd.
type StorageNode struct {
	// Node is the Node's name.
	Node string
	// Agent and TGTD are the process names of its storage agent and tgtd.
	Agent, TGTD string
	// IP is its address on the bridge (iSCSI portal, replication).
	IP string
	// Portal is its tgtd's iSCSI portal.
	Portal string
	// DataDir is its agent's data directory.
	DataDir string
	// TGTPort is its tgtd's control port.
	TGTPort int
	// MetricsBase is its storage role's /readyz and /metrics (loopback).
	MetricsBase string
}

// BootAgents lists the lab's boot agents, its own first.
func (l *Lab) BootAgents() []BootAgent {
	return append([]BootAgent{{Process: "bootagent", IP: ServerIP, MetricsBase: MetricsBase}}, l.boot...)
}

// StorageNodes lists the lab's storage nodes, its own (NodeName, whose
// agent is the lab's agent "bootagent" with both roles) first.
func (l *Lab) StorageNodes() []StorageNode {
	own := StorageNode{Node: NodeName, Agent: "bootagent", TGTD: "tgtd", IP: ServerIP, Portal: ServerIP + ":3260", DataDir: l.DataDir,
		TGTPort: l.tgtPort, MetricsBase: "http://127.0.0.1:18882"}
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]StorageNode{own}, l.storage...)
}

// startExtras makes and starts Options.BootAgents and Options.StorageNodes.
func (l *Lab) startExtras(ctx context.Context) error {
	for range l.opts.StorageNodes {
		if _, err := l.addStorageNode(ctx); err != nil {
			return err
		}
	}
	for i := range l.opts.BootAgents {
		ip := fmt.Sprintf("10.99.0.%d", 11+i)
		if err := addBridgeAddress(ip); err != nil {
			return err
		}
		a := BootAgent{Process: fmt.Sprintf("bootagent-boot-%d", i+2), IP: ip, MetricsBase: fmt.Sprintf("http://127.0.0.1:%d", 18900+i)}
		l.boot = append(l.boot, a)
		if err := l.StartBootAgent(a.Process); err != nil {
			return err
		}
	}
	return nil
}

// AddStorageNode adds a storage node to the running lab, as StartWith does
// for each of Options.StorageNodes, and returns it once its agent is ready.
// Every Image whose selector takes it (all of the lab's) gets a replica on
// it. It is removed (RemoveStorageNode) when the test — the Ginkgo spec —
// that added it ends: stop the sessions it serves before that.
func (l *Lab) AddStorageNode(ctx context.Context) (StorageNode, error) {
	n, err := l.addStorageNode(ctx)
	if err != nil {
		return n, err
	}
	l.t.Cleanup(func() { _ = l.RemoveStorageNode(context.Background(), n.Node) })
	return n, nil
}

// addStorageNode makes the next extra storage node — its address on the
// bridge (10.99.0.21, .22, ... in the order they are made), its XFS data
// directory, its Node object — and starts its tgtd and storage agent.
func (l *Lab) addStorageNode(ctx context.Context) (StorageNode, error) {
	i := l.nStorage
	l.nStorage++
	ip := fmt.Sprintf("10.99.0.%d", 21+i)
	if err := addBridgeAddress(ip); err != nil {
		return StorageNode{}, err
	}
	n := StorageNode{Node: fmt.Sprintf("%s-%d", NodeName, i+2), IP: ip, Portal: ip + ":3260", DataDir: testfs.XFS(l.t, 2<<30),
		TGTPort: 1000 + rand.IntN(8000), MetricsBase: fmt.Sprintf("http://127.0.0.1:%d", 18910+i)}
	n.Agent, n.TGTD = "bootagent-"+n.Node, "tgtd-"+n.Node
	for n.TGTPort == l.tgtPort {
		n.TGTPort = 1000 + rand.IntN(8000)
	}
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: n.Node, Labels: map[string]string{bootv1.StorageNodeLabel: "true"}}}
	if err := l.Client.Create(ctx, node); err != nil {
		return n, err
	}
	node.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: ip}}
	if err := l.Client.Status().Update(ctx, node); err != nil {
		return n, err
	}
	l.mu.Lock()
	l.storage = append(l.storage, n)
	l.mu.Unlock()
	return n, l.StartStorageNode(n.Node)
}

// RemoveStorageNode takes an extra storage node out of the lab for good:
// its storage agent and tgtd are killed, its Node object deleted and its
// address taken off the bridge. Its data directory goes when the test ends.
func (l *Lab) RemoveStorageNode(ctx context.Context, node string) error {
	l.mu.Lock()
	var n *StorageNode
	for i := range l.storage {
		if l.storage[i].Node == node {
			n = &l.storage[i]
			l.storage = append(l.storage[:i:i], l.storage[i+1:]...)
			break
		}
	}
	l.mu.Unlock()
	if n == nil {
		return fmt.Errorf("no extra storage node %q", node)
	}
	l.Kill(n.Agent)
	l.Kill(n.TGTD)
	err := client.IgnoreNotFound(l.Client.Delete(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: node}}))
	if out, aerr := exec.Command("ip", "addr", "del", n.IP+"/24", "dev", Bridge).CombinedOutput(); aerr != nil && err == nil {
		err = fmt.Errorf("ip addr del %s dev %s: %v %s", n.IP, Bridge, aerr, out)
	}
	return err
}

func addBridgeAddress(ip string) error {
	if out, err := exec.Command("ip", "addr", "add", ip+"/24", "dev", Bridge).CombinedOutput(); err != nil {
		return fmt.Errorf("ip addr add %s dev %s: %v %s", ip, Bridge, err, out)
	}
	return nil
}

// StartBootAgent starts (again) the extra boot agent whose process name is
// given (BootAgents; not the lab's own, which StartAgent starts): the boot
// role only, in a PID namespace of its own, answering DHCP on the bridge
// and HTTP and TFTP on its own address.
func (l *Lab) StartBootAgent(process string) error {
	for _, a := range l.boot {
		if a.Process != process {
			continue
		}
		args := append([]string{"--boot", "--kubeconfig", l.Kubeconfig,
			"--dhcp-interfaces", Bridge, "--server-ip", a.IP, "--http-listen", a.IP + ":8880",
			"--tftp-listen", a.IP + ":69", "--metrics-listen", strings.TrimPrefix(a.MetricsBase, "http://"),
			"--long-poll", "90s", "--fallback", "retry", "--ipv6-ra=off"}, l.opts.AgentArgs...)
		cmd := exec.Command(filepath.Join(l.bin, "bootagent"), args...)
		cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWPID}
		if err := l.startCmd(a.Process, cmd); err != nil {
			return err
		}
		_, err := testbin.WaitHTTP(a.MetricsBase+"/readyz", 60*time.Second)
		return err
	}
	return fmt.Errorf("no extra boot agent %q", process)
}

// StartStorageNode starts (again) the tgtd and the storage agent of the
// extra storage node named node (StorageNodes; not the lab's own).
func (l *Lab) StartStorageNode(node string) error {
	for _, n := range l.StorageNodes()[1:] {
		if n.Node != node {
			continue
		}
		tgtd := exec.Command("tgtd", target.TGTDArgs(n.TGTPort, n.Portal, l.opts.TGTDIOThreads)...)
		tgtd.Env = append(os.Environ(), target.TGTDEnv...)
		tgtd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
		if err := l.startCmd(n.TGTD, tgtd); err != nil {
			return err
		}
		if err := waitTGTD(n.TGTPort, filepath.Join(l.Dir, n.TGTD+".log")); err != nil {
			return err
		}
		args := append([]string{"--storage", "--kubeconfig", l.Kubeconfig,
			"--node-name", n.Node, "--data-dir", n.DataDir, "--reserve-mib", "16",
			"--tgt-control-port", strconv.Itoa(n.TGTPort), "--portal", n.Portal,
			"--image-path-root", l.imageRoot(), "--storage-metrics-listen", strings.TrimPrefix(n.MetricsBase, "http://")}, replicationArgs(n.IP)...)
		args = append(args, l.opts.AgentArgs...)
		cmd := exec.Command(filepath.Join(l.bin, "bootagent"), args...)
		cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWPID}
		if err := l.startCmd(n.Agent, cmd); err != nil {
			return err
		}
		_, err := testbin.WaitHTTP(n.MetricsBase+"/readyz", 60*time.Second)
		return err
	}
	return fmt.Errorf("no extra storage node %q", node)
}

// LoseStorageNode takes a storage node away as a dead machine would: its
// storage agent and its tgtd are killed (every PC's connection to it
// drops). With deleteNode its Node object is deleted too, as when the node
// is removed from the cluster; without, the Node stays as it was (envtest
// runs no node lifecycle controller to mark it NotReady).
func (l *Lab) LoseStorageNode(ctx context.Context, node string, deleteNode bool) error {
	for _, n := range l.StorageNodes() {
		if n.Node != node {
			continue
		}
		l.Kill(n.Agent)
		l.Kill(n.TGTD)
		if !deleteNode {
			return nil
		}
		return client.IgnoreNotFound(l.Client.Delete(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: node}}))
	}
	return fmt.Errorf("no storage node %q", node)
}

func waitTGTD(port int, log string) error {
	d := &target.TGT{ControlPort: port}
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		err := d.Ping(ctx)
		cancel()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("tgtd does not answer on control port %d: %w; see %s", port, err, log)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// waitReplicas waits until the Image name has n Ready replicas.
func (l *Lab) waitReplicas(ctx context.Context, name string, n int, timeout time.Duration) error {
	img := &bootv1.Image{}
	deadline := time.Now().Add(timeout)
	for {
		if err := l.Client.Get(ctx, client.ObjectKey{Namespace: Namespace, Name: name}, img); err != nil {
			return err
		}
		if int(img.Status.ReadyReplicas) >= n {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the Image %s has %d Ready replicas after %s, want %d; see %s", name, img.Status.ReadyReplicas, timeout, n, l.Dir)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
