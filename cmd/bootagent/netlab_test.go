package main

// The listener tests run the bootagent binary in a network namespace of its
// own, "the node", with two interfaces: boot0 (the boot LAN, addrA) and
// other0 (another network of the node, addrB). Their veth peers are in a
// second namespace, "the LAN" (pc0 and pc1), where the test's clients open
// their sockets. The API server is envtest's, in the test's namespace; a
// small TCP proxy inside the node namespace reaches it. They need root (ip
// netns, ports 67 and 69).

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/ggnet/ggnet/internal/scheme"
	"github.com/ggnet/ggnet/internal/testenv"
)

const (
	addrA = "10.77.0.1" // the boot address (--server-ip), on boot0
	addrB = "10.77.1.1" // another address of the node, on other0
	pcA   = "10.77.0.2" // a PC on the boot LAN, on pc0 (boot0's peer)
	pcB   = "10.77.1.2" // a host on the other network, on pc1 (other0's peer)
)

// shared is the API server and the binary, made once for the package.
var shared struct {
	once sync.Once
	env  *envtest.Environment
	cfg  *rest.Config
	kc   []byte
	bin  string
	dir  string
	err  error
}

func TestMain(m *testing.M) {
	code := m.Run()
	if shared.env != nil {
		_ = shared.env.Stop()
	}
	if shared.dir != "" {
		_ = os.RemoveAll(shared.dir)
	}
	os.Exit(code)
}

// setup builds the binary and starts the API server once.
func setup(t *testing.T) (client.Client, string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: network namespaces, ports 67 and 69")
	}
	shared.once.Do(func() {
		if shared.dir, shared.err = os.MkdirTemp("", "ggnet-bootagent-"); shared.err != nil {
			return
		}
		shared.bin = filepath.Join(shared.dir, "bootagent")
		if out, err := exec.Command("go", "build", "-o", shared.bin, ".").CombinedOutput(); err != nil {
			shared.err = fmt.Errorf("go build: %v\n%s", err, out)
			return
		}
		if shared.env, shared.cfg, shared.err = testenv.Start(); shared.err != nil {
			return
		}
		user, err := shared.env.AddUser(envtest.User{Name: "bootagent-test", Groups: []string{"system:masters"}}, nil)
		if err != nil {
			shared.err = err
			return
		}
		shared.kc, shared.err = user.KubeConfig()
	})
	if shared.err != nil {
		t.Fatal(shared.err)
	}
	c, err := client.New(shared.cfg, client.Options{Scheme: scheme.New()})
	if err != nil {
		t.Fatal(err)
	}
	return c, shared.bin
}

// netns is a network namespace (ip netns name).
type netns string

// do runs f on an OS thread inside n: the sockets f opens belong to n. The
// thread is never handed back to the scheduler; it ends with its goroutine.
func (n netns) do(f func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		fd, err := unix.Open("/var/run/netns/"+string(n), unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			errc <- err
			return
		}
		defer unix.Close(fd)
		if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("entering %s: %w", n, err)
			return
		}
		errc <- f()
	}()
	return <-errc
}

// dial connects from inside n.
func (n netns) dial(network, addr string) (c net.Conn, err error) {
	err = n.do(func() error {
		c, err = net.DialTimeout(network, addr, 2*time.Second)
		return err
	})
	return c, err
}

// httpClient makes its connections from inside n.
func (n netns) httpClient() *http.Client {
	return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DisableKeepAlives: true,
		DialContext: func(_ context.Context, network, addr string) (net.Conn, error) {
			return n.dial(network, addr)
		},
	}}
}

// get fetches url from inside n.
func (n netns) get(url string) (int, string, error) {
	resp, err := n.httpClient().Get(url)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// netLab is the node and the LAN of one test.
type netLab struct {
	t         *testing.T
	node, lan netns
	// kubeconfig reaches the API server from inside the node.
	kubeconfig string
}

func ip(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		t.Fatalf("ip %s: %v %s", strings.Join(args, " "), err, out)
	}
}

