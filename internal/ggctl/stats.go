package ggctl

import (
	"context"
	"fmt"
	"io"
	"math"
	"sort"
	"time"

	"github.com/spf13/cobra"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	bootv1 "github.com/ggnet/ggnet/api/v1alpha1"
)

func (g *ggnet) statsCommand() *cobra.Command {
	var (
		all   bool
		since time.Duration
	)
	cmd := &cobra.Command{
		Use:   "stats [-n NS | -A] [--since 1h]",
		Short: "Session statistics from the API alone",
		Long: `stats counts the sessions (created within --since; all by default) by phase, storage node and
image, and computes from their status.timeline:
  boot success rate   sessions whose machine logged in to its disk, out of those that did or
                      failed (phase Failed or BootFailed=True); sessions still on their way are left out
  create → Ready      creation to timeline.ready: the manager's and the storage node's work
  power-on → login    timeline.dhcp (the first sign of the powered-on PC) to its first iSCSI login
p50 and p99 are nearest-rank percentiles. Nothing but the API server is needed.`,
		Args: exactArgs(0, "no arguments"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if since < 0 {
				return usagef("--since must not be negative")
			}
			return g.stats(cmd.Context(), all, since)
		},
	}
	addAllNamespaces(cmd.Flags(), &all)
	cmd.Flags().DurationVar(&since, "since", 0, "only sessions created within this long (e.g. 1h); 0 counts all")
	return cmd
}

// Stats are the numbers `stats` prints.
type Stats struct {
	Sessions      int
	ByPhase       map[bootv1.BootSessionPhase]int
	ByNode        map[string]*Count
	ByImage       map[string]*Count
	Booted        int
	BootFailed    int
	OnTheirWay    int
	CreateToReady []time.Duration
	PowerToLogin  []time.Duration
}

// Count is the sessions of one node or image: all, live (not finished) and
// Active.
type Count struct{ All, Live, Active int }

// ComputeStats computes Stats over sessions.
func ComputeStats(sessions []bootv1.BootSession) Stats {
	st := Stats{ByPhase: map[bootv1.BootSessionPhase]int{}, ByNode: map[string]*Count{}, ByImage: map[string]*Count{}}
	bump := func(m map[string]*Count, k string, s *bootv1.BootSession) {
		c := m[k]
		if c == nil {
			c = &Count{}
			m[k] = c
		}
		c.All++
		if !finished(s) {
			c.Live++
		}
		if s.Status.Phase == bootv1.SessionActive {
			c.Active++
		}
	}
	for i := range sessions {
		s := &sessions[i]
		st.Sessions++
		st.ByPhase[s.Status.Phase]++
		bump(st.ByNode, orDefault(s.Status.StorageNode, "(none)"), s)
		bump(st.ByImage, s.Spec.ImageRef.Name, s)
		tl := s.Status.Timeline
		login := firstLogin(s)
		bf := condition(s.Status.Conditions, bootv1.BootFailedCondition)
		switch {
		case login != nil:
			st.Booted++
		case s.Status.Phase == bootv1.SessionFailed || bf != nil && bf.Status == metav1.ConditionTrue:
			st.BootFailed++
		default:
			st.OnTheirWay++
		}
		if tl.Ready != nil && !s.CreationTimestamp.IsZero() {
			st.CreateToReady = append(st.CreateToReady, tl.Ready.Sub(s.CreationTimestamp.Time))
		}
		if tl.DHCP != nil && login != nil && !login.Before(tl.DHCP.Time) {
			st.PowerToLogin = append(st.PowerToLogin, login.Sub(tl.DHCP.Time))
		}
	}
	return st
}

// firstLogin is the machine's first iSCSI login: timeline.iscsiLogin, else
// the oldest row of logins.
func firstLogin(s *bootv1.BootSession) *time.Time {
	tl := s.Status.Timeline
	if tl.ISCSILogin != nil {
		t := tl.ISCSILogin.Time
		return &t
	}
	var first *time.Time
	for _, l := range tl.Logins {
		if first == nil || l.At.Time.Before(*first) {
			t := l.At.Time
			first = &t
		}
	}
	return first
}

// Percentile is the nearest-rank p-th percentile (0 < p <= 1) of ds.
func Percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	i := int(math.Ceil(p*float64(len(s)))) - 1
	return s[max(0, min(i, len(s)-1))]
}

func (g *ggnet) stats(ctx context.Context, all bool, since time.Duration) error {
	if err := g.connect(); err != nil {
		return err
	}
	ns, err := g.scope(all)
	if err != nil {
		return err
	}
	items, err := g.listSessions(ctx, ns, "", "", "")
	if err != nil {
		return err
	}
	now := g.opts.now()
	var in []bootv1.BootSession
	for _, s := range items {
		if since > 0 && s.CreationTimestamp.Time.Before(now.Add(-since)) {
			continue
		}
		in = append(in, s)
	}
	st := ComputeStats(in)
	w := g.out()
	where := "namespace " + ns
	if ns == "" {
		where = "all namespaces"
	}
	when := ""
	if since > 0 {
		when = " created in the last " + since.String()
	}
	fmt.Fprintf(w, "Sessions in %s%s: %d\n", where, when, st.Sessions)
	if st.Sessions == 0 {
		return nil
	}
	fmt.Fprintln(w)
	t := newTable(w)
	row(t, "PHASE", "SESSIONS")
	for _, p := range append([]bootv1.BootSessionPhase{""}, allPhases...) {
		if n := st.ByPhase[p]; n > 0 {
			row(t, orDefault(string(p), "(none yet)"), fmt.Sprint(n))
		}
	}
	_ = t.Flush()
	fmt.Fprintln(w)
	printCounts(w, "STORAGE NODE", st.ByNode)
	fmt.Fprintln(w)
	printCounts(w, "IMAGE", st.ByImage)
	fmt.Fprintln(w)
	if n := st.Booted + st.BootFailed; n > 0 {
		fmt.Fprintf(w, "Boot success rate: %.1f%% (%d of %d logged in to their disk, %d failed; %d still on their way)\n",
			100*float64(st.Booted)/float64(n), st.Booted, n, st.BootFailed, st.OnTheirWay)
	} else {
		fmt.Fprintf(w, "Boot success rate: no boot has finished yet (%d on their way)\n", st.OnTheirWay)
	}
	fmt.Fprintln(w)
	t = newTable(w)
	row(t, "LATENCY", "N", "P50", "P99", "MAX")
	for _, l := range []struct {
		name string
		ds   []time.Duration
	}{{"create → Ready", st.CreateToReady}, {"power-on (DHCP) → login", st.PowerToLogin}} {
		if len(l.ds) == 0 {
			row(t, l.name, "0", "", "", "")
			continue
		}
		row(t, l.name, fmt.Sprint(len(l.ds)), seconds(Percentile(l.ds, 0.5)), seconds(Percentile(l.ds, 0.99)), seconds(Percentile(l.ds, 1)))
	}
	return t.Flush()
}

func printCounts(w io.Writer, head string, m map[string]*Count) {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return naturalLess(keys[i], keys[j]) })
	t := newTable(w)
	row(t, head, "SESSIONS", "LIVE", "ACTIVE")
	for _, k := range keys {
		c := m[k]
		row(t, k, fmt.Sprint(c.All), fmt.Sprint(c.Live), fmt.Sprint(c.Active))
	}
	_ = t.Flush()
}
