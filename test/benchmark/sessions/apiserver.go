package main

import (
	"bufio"
	"bytes"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/ggnet/ggnet/test/benchmark/sessions/kit"
)

// apiserverProfile takes kube-apiserver's CPU profile for seconds (its
// /debug/pprof, on by default, for an authorized client: hc is the envtest
// admin's; kube-apiserver counts /debug/pprof/ as long-running, so no
// request timeout cuts it short) and writes it to path.
func apiserverProfile(hc *http.Client, host string, seconds int, path string) error {
	return fetchWith(hc, fmt.Sprintf("%s/debug/pprof/profile?seconds=%d", strings.TrimRight(host, "/"), seconds), path)
}

// profileGroup is a kind of work in kube-apiserver: a sample counts for it
// when its stack has a frame matching every one of all.
type profileGroup struct {
	name string
	all  []*regexp.Regexp
}

func group(name string, all ...string) profileGroup {
	g := profileGroup{name: name}
	for _, a := range all {
		g.all = append(g.all, regexp.MustCompile(a))
	}
	return g
}

const (
	reWatchServe = `endpoints/handlers\.\(\*WatchServer\)|endpoints/handlers\.serveWatch`
	reJSON       = `^encoding/json\.|^sigs\.k8s\.io/json|runtime/serializer/json\.|unstructured\.\(?\*?[uU]nstructuredJSONScheme|k8s\.io/apimachinery/pkg/util/json\.|json-iterator`
	reProto      = `runtime/serializer/protobuf\.|^google\.golang\.org/protobuf/|gogo/protobuf|\)\.(Marshal|MarshalToSizedBuffer|Unmarshal|Size)$`
	reGC         = `^runtime\.(gcBgMarkWorker|gcAssistAlloc|gcDrain|bgsweep|bgscavenge|markroot|scan[oO]bject|gcMarkDone|gcStart)`
)

// whereGroups split the samples by what the goroutine was doing, first
// match wins (so they add up to the whole). A write's work runs in two
// goroutines: the handler's (the filters, reading and decoding the body)
// and finishRequest's (patching, validating, field management, the etcd
// transaction); both have the handler's closure (named after the function
// it was inlined into: handlers.PatchResource.func1, or
// (*crdHandler).serveStatus.PatchResource.func3 for a custom resource's
// status).
var whereGroups = []profileGroup{
	group("GC background work (mark workers, sweeper, scavenger)", `^runtime\.(gcBgMarkWorker|bgsweep|bgscavenge)$`),
	group("serving watches (WatchServer: encode each event and send it to each watcher)", reWatchServe),
	group("patch and apply requests (handler, patch, validation, managed fields, etcd)", `handlers\.\(\*patcher\)|[./]PatchResource\.func`),
	group("create requests", `[./](createHandler|CreateResource|CreateNamedResource)\.func`),
	group("update and delete requests", `[./](UpdateResource|DeleteResource|DeleteCollection)\.func`),
	group("get and list requests", `[./](getResourceHandler|ListResource|GetResource)\.func`),
	group("request filters outside a handler (authn x509, authz, flow control, routing, /metrics)", `k8s\.io/apiserver/pkg/(server|endpoints)/filters\.|DefaultBuildHandlerChain`),
	group("watch cache (storage/cacher: take in etcd's events, filter, dispatch to watchers)", `k8s\.io/apiserver/pkg/storage/cacher\.`),
	group("etcd watch decode (storage/etcd3: etcd's events to objects)", `k8s\.io/apiserver/pkg/storage/etcd3\.`),
	group("etcd client and gRPC outside a request", `^go\.etcd\.io/etcd/client|^google\.golang\.org/grpc`),
	group("HTTP/2 and TLS connections outside a handler (frames in and out)", `^golang\.org/x/net/http2|^net/http\.|^crypto/tls\.`),
}

