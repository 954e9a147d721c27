// Command storm is the boot storm benchmark (root): N simulated PCs power on
// at once and boot through the real chain — the boot agents' DHCP (each PC
// its own MAC, broadcast, as iPXE), the HTTP script fetched from the leased
// address (the script token and the address binding hold), an iSCSI login
// with the script's CHAP credentials (mutual CHAP) by an in-process
// initiator (internal/iscsi), the first 64 MiB of the disk read, logout —
// against the lab's API server, manager, boot and storage agents and tgtd
// (internal/lab). It prints p50/p99/max per stage and the time until every
// PC booted, the sessions' spread over the storage nodes, and the CPU each
// lab process used.
//
// With -boot-agents 2 and -storage-nodes 3 the lab has more agents on one
// segment; -kill-boot-agent-at and -kill-storage-node-at kill one when that
// share of the PCs has booted (a storage node's agent and tgtd; with
// -lost-node=delete its Node object too, as when a node leaves the
// cluster; with -lost-node=kill the Node stays and only the node's Lease
// expires, after 40 s): the storm reports the PCs that failed, what the lost node's
// sessions said, and where their replacements went.
//
//	sudo go run ./test/benchmark/storm -n 200
//	sudo go run ./test/benchmark/storm -n 200 -boot-agents 2 -storage-nodes 3 -kill-boot-agent-at 50% -kill-storage-node-at 50%
package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime/pprof"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/go-logr/logr"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	bootv1 "github.com/ggnet/ggnet/api/v1alpha1"
	"github.com/ggnet/ggnet/internal/lab"
	"github.com/ggnet/ggnet/internal/testbin"
)

type config struct {
	n             int
	bin           string
	bootAgents    int
	storageNodes  int
	killBootAt    float64 // share of PCs booted; <0: never
	killStorageAt float64
	lostNode      string
	auto          bool
	prepared      bool
	readBytes     int64
	chunk         int
	grace         time.Duration
	pcTimeout     time.Duration
	ramp          time.Duration
	cpuProfile    string
	keep          bool
	floor         bool
	tgtdIOThreads int
}

func main() {
	var c config
	var killBoot, killStorage string
	var readMiB, chunkKiB int
	flag.IntVar(&c.n, "n", 200, "Simulated PCs, all powered on at once.")
	flag.StringVar(&c.bin, "bin", "bin", "Directory of the manager and bootagent binaries.")
	flag.IntVar(&c.bootAgents, "boot-agents", 1, "Boot agents on the segment (the lab's own, with the storage role, and boot-only ones).")
	flag.IntVar(&c.storageNodes, "storage-nodes", 1, "Storage nodes, each its agent, data directory and tgtd.")
	flag.StringVar(&killBoot, "kill-boot-agent-at", "", "Kill the last boot agent (not the lab's own) once this share of the PCs has booted, e.g. 50% (use -ramp so that others are still on their way).")
	flag.StringVar(&killStorage, "kill-storage-node-at", "", "Lose the last storage node once this share of the PCs has booted, e.g. 50% (use -ramp).")
	flag.StringVar(&c.lostNode, "lost-node", "delete", "How a storage node is lost: kill (its agent and tgtd die, the Node object stays) or delete (its Node object is deleted too).")
	flag.BoolVar(&c.auto, "auto", false, "AutoSession Machines: the manager prepares each one's session (none is made by the storm).")
	flag.BoolVar(&c.prepared, "prepared", true, "With -auto: power on once every Machine's prepared session is Ready; false: at once, while the manager prepares them (cold).")
	flag.IntVar(&readMiB, "read-mib", 64, "MiB each PC reads from its disk.")
	flag.IntVar(&chunkKiB, "chunk-kib", 1024, "KiB per READ command.")
	flag.DurationVar(&c.grace, "storage-node-grace", 20*time.Second, "The manager's --storage-node-grace.")
	flag.DurationVar(&c.pcTimeout, "pc-timeout", 5*time.Minute, "How long a PC keeps trying to boot.")
	flag.DurationVar(&c.ramp, "ramp", 0, "Spread the PCs' power-on evenly over this long (0: all at once); with a kill, PCs then are at every stage when it happens.")
	flag.StringVar(&c.cpuProfile, "cpuprofile", "", "Write the simulator's own CPU profile here (the storm only).")
	flag.BoolVar(&c.keep, "keep", false, "Leave the lab running with its files (logs): its processes (API server, etcd, manager, agents, tgtd) and loop devices stay until you stop them.")
	netns := flag.String("netns", "ggnet-bench-storm", "Name of the lab's network namespace (one per storm running at once).")
	flag.BoolVar(&c.floor, "floor", true, "Measure the disk floor first (every overlay read at once straight from its file system).")
	flag.IntVar(&c.tgtdIOThreads, "tgtd-iothreads", 0, "I/O threads per logical unit of every tgtd of the lab (tgtd -t); 0: tgtd's default, 16.")
	flag.Parse()
	c.readBytes, c.chunk = int64(readMiB)<<20, chunkKiB<<10
	var err error
	if c.killBootAt, err = share(killBoot); err == nil {
		c.killStorageAt, err = share(killStorage)
	}
	if err == nil && c.killBootAt >= 0 && c.bootAgents < 2 {
		err = fmt.Errorf("-kill-boot-agent-at needs -boot-agents 2 or more")
	}
	if err == nil && c.killStorageAt >= 0 && c.storageNodes < 2 {
		err = fmt.Errorf("-kill-storage-node-at needs -storage-nodes 2 or more")
	}
	if err == nil && c.lostNode != "kill" && c.lostNode != "delete" {
		err = fmt.Errorf("-lost-node %q: want kill or delete", c.lostNode)
	}
	if err == nil && c.tgtdIOThreads < 0 {
		err = fmt.Errorf("-tgtd-iothreads %d: want 0 (tgtd's default) or more", c.tgtdIOThreads)
	}
	if err == nil && (c.n < 1 || c.n > 60000) {
		err = fmt.Errorf("-n %d: want 1 to 60000", c.n)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "storm:", err)
		os.Exit(2)
	}
	if code, ran := lab.InNetns(*netns, false); ran {
		os.Exit(code)
	}
	ctrl.SetLogger(logr.Discard())
	tt := &testbin.Program{Keep: c.keep}
	c.bin, _ = filepath.Abs(c.bin)
	err = run(tt, c)
	tt.Done()
	if err != nil {
		fmt.Fprintln(os.Stderr, "storm:", err)
		os.Exit(1)
	}
}

