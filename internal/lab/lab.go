// Package lab is GGnet's local netboot lab, shared by `make demo` and the
// end-to-end suite. Everything runs inside a network namespace of its own:
// a bridge with the agent's address, a tap for the VM, etcd and
// kube-apiserver (the envtest binaries), the manager, the boot agent with
// both roles in a PID namespace of its own (as in a container), tgtd apart
// from it (as in its own DaemonSet), and an XFS reflink data directory on a
// loop device. Nothing reaches any other network. Each process can be killed
// and started again, the way kubelet restarts a container.
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
	"sync"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	bootv1 "github.com/ggnet/ggnet/api/v1alpha1"
	"github.com/ggnet/ggnet/internal/scheme"
	"github.com/ggnet/ggnet/internal/testbin"
	"github.com/ggnet/ggnet/internal/testenv"
	"github.com/ggnet/ggnet/internal/testfs"
)

// Addresses and names inside the lab.
const (
	ServerIP = "10.99.0.1"
	Bridge   = "ggbr0"
	// Tap is the first VM's tap; each VM running at once has one of its
	// own (ggtap1, ggtap2, ...), on the same bridge.
	Tap       = "ggtap0"
	NodeName  = "lab-storage"
	Namespace = "lab"
	HTTPBase  = "http://" + ServerIP + ":8880"
	// MetricsBase is the agent's health and metrics listener, off the boot
	// LAN (loopback of the lab's namespace).
	MetricsBase = "http://127.0.0.1:18881"
	// UEFIBootFile is what the agent sends UEFI PXE clients by default (the
	// lab runs it with the default): iPXE on the firmware's own NIC driver
	// (SNP). Debian's ipxe.efi is a link to /boot/ipxe.efi, outside the iPXE
	// directory, which the agent does not follow.
	UEFIBootFile = "snponly.efi"
	// ReplicationPort is where every storage agent of the lab serves its
	// replicas to the others, on its own address (--replication-address).
	ReplicationPort = 8890
	// ManagerNamespace is the manager's own namespace, where it keeps the
	// replication Secret ReplicationSecret (the chart's
	// <release>-replication), which the storage agents read.
	ManagerNamespace  = "ggnet-system"
	ReplicationSecret = "ggnet-replication"
	netnsEnv          = "GGNET_LAB_NETNS"
)

// InNetns re-runs this program inside a new network namespace unless it
// already runs in one the lab made. It returns the child's exit code and
// true when it re-ran; the caller exits with that code. With keep, the
// namespace is left for the processes that stay.
func InNetns(name string, keep bool) (int, bool) {
	if os.Getenv(netnsEnv) != "" {
		return 0, false
	}
	_ = exec.Command("ip", "netns", "del", name).Run()
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "making network namespace %s (the lab runs as root): %v %s\n", name, err, out)
		return 1, true
	}
	if !keep {
		defer exec.Command("ip", "netns", "del", name).Run()
	}
	cmd := exec.Command("ip", append([]string{"netns", "exec", name, os.Args[0]}, os.Args[1:]...)...)
	cmd.Env = append(os.Environ(), netnsEnv+"="+name)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	if err := cmd.Run(); err != nil {
		if ee, ok := err.(*exec.ExitError); ok {
			return ee.ExitCode(), true
		}
		fmt.Fprintln(os.Stderr, err)
		return 1, true
	}
	return 0, true
}

// Lab is a running lab.
type Lab struct {
	Dir        string
	Env        *envtest.Environment
	Config     *rest.Config
	Client     client.Client
	Kubeconfig string
	DataDir    string
	t          testfs.T
	mu         sync.Mutex
	procs      map[string]*exec.Cmd
	// stoppers names the processes whose stop is registered with t: once,
	// the first time each starts. A restart inside a Ginkgo spec must not
	// register again, or the restarted process is killed when that spec
	// ends (GinkgoT's Cleanup is the spec's DeferCleanup).
	stoppers map[string]bool
	bin      string
	// tgtPort is the control port of the lab's tgtd.
	tgtPort int
	// taps are the free taps on the bridge (ggtap<n>), nTaps how many exist.
	taps  []string
	nTaps int
	// apiserverArgs is kube-apiserver's command line, kept at its first kill
	// to start it again the same way.
	apiserverArgs []string
	// opts are the options the lab started with; boot and storage are its
	// extra agents (Options.BootAgents, Options.StorageNodes).
	opts    Options
	boot    []BootAgent
	storage []StorageNode
	// nStorage is how many extra storage nodes were ever added (each gets
	// the next address and name, also after a removal).
	nStorage int
}

