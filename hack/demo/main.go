// Command demo is `make demo`: inside a network namespace of its own it
// starts the lab (API server, manager, boot agent with both roles, tgtd, an
// XFS reflink data directory), creates a Machine and a BootSession, boots a
// QEMU VM from the network, streams what it prints, shows the session's
// timeline, stops the session and shows the cleanup.
//
// -firmware bios (the default) boots the boot-sector disk (Image "demo")
// through SeaBIOS and the NIC's iPXE ROM. -firmware uefi boots the real OS
// (Image "os", hack/osdisk.sh) through OVMF: the firmware's own PXE client
// gets an address and snponly.efi from the agent's DHCP and TFTP, iPXE gets
// the session's script over HTTP and sanboots the iSCSI disk, and the OS
// logs in to the target again from the iBFT iPXE left, counts its boot on
// the disk's filesystem, ticks, and powers off.
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

	"github.com/go-logr/logr"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	bootv1 "github.com/ggnet/ggnet/api/v1alpha1"
	"github.com/ggnet/ggnet/hack/demo/state"
	"github.com/ggnet/ggnet/internal/lab"
	"github.com/ggnet/ggnet/internal/testbin"
)

const (
	mac = "52:54:00:67:67:01"
	// netns is the demo's network namespace (ip netns).
	netns = "ggnet-demo"
)

func main() {
	keep := flag.Bool("keep", false, "Leave the lab running.")
	bin := flag.String("bin", "bin", "Directory of the manager and bootagent binaries.")
	firmware := flag.String("firmware", "bios", "The VM's firmware: bios (SeaBIOS and the NIC's iPXE ROM) or uefi (OVMF's own PXE and TFTP, then iPXE).")
	image := flag.String("image", "", "The Image to boot: demo (the boot-sector disk; BIOS only) or os (the real OS). Default: demo on BIOS, os on UEFI.")
	flag.Parse()
	var fw lab.Firmware
	switch strings.ToLower(*firmware) {
	case "bios", "":
		fw = lab.FirmwareBIOS
	case "uefi":
		fw = lab.FirmwareUEFI
	default:
		fmt.Fprintf(os.Stderr, "demo: firmware %q: want bios or uefi\n", *firmware)
		os.Exit(2)
	}
	switch {
	case *image == "" && fw == lab.FirmwareUEFI:
		*image = "os"
	case *image == "":
		*image = "demo"
	case *image != "demo" && *image != "os":
		fmt.Fprintf(os.Stderr, "demo: image %q: want demo or os\n", *image)
		os.Exit(2)
	}
	if _, err := os.Lstat(state.Path); err == nil {
		// Starting again would take the kept lab's namespace name and leave
		// its processes running where make demo-down could not tell them.
		fmt.Fprintf(os.Stderr, "demo: a lab kept by an earlier make demo KEEP=1 is recorded in %s: run make demo-down first\n", state.Path)
		os.Exit(1)
	}
	if code, ran := lab.InNetns(netns, *keep); ran {
		os.Exit(code)
	}
	ctrl.SetLogger(logr.Discard())
	tt := &recorder{Program: &testbin.Program{Keep: *keep}, netns: netns}
	defer tt.Done()
	if *keep {
		// Interrupted, a kept demo records what it has started so far.
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
		go func() {
			<-sig
			tt.save()
			os.Exit(130)
		}()
	}
	err := run(tt, *bin, *keep, fw, *image)
	// A kept lab, whole or not, is recorded for make demo-down.
	tt.save()
	if err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		tt.Done()
		os.Exit(1)
	}
}

func step(format string, a ...any) { fmt.Printf("\n==> "+format+"\n", a...) }

// stepLine is a console line that marks a step of a boot.
type stepLine struct{ line, what string }

// firmwareSteps are the steps of each firmware, in order, up to sanboot;
// imageSteps those of each Image's disk after it.
var (
	firmwareSteps = map[lab.Firmware][]stepLine{
		lab.FirmwareBIOS: {
			{"iPXE initialising devices", "iPXE (the NIC's option ROM) starts"},
			{"GGnet: booting", "iPXE runs the session's script (DHCP, then HTTP)"},
			{"Booting from SAN device", "sanboot: iPXE logged in to the iSCSI target and boots the disk's boot sector (INT 13h)"},
		},
		lab.FirmwareUEFI: {
			{">>Start PXE over IPv4", "OVMF's PXE client starts (DHCP, client architecture 7)"},
			{"NBP filename is", "the agent's DHCP named the boot file"},
			{"NBP file downloaded successfully", "OVMF fetched it over the agent's TFTP"},
			{"iPXE initialising devices", "iPXE (" + lab.UEFIBootFile + ") starts"},
			{"GGnet: booting", "iPXE runs the session's script (DHCP, then HTTP)"},
			{"Booting from SAN device", "sanboot: iPXE logged in to the iSCSI target and starts the disk's EFI boot loader"},
		},
	}
	imageSteps = map[string][]stepLine{
		"demo": {{lab.Marker, "the boot sector counted its boot on the iSCSI disk"}},
		"os": {
			{"GGNET-OS-START", "the OS's kernel runs its initramfs"},
			{lab.OSMarker, "the OS logged in from the iBFT, mounted the disk and counted its boot"},
			{lab.OSDoneMarker, "the OS synced its last tick and powers off"},
		},
	}
)

