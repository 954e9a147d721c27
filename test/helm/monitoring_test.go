package helm

// The chart's monitoring (docs/monitoring.md): the objects render only when
// asked for; the alerts pass promtool's check and its unit tests (one file
// per alert in testdata/monitoring); and every metric the dashboard and the
// alerts name is exported by a running manager, scraped in the test.

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	"sigs.k8s.io/yaml"

	bootv1 "github.com/ggnet/ggnet/api/v1alpha1"
	"github.com/ggnet/ggnet/internal/fixture"
	"github.com/ggnet/ggnet/internal/scheme"
	"github.com/ggnet/ggnet/internal/testbin"
	"github.com/ggnet/ggnet/internal/testenv"
)

// monitoringOn turns every monitoring object on.
var monitoringOn = []string{
	"--set", "monitoring.serviceMonitor.enabled=true",
	"--set", "monitoring.podMonitor.enabled=true",
	"--set", "monitoring.prometheusRule.enabled=true",
	"--set", "monitoring.dashboard.enabled=true",
}

var monitoringKinds = []string{"ServiceMonitor", "PodMonitor", "PrometheusRule"}

func renderWith(t *testing.T, args ...string) []*unstructured.Unstructured {
	t.Helper()
	out, err := helm(t, append([]string{"template", "ggnet", chart, "-n", "ggnet-system"}, args...)...)
	if err != nil {
		t.Fatalf("helm template %v: %v\n%s", args, err, out)
	}
	return objects(t, out)
}

func dashboardOf(objs []*unstructured.Unstructured) *unstructured.Unstructured {
	return find(objs, "ConfigMap", "ggnet-ggnet-dashboard")
}

