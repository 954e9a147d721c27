package lab

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
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
	MAC      string
	Firmware Firmware
	cmd      *exec.Cmd
	serial   string
	start    time.Time

	mu    sync.Mutex
	ticks []TickAt
	// grown notes when the lab saw the console reach each length (bytes of
	// the file, \r included): SeenAt finds when a line appeared.
	grown  []grownAt
	stop   chan struct{}
	exited chan struct{}
	once   sync.Once
}

// Firmware is the VM's firmware.
type Firmware string

const (
	// FirmwareBIOS is SeaBIOS with the e1000's iPXE option ROM (Debian's
	// ipxe-qemu): iPXE is in the NIC and DHCPs by itself.
	FirmwareBIOS Firmware = "BIOS"
	// FirmwareUEFI is OVMF (Debian's ovmf) with a virtio NIC whose option ROM
	// is off: the firmware's own PXE client (VirtioNetDxe, then PXEv4) does
	// DHCP with client architecture 7 and fetches the agent's UEFI iPXE
	// binary over TFTP, and that iPXE goes on.
	FirmwareUEFI Firmware = "UEFI"
)

// OVMF's firmware volumes (Debian's ovmf package): the code, read-only, and
// the variable store template each UEFI VM gets a copy of.
var (
	OVMFCode = "/usr/share/OVMF/OVMF_CODE_4M.fd"
	OVMFVars = "/usr/share/OVMF/OVMF_VARS_4M.fd"
)

// VMOptions are how a VM is made.
type VMOptions struct {
	// Firmware is BIOS when empty.
	Firmware Firmware
	// MemoryMiB is the VM's memory (256 when 0).
	MemoryMiB int
}

// PowerOn starts a BIOS VM: PowerOnWith(mac, VMOptions{}).
func (l *Lab) PowerOn(mac string) (*VM, error) { return l.PowerOnWith(mac, VMOptions{}) }

// PowerOnWith starts a QEMU VM (TCG) that network-boots through the lab's
// tap with the firmware of opts. The lab watches its console and notes when
// each tick, and each line, appears.
func (l *Lab) PowerOnWith(mac string, opts VMOptions) (*VM, error) {
	if opts.Firmware == "" {
		opts.Firmware = FirmwareBIOS
	}
	if opts.MemoryMiB == 0 {
		opts.MemoryMiB = 256
	}
	tap, err := l.getTap()
	if err != nil {
		return nil, err
	}
	serial := filepath.Join(l.Dir, fmt.Sprintf("serial-%d.txt", time.Now().UnixNano()))
	// -nographic makes SeaBIOS mirror the screen (iPXE's messages) to the
	// serial port, which goes to a file with the disk's own output; OVMF and
	// UEFI iPXE write to it as their console.
	args := []string{"-m", strconv.Itoa(opts.MemoryMiB), "-nographic",
		"-serial", "file:" + serial, "-monitor", "none", "-no-reboot",
		"-netdev", "tap,id=n0,ifname=" + tap + ",script=no,downscript=no"}
	switch opts.Firmware {
	case FirmwareBIOS:
		args = append(args, "-machine", "pc,accel=tcg",
			// e1000 with its iPXE ROM from Debian's ipxe-qemu (virtio's ROM
			// is not offered by SeaBIOS here).
			"-device", "e1000,netdev=n0,mac="+mac,
			"-boot", "n")
	case FirmwareUEFI:
		vars := serial + ".vars.fd"
		if err := copyFile(OVMFVars, vars); err != nil {
			l.putTap(tap)
			return nil, fmt.Errorf("OVMF variable store (Debian package ovmf): %w", err)
		}
		args = append(args, "-machine", "q35,accel=tcg",
			"-drive", "if=pflash,format=raw,unit=0,readonly=on,file="+OVMFCode,
			"-drive", "if=pflash,format=raw,unit=1,file="+vars,
			// No option ROM: OVMF's own virtio-net driver and PXE client
			// boot it. bootindex puts the NIC's boot options first.
			"-device", "virtio-net-pci,netdev=n0,mac="+mac+",romfile=,bootindex=1",
			// Only PXE over IPv4: OVMF's PXEv6 boot option would otherwise
			// follow a failed PXEv4 one and wait for a DHCPv6 server that
			// the boot LAN does not have.
			"-fw_cfg", "name=opt/org.tianocore/IPv6PXESupport,string=no")
	default:
		l.putTap(tap)
		return nil, fmt.Errorf("firmware %q: want %s or %s", opts.Firmware, FirmwareBIOS, FirmwareUEFI)
	}
	cmd := exec.Command("qemu-system-x86_64", args...)
	logf, err := os.Create(serial + ".qemu.log")
	if err != nil {
		l.putTap(tap)
		return nil, err
	}
	defer logf.Close()
	cmd.Stdout, cmd.Stderr = logf, logf
	vm := &VM{MAC: mac, Firmware: opts.Firmware, cmd: cmd, serial: serial, start: time.Now(), stop: make(chan struct{}), exited: make(chan struct{})}
	if err := cmd.Start(); err != nil {
		l.putTap(tap)
		return nil, err
	}
	go func() { _ = cmd.Wait(); l.putTap(tap); close(vm.exited) }()
	go vm.watch()
	l.t.Cleanup(vm.PowerOff)
	return vm, nil
}

