// Package kit holds what the session benchmarks (test/benchmark/sessions,
// test/benchmark/latency) share: Prometheus scrapes of kube-apiserver, the
// manager and the storage agent (API writes by verb and resource, histogram
// deltas), the kube-apiserver audit log (who wrote what, when), the CPU time
// of processes, and percentiles.
package kit

import (
	"fmt"
	"io"
	"math"
	"net/http"
	"slices"
	"sort"
	"strings"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// Metrics is one scrape: metric families by name.
type Metrics map[string]*dto.MetricFamily

// Scrape GETs url with hc (for kube-apiserver: an authenticated client of
// the envtest admin; for the manager and the agent: plain HTTP).
func Scrape(hc *http.Client, url string) (Metrics, error) {
	resp, err := hc.Get(url)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return nil, fmt.Errorf("GET %s: %s %s", url, resp.Status, b)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	mf, err := p.TextToMetricFamilies(resp.Body)
	return Metrics(mf), err
}

// Label is the value of a series' label name ("" when it has none).
func Label(m *dto.Metric, name string) string { return label(m, name) }

func label(m *dto.Metric, name string) string {
	for _, l := range m.GetLabel() {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}

// match reports whether m has every label of want (name=value).
func match(m *dto.Metric, want map[string]string) bool {
	for k, v := range want {
		if label(m, k) != v {
			return false
		}
	}
	return true
}

// WriteKey is one kind of API write: verb, resource and subresource.
type WriteKey struct {
	Verb, Resource, Subresource string
}

func (k WriteKey) String() string {
	r := k.Resource
	if k.Subresource != "" {
		r += "/" + k.Subresource
	}
	return k.Verb + " " + r
}

// writeVerbs are the verbs of apiserver_request_total that change state
// (it names them by HTTP method; APPLY is a PATCH of server-side apply), and
// the API verb each is.
var writeVerbs = map[string]string{"POST": "create", "PUT": "update", "PATCH": "patch", "APPLY": "apply", "DELETE": "delete"}

// APIWrites is the number of writes kube-apiserver served between two
// scrapes of its /metrics (apiserver_request_total, every response code),
// by verb, resource and subresource.
func APIWrites(before, after Metrics) map[WriteKey]float64 {
	count := func(ms Metrics) map[WriteKey]float64 {
		out := map[WriteKey]float64{}
		for _, m := range ms["apiserver_request_total"].GetMetric() {
			v := writeVerbs[label(m, "verb")]
			if v == "" {
				continue
			}
			out[WriteKey{v, label(m, "resource"), label(m, "subresource")}] += m.GetCounter().GetValue()
		}
		return out
	}
	b, a := count(before), count(after)
	for k, v := range b {
		a[k] -= v
		if a[k] == 0 {
			delete(a, k)
		}
	}
	return a
}

// APIConflicts is the number of write responses with code 409 between two
// scrapes, by verb, resource and subresource.
func APIConflicts(before, after Metrics) map[WriteKey]float64 {
	count := func(ms Metrics) map[WriteKey]float64 {
		out := map[WriteKey]float64{}
		for _, m := range ms["apiserver_request_total"].GetMetric() {
			v := writeVerbs[label(m, "verb")]
			if v == "" || label(m, "code") != "409" {
				continue
			}
			out[WriteKey{v, label(m, "resource"), label(m, "subresource")}] += m.GetCounter().GetValue()
		}
		return out
	}
	b, a := count(before), count(after)
	for k, v := range b {
		a[k] -= v
		if a[k] == 0 {
			delete(a, k)
		}
	}
	return a
}

// SortedKeys returns the keys of m, most first.
func SortedKeys(m map[WriteKey]float64) []WriteKey {
	return SortedByValue(m, func(a, b WriteKey) bool { return a.String() < b.String() })
}

// SortedByValue returns the keys of m, highest value first, ties in the
// order of less.
func SortedByValue[K comparable](m map[K]float64, less func(a, b K) bool) []K {
	keys := make([]K, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		if m[keys[i]] != m[keys[j]] {
			return m[keys[i]] > m[keys[j]]
		}
		return less(keys[i], keys[j])
	})
	return keys
}

// Hist is the change of a histogram (summed over the series that match)
// between two scrapes.
type Hist struct {
	Count float64
	Sum   float64
	// bounds and cum are the cumulative bucket counts.
	bounds, cum []float64
}

// HistDelta is the change of histogram name's series matching want.
func HistDelta(before, after Metrics, name string, want map[string]string) Hist {
	get := func(ms Metrics) Hist {
		var h Hist
		byBound := map[float64]float64{}
		for _, m := range ms[name].GetMetric() {
			if !match(m, want) || m.GetHistogram() == nil {
				continue
			}
			hg := m.GetHistogram()
			h.Count += float64(hg.GetSampleCount())
			h.Sum += hg.GetSampleSum()
			for _, b := range hg.GetBucket() {
				byBound[b.GetUpperBound()] += float64(b.GetCumulativeCount())
			}
		}
		for b := range byBound {
			h.bounds = append(h.bounds, b)
		}
		slices.Sort(h.bounds)
		for _, b := range h.bounds {
			h.cum = append(h.cum, byBound[b])
		}
		return h
	}
	b, a := get(before), get(after)
	a.Count -= b.Count
	a.Sum -= b.Sum
	for i, bound := range a.bounds {
		if j := slices.Index(b.bounds, bound); j >= 0 {
			a.cum[i] -= b.cum[j]
		}
	}
	return a
}

// Mean is the mean observation.
func (h Hist) Mean() time.Duration {
	if h.Count == 0 {
		return 0
	}
	return seconds(h.Sum / h.Count)
}

// Quantile estimates quantile q from the buckets (linear within a bucket,
// as Prometheus' histogram_quantile does).
func (h Hist) Quantile(q float64) time.Duration {
	if h.Count == 0 {
		return 0
	}
	rank := q * h.Count
	prevBound, prevCum := 0.0, 0.0
	for i, b := range h.bounds {
		if h.cum[i] >= rank {
			if math.IsInf(b, 1) {
				return seconds(prevBound)
			}
			if h.cum[i] == prevCum {
				return seconds(b)
			}
			return seconds(prevBound + (b-prevBound)*(rank-prevCum)/(h.cum[i]-prevCum))
		}
		prevBound, prevCum = b, h.cum[i]
	}
	return seconds(prevBound)
}

// String is "n=… mean … p50 … p99 …".
func (h Hist) String() string {
	return fmt.Sprintf("n=%.0f mean %s p50 ~%s p99 ~%s", h.Count, Round(h.Mean()), Round(h.Quantile(0.5)), Round(h.Quantile(0.99)))
}

// CounterDelta is the change of counter name's series matching want.
func CounterDelta(before, after Metrics, name string, want map[string]string) float64 {
	sum := func(ms Metrics) float64 {
		var s float64
		for _, m := range ms[name].GetMetric() {
			if match(m, want) {
				s += m.GetCounter().GetValue()
			}
		}
		return s
	}
	return sum(after) - sum(before)
}

// Gauge is the sum of gauge name's series matching want.
func Gauge(ms Metrics, name string, want map[string]string) float64 {
	var s float64
	for _, m := range ms[name].GetMetric() {
		if match(m, want) {
			s += m.GetGauge().GetValue()
		}
	}
	return s
}

func seconds(s float64) time.Duration { return time.Duration(s * float64(time.Second)) }

// Round rounds a duration for print: to 10 µs below 1 ms, to 0.1 ms below
// 100 ms, else to 1 ms.
func Round(d time.Duration) time.Duration {
	if d < time.Millisecond {
		return d.Round(10 * time.Microsecond)
	}
	if d < 100*time.Millisecond {
		return d.Round(100 * time.Microsecond)
	}
	return d.Round(time.Millisecond)
}

// Percentiles holds sorted durations.
type Percentiles []time.Duration

// NewPercentiles sorts a copy of d.
func NewPercentiles(d []time.Duration) Percentiles {
	p := slices.Clone(d)
	slices.Sort(p)
	return p
}

// At is the q-quantile (nearest rank).
func (p Percentiles) At(q float64) time.Duration {
	if len(p) == 0 {
		return 0
	}
	i := int(math.Ceil(q*float64(len(p)))) - 1
	return p[min(len(p)-1, max(0, i))]
}

// String is "p50 … p99 … max …".
func (p Percentiles) String() string {
	if len(p) == 0 {
		return "no samples"
	}
	return fmt.Sprintf("p50 %s  p99 %s  max %s", Round(p.At(0.5)), Round(p.At(0.99)), Round(p[len(p)-1]))
}

// Table prints rows with columns padded.
func Table(w io.Writer, rows [][]string) {
	width := map[int]int{}
	for _, r := range rows {
		for i, c := range r {
			width[i] = max(width[i], len(c))
		}
	}
	for _, r := range rows {
		var b strings.Builder
		for i, c := range r {
			if i > 0 {
				b.WriteString("  ")
			}
			b.WriteString(c)
			if i < len(r)-1 {
				b.WriteString(strings.Repeat(" ", width[i]-len(c)))
			}
		}
		fmt.Fprintln(w, b.String())
	}
}
