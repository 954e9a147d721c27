// Command down is `make demo-down`: it tears down the lab a `make demo
// KEEP=1` left, exactly as its state file (state.Path) records it, and
// nothing else. Each process is signalled only while its pid still has the
// recorded start time (through a pidfd, so the pid cannot be reused between
// the check and the signal); the mount is unmounted in the lab's own mount
// namespace; the loop device is detached only while it still has the
// recorded file behind it; the network namespace is deleted only while its
// name still names the recorded namespace. With no state file there is
// nothing to tear down. Run again, it finds nothing left.
package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ggnet/ggnet/hack/demo/state"
)

func main() {
	path := flag.String("state", state.Path, "The state file of the kept demo.")
	flag.Parse()
	s, err := state.Read(*path)
	if errors.Is(err, os.ErrNotExist) {
		fmt.Printf("nothing to tear down: no kept demo (%s does not exist)\n", *path)
		return
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "demo-down:", err)
		os.Exit(1)
	}
	if failed := down(s); failed > 0 {
		fmt.Fprintf(os.Stderr, "demo-down: %d step(s) failed; %s is kept: fix what is said above and run make demo-down again\n", failed, *path)
		os.Exit(1)
	}
	if err := os.Remove(*path); err != nil && !errors.Is(err, os.ErrNotExist) {
		fmt.Fprintln(os.Stderr, "demo-down:", err)
		os.Exit(1)
	}
	_ = os.Remove(filepath.Dir(*path)) // empty now, unless something else is there
	fmt.Println("lab torn down")
}

// down undoes what s records and returns how many steps failed.
func down(s *state.State) (failed int) {
	fail := func(format string, a ...any) {
		failed++
		fmt.Fprintf(os.Stderr, "  "+format+"\n", a...)
	}

	// The mounts first, lazily, in the lab's mount namespace (ip netns exec
	// gave it one; it lives as long as a process of the lab does) or in
	// ours when they are visible here. Detached, each file system goes once
	// its last open file closes, with the processes below.
	for _, m := range s.Mounts {
		if mounted(os.Getpid(), m.Point) {
			if out, err := exec.Command("umount", "-l", m.Point).CombinedOutput(); err != nil {
				fail("umount %s: %v %s", m.Point, err, out)
				continue
			}
			fmt.Printf("  unmounted %s\n", m.Point)
		}
		if pid := inMountNS(s); pid > 0 && mounted(pid, m.Point) {
			if out, err := exec.Command("nsenter", "-t", strconv.Itoa(pid), "-m", "umount", "-l", m.Point).CombinedOutput(); err != nil {
				fail("umount %s in the lab's mount namespace: %v %s", m.Point, err, out)
				continue
			}
			fmt.Printf("  unmounted %s (in the lab's mount namespace)\n", m.Point)
		}
	}

	// The processes: SIGTERM, then SIGKILL to what is left after 10 s.
	for _, sig := range []syscall.Signal{unix.SIGTERM, unix.SIGKILL} {
		var signalled []state.Proc
		for _, p := range s.Procs {
			switch err := signal(p, sig); {
			case errors.Is(err, errNotOurs):
				if sig == unix.SIGTERM {
					fmt.Printf("  %s (pid %d): %s\n", p.Name, p.PID, p.Check(state.ReadStat))
				}
			case err != nil:
				fail("%s (pid %d): %v", p.Name, p.PID, err)
			default:
				fmt.Printf("  %s (pid %d): %s\n", p.Name, p.PID, unix.SignalName(sig))
				signalled = append(signalled, p)
			}
		}
		if waitGone(signalled, 10*time.Second) {
			break
		}
	}
	for _, p := range s.Procs {
		if p.Check(state.ReadStat) == state.Running {
			fail("%s (pid %d) is still running", p.Name, p.PID)
		}
	}

	// The loop devices: detached by the kernel when their mount goes
	// (mount -o loop sets autoclear); one still there with our file behind
	// it is detached here.
	for _, m := range s.Mounts {
		if m.Loop == "" {
			continue
		}
		deadline := time.Now().Add(5 * time.Second)
		for state.LoopBacking(m.Loop) == m.BackingFile && state.LoopAutoclear(m.Loop) && time.Now().Before(deadline) {
			time.Sleep(100 * time.Millisecond)
		}
		if state.LoopBacking(m.Loop) != m.BackingFile {
			fmt.Printf("  %s: detached\n", m.Loop)
			continue
		}
		if out, err := exec.Command("losetup", "-d", m.Loop).CombinedOutput(); err != nil {
			fail("losetup -d %s: %v %s", m.Loop, err, out)
			continue
		}
		fmt.Printf("  %s: detached (losetup -d)\n", m.Loop)
	}

	// The network namespace, while its name is still ours.
	if s.Netns != "" {
		switch id, err := netnsID(s.Netns); {
		case errors.Is(err, os.ErrNotExist):
			fmt.Printf("  network namespace %s: gone\n", s.Netns)
		case err != nil:
			fail("network namespace %s: %v", s.Netns, err)
		case id != s.NetnsID:
			fmt.Printf("  network namespace %s is %s now, not the demo's %s: left alone\n", s.Netns, id, s.NetnsID)
		default:
			if out, err := exec.Command("ip", "netns", "del", s.Netns).CombinedOutput(); err != nil {
				fail("ip netns del %s: %v %s", s.Netns, err, out)
			} else {
				fmt.Printf("  network namespace %s (%s, with %s): deleted\n", s.Netns, id, strings.Join(s.Links, ", "))
			}
		}
	}

	// The directories, unless something is still mounted in them here.
	for _, d := range s.Dirs {
		if _, err := os.Lstat(d); errors.Is(err, os.ErrNotExist) {
			continue
		}
		if p := mountedUnder(d); p != "" {
			fail("%s: %s is still mounted there; not removed", d, p)
			continue
		}
		if err := os.RemoveAll(d); err != nil {
			fail("removing %s: %v", d, err)
			continue
		}
		fmt.Printf("  removed %s\n", d)
	}
	return failed
}