func run(tt *recorder, bin string, keep bool, fw lab.Firmware, image string) error {
	ctx := context.Background()
	abs, _ := filepath.Abs(bin)
	step("Starting the lab: etcd, kube-apiserver, manager, boot agent (boot and storage roles), tgtd, XFS on a loop device")
	l, err := lab.Start(ctx, tt, abs)
	if err != nil {
		return err
	}
	tt.lab = l
	// Recorded now as well as at the end: a kept demo stopped half-way
	// (Ctrl-C while the VM boots) leaves the lab's processes, mount and
	// namespace, and make demo-down must know them.
	tt.save()
	fmt.Printf("    lab directory %s, network %s/24 on bridge %s, VM tap %s\n", l.Dir, lab.ServerIP, lab.Bridge, lab.Tap)
	kubectl := func(args ...string) {
		cmd := exec.Command(filepath.Join(l.Env.BinaryAssetsDirectory, "kubectl"), append([]string{"--kubeconfig", l.Kubeconfig}, args...)...)
		out, _ := cmd.CombinedOutput()
		fmt.Print(indent(string(out)))
	}
	kubectl("get", "images", "-n", lab.Namespace, "-o", "wide")

	marker, machineFW := lab.Marker, bootv1.FirmwareBIOS
	if image == "os" {
		marker = lab.OSMarker
	}
	if fw == lab.FirmwareUEFI {
		machineFW = bootv1.FirmwareUEFI
	}
	step("Creating Machine seat-1 (MAC %s, firmware %s) and BootSession seat-1-%s (Image %s)", mac, machineFW, image, image)
	m := &bootv1.Machine{ObjectMeta: metav1.ObjectMeta{Namespace: lab.Namespace, Name: "seat-1"}, Spec: bootv1.MachineSpec{
		MAC: mac, Hostname: "seat-1", Firmware: machineFW, IPv4: &bootv1.IPv4Reservation{Address: "10.99.0.101", PrefixLength: 24},
		ImageRef: &bootv1.LocalObjectReference{Name: image}, BootPolicy: bootv1.BootPolicyManual, Writeback: bootv1.WritebackDiscard,
	}}
	if err := l.Client.Create(ctx, m); err != nil {
		return err
	}
	s := &bootv1.BootSession{ObjectMeta: metav1.ObjectMeta{Namespace: lab.Namespace, Name: "seat-1-" + image}, Spec: bootv1.BootSessionSpec{
		MachineRef: bootv1.LocalObjectReference{Name: "seat-1"}, ImageRef: bootv1.LocalObjectReference{Name: image}, Writeback: bootv1.WritebackDiscard}}
	if err := l.Client.Create(ctx, s); err != nil {
		return err
	}
	if err := l.WaitPhase(ctx, s, bootv1.SessionReady, time.Minute); err != nil {
		return err
	}
	kubectl("get", "ggnet", "-n", lab.Namespace)

	if fw == lab.FirmwareUEFI {
		step("Powering on a QEMU VM (TCG) with UEFI firmware (OVMF, virtio-net without option ROM) that boots from the network")
	} else {
		step("Powering on a QEMU VM (TCG) with SeaBIOS and the e1000's iPXE ROM that boots from the network")
	}
	vm, err := l.PowerOnWith(mac, lab.VMOptions{Firmware: fw})
	if err != nil {
		return err
	}
	// Stream what the VM prints (SeaBIOS, iPXE, then the demo disk) until
	// the disk's marker and its third tick.
	done := make(chan struct{})
	go func() {
		printed := 0
		for {
			out := vm.Serial()
			if i := strings.LastIndexByte(out, '\n'); i+1 > printed {
				fmt.Print(indent(cleanConsole(out[printed : i+1])))
				printed = i + 1
			}
			select {
			case <-done:
				if out := vm.Serial(); len(out) > printed {
					fmt.Print(indent(cleanConsole(out[printed:])))
				}
				return
			case <-time.After(200 * time.Millisecond):
			}
		}
	}()
	boot, err := vm.WaitMarker(marker, 4*time.Minute, lab.OSFailMarker)
	if err == nil {
		if image == "os" {
			// The OS ticks ten times (each a write and a sync on its
			// filesystem), then powers off.
			if !vm.Wait(2 * time.Minute) {
				err = fmt.Errorf("the OS did not power off")
			} else if out := vm.Serial(); !strings.Contains(out, lab.OSDoneMarker) || strings.Contains(out, lab.OSFailMarker) {
				err = fmt.Errorf("the OS did not finish its writes")
			}
		} else {
			// The disk goes on writing and reading back its tick counter.
			_, err = vm.WaitTick(3, time.Minute)
		}
	}
	close(done)
	time.Sleep(300 * time.Millisecond)
	if err != nil {
		return err
	}
	if image == "os" {
		fmt.Printf("    the OS booted from iSCSI in %s (power-on to marker); boot counter %d; it wrote ten ticks and powered off\n",
			boot.Elapsed.Round(100*time.Millisecond), boot.Count)
	} else {
		fmt.Printf("    booted from iSCSI in %s (power-on to marker); boot counter %d; the disk ticks on (each tick a write read back through iSCSI)\n",
			boot.Elapsed.Round(100*time.Millisecond), boot.Count)
	}

	step("The boot, step by step (when the lab saw each on the console, from power-on)")
	for _, st := range append(firmwareSteps[fw], imageSteps[image]...) {
		if at, ok := vm.SeenAt(st.line); ok {
			fmt.Printf("    %7s  %s\n", "+"+at.Sub(vm.Started()).Round(100*time.Millisecond).String(), st.what)
		} else {
			fmt.Printf("    %7s  %s\n", "-", st.what)
		}
	}

	step("The session's timeline")
	_ = l.WaitPhase(ctx, s, bootv1.SessionActive, 30*time.Second)
	printTimeline(s, boot)

	step("Stopping the session: the target and the overlay go")
	vm.PowerOff()
	_ = l.Client.Get(ctx, client.ObjectKeyFromObject(s), s)
	overlay := s.Status.OverlayPath
	s.Spec.Stopped = true
	if err := l.Client.Update(ctx, s); err != nil {
		return err
	}
	if err := l.WaitPhase(ctx, s, bootv1.SessionStopped, time.Minute); err != nil {
		return err
	}
	_, statErr := os.Stat(overlay)
	fmt.Printf("    phase %s; overlay %s removed: %v\n", s.Status.Phase, overlay, os.IsNotExist(statErr))
	kubectl("get", "machines", "-n", lab.Namespace)

	if keep {
		step("The lab keeps running")
		fmt.Printf("    kubectl:   ip netns exec %s %s/kubectl --kubeconfig %s get ggnet -A\n", netns, l.Env.BinaryAssetsDirectory, l.Kubeconfig)
		fmt.Printf("    tear down: make demo-down\n")
		return nil
	}
	step("Tearing the lab down")
	return nil
}

