package lab

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"k8s.io/client-go/rest"

	"github.com/ggnet/ggnet/bootagent/target"
)

// StartTGTD starts the lab's tgtd as a process of its own, apart from the
// agent (production runs it in its own DaemonSet), the way kubelet starts a
// container: same control port, same portal, every time. A tgtd started
// again comes back empty; the storage agent rebuilds its targets. It returns
// once tgtd answers on its management socket. Options.TGTDIOThreads sets its
// I/O threads per logical unit.
func (l *Lab) StartTGTD() error {
	cmd := exec.Command("tgtd", target.TGTDArgs(l.tgtPort, ServerIP+":3260", l.opts.TGTDIOThreads)...)
	cmd.Env = append(os.Environ(), target.TGTDEnv...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := l.startCmd("tgtd", cmd); err != nil {
		return err
	}
	return waitTGTD(l.tgtPort, filepath.Join(l.Dir, "tgtd.log"))
}

// AgentPIDNamespace returns the identity of the running agent's PID
// namespace (the inode of /proc/<pid>/ns/pid) and its init's PID.
func (l *Lab) AgentPIDNamespace() (ns string, pid int, err error) {
	l.mu.Lock()
	cmd := l.procs["bootagent"]
	l.mu.Unlock()
	if cmd == nil || cmd.Process == nil {
		return "", 0, fmt.Errorf("the agent is not running")
	}
	ns, err = os.Readlink(fmt.Sprintf("/proc/%d/ns/pid", cmd.Process.Pid))
	return ns, cmd.Process.Pid, err
}

// PIDsInNamespace lists the processes (host PIDs) whose PID namespace is ns.
func PIDsInNamespace(ns string) []int {
	var out []int
	links, _ := filepath.Glob("/proc/[0-9]*/ns/pid")
	for _, p := range links {
		if got, err := os.Readlink(p); err == nil && got == ns {
			if pid, err := strconv.Atoi(strings.Split(p, "/")[2]); err == nil {
				out = append(out, pid)
			}
		}
	}
	return out
}

// KillAPIServer kills kube-apiserver with SIGKILL; etcd keeps running.
// StartAPIServer starts it again.
func (l *Lab) KillAPIServer() error {
	l.mu.Lock()
	_, restarted := l.procs["kube-apiserver"]
	l.mu.Unlock()
	if restarted {
		l.Kill("kube-apiserver")
		return nil
	}
	// The first kill: the process envtest started, found by its cert
	// directory, which stays (envtest removes it only when it stops).
	dir := l.Env.ControlPlane.APIServer.CertDir
	cmdlines, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range cmdlines {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		argv := strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
		if filepath.Base(argv[0]) != "kube-apiserver" || !contains(argv, "--cert-dir="+dir) {
			continue
		}
		pid, _ := strconv.Atoi(strings.Split(p, "/")[2])
		proc, err := os.FindProcess(pid)
		if err != nil {
			return err
		}
		l.apiserverArgs = argv
		if err := proc.Kill(); err != nil {
			return err
		}
		// envtest waits for its child: the process is gone once /proc says
		// so (or shows a zombie for an instant).
		for i := 0; i < 200; i++ {
			st, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
			if err != nil || strings.Contains(string(st), ") Z ") {
				return nil
			}
			time.Sleep(50 * time.Millisecond)
		}
		return fmt.Errorf("kube-apiserver (pid %d) did not end after SIGKILL", pid)
	}
	return fmt.Errorf("no kube-apiserver with --cert-dir=%s", dir)
}

// StartAPIServer starts kube-apiserver again with the command line it had
// (same port, certificates and etcd) and waits until it is ready.
func (l *Lab) StartAPIServer() error {
	if l.apiserverArgs == nil {
		return fmt.Errorf("kube-apiserver was never killed")
	}
	cmd := exec.Command(l.apiserverArgs[0], l.apiserverArgs[1:]...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := l.startCmd("kube-apiserver", cmd); err != nil {
		return err
	}
	hc, err := rest.HTTPClientFor(l.Config)
	if err != nil {
		return err
	}
	deadline := time.Now().Add(90 * time.Second)
	for {
		resp, err := hc.Get(strings.TrimRight(l.Config.Host, "/") + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("kube-apiserver not ready 90s after its restart (last: %v); see %s", err, filepath.Join(l.Dir, "kube-apiserver.log"))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
