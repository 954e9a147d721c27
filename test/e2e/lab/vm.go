package lab

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// Boot is one VM boot.
type Boot struct {
	// Count is the boot counter the disk printed (0 when it did not boot).
	Count int
	// Elapsed is power-on to marker.
	Elapsed time.Duration
	Serial  string
}

// TickAt is one tick of the demo disk and when the lab first saw it.
type TickAt struct {
	N  uint32
	At time.Time
}

// VM is a running QEMU.
type VM struct {
	MAC    string
	cmd    *exec.Cmd
	serial string
	start  time.Time

	mu     sync.Mutex
	ticks  []TickAt
	stop   chan struct{}
	exited chan struct{}
	once   sync.Once
}

// PowerOn starts a QEMU VM (TCG) that network-boots through the lab's tap.
// The lab watches its console and notes when each tick appears.
func (l *Lab) PowerOn(mac string) (*VM, error) {
	tap, err := l.getTap()
	if err != nil {
		return nil, err
	}
	serial := filepath.Join(l.Dir, fmt.Sprintf("serial-%d.txt", time.Now().UnixNano()))
	// -nographic makes SeaBIOS mirror the screen (iPXE's messages) to the
	// serial port, which goes to a file with the disk's own output.
	cmd := exec.Command("qemu-system-x86_64", "-machine", "pc,accel=tcg", "-m", "256", "-nographic",
		"-serial", "file:"+serial, "-monitor", "none", "-no-reboot",
		"-netdev", "tap,id=n0,ifname="+tap+",script=no,downscript=no",
		// e1000 with its iPXE ROM from Debian's ipxe-qemu (virtio's ROM is not
		// offered by SeaBIOS here).
		"-device", "e1000,netdev=n0,mac="+mac,
		"-boot", "n")
	logf, err := os.Create(serial + ".qemu.log")
	if err != nil {
		l.putTap(tap)
		return nil, err
	}
	defer logf.Close()
	cmd.Stdout, cmd.Stderr = logf, logf
	vm := &VM{MAC: mac, cmd: cmd, serial: serial, start: time.Now(), stop: make(chan struct{}), exited: make(chan struct{})}
	if err := cmd.Start(); err != nil {
		l.putTap(tap)
		return nil, err
	}
	go func() { _ = cmd.Wait(); l.putTap(tap); close(vm.exited) }()
	go vm.watch()
	l.t.Cleanup(vm.PowerOff)
	return vm, nil
}

// getTap returns a free tap on the lab's bridge, making one when none is.
func (l *Lab) getTap() (string, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if n := len(l.taps); n > 0 {
		tap := l.taps[n-1]
		l.taps = l.taps[:n-1]
		return tap, nil
	}
	tap := fmt.Sprintf("ggtap%d", l.nTaps)
	for _, args := range [][]string{
		{"tuntap", "add", tap, "mode", "tap"},
		{"link", "set", tap, "master", Bridge},
		{"link", "set", tap, "up"},
	} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			return "", fmt.Errorf("ip %s: %v %s", strings.Join(args, " "), err, out)
		}
	}
	l.nTaps++
	return tap, nil
}

// putTap gives a VM's tap back once its QEMU ended.
func (l *Lab) putTap(tap string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.taps = append(l.taps, tap)
}

// QEMULog returns what QEMU itself printed (its errors).
func (vm *VM) QEMULog() string {
	b, _ := os.ReadFile(vm.serial + ".qemu.log")
	return string(b)
}

// watch notes the time each new tick line appears on the console.
func (vm *VM) watch() {
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-vm.stop:
			return
		case <-t.C:
		}
		ticks := Ticks(vm.Serial())
		now := time.Now()
		vm.mu.Lock()
		for _, n := range ticks[min(len(vm.ticks), len(ticks)):] {
			vm.ticks = append(vm.ticks, TickAt{N: n, At: now})
		}
		vm.mu.Unlock()
	}
}

// Serial returns what the VM printed so far.
func (vm *VM) Serial() string {
	b, _ := os.ReadFile(vm.serial)
	return string(bytes.ReplaceAll(b, []byte("\r"), nil))
}

// Ticks returns the ticks the VM printed so far with when the lab saw each.
func (vm *VM) Ticks() []TickAt {
	vm.mu.Lock()
	defer vm.mu.Unlock()
	return append([]TickAt(nil), vm.ticks...)
}

// LastTick returns the VM's last tick (0 before the first).
func (vm *VM) LastTick() uint32 {
	vm.mu.Lock()
	defer vm.mu.Unlock()
	if len(vm.ticks) == 0 {
		return 0
	}
	return vm.ticks[len(vm.ticks)-1].N
}

// WaitTick waits until the VM printed a tick of at least n and returns its
// last tick.
func (vm *VM) WaitTick(n uint32, timeout time.Duration) (uint32, error) {
	deadline := time.Now().Add(timeout)
	for {
		if last := vm.LastTick(); last >= n {
			return last, nil
		}
		if time.Now().After(deadline) {
			return vm.LastTick(), fmt.Errorf("no tick %d from the VM after %s (last %d)", n, timeout, vm.LastTick())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TickProblems says what is wrong with the VM's run so far: a tick that is
// not one more than the one before (a write the disk lost, or a reboot), a
// second boot, a read-back that differed. Empty when the VM's disk did all
// it was asked.
func (vm *VM) TickProblems() []string {
	var out []string
	s := vm.Serial()
	if n := strings.Count(s, Marker); n > 1 {
		out = append(out, fmt.Sprintf("the VM booted %d times", n))
	}
	if strings.Contains(s, VerifyFailMarker) {
		out = append(out, "a sector read back differed from what was written")
	}
	ticks := Ticks(s)
	for i := 1; i < len(ticks); i++ {
		if ticks[i] != ticks[i-1]+1 {
			out = append(out, fmt.Sprintf("tick %d follows tick %d", ticks[i], ticks[i-1]))
		}
	}
	return out
}

// MaxTickGap returns the longest time without a new tick on the VM's
// console around [from, to]: from the last tick before from to the first
// after to (or now, when none came after to yet).
func (vm *VM) MaxTickGap(from, to time.Time) time.Duration {
	prev, gap := from, time.Duration(0)
	for _, t := range vm.Ticks() {
		if !t.At.After(from) {
			prev = t.At
			continue
		}
		gap = max(gap, t.At.Sub(prev))
		prev = t.At
		if t.At.After(to) {
			return gap
		}
	}
	return max(gap, time.Since(prev))
}

// WaitBoot waits for the disk's marker and returns the boot.
func (vm *VM) WaitBoot(timeout time.Duration) (Boot, error) {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		s := vm.Serial()
		if i := strings.Index(s, Marker); i >= 0 {
			rest := s[i+len(Marker):]
			if j := strings.IndexByte(rest, '\n'); j >= 0 {
				var n int
				_, _ = fmt.Sscanf(rest[:j], "%d", &n)
				return Boot{Count: n, Elapsed: time.Since(vm.start), Serial: s}, nil
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	return Boot{Serial: vm.Serial()}, fmt.Errorf("no %q from the VM after %s", Marker, timeout)
}

// Running says whether the VM's QEMU still runs. It ends by itself when
// the firmware reboots (QEMU runs with -no-reboot): SeaBIOS does so a minute
// after it found nothing to boot.
func (vm *VM) Running() bool {
	select {
	case <-vm.exited:
		return false
	default:
		return true
	}
}

// PowerOff stops the VM.
func (vm *VM) PowerOff() {
	vm.once.Do(func() {
		close(vm.stop)
		_ = vm.cmd.Process.Kill()
		<-vm.exited
	})
}
