// Command boot is the boot benchmark (root): power-on to the demo disk's
// marker for a QEMU VM that netboots through GGnet (the lab: the boot
// agent's DHCP and HTTP script, its storage agent's iSCSI overlay on tgtd)
// against the same VM booting the same disk through QEMU's own slirp
// network (its DHCP and TFTP, an iPXE script, tgtd on loopback), in the
// same run on the same machine, N boots each, interleaved. It prints each
// boot with the time of each stage seen on the VM's console, then median,
// min and max per path and the ratio GGnet/slirp. It exits non-zero if any
// boot does not reach its marker.
//
//	sudo go run ./test/benchmark/boot -n 5
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/go-logr/logr"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/retry"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	bootv1 "github.com/ggnet/ggnet/api/v1alpha1"
	"github.com/ggnet/ggnet/internal/lab"
	"github.com/ggnet/ggnet/internal/testbin"
)

// The benchmark's Machines: a BIOS one (also the slirp VMs' MAC) and a UEFI
// one.
const (
	mac     = "52:54:00:67:6b:01"
	macUEFI = "52:54:00:67:6b:02"
	// osMarker is the real OS's first line on the serial port once it
	// took its disk over (lab.OSMarker, internal/lab/osdisk.go).
	osMarker = "GGNET-OS-BOOT count="
)

func main() {
	n := flag.Int("n", 5, "Boots per path.")
	bin := flag.String("bin", "bin", "Directory of the manager and bootagent binaries.")
	paths := flag.String("paths", "ggnet,slirp", "Paths to boot, comma-separated: ggnet, ggnet-uefi (OVMF's own PXE client, TFTP, then iPXE; up to its sanboot, as a boot sector does not boot on UEFI), ggnet-os and ggnet-uefi-os (the real OS, the lab's Image \"os\"), slirp, slirp-noipv6 (slirp with ipv6=off: iPXE waits for a router as on a LAN without one).")
	agentArgs := flag.String("agent-args", "", "Extra boot agent flags, space-separated (e.g. --ipv6-ra=off to measure the stall).")
	keep := flag.Bool("keep", false, "Leave the lab and its files (serial consoles, logs).")
	flag.Parse()
	if code, ran := lab.InNetns("ggnet-bench-boot", false); ran {
		os.Exit(code)
	}
	ctrl.SetLogger(logr.Discard())
	tt := &testbin.Program{Keep: *keep}
	abs, _ := filepath.Abs(*bin)
	if *agentArgs != "" {
		var err error
		if abs, err = wrapAgent(tt, abs, *agentArgs); err != nil {
			fmt.Fprintln(os.Stderr, "boot benchmark:", err)
			os.Exit(1)
		}
	}
	err := run(tt, abs, *n, strings.Split(*paths, ","))
	tt.Done()
	if err != nil {
		fmt.Fprintln(os.Stderr, "boot benchmark:", err)
		os.Exit(1)
	}
}

// A path boots a VM one way.
type path struct {
	name    string
	powerOn func(i int) (*lab.VM, func() error, error)
	// mac is the VM's; sniff, when not nil, sees its packets on the
	// lab's bridge (GGnet paths only: slirp's network is inside QEMU).
	mac   string
	sniff *sniffer
	// marker ends a boot (default lab.Marker, the demo disk's).
	marker string
	boots  []boot
}

type boot struct {
	elapsed time.Duration
	stages  []stageAt
	net     []stageAt // packets seen on the bridge, since power-on
}

type stageAt struct {
	name string
	at   time.Duration // since power-on; <0 when not seen
}

// wrapAgent returns a directory with the manager of bin and a bootagent
// that runs bin's with extra flags (the lab starts <dir>/bootagent with its
// own flags; exec keeps the agent the init of its PID namespace).
func wrapAgent(tt *testbin.Program, bin, extra string) (string, error) {
	dir := tt.TempDir()
	if err := os.Symlink(filepath.Join(bin, "manager"), filepath.Join(dir, "manager")); err != nil {
		return "", err
	}
	script := fmt.Sprintf("#!/bin/sh\nexec %q \"$@\" %s\n", filepath.Join(bin, "bootagent"), extra)
	return dir, os.WriteFile(filepath.Join(dir, "bootagent"), []byte(script), 0o755)
}

