// Package testbin builds the project's binaries for tests and runs them as
// real processes.
package testbin

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ggnet/ggnet/internal/testenv"
	"github.com/ggnet/ggnet/internal/testfs"
)

// Build compiles the package at pkg (for example ./cmd/manager) into a
// temporary directory and returns the binary.
func Build(t testfs.T, pkg string) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), filepath.Base(pkg))
	cmd := exec.Command("go", "build", "-o", out, pkg)
	cmd.Dir = testenv.RepoRoot()
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v\n%s", pkg, err, b)
	}
	return out
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func FreePort(t testing.TB) int {
	t.Helper()
	port, err := LocalPort()
	if err != nil {
		t.Fatal(err)
	}
	return port
}

// LocalPort returns a TCP port on 127.0.0.1 that was free a moment ago.
func LocalPort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// WaitHTTP polls url until it answers 200 or timeout passes, and returns the
// body of the first 200.
func WaitHTTP(url string, timeout time.Duration) (string, error) {
	deadline := time.Now().Add(timeout)
	var last error
	for time.Now().Before(deadline) {
		resp, err := http.Get(url)
		if err == nil {
			var b []byte
			b, err = io.ReadAll(resp.Body)
			resp.Body.Close()
			if err == nil && resp.StatusCode == http.StatusOK {
				return string(b), nil
			}
			if err == nil {
				err = fmt.Errorf("%s: %s", url, resp.Status)
			}
		}
		last = err
		time.Sleep(100 * time.Millisecond)
	}
	return "", fmt.Errorf("waiting for %s: %w", url, last)
}

// Parallel runs f(0..n-1) on workers goroutines and returns one of the
// errors, if any.
func Parallel(n, workers int, f func(int) error) error {
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		ferr error
		next = make(chan int)
	)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := range next {
				if err := f(k); err != nil {
					mu.Lock()
					ferr = err
					mu.Unlock()
				}
			}
		}()
	}
	for k := range n {
		next <- k
	}
	close(next)
	wg.Wait()
	return ferr
}

// RSS returns a process's resident set size as /proc reports it.
func RSS(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return "?"
	}
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "VmRSS:") {
			return strings.TrimSpace(strings.TrimPrefix(l, "VmRSS:"))
		}
	}
	return "?"
}

// Program lets a program (the demo, a benchmark) use the test helpers: a
// failure prints and exits after the cleanups, which run in reverse order at
// Done unless Keep is set.
type Program struct {
	Keep     bool
	cleanups []func()
}

func (*Program) Helper() {}

// Fatal prints, cleans up and exits.
func (p *Program) Fatal(a ...any) { fmt.Fprintln(os.Stderr, a...); p.Done(); os.Exit(1) }

// Fatalf prints, cleans up and exits.
func (p *Program) Fatalf(f string, a ...any) { p.Fatal(fmt.Sprintf(f, a...)) }

// Cleanup registers f for Done.
func (p *Program) Cleanup(f func()) { p.cleanups = append(p.cleanups, f) }

// TempDir makes a directory removed at Done.
func (p *Program) TempDir() string {
	d, err := os.MkdirTemp("", "ggnet-lab-")
	if err != nil {
		p.Fatal(err)
	}
	p.Cleanup(func() { os.RemoveAll(d) })
	return d
}

// Done runs the cleanups, last first, unless Keep.
func (p *Program) Done() {
	if p.Keep {
		return
	}
	for i := len(p.cleanups) - 1; i >= 0; i-- {
		p.cleanups[i]()
	}
	p.cleanups = nil
}
