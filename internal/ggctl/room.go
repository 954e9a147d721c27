package ggctl

import (
	"context"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/watch"
	"sigs.k8s.io/controller-runtime/pkg/client"

	bootv1 "github.com/ggnet/ggnet/api/v1alpha1"
)

// Seat states, in the order the summary counts them.
const (
	seatRunning  = "running"  // Active: logged in to its disk
	seatBooting  = "booting"  // Booting: fetched its script
	seatReady    = "ready"    // Ready: waiting for the PC to power on
	seatStarting = "starting" // Pending or Provisioning
	seatStopping = "stopping" // Stopping
	seatFailed   = "failed"   // Failed, or BootFailed=True
	seatConflict = "conflict" // the Machine has Conflict=True
	seatNew      = "new"      // discovered, waiting for approval
	seatLocal    = "local"    // LocalBoot, no session
	seatOff      = "off"      // no session
)

var seatOrder = []string{seatRunning, seatBooting, seatReady, seatStarting, seatStopping, seatFailed, seatConflict, seatNew, seatLocal, seatOff}

var seatColor = map[string]string{
	seatRunning: "\x1b[32m", seatBooting: "\x1b[36m", seatReady: "\x1b[34m", seatStarting: "\x1b[33m",
	seatStopping: "\x1b[35m", seatFailed: "\x1b[31m", seatConflict: "\x1b[31m", seatNew: "\x1b[33m",
	seatLocal: "\x1b[2m", seatOff: "\x1b[2m",
}

// Seat is one Machine in the room grid.
type Seat struct {
	Namespace, Name, State string
}

// seatState is the state of machine m whose current session is s (nil for
// none).
func seatState(m *bootv1.Machine, s *bootv1.BootSession) string {
	if c := condition(m.Status.Conditions, bootv1.ConflictCondition); c != nil && c.Status == metav1.ConditionTrue {
		return seatConflict
	}
	if s == nil {
		switch {
		case m.Labels[bootv1.DiscoveredLabel] != "":
			return seatNew
		case m.Spec.BootPolicy == bootv1.BootPolicyLocalBoot:
			return seatLocal
		}
		return seatOff
	}
	if c := condition(s.Status.Conditions, bootv1.BootFailedCondition); c != nil && c.Status == metav1.ConditionTrue {
		return seatFailed
	}
	switch s.Status.Phase {
	case bootv1.SessionActive:
		return seatRunning
	case bootv1.SessionBooting:
		return seatBooting
	case bootv1.SessionReady:
		return seatReady
	case bootv1.SessionStopping:
		return seatStopping
	case bootv1.SessionFailed:
		return seatFailed
	case bootv1.SessionStopped:
		return seatOff
	}
	return seatStarting
}

// Seats pairs each machine with its current session (status.activeSession,
// else its newest unfinished session) among sessions.
func Seats(machines []bootv1.Machine, sessions []bootv1.BootSession) []Seat {
	byName := map[string]*bootv1.BootSession{}
	newest := map[string]*bootv1.BootSession{}
	for i := range sessions {
		s := &sessions[i]
		byName[s.Namespace+"/"+s.Name] = s
		if finished(s) || s.Spec.Stopped && s.Status.Phase != bootv1.SessionStopping {
			continue
		}
		k := s.Namespace + "/" + s.Spec.MachineRef.Name
		if b := newest[k]; b == nil || s.CreationTimestamp.After(b.CreationTimestamp.Time) ||
			s.CreationTimestamp.Equal(&b.CreationTimestamp) && s.Name > b.Name {
			newest[k] = s
		}
	}
	sortMachines(machines)
	out := make([]Seat, 0, len(machines))
	for i := range machines {
		m := &machines[i]
		s := byName[m.Namespace+"/"+m.Status.ActiveSession]
		if m.Status.ActiveSession == "" || s == nil {
			s = newest[m.Namespace+"/"+m.Name]
		}
		out = append(out, Seat{m.Namespace, m.Name, seatState(m, s)})
	}
	return out
}

// RenderRoom draws seats as a grid width columns wide; color adds ANSI
// colors; byNamespace starts each namespace's seats under its name.
func RenderRoom(seats []Seat, width int, color, byNamespace bool) string {
	var b strings.Builder
	counts := map[string]int{}
	nameW := 0
	for _, s := range seats {
		counts[s.State]++
		nameW = max(nameW, len(s.Name))
	}
	var parts []string
	for _, st := range seatOrder {
		if counts[st] > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", counts[st], st))
		}
	}
	fmt.Fprintf(&b, "%d seats: %s\n", len(seats), strings.Join(parts, ", "))
	if !byNamespace {
		b.WriteString("\n")
	}
	cellW := nameW + 1 + len(seatConflict) + 3 // name, state, gap
	cols := max(1, (width+3)/cellW)
	ns := "\x00"
	n := 0
	for _, s := range seats {
		if byNamespace && s.Namespace != ns {
			if n%cols != 0 {
				b.WriteString("\n")
			}
			ns, n = s.Namespace, 0
			fmt.Fprintf(&b, "\n%s\n", s.Namespace)
		}
		cell := fmt.Sprintf("%-*s %-*s", nameW, s.Name, len(seatConflict), s.State)
		if color {
			cell = fmt.Sprintf("%-*s %s%-*s\x1b[0m", nameW, s.Name, seatColor[s.State], len(seatConflict), s.State)
		}
		if n%cols != 0 {
			b.WriteString("   ")
		}
		b.WriteString(cell)
		n++
		if n%cols == 0 {
			b.WriteString("\n")
		}
	}
	if n%cols != 0 {
		b.WriteString("\n")
	}
	lines := strings.Split(b.String(), "\n")
	for i, l := range lines {
		lines[i] = strings.TrimRight(l, " ")
	}
	return strings.Join(lines, "\n")
}

