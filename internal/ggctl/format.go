package ggctl

import (
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/duration"

	bootv1 "github.com/ggnet/ggnet/api/v1alpha1"
)

func newTable(w io.Writer) *tabwriter.Writer { return tabwriter.NewWriter(w, 0, 8, 3, ' ', 0) }

// row writes one table row; an empty cell is "-". Write errors show at the
// table's Flush.
func row(w io.Writer, cells ...string) {
	var b strings.Builder
	for i, c := range cells {
		if c == "" {
			c = "-"
		}
		if i > 0 {
			b.WriteByte('\t')
		}
		b.WriteString(c)
	}
	b.WriteByte('\n')
	_, _ = io.WriteString(w, b.String())
}

// age is kubectl's AGE: 5s, 3m2s, 60m, 5h, 3d.
func (g *ggnet) age(t metav1.Time) string {
	if t.IsZero() {
		return "<unknown>"
	}
	return duration.HumanDuration(g.opts.now().Sub(t.Time))
}

// humanBytes is n in IEC units with one decimal: 512B, 1.5Ki, 64.0Gi.
func humanBytes(n int64) string {
	if n <= 0 {
		return ""
	}
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%dB", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit && exp < 5; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f%ci", float64(n)/float64(div), "KMGTPE"[exp])
}

// seconds is d for a table: 850ms, 2.1s, 3s, 1m4s.
func seconds(d time.Duration) string {
	switch {
	case d == 0:
		return "0s"
	case d < 0:
		return "-" + seconds(-d)
	case d < time.Second:
		return fmt.Sprintf("%dms", d.Milliseconds())
	case d < time.Minute && d%time.Second == 0:
		return fmt.Sprintf("%ds", d/time.Second)
	case d < time.Minute:
		return fmt.Sprintf("%.1fs", d.Seconds())
	default:
		return d.Round(time.Second).String()
	}
}

// naturalLess orders seat-2 before seat-10.
func naturalLess(a, b string) bool {
	for a != "" && b != "" {
		da, db := digits(a), digits(b)
		if da > 0 && db > 0 {
			na, nb := strings.TrimLeft(a[:da], "0"), strings.TrimLeft(b[:db], "0")
			if len(na) != len(nb) {
				return len(na) < len(nb)
			}
			if na != nb {
				return na < nb
			}
			a, b = a[da:], b[db:]
			continue
		}
		if a[0] != b[0] {
			return a[0] < b[0]
		}
		a, b = a[1:], b[1:]
	}
	return len(a) < len(b)
}

func digits(s string) int {
	i := 0
	for i < len(s) && s[i] >= '0' && s[i] <= '9' {
		i++
	}
	return i
}

func sortMachines(ms []bootv1.Machine) {
	sort.SliceStable(ms, func(i, j int) bool {
		if ms[i].Namespace != ms[j].Namespace {
			return ms[i].Namespace < ms[j].Namespace
		}
		return naturalLess(ms[i].Name, ms[j].Name)
	})
}

func sortSessions(ss []bootv1.BootSession) {
	sort.SliceStable(ss, func(i, j int) bool {
		if ss[i].Namespace != ss[j].Namespace {
			return ss[i].Namespace < ss[j].Namespace
		}
		return naturalLess(ss[i].Name, ss[j].Name)
	})
}

func condition(cs []metav1.Condition, t string) *metav1.Condition {
	for i := range cs {
		if cs[i].Type == t {
			return &cs[i]
		}
	}
	return nil
}

// finished says whether a session is over (stopped or failed).
func finished(s *bootv1.BootSession) bool {
	return s.Status.Phase == bootv1.SessionStopped || s.Status.Phase == bootv1.SessionFailed
}