var errNotOurs = errors.New("not the demo's process")

// signal sends sig to p if its pid is still p's: the pidfd is opened first,
// then the start time checked, so the pidfd is p's process or the check
// fails.
func signal(p state.Proc, sig syscall.Signal) error {
	fd, err := unix.PidfdOpen(p.PID, 0)
	if errors.Is(err, unix.ESRCH) {
		return errNotOurs
	}
	if err != nil {
		return fmt.Errorf("pidfd_open: %w", err)
	}
	defer unix.Close(fd)
	if p.Check(state.ReadStat) != state.Running {
		return errNotOurs
	}
	if err := unix.PidfdSendSignal(fd, sig, nil, 0); err != nil && !errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("pidfd_send_signal: %w", err)
	}
	return nil
}

// waitGone waits until none of ps runs any more.
func waitGone(ps []state.Proc, timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for {
		left := 0
		for _, p := range ps {
			if p.Check(state.ReadStat) == state.Running {
				left++
			}
		}
		if left == 0 {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// inMountNS returns a recorded process of the lab, still running, that is
// in the lab's mount namespace; 0 if none is.
func inMountNS(s *state.State) int {
	if s.MountNS == "" {
		return 0
	}
	for _, p := range s.Procs {
		if p.Check(state.ReadStat) != state.Running {
			continue
		}
		if ns, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/mnt", p.PID)); err == nil && ns == s.MountNS {
			return p.PID
		}
	}
	return 0
}

func mounts(pid int) []state.MountInfo {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/mountinfo", pid))
	if err != nil {
		return nil
	}
	return state.ParseMountInfo(b)
}

// mounted says whether point is a mount point in pid's mount namespace.
func mounted(pid int, point string) bool {
	for _, m := range mounts(pid) {
		if m.Point == point {
			return true
		}
	}
	return false
}

// mountedUnder returns a mount point in dir in our mount namespace.
func mountedUnder(dir string) string {
	for _, m := range mounts(os.Getpid()) {
		if state.Under(m.Point, dir) {
			return m.Point
		}
	}
	return ""
}

// netnsID returns the identity ("net:[<inode>]") of the network namespace
// ip netns knows as name.
func netnsID(name string) (string, error) {
	var st unix.Stat_t
	if err := unix.Stat(filepath.Join("/run/netns", name), &st); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return "", os.ErrNotExist
		}
		return "", err
	}
	var fs unix.Statfs_t
	if err := unix.Statfs(filepath.Join("/run/netns", name), &fs); err != nil {
		return "", err
	}
	if fs.Type != unix.NSFS_MAGIC {
		// The name is there but no namespace is bound to it.
		return "", fmt.Errorf("/run/netns/%s is not a network namespace", name)
	}
	return fmt.Sprintf("net:[%d]", st.Ino), nil
}