// share parses "50%" or "0.5"; "" is never (-1).
func share(s string) (float64, error) {
	if s == "" {
		return -1, nil
	}
	pct := strings.HasSuffix(s, "%")
	v, err := strconv.ParseFloat(strings.TrimSuffix(s, "%"), 64)
	if pct {
		v /= 100
	}
	if err != nil || v < 0 || v > 1 {
		return 0, fmt.Errorf("share %q: want 0%% to 100%%", s)
	}
	return v, nil
}

func run(tt *testbin.Program, c config) error {
	ctx := context.Background()
	iot := "tgtd's default, 16"
	if c.tgtdIOThreads > 0 {
		iot = strconv.Itoa(c.tgtdIOThreads)
	}
	fmt.Printf("starting the lab: API server, manager, %d boot agent(s), %d storage node(s) with tgtd (I/O threads per LU: %s)\n",
		c.bootAgents, c.storageNodes, iot)
	l, err := lab.StartWith(ctx, tt, c.bin, lab.Options{BootAgents: c.bootAgents - 1, StorageNodes: c.storageNodes - 1, NoOSImage: true,
		ManagerArgs: []string{"--storage-node-grace=" + c.grace.String()}, TGTDIOThreads: c.tgtdIOThreads})
	if err != nil {
		return err
	}
	fmt.Println("lab:", l.Dir)
	first, err := imageHead(l)
	if err != nil {
		return err
	}

	// The PCs' side of the segment: one namespace, each PC's leased address
	// an address of its own there.
	host, err := l.AddHost("storm", "10.99.0.250")
	if err != nil {
		return err
	}
	pcs := make([]*pc, c.n)
	ips := make([]string, c.n)
	for i := range pcs {
		ips[i] = fmt.Sprintf("10.98.%d.%d", i/250, i%250+1)
		pcs[i] = &pc{name: fmt.Sprintf("pc-%05d", i), ip: ips[i],
			mac: net.HardwareAddr{0x52, 0x54, 0x01, byte(i >> 16), byte(i >> 8), byte(i)}}
	}
	if err := host.AddAddresses(ips); err != nil {
		return err
	}
	if err := host.RouteVia("10.98.0.0/16"); err != nil {
		return err
	}
	dc, err := newDHCPClient(host.Do)
	if err != nil {
		return err
	}
	defer dc.close()

	policy := bootv1.BootPolicyManual
	if c.auto {
		policy = bootv1.BootPolicyAutoSession
	}
	t := time.Now()
	if err := parallel(c.n, 16, func(i int) error {
		p := pcs[i]
		m := &bootv1.Machine{ObjectMeta: metav1.ObjectMeta{Namespace: lab.Namespace, Name: p.name}, Spec: bootv1.MachineSpec{
			MAC: p.mac.String(), Hostname: p.name, IPv4: &bootv1.IPv4Reservation{Address: p.ip, PrefixLength: 16},
			ImageRef: &bootv1.LocalObjectReference{Name: "demo"}, BootPolicy: policy, Writeback: bootv1.WritebackDiscard,
			Firmware: bootv1.FirmwareBIOS}}
		return l.Client.Create(ctx, m)
	}); err != nil {
		return fmt.Errorf("creating Machines: %w", err)
	}
	fmt.Printf("%d Machines created in %.1f s\n", c.n, time.Since(t).Seconds())
	if c.auto && c.prepared {
		if err := waitReady(ctx, l, c.n, 20*time.Minute); err != nil {
			return err
		}
		fmt.Printf("%d AutoSession Machines' sessions prepared, all Ready after %.1f s\n", c.n, time.Since(t).Seconds())
	}
	if !c.auto {
		t = time.Now()
		if err := parallel(c.n, 16, func(i int) error { return createSession(ctx, l, pcs[i].name, pcs[i].name) }); err != nil {
			return fmt.Errorf("creating sessions: %w", err)
		}
		created := time.Since(t)
		if err := waitReady(ctx, l, c.n, 20*time.Minute); err != nil {
			return err
		}
		fmt.Printf("%d sessions created in %.1f s, all Ready after %.1f s\n", c.n, created.Seconds(), time.Since(t).Seconds())
		// The boot agents learn of the sessions through their informers: a
		// PC that asks before gets a retry script (counted as a wait).
	}
	before, err := distribution(ctx, l)
	if err != nil {
		return err
	}

	s := &sim{dhcp: dc, do: host.Do, readBytes: c.readBytes, chunk: c.chunk, first: first, maxAttempts: 1000, retryDelay: 2 * time.Second}
	// The baseline, in the same run: one PC booting alone on the quiet lab
	// (it boots again in the storm).
	solo := s.boot(ctx, pcs[0], time.Now())
	if !solo.ok {
		return fmt.Errorf("a PC alone did not boot: %v", solo.errs)
	}
	fmt.Printf("one PC alone: DHCP %.1f ms, script %.1f ms, login %.1f ms, read %.1f ms (%.0f MiB/s), total %.1f ms\n",
		ms(solo.stages[stDHCP]), ms(solo.stages[stScript]), ms(solo.stages[stLogin]), ms(solo.stages[stRead]),
		float64(c.readBytes)/(1<<20)/solo.stages[stRead].Seconds(), ms(solo.total))
	var floor time.Duration
	if !c.auto && c.floor {
		paths, err := overlays(ctx, l)
		if err != nil {
			return err
		}
		if floor, err = diskFloor(paths, c.readBytes, c.chunk); err != nil {
			return err
		}
		fmt.Printf("disk floor: the %d overlays' first %d MiB read at once straight from the storage nodes' file systems (no iSCSI, no network) in %.2f s, %.0f MiB/s; caches dropped\n",
			len(paths), c.readBytes>>20, floor.Seconds(), float64(int64(len(paths))*c.readBytes)/(1<<20)/floor.Seconds())
	}
	if c.cpuProfile != "" {
		f, err := os.Create(c.cpuProfile)
		if err != nil {
			return err
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	fmt.Println("load average before the storm:", loadavg())
	threads := tgtdThreads()
	cpu0 := cpuByProcess()
	var booted atomic.Int64
	ev := &events{}
	start := time.Now()
	sctx, cancel := context.WithTimeout(ctx, c.pcTimeout)
	defer cancel()
	watchDone := make(chan struct{})
	var watchWG sync.WaitGroup
	if c.killBootAt >= 0 || c.killStorageAt >= 0 {
		watchWG.Add(1)
		go func() {
			defer watchWG.Done()
			killer(ctx, l, c, &booted, start, ev, watchDone)
		}()
	}
	go func() {
		for {
			select {
			case <-watchDone:
				return
			case <-time.After(5 * time.Second):
				fmt.Fprintf(os.Stderr, "%6.1f s: %d of %d booted\n", time.Since(start).Seconds(), booted.Load(), c.n)
			}
		}
	}()
	results := make([]result, c.n)
	var wg sync.WaitGroup
	for i, p := range pcs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if c.ramp > 0 {
				time.Sleep(time.Duration(int64(c.ramp) * int64(i) / int64(c.n)))
			}
			results[i] = s.boot(sctx, p, start)
			if results[i].ok {
				booted.Add(1)
			}
		}()
	}
	wg.Wait()
	wall := time.Since(start)
	close(watchDone)
	watchWG.Wait()
	cpu1 := cpuByProcess()
	pprof.StopCPUProfile()

	report(results, wall, c, solo)
	fmt.Println()
	reportCPU(cpu0, cpu1, wall)
	fmt.Println("load average after the storm:", loadavg())
	fmt.Println("tgtd threads during the storm:", formatDist(threads))
	fmt.Println()
	fmt.Println("sessions by storage node before the storm:", formatDist(before))
	after, err := distribution(ctx, l)
	if err != nil {
		return err
	}
	fmt.Println("sessions by storage node after the storm: ", formatDist(after))
	for _, e := range ev.list() {
		fmt.Println(e)
	}
	if ev.lost != "" {
		if err := reportLost(ctx, l, ev.lost); err != nil {
			return err
		}
	}
	failed := 0
	for _, r := range results {
		if !r.ok {
			failed++
		}
	}
	if failed > 0 {
		return fmt.Errorf("%d of %d PCs did not boot", failed, c.n)
	}
	return nil
}