func TestMonitoringRender(t *testing.T) {
	g := NewWithT(t)

	// Off by default: nothing that needs the Prometheus Operator's CRDs.
	objs := renderWith(t)
	for _, k := range monitoringKinds {
		g.Expect(find(objs, k, "")).To(BeNil(), k)
	}
	g.Expect(dashboardOf(objs)).To(BeNil())

	// All on.
	objs = renderWith(t, append(monitoringOn, "--set", "monitoring.serviceMonitor.labels.release=prom", "--set", "monitoring.dashboard.annotations.grafana_folder=GGnet")...)
	sm := find(objs, "ServiceMonitor", "ggnet-ggnet-manager")
	g.Expect(sm).NotTo(BeNil())
	g.Expect(sm.GetLabels()).To(HaveKeyWithValue("release", "prom"))
	sel, _, _ := unstructured.NestedStringMap(sm.Object, "spec", "selector", "matchLabels")
	g.Expect(sel).To(Equal(map[string]string{"app.kubernetes.io/instance": "ggnet", "app.kubernetes.io/component": "manager"}))
	eps, _, _ := unstructured.NestedSlice(sm.Object, "spec", "endpoints")
	g.Expect(eps).To(ConsistOf(HaveKeyWithValue("honorLabels", true)), "the fleet metrics keep their own namespace label")
	g.Expect(eps[0]).To(HaveKeyWithValue("port", "metrics"))
	// The Service it selects has that port and those labels.
	svc := find(objs, "Service", "ggnet-ggnet-manager-metrics")
	g.Expect(svc.GetLabels()).To(HaveKeyWithValue("app.kubernetes.io/component", "manager"))
	g.Expect(svc.GetLabels()).To(HaveKeyWithValue("app.kubernetes.io/instance", "ggnet"))

	pm := find(objs, "PodMonitor", "ggnet-ggnet-agents")
	g.Expect(pm).NotTo(BeNil())
	g.Expect(pm.Object["spec"]).To(HaveKeyWithValue("jobLabel", "app.kubernetes.io/component"))
	peps, _, _ := unstructured.NestedSlice(pm.Object, "spec", "podMetricsEndpoints")
	g.Expect(peps).To(ConsistOf(And(HaveKeyWithValue("port", "metrics"), HaveKeyWithValue("honorLabels", true))))
	// It selects both agents' pods, whose containers name their port "metrics".
	for _, ds := range []string{"ggnet-ggnet-boot", "ggnet-ggnet-storage"} {
		d := find(objs, "DaemonSet", ds)
		g.Expect(d).NotTo(BeNil(), ds)
		labels, _, _ := unstructured.NestedStringMap(d.Object, "spec", "template", "metadata", "labels")
		g.Expect(labels["app.kubernetes.io/component"]).To(BeElementOf("boot-agent", "storage-agent"), ds)
		g.Expect(labels).To(HaveKeyWithValue("app.kubernetes.io/instance", "ggnet"), ds)
		containers, _, _ := unstructured.NestedSlice(d.Object, "spec", "template", "spec", "containers")
		ports, _, _ := unstructured.NestedSlice(containers[0].(map[string]any), "ports")
		g.Expect(ports).To(ContainElement(HaveKeyWithValue("name", "metrics")), ds)
	}

	rule := find(objs, "PrometheusRule", "ggnet-ggnet")
	g.Expect(rule).NotTo(BeNil())
	g.Expect(alertNames(t, rule)).To(ConsistOf("GGnetSessionStuck", "GGnetBootFailureRate", "GGnetStorageNodeNearlyFull",
		"GGnetStorageNodeFull", "GGnetStorageAgentSilent", "GGnetAgentNotReady", "GGnetManagerNoLeader"))

	cm := dashboardOf(objs)
	g.Expect(cm).NotTo(BeNil())
	g.Expect(cm.GetNamespace()).To(Equal("ggnet-system"))
	g.Expect(cm.GetLabels()).To(HaveKeyWithValue("grafana_dashboard", "1"), "the sidecar's default label")
	g.Expect(cm.GetAnnotations()).To(HaveKeyWithValue("grafana_folder", "GGnet"))
	data, _, _ := unstructured.NestedStringMap(cm.Object, "data")
	file, err := os.ReadFile(filepath.Join(chart, "dashboards", "ggnet-fleet.json"))
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(data["ggnet-fleet.json"]).To(Equal(strings.TrimRight(string(file), "\n")), "the dashboard as the file has it")
	var dash map[string]any
	g.Expect(json.Unmarshal(file, &dash)).To(Succeed())
	g.Expect(dash).To(HaveKeyWithValue("uid", "ggnet-fleet"))

	// The sidecar's label and the ConfigMap's namespace are configurable.
	objs = renderWith(t, "--set", "monitoring.dashboard.enabled=true", "--set", "monitoring.dashboard.labels.grafana_dashboard=null",
		"--set", "monitoring.dashboard.labels.dashboards=ggnet", "--set", "monitoring.dashboard.namespace=grafana")
	cm = dashboardOf(objs)
	g.Expect(cm.GetNamespace()).To(Equal("grafana"))
	g.Expect(cm.GetLabels()).To(HaveKeyWithValue("dashboards", "ggnet"))
	g.Expect(cm.GetLabels()).NotTo(HaveKey("grafana_dashboard"))
	g.Expect(find(objs, "PrometheusRule", "")).To(BeNil(), "each object has its own switch")

	// The older switch manager.metrics.serviceMonitor renders the same
	// object: with both on there is one ServiceMonitor, not a clash.
	objs = renderWith(t, "--set", "monitoring.serviceMonitor.enabled=true", "--set", "manager.metrics.serviceMonitor.enabled=true")
	n := 0
	for _, o := range objs {
		if o.GetKind() == "ServiceMonitor" {
			n++
		}
	}
	g.Expect(n).To(Equal(1))
	// The older switch alone renders it too, with honorLabels (the fleet
	// metrics' namespace label must not be overwritten by the manager's) and
	// its own interval.
	objs = renderWith(t, "--set", "manager.metrics.serviceMonitor.enabled=true", "--set", "manager.metrics.serviceMonitor.interval=15s")
	old := find(objs, "ServiceMonitor", "ggnet-ggnet-manager")
	g.Expect(old).NotTo(BeNil())
	eps, _, _ = unstructured.NestedSlice(old.Object, "spec", "endpoints")
	g.Expect(eps).To(HaveLen(1))
	g.Expect(eps[0]).To(HaveKeyWithValue("honorLabels", true))
	g.Expect(eps[0]).To(HaveKeyWithValue("interval", "15s"))

	// Bad values are refused with the key's name.
	for bad, want := range map[string]string{
		"monitoring.prometheusRule.bootFailureRatio=2":            "bootFailureRatio",
		"monitoring.prometheusRule.sessionStuckSeconds.Stopped=5": "Stopped",
		"monitoring.podMonitor.interval=often":                    "interval",
		"monitoring.dashboard.typo=1":                             "typo",
	} {
		out, err := helm(t, "template", "ggnet", chart, "--set", bad)
		g.Expect(err).To(HaveOccurred(), bad)
		g.Expect(out).To(ContainSubstring(want), bad)
	}
}