func copyFile(from, to string) error {
	b, err := os.ReadFile(from)
	if err != nil {
		return err
	}
	return os.WriteFile(to, b, 0o600)
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

// grownAt is when the console file was first seen at least size long.
type grownAt struct {
	size int
	at   time.Time
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
		raw, _ := os.ReadFile(vm.serial)
		ticks := Ticks(string(bytes.ReplaceAll(raw, []byte("\r"), nil)))
		now := time.Now()
		vm.mu.Lock()
		if n := len(vm.grown); n == 0 || vm.grown[n-1].size < len(raw) {
			vm.grown = append(vm.grown, grownAt{size: len(raw), at: now})
		}
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

// Started is when the VM was powered on.
func (vm *VM) Started() time.Time { return vm.start }

// SeenAt returns when the lab first saw s on the VM's console (within the
// watcher's 100 ms), and false when s is not there (yet).
func (vm *VM) SeenAt(s string) (time.Time, bool) {
	raw, _ := os.ReadFile(vm.serial)
	i := bytes.Index(raw, []byte(s))
	if i < 0 {
		return time.Time{}, false
	}
	end := i + len(s)
	vm.mu.Lock()
	defer vm.mu.Unlock()
	for _, g := range vm.grown {
		if g.size >= end {
			return g.at, true
		}
	}
	// Printed after the watcher's last look.
	return time.Now(), true
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

// WaitBoot waits for the demo disk's marker and returns the boot.
func (vm *VM) WaitBoot(timeout time.Duration) (Boot, error) { return vm.WaitMarker(Marker, timeout) }

// WaitMarker waits for a line with marker followed by the boot counter
// (Marker of the demo disk, OSMarker of the real OS) and returns the boot;
// Elapsed is power-on to when the lab saw the marker. It gives up at once
// when the VM ended or printed one of failOn.
func (vm *VM) WaitMarker(marker string, timeout time.Duration, failOn ...string) (Boot, error) {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		running := vm.Running()
		s := vm.Serial()
		if i := strings.Index(s, marker); i >= 0 {
			rest := s[i+len(marker):]
			if j := strings.IndexByte(rest, '\n'); j >= 0 {
				var n int
				_, _ = fmt.Sscanf(rest[:j], "%d", &n)
				at, _ := vm.SeenAt(marker)
				return Boot{Count: n, Elapsed: at.Sub(vm.start), Serial: s}, nil
			}
		}
		for _, f := range failOn {
			if strings.Contains(s, f) {
				return Boot{Serial: s}, fmt.Errorf("the VM printed %q before %q", f, marker)
			}
		}
		if !running {
			return Boot{Serial: s}, fmt.Errorf("the VM ended without %q", marker)
		}
		time.Sleep(100 * time.Millisecond)
	}
	return Boot{Serial: vm.Serial()}, fmt.Errorf("no %q from the VM after %s", marker, timeout)
}

// Wait waits until the VM's QEMU ended (the OS powered off) and says
// whether it did within timeout.
func (vm *VM) Wait(timeout time.Duration) bool {
	select {
	case <-vm.exited:
		return true
	case <-time.After(timeout):
		return false
	}
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