func (g *ggnet) roomCommand() *cobra.Command {
	var (
		selector string
		all      bool
		watchF   bool
	)
	cmd := &cobra.Command{
		Use:   "room [-l room=...] [-w]",
		Short: "A grid of seats (Machines) and their state",
		Long: `room draws every Machine (-l selects them by label) as a seat with its state:
  running   logged in to its disk (session Active)      booting   fetched its script (Booting)
  ready     session Ready: power the PC on               starting  session Pending or Provisioning
  stopping  session Stopping                             failed    session Failed or BootFailed
  conflict  another Machine has its MAC or address       new       discovered, waiting for approval
  local     LocalBoot, no session                        off       no session
With -w it redraws whenever a Machine or a session changes, until Ctrl-C.`,
		Example: `  kubectl ggnet room -l boot.ggnet.io/room=main-hall -w`,
		Args:    exactArgs(0, "no arguments"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			return g.room(cmd.Context(), selector, all, watchF)
		},
	}
	cmd.Flags().StringVarP(&selector, "selector", "l", "", "only Machines with these labels")
	cmd.Flags().BoolVarP(&watchF, "watch", "w", false, "redraw on every change until interrupted")
	addAllNamespaces(cmd.Flags(), &all)
	return cmd
}

func (g *ggnet) termWidth() int {
	if g.opts.Width > 0 {
		return g.opts.Width
	}
	if f, ok := g.io.Out.(*os.File); ok {
		if w, _, err := term.GetSize(int(f.Fd())); err == nil && w > 0 {
			return w
		}
	}
	if w, err := strconv.Atoi(os.Getenv("COLUMNS")); err == nil && w > 0 {
		return w
	}
	return 80
}

func (g *ggnet) isTerminal() bool {
	f, ok := g.io.Out.(*os.File)
	return ok && term.IsTerminal(int(f.Fd())) && os.Getenv("NO_COLOR") == ""
}

func (g *ggnet) room(ctx context.Context, selector string, all, watchF bool) error {
	sel := labels.Everything()
	if selector != "" {
		var err error
		if sel, err = labels.Parse(selector); err != nil {
			return usagef("-l %q: %v", selector, err)
		}
	}
	if err := g.connect(); err != nil {
		return err
	}
	ns, err := g.scope(all)
	if err != nil {
		return err
	}
	draw := func() (string, string, error) {
		var ml bootv1.MachineList
		if err := g.client.List(ctx, &ml, client.InNamespace(ns), client.MatchingLabelsSelector{Selector: sel}); err != nil {
			return "", "", explain(err, "list", "machines", ns)
		}
		var sl bootv1.BootSessionList
		if err := g.client.List(ctx, &sl, client.InNamespace(ns)); err != nil {
			return "", "", explain(err, "list", "bootsessions", ns)
		}
		where := "namespace " + ns
		if ns == "" {
			where = "all namespaces"
		}
		if selector != "" {
			where += ", " + selector
		}
		head := where + ": "
		if len(ml.Items) == 0 {
			return head + "no Machines\n", ml.ResourceVersion + "/" + sl.ResourceVersion, nil
		}
		return head + RenderRoom(Seats(ml.Items, sl.Items), g.termWidth(), g.isTerminal(), ns == ""), ml.ResourceVersion + "/" + sl.ResourceVersion, nil
	}
	if !watchF {
		out, _, err := draw()
		if err != nil {
			return err
		}
		_, err = io.WriteString(g.out(), out)
		return err
	}
	return g.watchRoom(ctx, ns, sel, draw)
}

// watchRoom redraws on every watch event of Machines and sessions (events
// within 100 ms are drawn once), re-listing to draw; a closed watch is
// opened again.
func (g *ggnet) watchRoom(ctx context.Context, ns string, sel labels.Selector, draw func() (string, string, error)) error {
	events := make(chan struct{}, 1)
	poke := func() {
		select {
		case events <- struct{}{}:
		default:
		}
	}
	errs := make(chan error, 2)
	follow := func(list client.ObjectList, opts ...client.ListOption) {
		for ctx.Err() == nil {
			w, err := g.client.Watch(ctx, list, append(opts, client.InNamespace(ns))...)
			if err != nil {
				if ctx.Err() == nil {
					errs <- err
				}
				return
			}
			for ev := range w.ResultChan() {
				if ev.Type == watch.Error {
					break
				}
				poke()
			}
			w.Stop()
			poke() // the watch ended: draw from a fresh list
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
		}
	}
	go follow(&bootv1.MachineList{}, client.MatchingLabelsSelector{Selector: sel})
	go follow(&bootv1.BootSessionList{})
	clear := "\x1b[H\x1b[2J"
	last := ""
	for {
		out, _, err := draw()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		if out != last {
			footer := fmt.Sprintf("\nwatching (updated %s); Ctrl-C to quit\n", g.opts.now().In(g.opts.loc()).Format("15:04:05"))
			if _, err := io.WriteString(g.out(), clear+out+footer); err != nil {
				return err
			}
			last = out
		}
		select {
		case <-ctx.Done():
			return nil
		case err := <-errs:
			return explain(err, "watch", "machines and bootsessions", ns)
		case <-events:
		}
		// Coalesce a burst of events into one redraw.
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(100 * time.Millisecond):
		}
	}
}