func printTimeline(s *bootv1.BootSession, boot lab.Boot) {
	tl := s.Status.Timeline
	created := s.CreationTimestamp
	for _, e := range []struct {
		name string
		t    *metav1.Time
	}{{"created", &created}, {"scheduled", tl.Scheduled}, {"storage ready", tl.StorageReady}, {"Ready", tl.Ready},
		{"DHCP", tl.DHCP}, {"script served", tl.ScriptServed}, {"iSCSI login", tl.ISCSILogin}} {
		if e.t == nil {
			fmt.Printf("    %-14s -\n", e.name)
			continue
		}
		fmt.Printf("    %-14s %s (+%s)\n", e.name, e.t.Format(time.TimeOnly), e.t.Sub(created.Time).Round(time.Second))
	}
	for i, in := range tl.Logins {
		who := "the firmware's (iPXE's sanboot)"
		if i > 0 {
			who = "the OS's (iscsistart, from the iBFT)"
		}
		fmt.Printf("    %-14s %s (+%s) %s, initiator %s from %s\n", fmt.Sprintf("login %d", i+1), in.At.Format(time.TimeOnly),
			in.At.Sub(created.Time).Round(time.Second), who, in.Initiator, in.Address)
	}
	fmt.Printf("    %-14s %s after power-on (the disk printed its marker)\n", "booted", boot.Elapsed.Round(100*time.Millisecond))
	fmt.Printf("    phase %s on %s, target %s\n", s.Status.Phase, s.Status.StorageNode, s.Status.Target.IQN)
}

func indent(s string) string {
	var b strings.Builder
	for _, l := range strings.Split(strings.TrimRight(s, "\n"), "\n") {
		b.WriteString("    " + l + "\n")
	}
	return b.String()
}

// cleanConsole drops the terminal escapes SeaBIOS and iPXE send.
func cleanConsole(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == 0x1b:
			for i++; i < len(s) && !(s[i] >= 'A' && s[i] <= 'Z' || s[i] >= 'a' && s[i] <= 'z'); i++ {
			}
		case c == '\n' || c >= 0x20 && c < 0x7f:
			b.WriteByte(c)
		}
	}
	return b.String()
}
