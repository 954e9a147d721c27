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
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	bootv1 "github.com/ggnet/ggnet/api/v1alpha1"
	"github.com/ggnet/ggnet/internal/testbin"
	"github.com/ggnet/ggnet/test/e2e/lab"
)

const mac = "52:54:00:67:6b:01"

func main() {
	n := flag.Int("n", 5, "Boots per path.")
	bin := flag.String("bin", "bin", "Directory of the manager and bootagent binaries.")
	paths := flag.String("paths", "ggnet,slirp", "Paths to boot, comma-separated: ggnet, slirp, slirp-noipv6 (slirp with ipv6=off: iPXE waits for a router as on a LAN without one).")
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
	boots   []boot
}

type boot struct {
	elapsed time.Duration
	stages  []stageAt
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
	var ps []*path
	for _, name := range names {
		switch name {
		case "ggnet":
			if l == nil {
				fmt.Println("starting the lab (API server, manager, boot agent, tgtd)")
				var err error
				if l, err = lab.Start(ctx, tt, abs); err != nil {
					return err
				}
				if _, err := l.Machine(ctx, "bench", mac, "10.99.0.150", bootv1.BootPolicyManual, bootv1.WritebackDiscard); err != nil {
					return err
				}
			}
			ps = append(ps, &path{name: "GGnet", powerOn: func(i int) (*lab.VM, func() error, error) { return ggnetBoot(ctx, l, i) }})
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
			ps = append(ps, &path{name: label, powerOn: func(int) (*lab.VM, func() error, error) {
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
			b, err := vm.WaitBoot(3 * time.Minute)
			w.stop()
			vm.PowerOff()
			if err != nil {
				return fmt.Errorf("%s boot %d did not reach the marker (the path did not answer?): %w\nconsole:\n%s", p.name, i+1, err, tail(b.Serial, 3000))
			}
			st := w.stages(b.Elapsed)
			p.boots = append(p.boots, boot{elapsed: b.Elapsed, stages: st})
			fmt.Printf("%-15s boot %d: %5.1f s  %s\n", p.name, i+1, b.Elapsed.Seconds(), formatStages(st))
			if err := done(); err != nil {
				return err
			}
		}
	}
	report(ps)
	return nil
}

// ggnetBoot makes a session for the Machine, waits until it is Ready and
// powers the VM on; done stops the session.
func ggnetBoot(ctx context.Context, l *lab.Lab, i int) (*lab.VM, func() error, error) {
	s := &bootv1.BootSession{ObjectMeta: metav1.ObjectMeta{Namespace: lab.Namespace, Name: fmt.Sprintf("bench-%d-%d", time.Now().Unix(), i)},
		Spec: bootv1.BootSessionSpec{MachineRef: bootv1.LocalObjectReference{Name: "bench"}, ImageRef: bootv1.LocalObjectReference{Name: "demo"},
			Writeback: bootv1.WritebackDiscard}}
	if err := l.Client.Create(ctx, s); err != nil {
		return nil, nil, err
	}
	if err := waitPhase(ctx, l, s, bootv1.SessionReady, time.Minute); err != nil {
		return nil, nil, err
	}
	vm, err := l.PowerOn(mac)
	done := func() error {
		if err := l.Client.Get(ctx, client.ObjectKeyFromObject(s), s); err != nil {
			return err
		}
		s.Spec.Stopped = true
		if err := l.Client.Update(ctx, s); err != nil {
			return err
		}
		return waitPhase(ctx, l, s, bootv1.SessionStopped, time.Minute)
	}
	return vm, done, err
}

func waitPhase(ctx context.Context, l *lab.Lab, s *bootv1.BootSession, phase bootv1.BootSessionPhase, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if err := l.Client.Get(ctx, client.ObjectKeyFromObject(s), s); err == nil && s.Status.Phase == phase {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("session %s is %s, not %s, after %s (conditions %+v)", s.Name, s.Status.Phase, phase, timeout, s.Status.Conditions)
}

// stages are what the console shows on the way, in order: SeaBIOS hands
// over to the NIC's iPXE ROM, iPXE starts configuring the NIC (DHCPv4 and
// IPv6 autoconfiguration at once), finishes it ("ok" ends the line), has
// its script, registers the SAN disk, and the disk prints its marker.
var stages = []struct {
	name string
	find func(s string) int // end offset in the console, -1 when not there
}{
	{"rom", after("iPXE initialising devices")},
	{"conf", after("Configuring (")},
	{"conf-ok", lineEnd("Configuring (")},
	{"script", after("[script]")},
	{"san", after("Registered SAN device")},
	{"marker", after(lab.Marker)},
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
			fmt.Fprintf(tw, "\t%.1f", median(p.boots, func(b boot) time.Duration { return b.stages[k].at }).Seconds())
		}
		ratio := "-"
		if ref > 0 {
			ratio = fmt.Sprintf("%.2fx", float64(med)/float64(ref))
		}
		fmt.Fprintf(tw, "\t%s\n", ratio)
	}
	tw.Flush()
	fmt.Println("(stage columns: median seconds after power-on at which the console showed: rom = iPXE initialising devices, conf = Configuring (DHCPv4 + IPv6 autoconfiguration start), conf-ok = its end, script = an iPXE script loaded, san = SAN device registered, marker = the disk's marker)")
}

func median(bs []boot, f func(boot) time.Duration) time.Duration {
	v := make([]time.Duration, 0, len(bs))
	for _, b := range bs {
		v = append(v, f(b))
	}
	slices.Sort(v)
	if len(v) == 0 {
		return 0
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