func run(tt *testbin.Program, abs string, n int, names []string) error {
	ctx := context.Background()
	var l *lab.Lab
	var sl *lab.Slirp
	var sn *sniffer
	var ps []*path
	created := map[string]bool{}
	for _, name := range names {
		switch name {
		case "ggnet", "ggnet-uefi", "ggnet-os", "ggnet-uefi-os":
			if l == nil {
				fmt.Println("starting the lab (API server, manager, boot agent, tgtd)")
				var err error
				if l, err = lab.Start(ctx, tt, abs); err != nil {
					return err
				}
				if sn, err = sniff(lab.Bridge); err != nil {
					return err
				}
				defer sn.close()
			}
			p := &path{name: "GGnet", mac: mac, sniff: sn, marker: lab.Marker}
			m, ip, fw, image := "bench", "10.99.0.150", lab.FirmwareBIOS, "demo"
			if strings.HasPrefix(name, "ggnet-uefi") {
				// A boot sector does not boot on UEFI: with the demo
				// disk the UEFI boot is timed up to iPXE's sanboot.
				p.name, p.mac, m, ip, fw, p.marker = "GGnet UEFI", macUEFI, "bench-uefi", "10.99.0.151", lab.FirmwareUEFI, "Registered SAN device"
			}
			if strings.HasSuffix(name, "-os") {
				// The real OS (the lab's Image "os"): power-on to its
				// first marker on the serial port.
				p.name, image, p.marker = p.name+" OS", "os", osMarker
			}
			if !created[m] {
				machine := &bootv1.Machine{ObjectMeta: metav1.ObjectMeta{Namespace: lab.Namespace, Name: m}, Spec: bootv1.MachineSpec{
					MAC: p.mac, Hostname: m, IPv4: &bootv1.IPv4Reservation{Address: ip, PrefixLength: 24},
					ImageRef: &bootv1.LocalObjectReference{Name: "demo"}, BootPolicy: bootv1.BootPolicyManual,
					Writeback: bootv1.WritebackDiscard, Firmware: bootv1.Firmware(fw)}}
				if err := l.Client.Create(ctx, machine); err != nil {
					return err
				}
				created[m] = true
			}
			p.powerOn = func(i int) (*lab.VM, func() error, error) { return ggnetBoot(ctx, l, m, image, p.mac, fw, i) }
			ps = append(ps, p)
		case "slirp", "slirp-noipv6":
			if sl == nil {
				var err error
				if sl, err = lab.StartSlirp(tt); err != nil {
					return err
				}
			}
			ipv6 := name == "slirp"
			label := "slirp"
			if !ipv6 {
				label = "slirp ipv6=off"
			}
			ps = append(ps, &path{name: label, marker: lab.Marker, powerOn: func(int) (*lab.VM, func() error, error) {
				sl.IPv6 = ipv6
				vm, err := sl.PowerOn(mac)
				return vm, func() error { return nil }, err
			}})
		default:
			return fmt.Errorf("unknown path %q", name)
		}
	}
	for i := range n {
		for _, p := range ps {
			vm, done, err := p.powerOn(i)
			if err != nil {
				return fmt.Errorf("%s boot %d: %w", p.name, i+1, err)
			}
			w := watch(vm)
			if p.sniff != nil {
				p.sniff.start(p.mac, w.start)
			}
			b, err := vm.WaitMarker(p.marker, 3*time.Minute)
			w.stop()
			var pkts []stageAt
			if p.sniff != nil {
				pkts = p.sniff.stop()
			}
			vm.PowerOff()
			if err != nil {
				return fmt.Errorf("%s boot %d did not reach the marker (the path did not answer?): %w\nconsole:\n%s", p.name, i+1, err, tail(b.Serial, 3000))
			}
			st := w.stages(b.Elapsed)
			p.boots = append(p.boots, boot{elapsed: b.Elapsed, stages: st, net: pkts})
			fmt.Printf("%-15s boot %d: %5.1f s  %s\n", p.name, i+1, b.Elapsed.Seconds(), formatStages(st))
			if pkts != nil {
				fmt.Printf("%-15s   on the wire: %s\n", "", formatStages(pkts))
			}
			if err := done(); err != nil {
				return err
			}
		}
	}
	report(ps)
	fmt.Println()
	reportWire(ps)
	return nil
}