// alertNames lists the alerts of a rendered PrometheusRule, each once (an
// alert may have a rule per phase).
func alertNames(t *testing.T, rule *unstructured.Unstructured) []string {
	var names []string
	seen := map[string]bool{}
	for _, r := range ruleExprs(t, rule) {
		if !seen[r.alert] {
			seen[r.alert] = true
			names = append(names, r.alert)
		}
	}
	return names
}

type ruleExpr struct{ alert, expr string }

func ruleExprs(t *testing.T, rule *unstructured.Unstructured) []ruleExpr {
	t.Helper()
	groups, _, err := unstructured.NestedSlice(rule.Object, "spec", "groups")
	if err != nil || len(groups) == 0 {
		t.Fatalf("PrometheusRule without groups: %v", err)
	}
	var out []ruleExpr
	for _, gr := range groups {
		rules, _, _ := unstructured.NestedSlice(gr.(map[string]any), "rules")
		for _, r := range rules {
			m := r.(map[string]any)
			alert, _ := m["alert"].(string)
			expr, _ := m["expr"].(string)
			out = append(out, ruleExpr{alert, expr})
		}
	}
	return out
}

// promtoolBin builds promtool (hack/promtool.sh, once) and returns its path.
func promtoolBin(t *testing.T) string {
	t.Helper()
	start := time.Now()
	cmd := exec.Command(filepath.Join(testenv.RepoRoot(), "hack", "promtool.sh"))
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("building promtool (hack/promtool.sh): %v", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Logf("promtool built in %v", d.Round(time.Second))
	}
	return strings.TrimSpace(string(out))
}

// TestAlertRules checks the rendered rules with promtool and runs the unit
// tests of testdata/monitoring (one file per alert) against them.
func TestAlertRules(t *testing.T) {
	g := NewWithT(t)
	rule := find(renderWith(t, "--set", "monitoring.prometheusRule.enabled=true"), "PrometheusRule", "")
	g.Expect(rule).NotTo(BeNil())
	spec, err := yaml.Marshal(rule.Object["spec"])
	g.Expect(err).NotTo(HaveOccurred())
	dir := t.TempDir()
	g.Expect(os.WriteFile(filepath.Join(dir, "rules.yaml"), spec, 0o600)).To(Succeed())

	tests, err := filepath.Glob(filepath.Join("testdata", "monitoring", "*_test.yaml"))
	g.Expect(err).NotTo(HaveOccurred())
	var files []string
	covered := map[string]bool{}
	for _, f := range tests {
		b, err := os.ReadFile(f)
		g.Expect(err).NotTo(HaveOccurred())
		dst := filepath.Join(dir, filepath.Base(f))
		g.Expect(os.WriteFile(dst, b, 0o600)).To(Succeed())
		files = append(files, dst)
		covered[strings.TrimSuffix(filepath.Base(f), "_test.yaml")] = true
		// A test file that expects no alert at all could not fail.
		g.Expect(string(b)).To(MatchRegexp(`exp_labels: \{severity: `), f)
	}
	for _, a := range alertNames(t, rule) {
		g.Expect(covered).To(HaveKey(a), "testdata/monitoring/%s_test.yaml: every alert has a promtool unit test", a)
	}

	promtool := promtoolBin(t)
	out, err := exec.Command(promtool, "check", "rules", filepath.Join(dir, "rules.yaml")).CombinedOutput()
	g.Expect(err).NotTo(HaveOccurred(), "promtool check rules:\n%s", out)
	g.Expect(string(out)).To(ContainSubstring("SUCCESS"))
	out, err = exec.Command(promtool, append([]string{"test", "rules"}, files...)...).CombinedOutput()
	g.Expect(err).NotTo(HaveOccurred(), "promtool test rules:\n%s", out)
	t.Logf("promtool test rules:\n%s", out)

	// The unit tests can fail: a threshold moved makes them.
	spec2 := regexp.MustCompile(`(phase="Provisioning"\}\))\s+> 600`).ReplaceAllString(string(spec), "$1 > 6000")
	g.Expect(spec2).NotTo(Equal(string(spec)))
	g.Expect(os.WriteFile(filepath.Join(dir, "rules.yaml"), []byte(spec2), 0o600)).To(Succeed())
	out, err = exec.Command(promtool, "test", "rules", filepath.Join(dir, "GGnetSessionStuck_test.yaml")).CombinedOutput()
	g.Expect(err).To(HaveOccurred(), "promtool test rules passed with a changed threshold:\n%s", out)
}

