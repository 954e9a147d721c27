package e2e

import (
	"context"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/retry"
	"sigs.k8s.io/controller-runtime/pkg/client"

	bootv1 "github.com/ggnet/ggnet/api/v1alpha1"
	"github.com/ggnet/ggnet/internal/lab"
	"github.com/ggnet/ggnet/internal/scheme"
)

// The fault suite's knobs. The short form (the defaults) runs in `make
// test`: one kill of each component with two VMs. `make fault` runs the long
// form (FAULT_ITERATIONS=20).
var (
	faultIterations = flag.Int("fault.iterations", envInt("GGNET_FAULT_ITERATIONS", 4), "fault suite: how many kills (components taken in a seeded random order, each once per four)")
	faultSeed       = flag.Int64("fault.seed", int64(envInt("GGNET_FAULT_SEED", 0)), "fault suite: random seed (0: from the clock; the suite prints the one it used)")
	faultVMs        = flag.Int("fault.vms", envInt("GGNET_FAULT_VMS", 2), "fault suite: VMs running at once (even: Persist, odd: Discard)")
)

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil {
		return v
	}
	return def
}

// Bounds of the fault suite. A TCG VM boots in 30–60 s on a busy 2-core box.
const (
	// convergeBound: after the killed component is back, every session
	// reaches Active (its VM on) or Stopped (its VM off) within it.
	convergeBound = 4 * time.Minute
	// tickBound: a running VM ticks again within it after the component is
	// back (iPXE reopens its SAN device 5 s apart; the disk's own retries
	// pause 0.5 s).
	tickBound = 90 * time.Second
	// cleanBound: orphaned targets and overlays are gone within it (the
	// storage agent collects every 5 s).
	cleanBound = 60 * time.Second
)

// component is a process of GGnet that the suite kills with SIGKILL and
// starts again, as kubelet restarts a container.
type component struct {
	name  string
	kill  func() error
	start func() error
}

func components() []component {
	return []component{
		{"storage agent", func() error { l.Kill("bootagent"); return nil }, l.StartAgent},
		{"tgtd", func() error { l.Kill("tgtd"); return nil }, l.StartTGTD},
		{"manager", func() error { l.Kill("manager"); return nil }, l.StartManager},
		{"API server", l.KillAPIServer, l.StartAPIServer},
	}
}

// The points of a session's lifecycle where a kill is armed, in the order a
// cycle of one seat passes them: the seat's next session is created while
// its current one still runs (Pending), the current one is stopped
// (Stopping), the next is provisioned, Ready, the PC boots (Booting) and
// logs in (Active).
var killPhases = []bootv1.BootSessionPhase{bootv1.SessionPending, bootv1.SessionStopping, bootv1.SessionProvisioning,
	bootv1.SessionReady, bootv1.SessionBooting, bootv1.SessionActive}

// seat is one PC of the suite: a Machine, its current session and VM, and
// what its disk showed last.
type seat struct {
	m     *bootv1.Machine
	wb    bootv1.WritebackPolicy
	s     *bootv1.BootSession
	vm    *lab.VM
	gen   int
	boots int    // boot counter the current VM printed
	tick  uint32 // last tick of the previous VM (Persist: the disk's counter)
}

// row is one iteration of the suite.
type row struct {
	iteration  int
	component  string
	armed      bootv1.BootSessionPhase
	observed   string // the phase seen when the kill fired
	seat       string
	downFor    time.Duration
	converged  time.Duration // from the component's start to every invariant holding
	powerCycle int           // VMs the suite power-cycled because their firmware gave up booting
	ioRetries  int           // disk failure streaks the running VMs rode out (their own retries after iPXE gave up)
	violations []string
}