// imageHead is the demo Image's first 4 KiB.
func imageHead(l *lab.Lab) ([]byte, error) {
	f, err := os.Open(filepath.Join(l.Dir, "images", "demo.raw"))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b := make([]byte, 4096)
	_, err = f.ReadAt(b, 0)
	return b, err
}

func createSession(ctx context.Context, l *lab.Lab, name, machine string) error {
	return l.Client.Create(ctx, &bootv1.BootSession{ObjectMeta: metav1.ObjectMeta{Namespace: lab.Namespace, Name: name},
		Spec: bootv1.BootSessionSpec{MachineRef: bootv1.LocalObjectReference{Name: machine}, ImageRef: bootv1.LocalObjectReference{Name: "demo"},
			Writeback: bootv1.WritebackDiscard}})
}

func waitReady(ctx context.Context, l *lab.Lab, n int, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		var list bootv1.BootSessionList
		if err := l.Client.List(ctx, &list, client.InNamespace(lab.Namespace)); err != nil {
			return err
		}
		ready := 0
		for _, s := range list.Items {
			if s.Status.Phase == bootv1.SessionReady {
				ready++
			}
		}
		if ready >= n {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d of %d sessions Ready after %s", ready, n, timeout)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// distribution counts the unfinished sessions by storage node.
func distribution(ctx context.Context, l *lab.Lab) (map[string]int, error) {
	var list bootv1.BootSessionList
	if err := l.Client.List(ctx, &list, client.InNamespace(lab.Namespace)); err != nil {
		return nil, err
	}
	out := map[string]int{}
	for _, s := range list.Items {
		node := s.Status.StorageNode
		if node == "" {
			node = "(none)"
		}
		if s.Status.Phase == bootv1.SessionFailed || s.Status.Phase == bootv1.SessionStopped {
			node += " " + string(s.Status.Phase)
		}
		out[node]++
	}
	return out, nil
}

func formatDist(d map[string]int) string {
	keys := make([]string, 0, len(d))
	for k := range d {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var parts []string
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%s=%d", k, d[k]))
	}
	return strings.Join(parts, " ")
}

// events are what the killer did, in order.
type events struct {
	mu   sync.Mutex
	evs  []string
	lost string
}

func (e *events) add(format string, a ...any) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.evs = append(e.evs, fmt.Sprintf(format, a...))
}

func (e *events) list() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return slices.Clone(e.evs)
}