// PromQL names: what is left of an expression once its strings, label
// matchers, ranges and grouping label lists are gone, that is an
// identifier not called as a function and not a keyword or a number's part.
var (
	promStrings   = regexp.MustCompile(`"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|` + "`[^`]*`")
	promMatchers  = regexp.MustCompile(`\{[^{}]*\}`)
	promRanges    = regexp.MustCompile(`\[[^\[\]]*\]`)
	promGrouping  = regexp.MustCompile(`\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)`)
	promIdent     = regexp.MustCompile(`[A-Za-z_:][A-Za-z0-9_:]*`)
	labelValuesRe = regexp.MustCompile(`^\s*label_values\((.*),\s*[A-Za-z_][A-Za-z0-9_]*\s*\)\s*$`)
	promKeywords  = map[string]bool{"and": true, "or": true, "unless": true, "bool": true, "offset": true, "atan2": true,
		"by": true, "without": true, "on": true, "ignoring": true, "group_left": true, "group_right": true,
		"start": true, "end": true, "inf": true, "nan": true, "Inf": true, "NaN": true}
)

// metricNames returns the metric names a PromQL expression (or a Grafana
// label_values query) selects.
func metricNames(expr string) []string {
	if m := labelValuesRe.FindStringSubmatch(expr); m != nil {
		expr = m[1]
	} else if strings.HasPrefix(strings.TrimSpace(expr), "label_values(") {
		return nil // label_values(label): no metric
	}
	s := promStrings.ReplaceAllString(expr, `""`)
	for prev := ""; prev != s; {
		prev = s
		s = promMatchers.ReplaceAllString(s, " ")
		s = promRanges.ReplaceAllString(s, " ")
		s = promGrouping.ReplaceAllString(s, " ")
	}
	var names []string
	for _, loc := range promIdent.FindAllStringIndex(s, -1) {
		id := s[loc[0]:loc[1]]
		if loc[0] > 0 && strings.ContainsAny(s[loc[0]-1:loc[0]], "0123456789.$") {
			continue // 1e3, 5m, a $variable
		}
		if rest := strings.TrimLeft(s[loc[1]:], " \t\n"); strings.HasPrefix(rest, "(") || promKeywords[id] {
			continue
		}
		names = append(names, id)
	}
	return names
}