var _ = Describe("Fault suite", Label("fault"), func() {
	It("VMs boot and run while the storage agent, tgtd, the manager and the API server are killed at random points of the session lifecycle; after each kill every invariant holds", func() {
		seed := *faultSeed
		if seed == 0 {
			seed = time.Now().UnixNano() % 1_000_000_000
		}
		rng := rand.New(rand.NewPCG(uint64(seed), 0))
		say("fault suite: seed %d, %d iterations, %d VMs (rerun: -fault.seed=%d -fault.iterations=%d -fault.vms=%d)",
			seed, *faultIterations, *faultVMs, seed, *faultIterations, *faultVMs)
		AddReportEntry("fault suite seed", seed)
		wc, err := client.NewWithWatch(l.Config, client.Options{Scheme: scheme.New()})
		Expect(err).NotTo(HaveOccurred())
		f := &faults{wc: wc, persistPaths: map[string]string{}}

		By("booting the seats")
		var seats []*seat
		for i := 0; i < *faultVMs; i++ {
			wb := bootv1.WritebackDiscard
			if i%2 == 0 {
				wb = bootv1.WritebackPersist
			}
			seats = append(seats, &seat{m: machine(bootv1.BootPolicyManual, wb), wb: wb})
		}
		for _, st := range seats {
			st.gen++
			st.s = f.createSession(st)
		}
		// Both VMs boot at once.
		for _, st := range seats {
			Expect(f.powerOn(st)).To(BeEmpty())
		}
		for _, st := range seats {
			_, v := f.awaitBoot(st)
			Expect(v).To(BeEmpty())
		}
		f.seats = seats
		for _, st := range seats {
			_, err := st.vm.WaitTick(2, tickBound)
			Expect(err).NotTo(HaveOccurred(), st.vm.Serial())
		}
		Expect(f.violations(nil)).To(BeEmpty(), "the invariants hold before any kill")

		comps := components()
		var order []int
		var rows []row
		for it := 0; it < *faultIterations; it++ {
			if len(order) == 0 {
				order = rng.Perm(len(comps))
			}
			c := comps[order[0]]
			order = order[1:]
			r := row{iteration: it + 1, component: c.name, armed: killPhases[rng.IntN(len(killPhases))]}
			st := seats[rng.IntN(len(seats))]
			r.seat = fmt.Sprintf("%s (%s)", st.m.Name, st.wb)
			r.downFor = time.Duration(1000+rng.IntN(4000)) * time.Millisecond
			By(fmt.Sprintf("iteration %d: %s killed at %s in the cycle of %s, down %s", r.iteration, c.name, r.armed, st.m.Name, r.downFor))
			f.iteration(&r, c, st)
			say("iteration %d: %s killed at %s (armed %s), down %s, seat %s: converged %s after the restart, %d power-cycles, %d I/O retry streaks, violations: %v",
				r.iteration, r.component, r.observed, r.armed, r.downFor, r.seat, r.converged.Round(time.Second), r.powerCycle, r.ioRetries, r.violations)
			rows = append(rows, r)
			if p := os.Getenv("GGNET_FAULT_TABLE"); p != "" {
				Expect(os.WriteFile(p, []byte(faultTable(seed, rows)), 0o644)).To(Succeed())
			}
			if len(r.violations) > 0 {
				// The next iterations start from seats in service again,
				// so that one fault is not counted again in each of them.
				for _, s := range seats {
					f.recover(s)
				}
			}
		}
		table := faultTable(seed, rows)
		say("%s", table)
		AddReportEntry("fault table", table)
		var all []string
		for _, r := range rows {
			for _, v := range r.violations {
				all = append(all, fmt.Sprintf("iteration %d (%s at %s): %s", r.iteration, r.component, r.observed, v))
			}
		}
		Expect(all).To(BeEmpty(), "seed %d:\n%s", seed, table)
		for _, st := range seats {
			st.vm.PowerOff()
			f.stopSession(st.s)
		}
	})
})

func say(format string, a ...any) {
	GinkgoWriter.Printf(format+"\n", a...)
}

// faults is the suite's state.
type faults struct {
	wc    client.WithWatch
	seats []*seat
	// persistPaths maps each Persist overlay path ever seen to its
	// machine/image: a Persist disk is never lost and never shared.
	persistPaths map[string]string
	mu           sync.Mutex
}

// api retries f while the API server is down (or restarting), for up to
// convergeBound.
func api(f func() error) error {
	deadline := time.Now().Add(convergeBound)
	for {
		err := f()
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(250 * time.Millisecond)
	}
}

func (f *faults) createSession(st *seat) *bootv1.BootSession {
	GinkgoHelper()
	s := &bootv1.BootSession{ObjectMeta: metav1.ObjectMeta{Namespace: lab.Namespace, Name: fmt.Sprintf("%s-%d", st.m.Name, st.gen)},
		Spec: bootv1.BootSessionSpec{MachineRef: bootv1.LocalObjectReference{Name: st.m.Name},
			ImageRef: bootv1.LocalObjectReference{Name: "demo"}, Writeback: st.wb}}
	Expect(api(func() error {
		err := l.Client.Create(ctx, s.DeepCopy())
		if err != nil && strings.Contains(err.Error(), "already exists") {
			return nil
		}
		return err
	})).To(Succeed())
	return s
}