// killer kills the last boot agent and loses the last storage node when
// their share of PCs has booted; after a node loss it makes a new session
// for each Machine whose session there failed (Manual sessions; an
// AutoSession Machine asks for one itself when its PC boots again).
func killer(ctx context.Context, l *lab.Lab, c config, booted *atomic.Int64, start time.Time, ev *events, done chan struct{}) {
	agents, nodes := l.BootAgents(), l.StorageNodes()
	killedBoot, lostNode := c.killBootAt < 0, c.killStorageAt < 0
	replaced := map[string]bool{}
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	var lostAt, lostTime time.Time
	sawUnreachable := false
	for {
		select {
		case <-done:
			return
		case <-tick.C:
		}
		share := float64(booted.Load()) / float64(c.n)
		if !killedBoot && share >= c.killBootAt {
			a := agents[len(agents)-1]
			l.Kill(a.Process)
			killedBoot = true
			ev.add("%6.2f s  killed boot agent %s (%s) at %d booted", time.Since(start).Seconds(), a.Process, a.IP, booted.Load())
		}
		if !lostNode && share >= c.killStorageAt {
			n := nodes[len(nodes)-1]
			if err := l.LoseStorageNode(ctx, n.Node, c.lostNode == "delete"); err != nil {
				ev.add("losing %s: %v", n.Node, err)
			}
			lostNode, lostAt = true, time.Now()
			lostTime = lostAt
			ev.mu.Lock()
			ev.lost = n.Node
			ev.mu.Unlock()
			ev.add("%6.2f s  lost storage node %s (agent and tgtd killed; Node %s) at %d booted", time.Since(start).Seconds(), n.Node,
				map[bool]string{true: "deleted", false: "kept"}[c.lostNode == "delete"], booted.Load())
		}
		if lostAt.IsZero() || c.auto || time.Since(lostAt) < time.Second {
			continue
		}
		// Replacements for the lost node's failed sessions, once a second.
		lostAt = lostAt.Add(time.Second)
		var list bootv1.BootSessionList
		if err := l.Client.List(ctx, &list, client.InNamespace(lab.Namespace)); err != nil {
			continue
		}
		for _, s := range list.Items {
			if !sawUnreachable && s.Status.StorageNode == ev.lost && meta.IsStatusConditionFalse(s.Status.Conditions, bootv1.StorageReachableCondition) {
				sawUnreachable = true
				ev.add("%6.2f s  first session on %s StorageReachable=False (%.1f s after the loss)", time.Since(start).Seconds(), ev.lost,
					time.Since(lostTime).Seconds())
			}
			if s.Status.StorageNode != ev.lost || s.Status.Phase != bootv1.SessionFailed || replaced[s.Spec.MachineRef.Name] {
				continue
			}
			replaced[s.Spec.MachineRef.Name] = true
			name := s.Spec.MachineRef.Name + "-r"
			if err := createSession(ctx, l, name, s.Spec.MachineRef.Name); err != nil {
				ev.add("replacing %s: %v", s.Name, err)
				continue
			}
			if len(replaced) == 1 {
				ev.add("%6.2f s  first session on %s Failed (%s, %.1f s after the loss); replacements being made", time.Since(start).Seconds(), ev.lost,
					readyReason(&s), time.Since(lostTime).Seconds())
			}
		}
	}
}