func newNetLab(t *testing.T) *netLab {
	t.Helper()
	id := fmt.Sprintf("%08x", rand.Uint32())
	l := &netLab{t: t, node: netns("ggnet-node-" + id), lan: netns("ggnet-lan-" + id)}
	for _, n := range []netns{l.node, l.lan} {
		ip(t, "netns", "add", string(n))
		t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", string(n)).Run() })
	}
	node, lan := string(l.node), string(l.lan)
	for _, args := range [][]string{
		{"-n", node, "link", "add", "boot0", "type", "veth", "peer", "name", "pc0", "netns", lan},
		{"-n", node, "link", "add", "other0", "type", "veth", "peer", "name", "pc1", "netns", lan},
		{"-n", node, "addr", "add", addrA + "/24", "dev", "boot0"},
		{"-n", node, "addr", "add", addrB + "/24", "dev", "other0"},
		{"-n", lan, "addr", "add", pcA + "/24", "dev", "pc0"},
		{"-n", lan, "addr", "add", pcB + "/24", "dev", "pc1"},
	} {
		ip(t, args...)
	}
	for _, l := range []struct{ ns, dev string }{{node, "lo"}, {node, "boot0"}, {node, "other0"}, {lan, "lo"}, {lan, "pc0"}, {lan, "pc1"}} {
		ip(t, "-n", l.ns, "link", "set", l.dev, "up")
	}
	l.apiProxy()
	return l
}

// apiProxy listens on 127.0.0.1 inside the node (the API server's
// certificate names 127.0.0.1) and forwards to the API server, and writes a
// kubeconfig for it.
func (l *netLab) apiProxy() {
	var ln net.Listener
	if err := l.node.do(func() (err error) { ln, err = net.Listen("tcp", "127.0.0.1:0"); return err }); err != nil {
		l.t.Fatal(err)
	}
	l.t.Cleanup(func() { _ = ln.Close() })
	api, err := url.Parse(shared.cfg.Host)
	if err != nil {
		l.t.Fatal(err)
	}
	upstream := api.Host
	l.t.Logf("API server %s, proxied at %s in %s", upstream, ln.Addr(), l.node)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				u, err := net.Dial("tcp", upstream)
				if err != nil {
					l.t.Logf("Proxying to the API server: %v", err)
					return
				}
				defer u.Close()
				go func() { _, _ = io.Copy(u, c); _ = u.(*net.TCPConn).CloseWrite() }()
				_, _ = io.Copy(c, u)
			}()
		}
	}()
	kc, err := clientcmd.Load(shared.kc)
	if err != nil {
		l.t.Fatal(err)
	}
	for _, c := range kc.Clusters {
		c.Server = "https://" + ln.Addr().String()
	}
	l.kubeconfig = filepath.Join(l.t.TempDir(), "kubeconfig")
	if err := clientcmd.WriteToFile(*kc, l.kubeconfig); err != nil {
		l.t.Fatal(err)
	}
}

// process is a bootagent process in the node namespace.
type process struct {
	cmd *exec.Cmd
	out *syncBuffer
}

// start runs the binary in the node with args (and --kubeconfig) until the
// test ends; it is stopped with SIGTERM, then killed.
func (l *netLab) start(bin string, args ...string) *process {
	l.t.Helper()
	args = append([]string{"netns", "exec", string(l.node), bin, "--kubeconfig", l.kubeconfig, "--zap-log-level", "debug"}, args...)
	a := &process{cmd: exec.Command("ip", args...), out: &syncBuffer{}}
	a.cmd.Stdout, a.cmd.Stderr = a.out, a.out
	if err := a.cmd.Start(); err != nil {
		l.t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = a.cmd.Wait(); close(done) }()
	l.t.Cleanup(func() {
		_ = a.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = a.cmd.Process.Kill()
			<-done
		}
		if l.t.Failed() {
			l.t.Logf("bootagent output:\n%s", a.out.String())
		}
	})
	return a
}

// children are the PIDs of the agent's child processes named comm.
func (a *process) children(comm string) []int {
	var out []int
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...
		s := string(stat)
		i := strings.LastIndexByte(s, ')')
		if i < 0 || !strings.HasSuffix(s[:i], "("+comm) {
			continue
		}
		if f := strings.Fields(s[i+1:]); len(f) > 1 && f[1] == strconv.Itoa(a.cmd.Process.Pid) {
			out = append(out, pid)
		}
	}
	return out
}

// syncBuffer is a bytes.Buffer safe for a process's two output streams.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