// ggnetBoot makes a session for the Machine, waits until it is Ready and
// powers the VM on; done stops the session.
func ggnetBoot(ctx context.Context, l *lab.Lab, machine, image, mac string, fw lab.Firmware, i int) (*lab.VM, func() error, error) {
	s := &bootv1.BootSession{ObjectMeta: metav1.ObjectMeta{Namespace: lab.Namespace, Name: fmt.Sprintf("%s-%s-%d-%d", machine, image, time.Now().Unix(), i)},
		Spec: bootv1.BootSessionSpec{MachineRef: bootv1.LocalObjectReference{Name: machine}, ImageRef: bootv1.LocalObjectReference{Name: image},
			Writeback: bootv1.WritebackDiscard}}
	if err := l.Client.Create(ctx, s); err != nil {
		return nil, nil, err
	}
	if err := l.WaitPhase(ctx, s, bootv1.SessionReady, time.Minute); err != nil {
		return nil, nil, err
	}
	vm, err := l.PowerOnWith(mac, lab.VMOptions{Firmware: fw})
	done := func() error {
		// The manager writes the session too: retry on a conflict.
		err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
			if err := l.Client.Get(ctx, client.ObjectKeyFromObject(s), s); err != nil {
				return err
			}
			s.Spec.Stopped = true
			return l.Client.Update(ctx, s)
		})
		if err != nil {
			return err
		}
		return l.WaitPhase(ctx, s, bootv1.SessionStopped, time.Minute)
	}
	return vm, done, err
}

// stages are what the console shows on the way, in order: OVMF starts its
// own PXE client (UEFI only), SeaBIOS hands over to the NIC's iPXE ROM or
// OVMF to the snponly.efi it fetched over TFTP, iPXE starts configuring the NIC (DHCPv4 and
// IPv6 autoconfiguration at once), finishes it ("ok" ends the line), has
// its script, registers the SAN disk, and the disk prints its marker.
var stages = []struct {
	name string
	find func(s string) int // end offset in the console, -1 when not there
}{
	{"pxe", after("Start PXE over IPv4")},
	{"rom", after("iPXE initialising devices")},
	{"conf", after("Configuring (")},
	{"conf-ok", lineEnd("Configuring (")},
	{"script", after("[script]")},
	{"san", after("Registered SAN device")},
	{"marker", func(s string) int { return -1 }}, // the path's marker: the lab's time
}

func after(sub string) func(string) int {
	return func(s string) int {
		if i := strings.Index(s, sub); i >= 0 {
			return i + len(sub)
		}
		return -1
	}
}

func lineEnd(sub string) func(string) int {
	return func(s string) int {
		i := strings.Index(s, sub)
		if i < 0 {
			return -1
		}
		j := strings.IndexByte(s[i:], '\n')
		if j < 0 {
			return -1
		}
		return i + j
	}
}

// watcher notes when the VM's console grew to each length (every 20 ms).
type watcher struct {
	vm    *lab.VM
	start time.Time
	mu    sync.Mutex
	grown []grown
	quit  chan struct{}
	ended chan struct{}
}

type grown struct {
	size int
	at   time.Duration
}

func watch(vm *lab.VM) *watcher {
	w := &watcher{vm: vm, start: time.Now(), quit: make(chan struct{}), ended: make(chan struct{})}
	go func() {
		defer close(w.ended)
		t := time.NewTicker(20 * time.Millisecond)
		defer t.Stop()
		for {
			s := vm.Serial()
			w.mu.Lock()
			if k := len(w.grown); k == 0 || w.grown[k-1].size < len(s) {
				w.grown = append(w.grown, grown{len(s), time.Since(w.start)})
			}
			w.mu.Unlock()
			select {
			case <-w.quit:
				return
			case <-t.C:
			}
		}
	}()
	return w
}

func (w *watcher) stop() { close(w.quit); <-w.ended }

// stages returns when each stage was seen; the marker's is elapsed (the
// lab's own power-on to marker).
func (w *watcher) stages(elapsed time.Duration) []stageAt {
	s := w.vm.Serial()
	var out []stageAt
	for _, st := range stages {
		at := time.Duration(-1)
		if end := st.find(s); end >= 0 {
			for _, g := range w.grown {
				if g.size >= end {
					at = g.at
					break
				}
			}
		}
		if st.name == "marker" {
			at = elapsed
		}
		out = append(out, stageAt{st.name, at})
	}
	return out
}

