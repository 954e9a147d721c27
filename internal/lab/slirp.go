package lab

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/ggnet/ggnet/bootagent/target"
	"github.com/ggnet/ggnet/internal/testbin"
	"github.com/ggnet/ggnet/internal/testfs"
)

// Slirp is the boot benchmark's reference path, with no GGnet in it: QEMU's
// own user-mode network (slirp) answers the VM's DHCP and serves an iPXE
// script over its built-in TFTP; the script sanboots the demo disk from a
// tgtd of its own that listens on loopback only. The VM reaches that tgtd
// through one guestfwd rule (10.0.2.100:3260 in the guest, each connection
// relayed to 127.0.0.1:<port>); slirp runs with restrict=on, so the guest
// reaches nothing else.
//
// slirp answers IPv6 router solicitations (ipv6=on is QEMU's default): iPXE's
// IPv6 autoconfiguration ends at its first router advertisement. IPv6 turns
// that off to show what the wait costs a slirp boot.
type Slirp struct {
	Dir string
	// IPv6 is slirp's ipv6=on|off for the VMs powered on afterwards.
	IPv6 bool
	// Disk is the disk tgtd serves (the demo disk, as the lab's Image).
	Disk string

	t         testfs.T
	tgtPort   int
	iscsiPort int
	relay     string
}

// SlirpTarget is the IQN the slirp path's tgtd serves the disk as.
const SlirpTarget = "iqn.2026-01.io.ggnet.lab:slirp"

// StartSlirp starts the slirp path's tgtd on loopback (ports chosen at
// random; the caller's network namespace, as the lab's) with a demo disk of
// its own, and writes the TFTP directory with the iPXE script.
func StartSlirp(t testfs.T) (*Slirp, error) {
	s := &Slirp{Dir: t.TempDir(), IPv6: true, t: t}
	s.Disk = filepath.Join(s.Dir, "demo.raw")
	if err := WriteDemoDisk(s.Disk, 64<<20); err != nil {
		return nil, err
	}
	if out, err := exec.Command("ip", "link", "set", "lo", "up").CombinedOutput(); err != nil {
		return nil, fmt.Errorf("ip link set lo up: %v %s", err, out)
	}
	var err error
	// tgtd's control "port" names its management socket; the lab's own
	// tgtd takes one of 1000-8999, tgtd accepts up to about 32000.
	s.tgtPort = 9000 + rand.IntN(1000)
	if s.iscsiPort, err = testbin.LocalPort(); err != nil {
		return nil, err
	}
	logf, err := os.Create(filepath.Join(s.Dir, "tgtd-slirp.log"))
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	cmd := exec.Command("tgtd", "-f", "-C", strconv.Itoa(s.tgtPort), "--iscsi", "portal=127.0.0.1:"+strconv.Itoa(s.iscsiPort))
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	d := &target.TGT{ControlPort: s.tgtPort}
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		err := d.Ping(ctx)
		cancel()
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("the slirp path's tgtd does not answer on control port %d: %w", s.tgtPort, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	port := strconv.Itoa(s.tgtPort)
	for _, args := range [][]string{
		{"--op", "new", "--mode", "target", "--tid", "1", "-T", SlirpTarget},
		{"--op", "new", "--mode", "logicalunit", "--tid", "1", "--lun", "1", "-b", s.Disk},
		{"--op", "bind", "--mode", "target", "--tid", "1", "-I", "ALL"},
	} {
		if out, err := exec.Command("tgtadm", append([]string{"-C", port, "--lld", "iscsi"}, args...)...).CombinedOutput(); err != nil {
			return nil, fmt.Errorf("tgtadm %s: %v %s", strings.Join(args, " "), err, out)
		}
	}
	tftp := filepath.Join(s.Dir, "tftp")
	if err := os.MkdirAll(tftp, 0o755); err != nil {
		return nil, err
	}
	// The same sanboot as a GGnet session script, without CHAP.
	script := "#!ipxe\necho slirp: booting the demo disk\nset initiator-iqn iqn.2026-01.io.ggnet.lab:slirp-vm\n" +
		"sanboot iscsi:10.0.2.100::3260:1:" + SlirpTarget + "\n"
	if err := os.WriteFile(filepath.Join(tftp, "boot.ipxe"), []byte(script), 0o644); err != nil {
		return nil, err
	}
	// guestfwd's cmd: runs a program per guest connection with the
	// connection on its stdin and stdout (QEMU splits the command at
	// spaces, no shell): this one relays it to tgtd on loopback.
	s.relay = filepath.Join(s.Dir, "relay.sh")
	relay := "#!/bin/bash\nexec 3<>/dev/tcp/127.0.0.1/$1 || exit 1\ncat <&3 &\ncat >&3\n"
	if err := os.WriteFile(s.relay, []byte(relay), 0o755); err != nil {
		return nil, err
	}
	return s, nil
}

// PowerOn starts a QEMU VM like Lab.PowerOn's (TCG, SeaBIOS, e1000 with
// Debian's iPXE ROM) on the slirp network.
func (s *Slirp) PowerOn(mac string) (*VM, error) {
	serial := filepath.Join(s.Dir, fmt.Sprintf("serial-slirp-%d.txt", time.Now().UnixNano()))
	// ipv4=on explicitly: with ipv6 given alone QEMU leaves IPv4 off.
	ipv6 := "off"
	if s.IPv6 {
		ipv6 = "on"
	}
	netdev := "user,id=n0,restrict=on,ipv4=on,ipv6=" + ipv6 + ",tftp=" + filepath.Join(s.Dir, "tftp") + ",bootfile=boot.ipxe," +
		"guestfwd=tcp:10.0.2.100:3260-cmd:" + s.relay + " " + strconv.Itoa(s.iscsiPort)
	cmd := exec.Command("qemu-system-x86_64", "-machine", "pc,accel=tcg", "-m", "256", "-nographic",
		"-serial", "file:"+serial, "-monitor", "none", "-no-reboot",
		"-netdev", netdev, "-device", "e1000,netdev=n0,mac="+mac, "-boot", "n")
	logf, err := os.Create(serial + ".qemu.log")
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	cmd.Stdout, cmd.Stderr = logf, logf
	vm := &VM{MAC: mac, Firmware: FirmwareBIOS, cmd: cmd, serial: serial, start: time.Now(), stop: make(chan struct{}), exited: make(chan struct{})}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	go func() { _ = cmd.Wait(); close(vm.exited) }()
	go vm.watch()
	s.t.Cleanup(vm.PowerOff)
	return vm, nil
}

// SerialPath is the file the VM's console goes to.
func (vm *VM) SerialPath() string { return vm.serial }