func readyReason(s *bootv1.BootSession) string {
	if c := meta.FindStatusCondition(s.Status.Conditions, bootv1.ReadyCondition); c != nil {
		return c.Reason
	}
	return "no Ready condition"
}

// reportLost says what the lost node's sessions' status says, and where
// their replacements went.
func reportLost(ctx context.Context, l *lab.Lab, node string) error {
	var list bootv1.BootSessionList
	if err := l.Client.List(ctx, &list, client.InNamespace(lab.Namespace)); err != nil {
		return err
	}
	byState := map[string]int{}
	sample := map[string]string{}
	repl := map[string]int{}
	for _, s := range list.Items {
		if strings.HasSuffix(s.Name, "-r") {
			repl[s.Status.StorageNode+" "+string(s.Status.Phase)]++
			continue
		}
		if s.Status.StorageNode != node {
			continue
		}
		k := string(s.Status.Phase) + "/" + readyReason(&s)
		byState[k]++
		if c := meta.FindStatusCondition(s.Status.Conditions, bootv1.ReadyCondition); c != nil {
			sample[k] = c.Message
		}
	}
	fmt.Printf("the lost node %s's sessions now (phase/Ready reason): %s\n", node, formatDist(byState))
	for k, m := range sample {
		fmt.Printf("  %s: %q\n", k, m)
	}
	fmt.Printf("their replacements (node phase): %s\n", formatDist(repl))
	return nil
}