func formatStages(st []stageAt) string {
	var b strings.Builder
	for _, s := range st {
		if s.at < 0 {
			fmt.Fprintf(&b, " %s -", s.name)
			continue
		}
		if s.name == "rs-sent" {
			fmt.Fprintf(&b, " %s %d", s.name, int(s.at/time.Second))
			continue
		}
		fmt.Fprintf(&b, " %s %.1f", s.name, s.at.Seconds())
	}
	return strings.TrimSpace(b.String())
}

func report(ps []*path) {
	fmt.Println()
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprint(tw, "path\tboots\tmedian s\tmin s\tmax s")
	for _, st := range stages {
		fmt.Fprintf(tw, "\t%s", st.name)
	}
	fmt.Fprintln(tw, "\tratio to slirp (median)")
	var ref time.Duration
	for _, p := range ps {
		if p.name == "slirp" {
			ref = median(p.boots, func(b boot) time.Duration { return b.elapsed })
		}
	}
	for _, p := range ps {
		med := median(p.boots, func(b boot) time.Duration { return b.elapsed })
		lo, hi := p.boots[0].elapsed, p.boots[0].elapsed
		for _, b := range p.boots {
			lo, hi = min(lo, b.elapsed), max(hi, b.elapsed)
		}
		fmt.Fprintf(tw, "%s\t%d\t%.1f\t%.1f\t%.1f", p.name, len(p.boots), med.Seconds(), lo.Seconds(), hi.Seconds())
		for k := range stages {
			fmt.Fprintf(tw, "\t%s", seconds(median(p.boots, func(b boot) time.Duration { return b.stages[k].at })))
		}
		ratio := "-"
		if ref > 0 {
			ratio = fmt.Sprintf("%.2fx", float64(med)/float64(ref))
		}
		fmt.Fprintf(tw, "\t%s\n", ratio)
	}
	tw.Flush()
	fmt.Println("(stage columns: median seconds after power-on at which the console showed: pxe = OVMF's PXE client starts (UEFI), rom = iPXE initialising devices, conf = Configuring (DHCPv4 + IPv6 autoconfiguration start), conf-ok = its end, script = an iPXE script loaded, san = SAN device registered, marker = the disk's marker)")
}

// reportWire prints the medians of the packets' times for the paths whose
// packets the bridge sees.
func reportWire(ps []*path) {
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprint(tw, "on the wire\tboots")
	for _, n := range netStageNames {
		fmt.Fprintf(tw, "\t%s", n)
	}
	fmt.Fprintln(tw)
	for _, p := range ps {
		if p.sniff == nil {
			continue
		}
		fmt.Fprintf(tw, "%s\t%d", p.name, len(p.boots))
		for k, n := range netStageNames {
			m := median(p.boots, func(b boot) time.Duration { return b.net[k].at })
			if n == "rs-sent" && m >= 0 {
				fmt.Fprintf(tw, "\t%.1f", m.Seconds())
				continue
			}
			fmt.Fprintf(tw, "\t%s", seconds(m))
		}
		fmt.Fprintln(tw)
	}
	tw.Flush()
	fmt.Println("(median seconds after power-on at which the lab's bridge carried: fw-ack = the firmware's DHCP ACK (UEFI), rrq/tftp-end = its TFTP read request and the agent's last TFTP packet, discover/ack = iPXE's DHCP, rs = iPXE's first router solicitation, ns/na = the agent's neighbour solicitation for the VM's link-local and its answer, ra = the first router advertisement to the VM; rs-sent = solicitations iPXE sent up to it)")
}

func seconds(d time.Duration) string {
	if d < 0 {
		return "-"
	}
	return fmt.Sprintf("%.2f", d.Seconds())
}

// median of the values f gives that are known (>= 0); -1 when none is.
func median(bs []boot, f func(boot) time.Duration) time.Duration {
	v := make([]time.Duration, 0, len(bs))
	for _, b := range bs {
		if d := f(b); d >= 0 {
			v = append(v, d)
		}
	}
	slices.Sort(v)
	if len(v) == 0 {
		return -1
	}
	if len(v)%2 == 1 {
		return v[len(v)/2]
	}
	return (v[len(v)/2-1] + v[len(v)/2]) / 2
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}