func (f *faults) stopSession(s *bootv1.BootSession) {
	GinkgoHelper()
	Expect(api(func() error {
		return retry.RetryOnConflict(retry.DefaultRetry, func() error {
			cur := &bootv1.BootSession{}
			if err := l.Client.Get(ctx, client.ObjectKeyFromObject(s), cur); err != nil {
				return err
			}
			cur.Spec.Stopped = true
			return l.Client.Update(ctx, cur)
		})
	})).To(Succeed())
}

// waitPhase waits (through API server restarts) until s is in one of
// phases; it returns what it saw last.
func waitPhase(s *bootv1.BootSession, timeout time.Duration, phases ...bootv1.BootSessionPhase) (*bootv1.BootSession, bool) {
	deadline := time.Now().Add(timeout)
	cur := &bootv1.BootSession{}
	for {
		if err := l.Client.Get(ctx, client.ObjectKeyFromObject(s), cur); err == nil {
			for _, p := range phases {
				if cur.Status.Phase == p {
					return cur, true
				}
			}
		}
		if time.Now().After(deadline) {
			return cur, false
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// bootSeat boots the seat's VM in its current session.
func (f *faults) bootSeat(st *seat) (powerCycles int, violations []string) {
	GinkgoHelper()
	if v := f.powerOn(st); len(v) > 0 {
		return 0, v
	}
	return f.awaitBoot(st)
}

// powerOn waits for the seat's session to be Ready and powers its VM on.
func (f *faults) powerOn(st *seat) []string {
	GinkgoHelper()
	cur, ok := waitPhase(st.s, convergeBound, bootv1.SessionReady, bootv1.SessionBooting, bootv1.SessionActive)
	if !ok {
		return []string{fmt.Sprintf("session %s not Ready within %s: phase %q, conditions %+v", st.s.Name, convergeBound, cur.Status.Phase, cur.Status.Conditions)}
	}
	// No log and no command line may hold the session's credentials, even
	// with processes killed mid-way (checked at the suite's end).
	rememberCredentials(cur)
	vm, err := l.PowerOn(st.m.Spec.MAC)
	Expect(err).NotTo(HaveOccurred())
	st.vm = vm
	return nil
}

// awaitBoot waits for the seat's VM's boot marker and first tick, checking
// what the disk shows against the seat's previous session. A VM whose
// firmware gave up (QEMU ended: SeaBIOS reboots a minute after it found
// nothing to boot, and QEMU runs with -no-reboot) is powered on again, as a
// user would; each is counted.
func (f *faults) awaitBoot(st *seat) (powerCycles int, violations []string) {
	GinkgoHelper()
	deadline := time.Now().Add(2 * convergeBound)
	for {
		vm := st.vm
		for vm.Running() && !strings.Contains(vm.Serial(), lab.Marker) && time.Now().Before(deadline) {
			time.Sleep(250 * time.Millisecond)
		}
		if time.Now().After(deadline) {
			return powerCycles, []string{fmt.Sprintf("%s did not boot within %s; console:\n%s", st.m.Name, 2*convergeBound, vm.Serial())}
		}
		if vm.Running() {
			break
		}
		if strings.TrimSpace(vm.Serial()) == "" {
			Fail(fmt.Sprintf("QEMU of %s ended before its firmware printed anything: %s", st.m.Name, vm.QEMULog()))
		}
		powerCycles++
		say("%s: the firmware gave up booting; powering it on again. Console:\n%s", st.m.Name, vm.Serial())
		var err error
		st.vm, err = l.PowerOn(st.m.Spec.MAC)
		Expect(err).NotTo(HaveOccurred())
	}
	b, err := st.vm.WaitBoot(time.Minute)
	Expect(err).NotTo(HaveOccurred())
	first, err := st.vm.WaitTick(1, tickBound)
	if err != nil {
		return powerCycles, []string{fmt.Sprintf("%s booted but does not tick: %v", st.m.Name, err)}
	}
	ticks := st.vm.Ticks()
	if len(ticks) > 0 {
		first = ticks[0].N
	}
	switch st.wb {
	case bootv1.WritebackPersist:
		// The disk holds every write the previous session's VM saw
		// acknowledged: the boot counter and the ticks count on.
		if st.boots > 0 && b.Count != st.boots+1 {
			violations = append(violations, fmt.Sprintf("%s: Persist boot counter %d after %d: the disk went back", st.m.Name, b.Count, st.boots))
		}
		if first <= st.tick {
			violations = append(violations, fmt.Sprintf("%s: Persist tick counter starts at %d after %d: the disk went back", st.m.Name, first, st.tick))
		}
	default:
		if b.Count != 1 || first != 1 {
			violations = append(violations, fmt.Sprintf("%s: Discard disk starts at boot %d tick %d, not a fresh copy of the image", st.m.Name, b.Count, first))
		}
	}
	st.boots = b.Count
	return powerCycles, violations
}

// recover puts a seat that an iteration left out of service back in it,
// as an operator would: its VM off, its session stopped (what the
// session's conditions ask for), a new session and a boot. Its violations
// are the iteration's already; a seat that cannot be recovered ends the
// suite.
func (f *faults) recover(st *seat) {
	GinkgoHelper()
	cur, _ := waitPhase(st.s, time.Second, bootv1.SessionActive)
	if st.vm.Running() && cur.Status.Phase == bootv1.SessionActive {
		return
	}
	say("recovering %s: VM running %t, session %s %s", st.m.Name, st.vm.Running(), st.s.Name, cur.Status.Phase)
	if st.vm.Running() {
		st.tick = st.vm.LastTick()
	}
	st.vm.PowerOff()
	old := st.s
	f.stopSession(old)
	if cur, ok := waitPhase(old, convergeBound, bootv1.SessionStopped); !ok {
		Fail(fmt.Sprintf("recovering %s: session %s not Stopped within %s: phase %q, conditions %+v", st.m.Name, old.Name, convergeBound, cur.Status.Phase, cur.Status.Conditions))
	}
	st.gen++
	st.s = f.createSession(st)
	if _, v := f.bootSeat(st); len(v) > 0 {
		Fail(fmt.Sprintf("recovering %s: %v", st.m.Name, v))
	}
	if cur, ok := waitPhase(st.s, convergeBound, bootv1.SessionActive); !ok {
		Fail(fmt.Sprintf("recovering %s: session %s not Active within %s: phase %q", st.m.Name, st.s.Name, convergeBound, cur.Status.Phase))
	}
}

// iteration cycles one seat through a new session while c is killed at
// r.armed, started again r.downFor later, and then checks every invariant.
func (f *faults) iteration(r *row, c component, st *seat) {
	k := f.arm(r, c, st)
	defer k.cancel()

	// The disk failure streaks the other VMs ride out during this iteration.
	retries := map[*seat]int{}
	for _, s := range f.seats {
		retries[s] = strings.Count(s.vm.Serial(), lab.RetryMarker)
	}
	By("shutting the PC down, queueing its next session, stopping the current one")
	st.tick = st.vm.LastTick()
	st.vm.PowerOff()
	r.ioRetries += strings.Count(st.vm.Serial(), lab.RetryMarker) - retries[st]
	old := st.s
	st.gen++
	k.names(old.Name, fmt.Sprintf("%s-%d", st.m.Name, st.gen))
	st.s = f.createSession(st)
	// The next session waits for the machine (Pending) before the current
	// one is stopped, as a queued session does.
	if cur, ok := waitPhase(st.s, convergeBound, bootv1.SessionPending); !ok {
		r.violations = append(r.violations, fmt.Sprintf("session %s not Pending within %s while %s runs: phase %q", st.s.Name, convergeBound, old.Name, cur.Status.Phase))
	}
	f.stopSession(old)

	By("booting the PC in its next session")
	pc, v := f.bootSeat(st)
	r.powerCycle += pc
	r.violations = append(r.violations, v...)
	if len(v) == 0 {
		if _, ok := waitPhase(st.s, convergeBound, bootv1.SessionActive); !ok {
			r.violations = append(r.violations, fmt.Sprintf("session %s not Active within %s of its VM's boot", st.s.Name, convergeBound))
		}
	}
	// Armed at a phase the cycle passed unseen (the API server was
	// restarting, or the phase lasted less than a watch event): kill now.
	k.fire("after Active")
	<-k.done
	r.observed = k.observed
	if k.err != nil {
		r.violations = append(r.violations, fmt.Sprintf("starting %s again: %v", c.name, k.err))
	}
	By("checking the invariants")
	restarted := k.restartedAt
	r.violations = append(r.violations, f.violations(old)...)
	r.converged = time.Since(restarted)
	for _, s := range f.seats {
		n := strings.Count(s.vm.Serial(), lab.RetryMarker)
		if s != st { // the cycled seat's VM is a new one
			n -= retries[s]
		}
		r.ioRetries += n
	}
}

// killer kills a component once a session of the cycle reaches the armed
// phase, and starts it again after the row's downtime.
type killer struct {
	c        component
	r        *row
	mu       sync.Mutex
	old, new string
	once     sync.Once
	observed string
	err      error
	done     chan struct{}
	// restartedAt is when the component answered again.
	restartedAt time.Time
	cancel      context.CancelFunc
}

// position is where (session, phase) is in the cycle's order of killPhases;
// -1 when it is not a point of the cycle.
func (k *killer) position(name string, p bootv1.BootSessionPhase) int {
	k.mu.Lock()
	defer k.mu.Unlock()
	switch {
	case name == k.new && p == bootv1.SessionPending:
		return 0
	case name == k.old && (p == bootv1.SessionStopping || p == bootv1.SessionStopped):
		return 1
	case name == k.new && p == bootv1.SessionProvisioning:
		return 2
	case name == k.new && p == bootv1.SessionReady:
		return 3
	case name == k.new && p == bootv1.SessionBooting:
		return 4
	case name == k.new && p == bootv1.SessionActive:
		return 5
	}
	return -1
}

func (k *killer) names(old, new string) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.old, k.new = old, new
}

func (k *killer) fire(phase string) {
	k.once.Do(func() {
		k.observed = phase
		say("killing %s (%s)", k.c.name, phase)
		if err := k.c.kill(); err != nil {
			k.err = err
			close(k.done)
			return
		}
		go func() {
			defer close(k.done)
			time.Sleep(k.r.downFor)
			k.err = k.c.start()
			k.restartedAt = time.Now()
		}()
	})
}

// arm watches the namespace's sessions and fires when the seat's cycle
// reaches r.armed (or a later point, when that one passed unseen).
func (f *faults) arm(r *row, c component, st *seat) *killer {
	GinkgoHelper()
	wctx, cancel := context.WithCancel(ctx)
	k := &killer{c: c, r: r, done: make(chan struct{}), cancel: cancel}
	want := 0
	for i, p := range killPhases {
		if p == r.armed {
			want = i
		}
	}
	ready := make(chan struct{})
	var readyOnce sync.Once
	go func() {
		defer GinkgoRecover()
		for wctx.Err() == nil {
			w, err := f.wc.Watch(wctx, &bootv1.BootSessionList{}, client.InNamespace(lab.Namespace))
			if err != nil {
				time.Sleep(100 * time.Millisecond)
				continue
			}
			readyOnce.Do(func() { close(ready) })
			for ev := range w.ResultChan() {
				s, ok := ev.Object.(*bootv1.BootSession)
				if !ok {
					continue
				}
				if pos := k.position(s.Name, s.Status.Phase); pos >= want {
					k.fire(string(s.Status.Phase))
				}
			}
			w.Stop()
			select {
			case <-k.done:
				return
			default:
			}
		}
	}()
	Eventually(ready, 30*time.Second).Should(BeClosed(), "watching the sessions")
	return k
}

// faultTable prints the rows and a summary by component and phase.
func faultTable(seed int64, rows []row) string {
	var b strings.Builder
	fmt.Fprintf(&b, "Fault suite, seed %d, %d iterations\n\n", seed, len(rows))
	fmt.Fprintf(&b, "| # | killed | phase at the kill (armed) | seat cycled | down | converged after restart | power-cycles | I/O retry streaks | violations |\n")
	fmt.Fprintf(&b, "|---|---|---|---|---|---|---|---|---|\n")
	for _, r := range rows {
		v := "0"
		if len(r.violations) > 0 {
			v = fmt.Sprintf("%d: %s", len(r.violations), strings.ReplaceAll(strings.Join(r.violations, "; "), "\n", " "))
		}
		fmt.Fprintf(&b, "| %d | %s | %s (%s) | %s | %s | %s | %d | %d | %s |\n", r.iteration, r.component, r.observed, r.armed, r.seat,
			r.downFor.Round(100*time.Millisecond), r.converged.Round(time.Second), r.powerCycle, r.ioRetries, v)
	}
	type key struct{ c, p string }
	count, viol := map[key]int{}, map[key]int{}
	for _, r := range rows {
		k := key{r.component, r.observed}
		count[k]++
		viol[k] += len(r.violations)
	}
	fmt.Fprintf(&b, "\n| killed | phase at the kill | kills | violations |\n|---|---|---|---|\n")
	for _, c := range components() {
		for _, p := range append(append([]string{}, phaseNames()...), "after Active") {
			k := key{c.name, p}
			if count[k] > 0 {
				fmt.Fprintf(&b, "| %s | %s | %d | %d |\n", k.c, k.p, count[k], viol[k])
			}
		}
	}
	return b.String()
}

func phaseNames() []string {
	out := []string{}
	for _, p := range append(killPhases, bootv1.SessionStopped) {
		out = append(out, string(p))
	}
	return out
}