// kindGroups are kinds of work across those; they overlap (a sample counts
// for each whose frames its stack has).
var kindGroups = []profileGroup{
	group("JSON encode/decode, any", reJSON),
	group("  of it in serving watches", reJSON, reWatchServe),
	group("protobuf encode/decode, any", reProto),
	group("CRD decode with schema coercion (request bodies, etcd's objects)", `apiextensions-apiserver/pkg/apiserver\.(schemaCoercingDecoder|\(\*unstructuredSchemaCoercer\))`),
	group("custom resources' status writes (StatusREST.Update: read, patch, validate, managed fields, etcd)", `customresource\.\(\*StatusREST\)\.Update`),
	group("applying a patch to the current object", `endpoints/handlers\.\(\*(jsonPatcher|smpPatcher|applyPatcher)\)|json-patch`),
	group("CRD validation (OpenAPI schema, ratcheting, CEL)", `apiextensions-apiserver/pkg/apiserver/(validation|schema/cel)|kube-openapi/pkg/validation|k8s\.io/apiserver/pkg/cel|cel-go`),
	group("managed fields (field manager, structured-merge-diff)", `managedfields|fieldmanager|structured-merge-diff`),
	group("unstructured <-> typed conversion", `runtime\.\(\*unstructuredConverter\)`),
	group("admission", `k8s\.io/apiserver/pkg/admission`),
	group("authentication and authorization", `k8s\.io/apiserver/pkg/(authentication|authorization)/|plugin/pkg/auth/authorizer`),
	group("etcd client and gRPC", `^go\.etcd\.io/etcd/client|^google\.golang\.org/grpc`),
	group("GC (background and assists)", reGC),
	group("memory allocation (mallocgc, with its assists)", `^runtime\.mallocgc$`),
	group("TLS and crypto", `^crypto/|^vendor/golang\.org/x/crypto`),
	group("HTTP/2 and HTTP", `^golang\.org/x/net/http2\.|^net/http\.`),
	group("syscalls (network reads and writes, futex)", `^syscall\.|^internal/runtime/syscall|^runtime\.futex$`),
	group("audit", `k8s\.io/apiserver/pkg/audit`),
}

// stack is one sample of a profile: its value in ms and its frames.
type stack struct {
	ms     float64
	frames []string
}

// readTraces reads a CPU profile's samples through go tool pprof -traces:
// each sample after a "-----------+---" line, its value in the first 10
// columns of its first frame's line, one frame a line from the leaf up,
// labels (none in kube-apiserver's) as "key:  value" lines.
func readTraces(profile string) ([]stack, error) {
	out, err := exec.Command("go", "tool", "pprof", "-traces", "-unit=ms", profile).Output()
	if err != nil {
		return nil, err
	}
	var (
		stacks []stack
		cur    *stack
	)
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		l := sc.Text()
		switch {
		case strings.HasPrefix(l, "-----------+"):
			stacks = append(stacks, stack{})
			cur = &stacks[len(stacks)-1]
		case cur == nil || len(l) < 14 || l[10:13] != "   ":
			// The header, labels.
		default:
			if v := strings.TrimSpace(l[:10]); v != "" {
				cur.ms, err = strconv.ParseFloat(strings.TrimSuffix(v, "ms"), 64)
				if err != nil {
					return nil, fmt.Errorf("go tool pprof -traces: %q: %w", l, err)
				}
			}
			cur.frames = append(cur.frames, strings.TrimSuffix(l[13:], " (inline)"))
		}
	}
	// The last separator closes the last sample.
	return slices.DeleteFunc(stacks, func(s stack) bool { return len(s.frames) == 0 }), sc.Err()
}

func (g profileGroup) matches(s stack) bool {
	for _, re := range g.all {
		if !slices.ContainsFunc(s.frames, re.MatchString) {
			return false
		}
	}
	return true
}

// printAPIServerProfile prints go tool pprof -top of kube-apiserver's
// profile and where its CPU went: by what the goroutine was doing
// (whereGroups) and by kind of work (kindGroups), as shares of the
// profile, in CPU-s and in ms per session.
// storm is the time from the first create to the last Ready.
func printAPIServerProfile(path, bin string, seconds, n int, storm time.Duration) {
	fmt.Printf("\nkube-apiserver CPU profile, %d s from the first create (%s; the last Ready came after %s):\n", seconds, path, storm.Round(100*time.Millisecond))
	args := []string{"tool", "pprof", "-top", "-nodecount=25"}
	if bin != "" {
		args = append(args, bin)
	}
	top, _ := exec.Command("go", append(args, path)...).CombinedOutput()
	fmt.Println(indent(string(top)))
	stacks, err := readTraces(path)
	if err != nil {
		fmt.Println("  reading the profile's stacks:", err)
		return
	}
	var total float64
	for _, s := range stacks {
		total += s.ms
	}
	if total == 0 {
		return
	}
	row := func(name string, ms float64) []string {
		return []string{fmt.Sprintf("%.0f%%", 100*ms/total), fmt.Sprintf("%.1f", ms/1000), fmt.Sprintf("%.1f", ms/float64(n)), name}
	}
	where := make([]float64, len(whereGroups)+1)
	for _, s := range stacks {
		i := 0
		for i < len(whereGroups) && !whereGroups[i].matches(s) {
			i++
		}
		where[i] += s.ms
	}
	fmt.Printf("\nkube-apiserver's CPU in the profile by what it was doing (first match; %.1f CPU-s sampled in %d s; ms/session: divided by all %d sessions):\n", total/1000, seconds, n)
	rows := [][]string{{"share", "CPU-s", "ms/session", "doing"}}
	for i, g := range whereGroups {
		rows = append(rows, row(g.name, where[i]))
	}
	rows = append(rows, row("other (runtime scheduler, timers, the rest)", where[len(whereGroups)]))
	kit.Table(os.Stdout, rows)
	fmt.Printf("\nby kind of work (a sample counts for each kind on its stack; they overlap):\n")
	rows = [][]string{{"share", "CPU-s", "ms/session", "kind"}}
	for _, g := range kindGroups {
		var ms float64
		for _, s := range stacks {
			if g.matches(s) {
				ms += s.ms
			}
		}
		rows = append(rows, row(g.name, ms))
	}
	kit.Table(os.Stdout, rows)
}

