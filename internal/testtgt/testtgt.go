// Package testtgt starts a real tgtd for a test, on loopback, with a
// control port and an iSCSI port of its own. It needs root and Debian's tgt.
package testtgt

import (
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"strconv"
	"syscall"
	"time"

	"github.com/ggnet/ggnet/internal/testfs"
)

// TGTD is a running tgtd.
type TGTD struct {
	ControlPort int
	// Portal is 127.0.0.1:<port>.
	Portal string
	cmd    *exec.Cmd
	exited chan struct{}
}

// Start runs tgtd until the test ends (or Kill). A control port another
// tgtd holds (tgtd refuses it and exits) is exchanged for another.
func Start(t testfs.T) *TGTD {
	t.Helper()
	var last error
	for range 5 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		l.Close()
		d := &TGTD{ControlPort: 100 + rand.IntN(9000), Portal: fmt.Sprintf("127.0.0.1:%d", port)}
		if last = d.start(); last == nil {
			t.Cleanup(func() { d.Kill() })
			return d
		}
		d.Kill()
	}
	t.Fatalf("starting tgtd (Debian package tgt; the storage tests run as root): %v", last)
	return nil
}

// SocketPath is tgtd's management socket for a control port (tgt
// usr/tgtadm.h: TGT_IPC_NAMESPACE "." port, a path; $TGT_IPC_SOCKET
// replaces the prefix).
func SocketPath(controlPort int) string {
	p := os.Getenv("TGT_IPC_SOCKET")
	if p == "" {
		p = "/var/run/tgtd/socket"
	}
	return p + "." + strconv.Itoa(controlPort)
}

func (d *TGTD) start() error {
	d.cmd = exec.Command("tgtd", "-f", "-C", strconv.Itoa(d.ControlPort), "--iscsi", "portal="+d.Portal)
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := d.cmd.Start(); err != nil {
		return err
	}
	exited := make(chan struct{})
	d.exited = exited
	go func(c *exec.Cmd) { _ = c.Wait(); close(exited) }(d.cmd)
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-exited:
			return fmt.Errorf("tgtd on control port %d exited at start (port taken?)", d.ControlPort)
		default:
		}
		// Ours answers on the socket and listens on the portal; the socket
		// alone could be another tgtd's until ours exits.
		if c, err := net.Dial("unix", SocketPath(d.ControlPort)); err == nil {
			c.Close()
			if c, err := net.Dial("tcp", d.Portal); err == nil {
				c.Close()
				return nil
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("tgtd on control port %d did not come up", d.ControlPort)
}

// Kill stops tgtd hard, as a crash would.
func (d *TGTD) Kill() {
	if d.cmd != nil && d.cmd.Process != nil {
		_ = syscall.Kill(-d.cmd.Process.Pid, syscall.SIGKILL)
		select {
		case <-d.exited:
		case <-time.After(5 * time.Second):
		}
	}
}

// Pid is tgtd's process id.
func (d *TGTD) Pid() int { return d.cmd.Process.Pid }

// Restart kills tgtd and starts a new one on the same ports: it comes back
// with no targets.
func (d *TGTD) Restart(t testfs.T) {
	t.Helper()
	d.Kill()
	if err := d.start(); err != nil {
		t.Fatal(err)
	}
}
