// Command loadlab starts a real kube-apiserver and etcd (the envtest
// binaries), loads N Machines with reserved addresses and N Ready
// BootSessions, runs the boot agent binary against them, and reports the
// agent's RSS once its caches synced. The benchmark scripts run it inside a
// network namespace and point perfdhcp or TFTP clients at the agent.
//
//	loadlab -n 10000 -agent bin/bootagent -- --dhcp-interfaces=pb-s --server-ip=198.51.100.1 ...
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	bootv1 "github.com/ggnet/ggnet/api/v1alpha1"
	"github.com/ggnet/ggnet/internal/ipxe"
	"github.com/ggnet/ggnet/internal/scheme"
	"github.com/ggnet/ggnet/internal/testbin"
	"github.com/ggnet/ggnet/internal/testenv"
)

var advertise string

func main() {
	n := flag.Int("n", 10000, "Machines and BootSessions to load.")
	agentBin := flag.String("agent", "bin/bootagent", "Boot agent binary.")
	probe := flag.String("probe", "http://127.0.0.1:8881/readyz", "The agent's readyz URL (its --metrics-listen).")
	cpu := flag.String("cpu", "0", "CPU list for the agent (taskset).")
	flag.StringVar(&agentEnv, "agent-env", "", "Extra environment of the agent, comma-separated KEY=VALUE (GOGC=50,GOMAXPROCS=2).")
	flag.StringVar(&advertise, "advertise-address", "198.51.100.1", "A non-loopback address of this namespace for kube-apiserver to advertise.")
	flag.Parse()
	if err := run(*n, *agentBin, *probe, *cpu, flag.Args()); err != nil {
		fmt.Fprintln(os.Stderr, "loadlab:", err)
		os.Exit(1)
	}
}

var agentEnv string

// MAC k as perfdhcp generates it from base 00:0c:01:00:00:00 with -R n.
func mac(k int) string { return fmt.Sprintf("00:0c:01:%02x:%02x:%02x", k>>16&0xff, k>>8&0xff, k&0xff) }

// address k in 198.18.0.0/16, skipping .0 and .255 of each /24.
func address(k int) string { return fmt.Sprintf("198.18.%d.%d", k/250, k%250+2) }

func run(n int, agentBin, probe, cpu string, agentArgs []string) error {
	env, cfg, err := testenv.Start(func(e *envtest.Environment) {
		e.ControlPlaneStopTimeout = time.Second
		// Inside a namespace without a default route kube-apiserver cannot
		// guess an address to advertise.
		e.ControlPlane.GetAPIServer().Configure().Set("advertise-address", advertise)
	})
	if err != nil {
		return err
	}
	defer func() { _ = env.Stop() }()
	cfg.QPS, cfg.Burst = 2000, 4000
	c, err := client.New(cfg, client.Options{Scheme: scheme.New()})
	if err != nil {
		return err
	}
	ctx := context.Background()
	ns := "lab"
	if err := c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}); err != nil {
		return err
	}
	start := time.Now()
	if err := testbin.Parallel(n, 32, func(k int) error {
		name := fmt.Sprintf("seat-%05d", k)
		m := &bootv1.Machine{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}, Spec: bootv1.MachineSpec{
			MAC: mac(k), Hostname: name,
			IPv4: &bootv1.IPv4Reservation{Address: address(k), PrefixLength: 16, Gateway: "198.18.255.254", DNS: []string{"198.18.255.254"}},
		}}
		if err := c.Create(ctx, m); err != nil {
			return err
		}
		s := &bootv1.BootSession{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name + "-s"}, Spec: bootv1.BootSessionSpec{
			MachineRef: bootv1.LocalObjectReference{Name: name}, ImageRef: bootv1.LocalObjectReference{Name: "win11"},
		}}
		if err := c.Create(ctx, s); err != nil {
			return err
		}
		// The session as the manager leaves it: its Secret (the agent serves
		// a session only with its credentials and token), a credential-free
		// preview script and the target in status.
		tok := fmt.Sprintf("%032d", k)
		tok = strings.NewReplacer("0", "a", "1", "b", "8", "c", "9", "d").Replace(tok)
		sec := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: s.Name + "-chap",
			Labels: map[string]string{bootv1.SessionSecretLabel: s.Name}},
			StringData: map[string]string{bootv1.SecretKeyUsername: s.Name, bootv1.SecretKeyPassword: "0123456789abcdef",
				bootv1.SecretKeyTargetUsername: s.Name + "-target", bootv1.SecretKeyTargetPassword: "fedcba9876543210", bootv1.SecretKeyToken: tok}}
		if err := c.Create(ctx, sec); err != nil {
			return err
		}
		target := &bootv1.ISCSITarget{Portal: "198.51.100.1:3260", IQN: "iqn.2026-11.io.ggnet:lab:" + s.Name, LUN: 1}
		initiator := "iqn.2026-11.io.ggnet:initiator:lab:" + name
		script, err := ipxe.Render(ipxe.Session{Name: ns + "/" + s.Name, Image: "win11", Portal: target.Portal,
			TargetIQN: target.IQN, LUN: target.LUN, InitiatorIQN: initiator})
		if err != nil {
			return err
		}
		s.Status = bootv1.BootSessionStatus{Phase: bootv1.SessionReady, MAC: mac(k), Script: script, StorageNode: "storage-1",
			Target: target, InitiatorIQN: initiator, CHAPSecretRef: &bootv1.LocalObjectReference{Name: sec.Name}}
		return c.Status().Update(ctx, s)
	}); err != nil {
		return err
	}
	fmt.Printf("loaded %d Machines and %d Ready BootSessions in %s\n", n, n, time.Since(start).Round(time.Millisecond))

	user, err := env.AddUser(envtest.User{Name: "ggnet-bootagent", Groups: []string{"system:masters"}}, nil)
	if err != nil {
		return err
	}
	kc, err := user.KubeConfig()
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "loadlab")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	kubeconfig := filepath.Join(dir, "kubeconfig")
	if err := os.WriteFile(kubeconfig, kc, 0o600); err != nil {
		return err
	}
	args := append([]string{"-c", cpu, agentBin, "--boot", "--kubeconfig", kubeconfig, "--namespace", ns}, agentArgs...)
	agent := exec.Command("taskset", args...)
	if agentEnv != "" {
		agent.Env = append(os.Environ(), strings.Split(agentEnv, ",")...)
	}
	logf, err := os.Create(filepath.Join(os.TempDir(), "loadlab-agent.log"))
	if err != nil {
		return err
	}
	agent.Stdout, agent.Stderr = logf, logf
	if err := agent.Start(); err != nil {
		return err
	}
	defer func() { _ = agent.Process.Signal(syscall.SIGTERM); _ = agent.Wait() }()
	start = time.Now()
	if _, err := testbin.WaitHTTP(probe, 120*time.Second); err != nil {
		return err
	}
	fmt.Printf("agent ready (caches synced) after %s\n", time.Since(start).Round(time.Millisecond))
	time.Sleep(3 * time.Second)
	fmt.Printf("agent RSS with %d Machines and %d sessions: %s\n", n, n, testbin.RSS(agent.Process.Pid))
	fmt.Println("READY")

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, os.Interrupt)
	<-sig
	fmt.Printf("agent RSS at the end: %s\n", testbin.RSS(agent.Process.Pid))
	return nil
}