// printWatchers prints how many watches kube-apiserver served before the
// storm, by resource (apiserver_longrunning_requests{verb="WATCH"}: its own
// loopback informers among them), and how many watch events it sent per
// session between two scrapes, by resource (apiserver_watch_events_total),
// with their mean size (apiserver_watch_events_sizes).
func printWatchers(before, after kit.Metrics, n int) {
	watchers := map[string]float64{}
	for _, m := range before["apiserver_longrunning_requests"].GetMetric() {
		if kit.Label(m, "verb") == "WATCH" {
			watchers[resourceOf(m)] += m.GetGauge().GetValue()
		}
	}
	if keys := sortedByValue(watchers); len(keys) > 0 {
		fmt.Printf("\nkube-apiserver's watches before the storm, by resource (apiserver_longrunning_requests{verb=\"WATCH\"}):\n")
		var parts []string
		for _, k := range keys {
			if watchers[k] >= 1 {
				parts = append(parts, fmt.Sprintf("%s %.0f", k, watchers[k]))
			}
		}
		fmt.Println(indent(wrap(parts, 110)))
	}
	count := func(ms kit.Metrics) (events, bytes, sized map[string]float64) {
		events, bytes, sized = map[string]float64{}, map[string]float64{}, map[string]float64{}
		for _, m := range ms["apiserver_watch_events_total"].GetMetric() {
			events[resourceOf(m)] += m.GetCounter().GetValue()
		}
		for _, m := range ms["apiserver_watch_events_sizes"].GetMetric() {
			bytes[resourceOf(m)] += m.GetHistogram().GetSampleSum()
			sized[resourceOf(m)] += float64(m.GetHistogram().GetSampleCount())
		}
		return events, bytes, sized
	}
	e0, b0, s0 := count(before)
	events, bytes, sized := count(after)
	for k := range events {
		events[k] -= e0[k]
		bytes[k] -= b0[k]
		sized[k] -= s0[k]
	}
	rows := [][]string{{"events/session", "mean bytes", "resource"}}
	var sum float64
	for _, k := range sortedByValue(events) {
		if events[k] < float64(n)/200 {
			continue // a resource's own churn (leases, the API server's objects)
		}
		size := "?"
		if sized[k] > 0 {
			size = fmt.Sprintf("%.0f", bytes[k]/sized[k])
		}
		sum += events[k]
		rows = append(rows, []string{fmt.Sprintf("%.2f", events[k]/float64(n)), size, k})
	}
	if len(rows) > 1 {
		fmt.Printf("\nwatch events kube-apiserver sent, per session, from before the first create until the writes settled (apiserver_watch_events_total):\n")
		rows = append(rows, []string{fmt.Sprintf("%.2f", sum/float64(n)), "", "total"})
		kit.Table(os.Stdout, rows)
	}
}

// resourceOf names a series by its resource (or, in older releases, kind)
// and group labels.
func resourceOf(m *dto.Metric) string {
	r := kit.Label(m, "resource")
	if r == "" {
		r = kit.Label(m, "kind")
	}
	if g := kit.Label(m, "group"); g != "" {
		r += "." + g
	}
	return r
}

// sortedByValue returns m's keys, highest value first (kit.SortedByValue).
func sortedByValue(m map[string]float64) []string {
	return kit.SortedByValue(m, func(a, b string) bool { return a < b })
}

// wrap joins parts with ", " into lines of at most width characters.
func wrap(parts []string, width int) string {
	var b strings.Builder
	line := 0
	for i, p := range parts {
		if i > 0 {
			b.WriteString(",")
			line++
			if line+1+len(p) > width {
				b.WriteString("\n")
				line = 0
			} else {
				b.WriteString(" ")
				line++
			}
		}
		b.WriteString(p)
		line += len(p)
	}
	return b.String()
}
