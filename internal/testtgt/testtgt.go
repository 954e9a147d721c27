// Package testtgt starts a real tgtd for a test, on loopback, with a
// control port and an iSCSI port of its own. It needs root and Debian's tgt.
package testtgt

import (
	"fmt"
	"math/rand/v2"
	"net"
	"os/exec"
	"strconv"
	"syscall"

	"time"
)

// TGTD is a running tgtd.
type TGTD struct {
	ControlPort int
	// Portal is 127.0.0.1:<port>.
	Portal string
	cmd    *exec.Cmd
}

// Start runs tgtd until the test ends (or Kill).
func Start(t T) *TGTD {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	d := &TGTD{ControlPort: 100 + rand.IntN(9000), Portal: fmt.Sprintf("127.0.0.1:%d", port)}
	d.start(t)
	t.Cleanup(func() { d.Kill() })
	return d
}

func (d *TGTD) start(t T) {
	t.Helper()
	d.cmd = exec.Command("tgtd", "-f", "-C", strconv.Itoa(d.ControlPort), "--iscsi", "portal="+d.Portal)
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := d.cmd.Start(); err != nil {
		t.Fatalf("starting tgtd (Debian package tgt; the storage tests run as root): %v", err)
	}
	go func(c *exec.Cmd) { _ = c.Wait() }(d.cmd)
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if exec.Command("tgtadm", "-C", strconv.Itoa(d.ControlPort), "--lld", "iscsi", "--mode", "target", "--op", "show").Run() == nil {
			if c, err := net.Dial("tcp", d.Portal); err == nil {
				c.Close()
				return
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("tgtd on control port %d did not come up", d.ControlPort)
}

// Kill stops tgtd hard, as a crash would.
func (d *TGTD) Kill() {
	if d.cmd != nil && d.cmd.Process != nil {
		_ = syscall.Kill(-d.cmd.Process.Pid, syscall.SIGKILL)
		time.Sleep(100 * time.Millisecond)
	}
}

// Restart kills tgtd and starts a new one on the same ports: it comes back
// with no targets.
func (d *TGTD) Restart(t T) {
	t.Helper()
	d.Kill()
	d.start(t)
}

// T is what the helpers need of a test: *testing.T or GinkgoT().
type T interface {
	Helper()
	Fatal(args ...any)
	Fatalf(format string, args ...any)
	Cleanup(func())
	TempDir() string
}