// Start brings the lab up: network, API server, storage node, manager,
// agent, and two Images, Ready on the node: "demo", the boot-sector disk,
// and "os", the real OS (OSDiskPath). bin holds manager and
// bootagent.
func Start(ctx context.Context, t testfs.T, bin string) (*Lab, error) {
	return StartWith(ctx, t, bin, Options{})
}

// StartWith brings the lab up as Start does, with opts: more boot agents
// and storage nodes on the bridge, extra manager flags, no "os" Image.
func StartWith(ctx context.Context, t testfs.T, bin string, opts Options) (*Lab, error) {
	l := &Lab{Dir: t.TempDir(), t: t, procs: map[string]*exec.Cmd{}, stoppers: map[string]bool{}, bin: bin, tgtPort: 1000 + rand.IntN(8000), opts: opts}
	for _, args := range [][]string{
		{"link", "set", "lo", "up"},
		{"link", "add", Bridge, "type", "bridge"},
		{"addr", "add", ServerIP + "/24", "dev", Bridge},
		{"link", "set", Bridge, "up"},
	} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			return nil, fmt.Errorf("ip %s: %v %s", strings.Join(args, " "), err, out)
		}
	}
	l.DataDir = testfs.XFS(t, 4<<30)
	if err := os.MkdirAll(l.imageRoot(), 0o755); err != nil {
		return nil, err
	}

	env, cfg, err := testenv.Start(func(e *envtest.Environment) {
		e.ControlPlaneStopTimeout = 2 * time.Second
		e.ControlPlane.GetAPIServer().Configure().Set("advertise-address", ServerIP)
	})
	if err != nil {
		return nil, err
	}
	l.Env, l.Config = env, cfg
	t.Cleanup(func() { _ = env.Stop() })
	// A kube-apiserver restarted by a spec (KillAPIServer, StartAPIServer)
	// serves the rest of the suite: its stopper is the lab's, registered
	// here, not the first restarting spec's (which would kill it when that
	// spec ends, and every later spec would find no API server).
	l.stoppers["kube-apiserver"] = true
	t.Cleanup(func() { l.Kill("kube-apiserver") })
	if l.Client, err = client.New(cfg, client.Options{Scheme: scheme.New()}); err != nil {
		return nil, err
	}
	user, err := env.AddUser(envtest.User{Name: "lab-admin", Groups: []string{"system:masters"}}, nil)
	if err != nil {
		return nil, err
	}
	kc, err := user.KubeConfig()
	if err != nil {
		return nil, err
	}
	l.Kubeconfig = filepath.Join(l.Dir, "kubeconfig")
	if err := os.WriteFile(l.Kubeconfig, kc, 0o600); err != nil {
		return nil, err
	}

	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: NodeName, Labels: map[string]string{bootv1.StorageNodeLabel: "true"}}}
	if err := l.Client.Create(ctx, node); err != nil {
		return nil, err
	}
	node.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: ServerIP}}
	if err := l.Client.Status().Update(ctx, node); err != nil {
		return nil, err
	}
	for _, ns := range []string{Namespace, ManagerNamespace} {
		if err := l.Client.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}); err != nil {
			return nil, err
		}
	}

	if err := l.StartManager(); err != nil {
		return nil, err
	}
	// The storage agents read the replication Secret when they start and
	// then every 30 s: one started before the manager made it would refuse
	// (and be refused by) its peers until its next read.
	if err := l.waitReplicationSecret(ctx, 30*time.Second); err != nil {
		return nil, err
	}
	if err := l.StartTGTD(); err != nil {
		return nil, err
	}
	if err := l.StartAgent(); err != nil {
		return nil, err
	}
	if err := l.startExtras(ctx); err != nil {
		return nil, err
	}

	disk := filepath.Join(l.imageRoot(), "demo.raw")
	if err := WriteDemoDisk(disk, 64<<20); err != nil {
		return nil, err
	}
	if err := l.CreateImage(ctx, "demo", disk); err != nil {
		return nil, err
	}
	images := []string{"demo"}
	if !opts.NoOSImage {
		// The real OS (hack/osdisk.sh, built once into bin/osdisk).
		osDisk, err := OSDiskPath()
		if err != nil {
			return nil, err
		}
		if err := l.CreateImage(ctx, "os", osDisk); err != nil {
			return nil, err
		}
		images = append(images, "os")
	}
	for _, name := range images {
		if err := l.WaitImage(ctx, name, 60*time.Second); err != nil {
			return nil, err
		}
		if err := l.waitReplicas(ctx, name, 1+opts.StorageNodes, 120*time.Second); err != nil {
			return nil, err
		}
	}
	return l, nil
}