func parallel(n, workers int, f func(i int) error) error {
	var (
		next    atomic.Int64
		wg      sync.WaitGroup
		errOnce sync.Once
		first   error
	)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				if err := f(i); err != nil {
					errOnce.Do(func() { first = err })
				}
			}
		}()
	}
	wg.Wait()
	return first
}

// report prints per-stage percentiles of the PCs that booted, the
// all-booted time, retries, which boot agent served, and the failures.
func report(rs []result, wall time.Duration, c config, solo result) {
	var ok []result
	agents := map[string]int{}
	portals := map[string]int{}
	retries, waits := 0, 0
	errs := map[string]int{}
	var allBooted time.Duration
	for _, r := range rs {
		retries += r.retries
		waits += r.waits
		for _, e := range r.errs {
			errs[shortErr(e)]++
		}
		if !r.ok {
			continue
		}
		ok = append(ok, r)
		agents[r.agent]++
		portals[r.portal]++
		allBooted = max(allBooted, r.doneAt)
	}
	fmt.Printf("\n%d PCs, %d booted, %d failed; all booted after %.2f s (storm wall %.2f s); %d MiB read each in %d KiB commands\n",
		len(rs), len(ok), len(rs)-len(ok), allBooted.Seconds(), wall.Seconds(), c.readBytes>>20, c.chunk>>10)
	fmt.Printf("boot attempts started again: %d; fallback scripts (no Ready session yet) fetched: %d\n", retries, waits)
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "stage\tp50 ms\tp99 ms\tmax ms\talone ms\tp50/alone\t")
	for st := range nStages + 1 {
		var d []time.Duration
		for _, r := range ok {
			if st == nStages {
				d = append(d, r.total)
			} else {
				d = append(d, r.stages[st])
			}
		}
		name, alone := "total (power-on to logout)", solo.total
		if st < nStages {
			name, alone = stageNames[st], solo.stages[st]
		}
		p50 := pct(d, 0.5)
		fmt.Fprintf(tw, "%s\t%.1f\t%.1f\t%.1f\t%.1f\t%.1f\t\n", name, ms(p50), ms(pct(d, 0.99)), ms(pct(d, 1)), ms(alone), float64(p50)/float64(max(alone, 1)))
	}
	var toScript []time.Duration
	for _, r := range ok {
		toScript = append(toScript, r.toScript)
	}
	fmt.Fprintf(tw, "power-on to script\t%.1f\t%.1f\t%.1f\t%.1f\t%.1f\t\n", ms(pct(toScript, 0.5)), ms(pct(toScript, 0.99)), ms(pct(toScript, 1)),
		ms(solo.toScript), float64(pct(toScript, 0.5))/float64(max(solo.toScript, 1)))
	tw.Flush()
	if len(ok) > 0 {
		var read time.Duration
		for _, r := range ok {
			read += r.stages[stRead]
		}
		fmt.Printf("aggregate read rate: %.0f MiB/s over the storm (%.1f GiB)\n",
			float64(int64(len(ok))*c.readBytes)/(1<<20)/allBooted.Seconds(), float64(int64(len(ok))*c.readBytes)/(1<<30))
	}
	fmt.Println("booted with the script of boot agent:", formatDist(agents))
	fmt.Println("booted from portal:", formatDist(portals))
	if len(errs) > 0 {
		fmt.Println("failed attempts by error:")
		keys := make([]string, 0, len(errs))
		for k := range errs {
			keys = append(keys, k)
		}
		sort.Slice(keys, func(i, j int) bool { return errs[keys[i]] > errs[keys[j]] })
		for _, k := range keys {
			fmt.Printf("  %5d  %s\n", errs[k], k)
		}
	}
}

// shortErr groups errors: addresses and ports vary from PC to PC.
func shortErr(e string) string {
	f := strings.Fields(e)
	for i, w := range f {
		if strings.Count(w, ".") == 3 || strings.HasPrefix(w, "10.") {
			f[i] = "<addr>"
		}
	}
	s := strings.Join(f, " ")
	if len(s) > 160 {
		s = s[:160]
	}
	return s
}

func pct(d []time.Duration, p float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	slices.Sort(d)
	i := int(float64(len(d))*p+0.5) - 1
	return d[min(max(i, 0), len(d)-1)]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
