package target

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/go-logr/logr"
	. "github.com/onsi/gomega"
)

func TestTGTDArgs(t *testing.T) {
	for _, tc := range []struct {
		name      string
		portal    string
		ioThreads int
		want      []string
	}{
		{"defaults", "10.0.0.1:3260", 0, []string{"-f", "-C", "7", "--iscsi", "portal=10.0.0.1:3260"}},
		{"no portal", "", 0, []string{"-f", "-C", "7"}},
		{"one I/O thread per LU", "10.0.0.1:3260", 1, []string{"-f", "-C", "7", "--iscsi", "portal=10.0.0.1:3260", "-t", "1"}},
		{"negative is the default", "10.0.0.1:3260", -3, []string{"-f", "-C", "7", "--iscsi", "portal=10.0.0.1:3260"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			NewWithT(t).Expect(TGTDArgs(7, tc.portal, tc.ioThreads)).To(Equal(tc.want))
		})
	}
}

// TestSuperviseTGTDIOThreads runs the tgtd SuperviseTGTD starts (root,
// Debian's tgt), checks its environment has TGTDEnv, and counts its threads before and after a target with one
// LU is made: each LU brings a pool of its own, of -t threads, 16 without.
func TestSuperviseTGTDIOThreads(t *testing.T) {
	for _, tc := range []struct {
		name             string
		ioThreads, perLU int
	}{{"default", 0, 16}, {"two", 2, 2}} {
		t.Run(tc.name, func(t *testing.T) {
			g := NewWithT(t)
			l, err := net.Listen("tcp", "127.0.0.1:0")
			g.Expect(err).NotTo(HaveOccurred())
			portal := l.Addr().String()
			l.Close()
			port := 100 + rand.IntN(9000)
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan struct{})
			go func() { SuperviseTGTD(ctx, port, portal, tc.ioThreads, logr.Discard()); close(done) }()
			// SuperviseTGTD leaves tgtd running when it returns (a
			// restarted agent must not take the disks with it).
			t.Cleanup(func() {
				cancel()
				<-done
				if pid := tgtdPID(port); pid > 0 {
					_ = syscall.Kill(pid, syscall.SIGKILL)
				}
			})
			d := &TGT{ControlPort: port}
			g.Eventually(func() error { return d.Ping(ctx) }, 10*time.Second, 100*time.Millisecond).Should(Succeed(),
				"tgtd (Debian package tgt; the storage tests run as root)")
			pid := tgtdPID(port)
			g.Expect(pid).To(BeNumerically(">", 0))
			// tgtd runs with TGTDEnv (glibc's mmap threshold).
			environ, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(strings.Split(string(environ), "\x00")).To(ContainElement("MALLOC_MMAP_THRESHOLD_=4194304"))
			before := threads(t, pid)
			g.Expect(d.Ensure(ctx, sample(t, "threads"))).To(Succeed())
			g.Eventually(func() int { return threads(t, pid) - before }, 5*time.Second, 50*time.Millisecond).Should(Equal(tc.perLU))
		})
	}
}

// tgtdPID finds the tgtd whose control port is port.
func tgtdPID(port int) int {
	dirs, _ := filepath.Glob("/proc/[0-9]*")
	for _, dir := range dirs {
		b, err := os.ReadFile(filepath.Join(dir, "cmdline"))
		if err != nil {
			continue
		}
		args := strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
		if filepath.Base(args[0]) != "tgtd" {
			continue
		}
		if i := slices.Index(args, "-C"); i >= 0 && i+1 < len(args) && args[i+1] == strconv.Itoa(port) {
			pid, _ := strconv.Atoi(filepath.Base(dir))
			return pid
		}
	}
	return 0
}

func threads(t *testing.T, pid int) int {
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		t.Fatal(err)
	}
	return len(tasks)
}