// waitReplicationSecret waits until the manager made the replication
// Secret.
func (l *Lab) waitReplicationSecret(ctx context.Context, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		err := l.Client.Get(ctx, client.ObjectKey{Namespace: ManagerNamespace, Name: ReplicationSecret}, &corev1.Secret{})
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the manager made no replication Secret %s/%s in %s (%v); see %s", ManagerNamespace, ReplicationSecret, timeout, err, l.Dir)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// CreateImage makes a raw Image name of the file src, which it puts in the
// image root (a hard link where it can: the agent only reads it).
func (l *Lab) CreateImage(ctx context.Context, name, src string) error {
	disk := filepath.Join(l.imageRoot(), name+".raw")
	if src != disk {
		if err := os.Link(src, disk); err != nil {
			if err := copyFile(src, disk); err != nil {
				return err
			}
		}
	}
	img := &bootv1.Image{ObjectMeta: metav1.ObjectMeta{Namespace: Namespace, Name: name},
		Spec: bootv1.ImageSpec{Source: bootv1.ImageSource{Path: &bootv1.PathSource{Path: disk}}, Format: bootv1.ImageFormatRaw}}
	return l.Client.Create(ctx, img)
}

// WaitImage waits until the Image name is Ready on the storage node.
func (l *Lab) WaitImage(ctx context.Context, name string, timeout time.Duration) error {
	img := &bootv1.Image{}
	deadline := time.Now().Add(timeout)
	for {
		if err := l.Client.Get(ctx, client.ObjectKey{Namespace: Namespace, Name: name}, img); err != nil {
			return err
		}
		if img.Status.ReadyReplicas > 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the Image %s did not become Ready in %s; see %s", name, timeout, l.Dir)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func (l *Lab) start(name string, args ...string) error {
	return l.startCmd(name, exec.Command(filepath.Join(l.bin, name), args...))
}

// startCmd starts cmd as the lab's process name, its output appended to
// <name>.log: a restarted process adds to its log, so a whole run's logs can
// be read (and searched for credentials) at the end.
func (l *Lab) startCmd(name string, cmd *exec.Cmd) error {
	logf, err := os.OpenFile(filepath.Join(l.Dir, name+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer logf.Close()
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		return err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.procs[name] = cmd
	if !l.stoppers[name] {
		l.stoppers[name] = true
		l.t.Cleanup(func() { l.Kill(name) })
	}
	return nil
}

// Kill stops a process of the lab (manager, bootagent, tgtd,
// kube-apiserver after its first restart) hard, with SIGKILL, and waits for
// it to end. The agent is the init of its PID namespace: every process of
// that namespace dies with it.
func (l *Lab) Kill(name string) {
	l.mu.Lock()
	cmd := l.procs[name]
	delete(l.procs, name)
	l.mu.Unlock()
	if cmd != nil && cmd.Process != nil {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	}
}

// StartManager runs the manager, in ManagerNamespace (its leader election
// namespace, as a pod's own), where it makes the replication Secret.
func (l *Lab) StartManager() error {
	args := append([]string{"--kubeconfig", l.Kubeconfig, "--leader-elect=false", "--leader-election-namespace", ManagerNamespace,
		"--replication-secret", ReplicationSecret,
		"--metrics-bind-address=127.0.0.1:18080", "--health-probe-bind-address=127.0.0.1:18081"}, l.opts.ManagerArgs...)
	if err := l.start("manager", args...); err != nil {
		return err
	}
	_, err := testbin.WaitHTTP("http://127.0.0.1:18081/readyz", 60*time.Second)
	return err
}

// imageRoot is the directory the agent may read path-source Images from.
func (l *Lab) imageRoot() string { return filepath.Join(l.Dir, "images") }

// StartAgent runs the boot agent with both roles in a PID namespace of its
// own, as a container runs: the agent is that namespace's init, and killing
// it (Kill("bootagent")) kills every process of the namespace, as a
// container restart does. tgtd is not in it: it runs apart (StartTGTD), as
// in production, where it has its own DaemonSet.
func (l *Lab) StartAgent() error { return l.startAgent(false) }

// StartAgentWith runs the agent as StartAgent does with extra flags after
// the lab's own (a later flag wins): for example an external DHCP server's
// --require-script-token=false --bind-neighbors=true. StartAgent starts it
// the lab's way again.
func (l *Lab) StartAgentWith(extra ...string) error { return l.startAgent(false, extra...) }

// StartAgentWithTGTD runs the agent as StartAgent does but has it start and
// supervise tgtd itself (--start-tgtd), inside the agent's PID namespace:
// the old design, where a restart of the agent's container took tgtd and
// every PC's disk with it. The lab's own tgtd must be stopped first.
func (l *Lab) StartAgentWithTGTD() error { return l.startAgent(true) }

func (l *Lab) startAgent(withTGTD bool, extra ...string) error {
	args := []string{"--boot", "--storage", "--kubeconfig", l.Kubeconfig,
		"--node-name", NodeName, "--data-dir", l.DataDir, "--reserve-mib", "16",
		"--tgt-control-port", strconv.Itoa(l.tgtPort), "--portal", ServerIP + ":3260",
		"--dhcp-interfaces", Bridge, "--server-ip", ServerIP, "--http-listen", ServerIP + ":8880",
		"--tftp-listen", ServerIP + ":69", "--metrics-listen", "127.0.0.1:18881",
		"--long-poll", "90s", "--fallback", "retry", "--zap-log-level=debug",
		"--image-path-root", l.imageRoot(), "--storage-metrics-listen", "127.0.0.1:18882"}
	args = append(args, replicationArgs(ServerIP)...)
	args = append(args, l.opts.AgentArgs...)
	if withTGTD {
		args = append(args, "--start-tgtd")
	}
	args = append(args, extra...)
	cmd := exec.Command(filepath.Join(l.bin, "bootagent"), args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWPID}
	if err := l.startCmd("bootagent", cmd); err != nil {
		return err
	}
	_, err := testbin.WaitHTTP(MetricsBase+"/readyz", 60*time.Second)
	return err
}

// replicationArgs are the replication flags of the storage agent whose
// storage address is ip: it serves its replicas to the others there.
func replicationArgs(ip string) []string {
	return []string{"--replication-address", ip + ":" + strconv.Itoa(ReplicationPort),
		"--replication-secret", ManagerNamespace + "/" + ReplicationSecret}
}

// Machine creates a Machine for the VM.
func (l *Lab) Machine(ctx context.Context, name, mac, ip string, policy bootv1.BootPolicy, wb bootv1.WritebackPolicy) (*bootv1.Machine, error) {
	m := &bootv1.Machine{ObjectMeta: metav1.ObjectMeta{Namespace: Namespace, Name: name}, Spec: bootv1.MachineSpec{
		MAC: mac, Hostname: name, IPv4: &bootv1.IPv4Reservation{Address: ip, PrefixLength: 24},
		ImageRef: &bootv1.LocalObjectReference{Name: "demo"}, BootPolicy: policy, Writeback: wb,
	}}
	return m, l.Client.Create(ctx, m)
}

// Logs returns the contents of every log the lab's processes (manager,
// agent, QEMU) wrote so far, by file name. The VMs' serial consoles are not
// logs: they are the PCs' own screens, where iPXE shows its script URL.
func (l *Lab) Logs() (map[string]string, error) {
	out := map[string]string{}
	err := filepath.WalkDir(l.Dir, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(p, ".log") {
			return err
		}
		b, err := os.ReadFile(p)
		out[filepath.Base(p)] = string(b)
		return err
	})
	return out, err
}

// TGTPort is the control port of the lab's tgtd.
func (l *Lab) TGTPort() int { return l.tgtPort }