func TestMetricNames(t *testing.T) {
	g := NewWithT(t)
	for expr, want := range map[string][]string{
		`sum by (phase) (ggnet_fleet_sessions{namespace=~"$namespace"})`:                   {"ggnet_fleet_sessions"},
		`histogram_quantile(0.99, sum by (le) (rate(a_seconds_bucket[$__rate_interval])))`: {"a_seconds_bucket"},
		`(x - y) / z < 0.1`:                   {"x", "y", "z"},
		`up{job=~"a|b", namespace="ns"} == 0`: {"up"},
		`absent(max(leader{name="m"}) == 1)`:  {"leader"},
		`sum by (namespace) (increase(b[30m])) >= 3 and on (namespace) c offset 5m`: {"b", "c"},
		`time() - t_seconds > 1e3`:                          {"t_seconds"},
		`label_values(ggnet_fleet_sessions, namespace)`:     {"ggnet_fleet_sessions"},
		`label_values(namespace)`:                           nil,
		`sum without (instance) (rate(q{l="sum(by)"}[5m]))`: {"q"},
	} {
		g.Expect(metricNames(expr)).To(Equal(want), expr)
	}
}

// namedMetrics lists every metric the dashboard and the alerts name.
func namedMetrics(t *testing.T) map[string][]string {
	t.Helper()
	named := map[string][]string{} // name -> where
	add := func(where, expr string) {
		for _, n := range metricNames(expr) {
			named[n] = append(named[n], where)
		}
	}
	objs := renderWith(t, monitoringOn...)
	for _, r := range ruleExprs(t, find(objs, "PrometheusRule", "")) {
		add("alert "+r.alert, r.expr)
	}
	var dash struct {
		Panels     []dashPanel `json:"panels"`
		Templating struct {
			List []struct {
				Name  string `json:"name"`
				Type  string `json:"type"`
				Query any    `json:"query"`
			} `json:"list"`
		} `json:"templating"`
	}
	data, _, _ := unstructured.NestedStringMap(dashboardOf(objs).Object, "data")
	if err := json.Unmarshal([]byte(data["ggnet-fleet.json"]), &dash); err != nil {
		t.Fatal(err)
	}
	var walk func([]dashPanel)
	walk = func(ps []dashPanel) {
		for _, p := range ps {
			for _, tg := range p.Targets {
				add("panel "+p.Title, tg.Expr)
			}
			walk(p.Panels)
		}
	}
	walk(dash.Panels)
	for _, v := range dash.Templating.List {
		if v.Type != "query" {
			continue
		}
		switch q := v.Query.(type) {
		case string:
			add("variable "+v.Name, q)
		case map[string]any:
			s, _ := q["query"].(string)
			add("variable "+v.Name, s)
		}
	}
	return named
}

type dashPanel struct {
	Title   string `json:"title"`
	Targets []struct {
		Expr string `json:"expr"`
	} `json:"targets"`
	Panels []dashPanel `json:"panels"`
}

// synthetic are series Prometheus makes for each target itself; no process
// exports them.
var synthetic = map[string]bool{"up": true}

// TestMonitoredMetricsExported runs the manager binary against a real API
// server with a few objects in it, scrapes its /metrics and checks that
// every metric the dashboard and the alerts name is there.
func TestMonitoredMetricsExported(t *testing.T) {
	g := NewWithT(t)
	named := namedMetrics(t)
	for _, want := range []string{"ggnet_fleet_sessions", "ggnet_fleet_boots_total", "ggnet_fleet_storage_node_free_bytes",
		"ggnet_fleet_session_create_to_ready_seconds_bucket", "leader_election_master_status", "workqueue_depth", "up"} {
		g.Expect(named).To(HaveKey(want), "the names found in the dashboard and alerts")
	}

	env, cfg, err := testenv.Start(func(e *envtest.Environment) { e.ControlPlaneStartTimeout = 2 * time.Minute })
	g.Expect(err).NotTo(HaveOccurred())
	t.Cleanup(func() { _ = env.Stop() })
	user, err := env.AddUser(envtest.User{Name: "ggnet-manager", Groups: []string{"system:masters"}}, nil)
	g.Expect(err).NotTo(HaveOccurred())
	kc, err := user.KubeConfig()
	g.Expect(err).NotTo(HaveOccurred())
	kubeconfig := filepath.Join(t.TempDir(), "kubeconfig")
	g.Expect(os.WriteFile(kubeconfig, kc, 0o600)).To(Succeed())

	bin := testbin.Build(t, "./cmd/manager")
	metrics, probes := testbin.FreePort(t), testbin.FreePort(t)
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, bin, "--kubeconfig", kubeconfig, "--leader-elect", "--leader-election-namespace", "default",
		fmt.Sprintf("--metrics-bind-address=127.0.0.1:%d", metrics), fmt.Sprintf("--health-probe-bind-address=127.0.0.1:%d", probes))
	var logs strings.Builder
	cmd.Stdout, cmd.Stderr = &logs, &logs
	g.Expect(cmd.Start()).To(Succeed())
	t.Cleanup(func() {
		cancel()
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("manager log:\n%s", logs.String())
		}
	})

	// What makes every series exist: a storage node as its agent shows it,
	// an Image with a replica, Machines, a session stopped before it booted
	// (a boot result: cancelled) and one that waits.
	c, err := client.New(cfg, client.Options{Scheme: scheme.New()})
	g.Expect(err).NotTo(HaveOccurred())
	ns := "cafe"
	g.Expect(c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}})).To(Succeed())
	g.Expect(c.Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "st-1", Annotations: map[string]string{
		bootv1.StorageAnnotation: `{"capacityBytes":1000000,"freeBytes":250000,"reserveBytes":100000,"replicaBytes":600000,"overlayBytes":150000,"overlays":0,"updated":"2026-11-27T08:00:00Z"}`,
	}}})).To(Succeed())
	img := fixture.Image(ns, "win11")
	g.Expect(c.Create(ctx, img)).To(Succeed())
	img.Status.Replicas = []bootv1.ImageReplica{{Node: "st-2", State: bootv1.ReplicaDownloading}}
	g.Expect(c.Status().Update(ctx, img)).To(Succeed())
	g.Expect(c.Create(ctx, fixture.Machine(ns, "pc1"))).To(Succeed())
	g.Expect(c.Create(ctx, fixture.Machine(ns, "pc2", fixture.WithMAC("52:54:00:12:34:57"), fixture.WithAddress("10.20.0.32")))).To(Succeed())
	s := fixture.Session(ns, "s1", "pc1", "win11")
	g.Expect(c.Create(ctx, s)).To(Succeed())
	// s2 stays Pending (the Image has no Ready replica): a live phase.
	g.Expect(c.Create(ctx, fixture.Session(ns, "s2", "pc2", "win11"))).To(Succeed())

	scrape := func() map[string]bool {
		body, err := testbin.WaitHTTP(fmt.Sprintf("http://127.0.0.1:%d/metrics", metrics), 30*time.Second)
		g.Expect(err).NotTo(HaveOccurred())
		return sampleNames(body)
	}
	g.Eventually(scrape, 60*time.Second, 500*time.Millisecond).Should(HaveKey("ggnet_fleet_session_phase_longest_seconds"), "the leader exports the fleet gauges")
	g.Eventually(func() error {
		if err := c.Get(ctx, client.ObjectKeyFromObject(s), s); err != nil {
			return err
		}
		s.Spec.Stopped = true
		return c.Update(ctx, s)
	}, 10*time.Second).Should(Succeed())

	var missing []string
	g.Eventually(func() []string {
		have := scrape()
		missing = missing[:0]
		for n, where := range named {
			if !have[n] && !synthetic[n] {
				missing = append(missing, fmt.Sprintf("%s (%s)", n, strings.Join(where, "; ")))
			}
		}
		sort.Strings(missing)
		return missing
	}, 60*time.Second, time.Second).Should(BeEmpty(), "named by the dashboard or the alerts but not exported by the manager")
	t.Logf("%d metric names in the dashboard and alerts, all exported (up is Prometheus's own)", len(named))
}

// sampleNames reads the sample names of a text exposition (a histogram's
// are its _bucket, _sum and _count).
func sampleNames(body string) map[string]bool {
	names := map[string]bool{}
	sc := bufio.NewScanner(strings.NewReader(body))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		l := sc.Text()
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		if i := strings.IndexAny(l, "{ "); i > 0 {
			names[l[:i]] = true
		}
	}
	return names
}
