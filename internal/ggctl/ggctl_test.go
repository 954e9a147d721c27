package ggctl

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/cli-runtime/pkg/genericiooptions"
	"k8s.io/client-go/util/retry"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/yaml"

	bootv1 "github.com/ggnet/ggnet/api/v1alpha1"
	"github.com/ggnet/ggnet/internal/fixture"
	"github.com/ggnet/ggnet/internal/ipxe"
	"github.com/ggnet/ggnet/internal/scheme"
	"github.com/ggnet/ggnet/internal/testenv"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden from the outputs")

var (
	env   *envtest.Environment
	admin client.Client
	// kubeconfig files by user: admin (system:masters), viewer
	// (ggnet-viewer in the namespaces the tests bind), operator
	// (ggnet-operator).
	kubeconfigs = map[string]string{}
)

// asPlugin, set in the environment, makes the test binary the plugin
// itself (for `room -w` in tmux): no second build.
const asPlugin = "GGCTL_TEST_AS_PLUGIN"

func TestMain(m *testing.M) {
	if os.Getenv(asPlugin) == "1" {
		os.Exit(Main(os.Args[1:], StdStreams()))
	}
	flag.Parse()
	os.Exit(testMain(m))
}

func testMain(m *testing.M) int {
	log.SetLogger(logr.Discard())
	// A busy machine (make test runs packages in parallel) can take more
	// than envtest's default 20 s to start the API server.
	e, cfg, err := testenv.Start(func(e *envtest.Environment) {
		e.ControlPlaneStartTimeout, e.ControlPlaneStopTimeout = 2*time.Minute, time.Minute
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	env = e
	defer func() { _ = env.Stop() }()
	if admin, err = client.New(cfg, client.Options{Scheme: scheme.New()}); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	dir, err := os.MkdirTemp("", "ggctl-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	for name, groups := range map[string][]string{"admin": {"system:masters"}, "viewer": nil, "operator": nil} {
		u, err := env.AddUser(envtest.User{Name: "ggctl-" + name, Groups: groups}, nil)
		if err == nil {
			var kc []byte
			if kc, err = u.KubeConfig(); err == nil {
				kubeconfigs[name] = filepath.Join(dir, name+".kubeconfig")
				err = os.WriteFile(kubeconfigs[name], kc, 0o600)
			}
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "adding user", name, err)
			return 1
		}
	}
	if err := applyUserRoles(context.Background()); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return m.Run()
}

// applyUserRoles creates the chart's user ClusterRoles as rendered into
// config/deploy/ggnet.yaml (make manifests renders charts/ggnet there).
func applyUserRoles(ctx context.Context) error {
	f, err := os.Open(filepath.Join(testenv.RepoRoot(), "config", "deploy", "ggnet.yaml"))
	if err != nil {
		return err
	}
	defer f.Close()
	dec := utilyaml.NewYAMLOrJSONDecoder(f, 4096)
	found := 0
	for {
		var role rbacv1.ClusterRole
		if err := dec.Decode(&role); err != nil {
			if err.Error() == "EOF" {
				break
			}
			return err
		}
		if role.Kind != "ClusterRole" || (role.Name != viewerRole && role.Name != operatorRole) {
			continue
		}
		role.ResourceVersion = ""
		if err := admin.Create(ctx, &role); err != nil {
			return err
		}
		found++
	}
	if found != 2 {
		return fmt.Errorf("config/deploy/ggnet.yaml: found %d of the roles %s and %s", found, viewerRole, operatorRole)
	}
	return nil
}

// result is one run of the plugin.
type result struct {
	out, err string
	code     int
}

// run runs the plugin as user with the clock at now, the time zone UTC and
// an 100-column terminal.
func run(t *testing.T, user string, now time.Time, args ...string) result {
	t.Helper()
	return runCtx(t, context.Background(), user, now, args...)
}

func runCtx(t *testing.T, ctx context.Context, user string, now time.Time, args ...string) result {
	t.Helper()
	var out, errOut bytes.Buffer
	code := Run(append([]string{"--kubeconfig", kubeconfigs[user]}, args...),
		genericiooptions.IOStreams{In: strings.NewReader(""), Out: &out, ErrOut: &errOut},
		Options{Now: func() time.Time { return now }, Location: time.UTC, Width: 100, Context: ctx})
	return result{out.String(), errOut.String(), code}
}

// golden compares got with testdata/name.golden (rewritten with -update).
func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name+".golden")
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test ./internal/ggctl -run %s -update to write it)", err, t.Name())
	}
	if got != string(want) {
		t.Errorf("output differs from %s (-update rewrites it):\n--- got\n%s\n--- want\n%s", path, got, want)
	}
}

func newNamespace(t *testing.T, name string) {
	t.Helper()
	if err := admin.Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}); err != nil {
		t.Fatal(err)
	}
}

func create(t *testing.T, objs ...client.Object) {
	t.Helper()
	for _, o := range objs {
		if err := admin.Create(context.Background(), o); err != nil {
			t.Fatalf("creating %s: %v", o.GetName(), err)
		}
	}
}

// setStatus re-reads obj and writes its status as mutate leaves it.
func setStatus[T client.Object](t *testing.T, obj T, mutate func(T)) {
	t.Helper()
	ctx := context.Background()
	if err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		if err := admin.Get(ctx, client.ObjectKeyFromObject(obj), obj); err != nil {
			return err
		}
		mutate(obj)
		return admin.Status().Update(ctx, obj)
	}); err != nil {
		t.Fatalf("status of %s: %v", obj.GetName(), err)
	}
}

func cond(typ, status, reason, msg string) metav1.Condition {
	return metav1.Condition{Type: typ, Status: metav1.ConditionStatus(status), Reason: reason, Message: msg,
		LastTransitionTime: metav1.NewTime(time.Date(2026, 11, 27, 10, 0, 0, 0, time.UTC))}
}

// cafe is the golden tests' world: two rooms of seats, two storage nodes,
// sessions in every interesting state. Each session's timeline is its
// creation time plus fixed offsets, so every duration printed is stable;
// now is the newest creation plus 10m (every object created in the minute
// before it, as all are, prints the age "10m").
type cafe struct {
	ns  string
	now time.Time
}

func seedCafe(t *testing.T, ns string) cafe {
	t.Helper()
	newNamespace(t, ns)
	win := fixture.Image(ns, "win11-games")
	win.Labels = map[string]string{bootv1.FamilyLabel: "win11"}
	lin := fixture.Image(ns, "linux-lab")
	create(t, win, lin)
	lt := metav1.NewTime(time.Date(2026, 11, 27, 9, 0, 0, 0, time.UTC))
	setStatus(t, win, func(i *bootv1.Image) {
		i.Status.Phase, i.Status.SizeBytes, i.Status.ReadyReplicas, i.Status.Version = bootv1.ImageReady, 64<<30, 1, 4
		i.Status.Replicas = []bootv1.ImageReplica{
			{Node: "storage-2", State: bootv1.ReplicaDownloading, Reason: "Downloading", Message: "12.0 GiB of 64.0 GiB", LastTransitionTime: &lt,
				BytesDone: 12 << 30, BytesTotal: 64 << 30, BytesPerSecond: 110 << 20, SourceNode: "storage-1"},
			{Node: "storage-1", State: bootv1.ReplicaReady, SizeBytes: 64 << 30, Path: "/var/lib/ggnet/images/win11-games.raw", LastTransitionTime: &lt},
		}
	})
	setStatus(t, lin, func(i *bootv1.Image) {
		i.Status.Phase = bootv1.ImageFailed
		i.Status.Replicas = []bootv1.ImageReplica{{Node: "storage-1", State: bootv1.ReplicaFailed, Reason: bootv1.ChecksumMismatchReason,
			Message: "sha256 of the source is 3f1c…, not the Image's", LastTransitionTime: &lt}}
	})
	for i := 1; i <= 7; i++ {
		room := "main-hall"
		if i > 4 {
			room = "vip"
		}
		m := fixture.Machine(ns, fmt.Sprintf("seat-%d", i), fixture.WithMAC(fmt.Sprintf("52:54:00:aa:00:%02x", i)),
			fixture.WithAddress(fmt.Sprintf("10.20.0.%d", 100+i)), fixture.WithImage("win11-games"))
		m.Labels = map[string]string{"boot.ggnet.io/room": room}
		if i == 6 {
			m.Spec.BootPolicy = bootv1.BootPolicyLocalBoot
		}
		create(t, m)
	}
	type spec struct {
		name, machine, image, node string
		phase                      bootv1.BootSessionPhase
		steps                      int // how many timeline steps it got to
		bootFailed                 bool
	}
	specs := []spec{
		{"seat-1-evening", "seat-1", "win11-games", "storage-1", bootv1.SessionActive, 8, false},
		{"seat-2-evening", "seat-2", "win11-games", "storage-1", bootv1.SessionBooting, 5, false},
		{"seat-3-evening", "seat-3", "win11-games", "storage-2", bootv1.SessionReady, 3, false},
		{"seat-4-evening", "seat-4", "win11-games", "storage-2", bootv1.SessionFailed, 5, true},
		{"seat-4-morning", "seat-4", "win11-games", "storage-1", bootv1.SessionStopped, 10, false},
		{"seat-5-evening", "seat-5", "linux-lab", "", bootv1.SessionPending, 0, false},
	}
	var newest time.Time
	for i, sp := range specs {
		slow := 2 * i // seconds the storage node took more than the first
		s := fixture.Session(ns, sp.name, sp.machine, sp.image)
		s.Labels = map[string]string{bootv1.MachineLabel: sp.machine, bootv1.ImageLabel: sp.image}
		if sp.node != "" {
			s.Labels[bootv1.StorageNodeOfSessionLabel] = sp.node
		}
		if sp.phase == bootv1.SessionStopped {
			s.Spec.Stopped = true
		}
		create(t, s)
		if s.CreationTimestamp.After(newest) {
			newest = s.CreationTimestamp.Time
		}
		mac := fmt.Sprintf("52:54:00:aa:00:%02x", sp.machine[len(sp.machine)-1]-'0')
		setStatus(t, s, func(s *bootv1.BootSession) {
			t0 := s.CreationTimestamp.Time
			at := func(sec int) *metav1.Time { x := metav1.NewTime(t0.Add(time.Duration(sec) * time.Second)); return &x }
			st := &s.Status
			st.Phase, st.MAC = sp.phase, mac
			iqn := "iqn.2026-11.io.ggnet:" + ns + ":" + s.Name
			init := "iqn.2026-11.io.ggnet.initiator:" + sp.machine
			tl := &st.Timeline
			ready := cond(bootv1.ReadyCondition, "False", bootv1.ImageNotReadyReason, "image linux-lab has no Ready replica")
			if sp.steps >= 1 {
				st.StorageNode = sp.node
				tl.Scheduled = at(1)
				ready = cond(bootv1.ReadyCondition, "False", bootv1.WaitingForStorageReason, "waiting for storage node "+sp.node)
			}
			if sp.steps >= 2 {
				tl.StorageReady = at(3 + slow)
				st.Target = &bootv1.ISCSITarget{Portal: "10.20.0.5:3260", IQN: iqn}
				st.InitiatorIQN = init
				st.CHAPSecretRef = &bootv1.LocalObjectReference{Name: s.Name + "-chap"}
			}
			if sp.steps >= 3 {
				tl.Ready = at(4 + slow)
				script, err := ipxe.Render(ipxe.Session{Name: ns + "/" + s.Name, Image: sp.image, Portal: "10.20.0.5:3260", TargetIQN: iqn, InitiatorIQN: init})
				if err != nil {
					t.Fatal(err)
				}
				st.Script = script
				ready = cond(bootv1.ReadyCondition, "True", bootv1.SucceededReason, "ready to boot")
			}
			if sp.steps >= 4 {
				tl.DHCP = at(40 - i)
			}
			if sp.steps >= 5 {
				tl.ScriptServed = at(53)
			}
			if sp.steps >= 6 {
				tl.ISCSILogin = at(54)
				tl.Logins = []bootv1.SessionLogin{{At: *at(54), Initiator: init, Address: "10.20.0.101", SessionID: "1", LoggedOutAt: at(71)}}
			}
			if sp.steps >= 8 {
				tl.Logins = append(tl.Logins, bootv1.SessionLogin{At: *at(70), Initiator: init, Address: "10.20.0.101", SessionID: "2"})
			}
			if sp.steps >= 10 {
				tl.Logins[1].LoggedOutAt = at(3600)
				tl.ISCSILogout = at(3600)
				tl.Stopping, tl.Stopped = at(3605), at(3607)
				ready = cond(bootv1.ReadyCondition, "False", bootv1.StoppedReason, "the session is stopped")
			}
			if sp.bootFailed {
				s.Status.Phase = bootv1.SessionFailed
				ready = cond(bootv1.ReadyCondition, "False", bootv1.SANBootFailedReason, "the machine could not boot from its target")
				st.Conditions = append(st.Conditions, cond(bootv1.BootFailedCondition, "True", bootv1.SANBootFailedReason,
					"the machine's iPXE could not boot from the iSCSI target (iPXE error 0x0f0a6039)"))
			}
			st.Conditions = append(st.Conditions, ready)
		})
	}
	for m, s := range map[string]string{"seat-1": "seat-1-evening", "seat-2": "seat-2-evening", "seat-3": "seat-3-evening"} {
		setStatus(t, &bootv1.Machine{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: m}}, func(m *bootv1.Machine) {
			m.Status.ActiveSession = s
			m.Status.Conditions = []metav1.Condition{cond(bootv1.ReadyCondition, "True", bootv1.SucceededReason, "")}
		})
	}
	setStatus(t, &bootv1.Machine{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "seat-7"}}, func(m *bootv1.Machine) {
		m.Status.Conditions = []metav1.Condition{cond(bootv1.ConflictCondition, "True", bootv1.DuplicateMACReason, "seat-9 in namespace other has MAC 52:54:00:aa:00:07")}
	})
	return cafe{ns: ns, now: newest.Add(10 * time.Minute)}
}

// TestGolden runs every read command against the cafe and compares the
// outputs with testdata/*.golden. It runs first: its -A outputs see only
// its own namespace.
func TestGolden(t *testing.T) {
	c := seedCafe(t, "cafe")
	cases := []struct {
		name string
		args []string
		code int
	}{
		{"ls", []string{"ls"}, 0},
		{"ls-wide", []string{"ls", "-o", "wide"}, 0},
		{"ls-all-namespaces", []string{"ls", "-A"}, 0},
		{"ls-phase", []string{"ls", "--phase", "active,Booting"}, 0},
		{"ls-storage-node", []string{"ls", "--storage-node", "storage-2"}, 0},
		{"ls-image", []string{"ls", "--image", "linux-lab"}, 0},
		{"ls-machine", []string{"ls", "--machine", "seat-4", "-o", "name"}, 0},
		{"ls-label", []string{"ls", "-l", bootv1.StorageNodeOfSessionLabel + "=storage-1"}, 0},
		{"active", []string{"active", "seat-1"}, 0},
		{"active-pending", []string{"active", "seat-5"}, 0},
		{"active-none", []string{"active", "seat-6"}, 1},
		{"script", []string{"script", "seat-1"}, 0},
		{"script-not-ready", []string{"script", "seat-5"}, 0},
		{"script-no-session", []string{"script", "seat-4"}, 0},
		{"script-localboot", []string{"script", "seat-6"}, 0},
		{"script-conflict", []string{"script", "seat-7"}, 0},
		{"timeline", []string{"timeline", "seat-1-evening"}, 0},
		{"timeline-stopped", []string{"timeline", "bootsession/seat-4-morning", "--bar-width", "20"}, 0},
		{"timeline-pending", []string{"timeline", "seat-5-evening"}, 0},
		{"stats", []string{"stats"}, 0},
		{"stats-since", []string{"stats", "-A", "--since", "5m"}, 0},
		{"room", []string{"room"}, 0},
		{"room-vip", []string{"room", "-l", "boot.ggnet.io/room=vip"}, 0},
		{"room-all-namespaces", []string{"room", "-A"}, 0},
		{"images", []string{"images"}, 0},
		{"images-all-namespaces", []string{"images", "-A"}, 0},
		{"usage-phase", []string{"ls", "--phase", "Running"}, 2},
		{"usage-flag", []string{"ls", "--bogus"}, 2},
		{"usage-args", []string{"timeline"}, 2},
		{"usage-both", []string{"start", "seat-1", "-l", "room=vip"}, 2},
		{"not-found", []string{"timeline", "nope"}, 1},
		{"wake-no-session", []string{"wake", "seat-4"}, 1},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := run(t, "admin", c.now, append([]string{"-n", c.ns}, tc.args...)...)
			if r.code != tc.code {
				t.Errorf("exit code %d, want %d; stderr:\n%s", r.code, tc.code, r.err)
			}
			golden(t, tc.name, r.out+"--- stderr\n"+r.err)
		})
	}
}

// TestScriptMasksEveryCredential: the served form of a preview has the
// four CHAP settings, each ****, and nothing else changed.
func TestScriptMasksEveryCredential(t *testing.T) {
	s := ipxe.Session{Name: "cafe/x", Image: "img", Portal: "10.0.0.1", TargetIQN: "iqn.2026-11.io.ggnet:cafe:x", InitiatorIQN: "iqn.2026-11.io.ggnet.initiator:x"}
	preview, err := ipxe.Render(s)
	if err != nil {
		t.Fatal(err)
	}
	s.Credentials = &ipxe.Credentials{Username: "user1", Password: "Secretpassword12", TargetUsername: "tgt1", TargetPassword: "Othersecret12345"}
	served, err := ipxe.Render(s)
	if err != nil {
		t.Fatal(err)
	}
	for _, in := range []string{preview, served} {
		got := MaskScript(in)
		want := strings.NewReplacer("user1", "****", "Secretpassword12", "****", "tgt1", "****", "Othersecret12345", "****").Replace(served)
		if got != want {
			t.Errorf("MaskScript:\n%s\nwant:\n%s", got, want)
		}
	}
}

var generated = regexp.MustCompile(`(seat-\d+)-[a-z0-9]{5}\b`)

// TestStartWaitStop starts sessions for a room with --wait while a stand-in
// for the manager makes them Ready, then stops them by selector with
// --wait while it makes them Stopped; and checks the sessions as created.
func TestStartWaitStop(t *testing.T) {
	ns := "start"
	newNamespace(t, ns)
	create(t, fixture.Image(ns, "win11"), fixture.Image(ns, "linux"))
	setStatus(t, fixture.Image(ns, "win11"), func(i *bootv1.Image) { i.Status.ReadyReplicas = 1 })
	for i := 1; i <= 3; i++ {
		m := fixture.Machine(ns, fmt.Sprintf("seat-%d", i), fixture.WithMAC(fmt.Sprintf("52:54:00:bb:00:%02x", i)),
			fixture.WithAddress(fmt.Sprintf("10.20.1.%d", i)), fixture.WithImage("win11"))
		m.Labels = map[string]string{"boot.ggnet.io/room": "a"}
		if i == 3 {
			m.Labels["boot.ggnet.io/room"] = "b"
			m.Spec.ImageRef = nil
		}
		create(t, m)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// The stand-in manager: each session that appears becomes Ready,
	// each stopped one Stopped.
	go func() {
		for ctx.Err() == nil {
			var list bootv1.BootSessionList
			if admin.List(ctx, &list, client.InNamespace(ns)) == nil {
				for i := range list.Items {
					s := &list.Items[i]
					want := bootv1.SessionReady
					if s.Spec.Stopped {
						want = bootv1.SessionStopped
					}
					if s.Status.Phase != want {
						s.Status.Phase = want
						_ = admin.Status().Update(ctx, s)
					}
				}
			}
			time.Sleep(50 * time.Millisecond)
		}
	}()
	r := run(t, "admin", time.Now(), "-n", ns, "start", "-l", "boot.ggnet.io/room=a", "--writeback", "persist", "--wait", "--timeout", "30s", "--ttl", "1h")
	if r.code != 0 {
		t.Fatalf("start: exit %d\n%s%s", r.code, r.out, r.err)
	}
	got := generated.ReplaceAllString(r.out, "$1-XXXXX")
	want := "bootsession/seat-1-XXXXX created: machine seat-1, image win11, writeback Persist\n" +
		"bootsession/seat-2-XXXXX created: machine seat-2, image win11, writeback Persist\n"
	if !strings.HasPrefix(got, want) || strings.Count(got, " ready (Ready)\n") != 2 {
		t.Errorf("start output:\n%s", r.out)
	}
	var list bootv1.BootSessionList
	if err := admin.List(context.Background(), &list, client.InNamespace(ns)); err != nil {
		t.Fatal(err)
	}
	if len(list.Items) != 2 {
		t.Fatalf("%d sessions, want 2", len(list.Items))
	}
	for _, s := range list.Items {
		m := s.Spec.MachineRef.Name
		if s.Spec.ImageRef.Name != "win11" || s.Spec.Writeback != bootv1.WritebackPersist || s.Labels[bootv1.MachineLabel] != m ||
			s.Labels[bootv1.ImageLabel] != "win11" || s.Spec.TTLSecondsAfterFinished == nil || *s.Spec.TTLSecondsAfterFinished != 3600 {
			t.Errorf("session %s: spec %+v labels %v", s.Name, s.Spec, s.Labels)
		}
	}

	// A machine without an image, and one that does not exist.
	r = run(t, "admin", time.Now(), "-n", ns, "start", "seat-3", "seat-9")
	if r.code != 1 || !strings.Contains(r.err, `machine "seat-9" not found in namespace start`) {
		t.Errorf("start seat-3 seat-9: exit %d\n%s", r.code, r.err)
	}
	r = run(t, "admin", time.Now(), "-n", ns, "start", "seat-3")
	if r.code != 1 || !strings.Contains(r.err, "machine seat-3 has no image (status.image): give --image") {
		t.Errorf("start seat-3: exit %d\n%s", r.code, r.err)
	}
	r = run(t, "admin", time.Now(), "-n", ns, "start", "seat-3", "--image", "nope")
	if r.code != 1 || !strings.Contains(r.err, `image "nope" not found in namespace start`) {
		t.Errorf("start seat-3 --image nope: exit %d\n%s", r.code, r.err)
	}
	// Not Ready in time: the timeout names the session and its state.
	r = run(t, "admin", time.Now(), "-n", ns, "start", "seat-3", "--image", "linux", "--wake", "--wait", "--timeout", "1ms")
	if r.code != 1 || !strings.Contains(r.err, "timed out after 1ms waiting for 1 session(s) to be Ready: seat-3-") ||
		!strings.Contains(r.err, "warning: image linux has no Ready replica yet") {
		t.Errorf("start --timeout 1ms: exit %d\n%s%s", r.code, r.out, r.err)
	}

	// Wake-on-LAN: start --wake sets spec.wake; wake sets it on each
	// machine's current session, and a machine with none is an error.
	r = run(t, "admin", time.Now(), "-n", ns, "wake", "seat-1", "seat-9")
	if r.code != 1 || r.out != "" || !strings.Contains(r.err, `machine "seat-9" not found`) {
		t.Errorf("wake seat-1 seat-9 (a name that does not exist wakes nothing): exit %d\n%s%s", r.code, r.out, r.err)
	}
	r = run(t, "admin", time.Now(), "-n", ns, "wake", "-l", "boot.ggnet.io/room=a")
	if r.code != 0 || strings.Count(r.out, " wakes it now\n") != 2 {
		t.Errorf("wake -l: exit %d\n%s%s", r.code, r.out, r.err)
	}
	if err := admin.List(context.Background(), &list, client.InNamespace(ns)); err != nil {
		t.Fatal(err)
	}
	for _, s := range list.Items {
		if !s.Spec.Wake {
			t.Errorf("session %s of %s: spec.wake not set", s.Name, s.Spec.MachineRef.Name)
		}
	}

	r = run(t, "admin", time.Now(), "-n", ns, "stop", "-l", "boot.ggnet.io/room=a", "--wait", "--timeout", "30s")
	if r.code != 0 || strings.Count(r.out, " stopping (machine seat-") != 2 || strings.Count(r.out, " stopped (Stopped)\n") != 2 {
		t.Errorf("stop -l: exit %d\n%s%s", r.code, r.out, r.err)
	}
	if err := admin.List(context.Background(), &list, client.InNamespace(ns)); err != nil {
		t.Fatal(err)
	}
	for _, s := range list.Items {
		if s.Spec.MachineRef.Name != "seat-3" && !s.Spec.Stopped {
			t.Errorf("session %s not stopped", s.Name)
		}
	}
	r = run(t, "admin", time.Now(), "-n", ns, "stop", "--machine", "seat-1")
	if r.code != 0 || r.out != "machine seat-1 has no session to stop\n" {
		t.Errorf("stop --machine seat-1 again: exit %d\n%s%s", r.code, r.out, r.err)
	}
	r = run(t, "admin", time.Now(), "-n", ns, "stop", "--machine", "seat-3")
	if r.code != 0 || !strings.Contains(r.out, "stopping (machine seat-3)") {
		t.Errorf("stop --machine seat-3: exit %d\n%s%s", r.code, r.out, r.err)
	}
	r = run(t, "admin", time.Now(), "-n", ns, "stop", list.Items[0].Name, "nope")
	if r.code != 1 || !strings.Contains(r.out, "already stopped") || !strings.Contains(r.err, `session "nope" not found`) {
		t.Errorf("stop NAME nope: exit %d\n%s%s", r.code, r.out, r.err)
	}
}

// TestRBAC: with the chart's roles, a ggnet-viewer reads and is told which
// role start and stop need; a ggnet-operator starts and stops.
func TestRBAC(t *testing.T) {
	ctx := context.Background()
	ns := "rbac"
	newNamespace(t, ns)
	create(t, fixture.Image(ns, "win11"), fixture.Machine(ns, "seat-1", fixture.WithMAC("52:54:00:cc:00:01"),
		fixture.WithAddress("10.20.2.1"), fixture.WithImage("win11")), fixture.Session(ns, "seat-1-a", "seat-1", "win11"))
	for user, role := range map[string]string{"viewer": viewerRole, "operator": operatorRole} {
		create(t, &rbacv1.RoleBinding{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "ggctl-" + user},
			RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: role},
			Subjects:   []rbacv1.Subject{{Kind: rbacv1.UserKind, APIGroup: rbacv1.GroupName, Name: "ggctl-" + user}},
		})
	}
	// The authorizer sees new bindings within a moment.
	deadline := time.Now().Add(10 * time.Second)
	for _, user := range []string{"viewer", "operator"} {
		for r := run(t, user, time.Now(), "-n", ns, "ls", "-o", "name"); r.code != 0; r = run(t, user, time.Now(), "-n", ns, "ls", "-o", "name") {
			if time.Now().After(deadline) {
				t.Fatalf("%s cannot list: %s", user, r.err)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	for _, args := range [][]string{{"ls"}, {"active", "seat-1"}, {"timeline", "seat-1-a"}, {"stats"}, {"room"}, {"images"}, {"script", "seat-1"}} {
		if r := run(t, "viewer", time.Now(), append([]string{"-n", ns}, args...)...); r.code != 0 {
			t.Errorf("viewer %v: exit %d\n%s", args, r.code, r.err)
		}
	}
	for _, args := range [][]string{{"start", "seat-1"}, {"stop", "seat-1-a"}} {
		r := run(t, "viewer", time.Now(), append([]string{"-n", ns}, args...)...)
		if r.code != 1 || !strings.Contains(r.err, "is forbidden") ||
			!strings.Contains(r.err, "this needs the ClusterRole ggnet-operator bound to you there (kubectl create rolebinding <name> --clusterrole=ggnet-operator --user=<you> -n rbac)") {
			t.Errorf("viewer %v: exit %d\n%s", args, r.code, r.err)
		}
	}
	// Another namespace: not even reading.
	r := run(t, "viewer", time.Now(), "-n", "cafe", "ls")
	if r.code != 1 || !strings.Contains(r.err, "You may not list bootsessions in namespace cafe: this needs the ClusterRole ggnet-viewer") {
		t.Errorf("viewer ls -n cafe: exit %d\n%s", r.code, r.err)
	}
	r = run(t, "viewer", time.Now(), "ls", "-A")
	if r.code != 1 || !strings.Contains(r.err, "You may not list bootsessions in any namespace (-A)") {
		t.Errorf("viewer ls -A: exit %d\n%s", r.code, r.err)
	}
	if r := run(t, "operator", time.Now(), "-n", ns, "stop", "seat-1-a"); r.code != 0 {
		t.Errorf("operator stop: exit %d\n%s", r.code, r.err)
	}
	if r := run(t, "operator", time.Now(), "-n", ns, "start", "seat-1"); r.code != 0 {
		t.Errorf("operator start: exit %d\n%s", r.code, r.err)
	}
	var s bootv1.BootSession
	if err := admin.Get(ctx, client.ObjectKey{Namespace: ns, Name: "seat-1-a"}, &s); err != nil || !s.Spec.Stopped {
		t.Errorf("seat-1-a after the operator's stop: %v, stopped %v", err, s.Spec.Stopped)
	}
}

func TestPercentile(t *testing.T) {
	var ds []time.Duration
	for i := 100; i >= 1; i-- {
		ds = append(ds, time.Duration(i)*time.Second)
	}
	for p, want := range map[float64]time.Duration{0.5: 50 * time.Second, 0.99: 99 * time.Second, 1: 100 * time.Second, 0.001: time.Second} {
		if got := Percentile(ds, p); got != want {
			t.Errorf("p%v = %v, want %v", p*100, got, want)
		}
	}
	if got := Percentile([]time.Duration{3 * time.Second}, 0.99); got != 3*time.Second {
		t.Errorf("one sample: %v", got)
	}
}

func TestNaturalLess(t *testing.T) {
	for _, p := range [][2]string{{"seat-2", "seat-10"}, {"seat-02", "seat-3"}, {"a", "b"}, {"seat", "seat-1"}, {"pc9b", "pc10a"}} {
		if !naturalLess(p[0], p[1]) || naturalLess(p[1], p[0]) {
			t.Errorf("naturalLess(%q, %q) wrong", p[0], p[1])
		}
	}
}

// tmux runs tmux on the test's own server socket.
func tmux(t *testing.T, socket string, args ...string) string {
	t.Helper()
	out, err := exec.Command("tmux", append([]string{"-L", socket, "-f", "/dev/null"}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("tmux %v: %v\n%s", args, err, out)
	}
	return string(out)
}

// TestRoomWatchInTmux runs `room -w` in a tmux pane (a real terminal, with
// colours) and reads the grid back with capture-pane as Machines and
// sessions change; Ctrl-C ends it with exit code 0.
func TestRoomWatchInTmux(t *testing.T) {
	if _, err := exec.LookPath("tmux"); err != nil {
		t.Fatal("tmux is needed (apt-get install tmux; hack/deps.sh installs it)")
	}
	ctx := context.Background()
	ns := "tmux"
	newNamespace(t, ns)
	create(t, fixture.Image(ns, "win11"))
	for i := 1; i <= 3; i++ {
		m := fixture.Machine(ns, fmt.Sprintf("pc-%d", i), fixture.WithMAC(fmt.Sprintf("52:54:00:dd:00:%02x", i)),
			fixture.WithAddress(fmt.Sprintf("10.20.3.%d", i)), fixture.WithImage("win11"))
		m.Labels = map[string]string{"boot.ggnet.io/room": "lan"}
		create(t, m)
	}
	s1 := fixture.Session(ns, "pc-1-a", "pc-1", "win11")
	create(t, s1)
	setStatus(t, s1, func(s *bootv1.BootSession) { s.Status.Phase = bootv1.SessionReady })

	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	socket := fmt.Sprintf("ggctl-test-%d", os.Getpid())
	defer func() { _ = exec.Command("tmux", "-L", socket, "kill-server").Run() }()
	cmd := fmt.Sprintf("env %s=1 TERM=xterm-256color %s --kubeconfig %s -n %s room -l boot.ggnet.io/room=lan -w; echo exit=$?; sleep 60",
		asPlugin, self, kubeconfigs["viewer"], ns)
	// The viewer may read only the namespaces it is bound in.
	create(t, &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "ggctl-viewer"},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: viewerRole},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.UserKind, APIGroup: rbacv1.GroupName, Name: "ggctl-viewer"}},
	})
	for r := run(t, "viewer", time.Now(), "-n", ns, "room"); r.code != 0; r = run(t, "viewer", time.Now(), "-n", ns, "room") {
		time.Sleep(100 * time.Millisecond)
	}
	tmux(t, socket, "new-session", "-d", "-s", "room", "-x", "100", "-y", "20", cmd)
	screen := ""
	waitFor := func(what string, want ...string) {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for {
			screen = tmux(t, socket, "capture-pane", "-p", "-t", "room")
			ok := true
			for _, w := range want {
				ok = ok && strings.Contains(screen, w)
			}
			if ok {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: the pane does not show %q:\n%s", what, want, screen)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	waitFor("first draw", "namespace tmux, boot.ggnet.io/room=lan: 3 seats: 1 ready, 2 off",
		"pc-1 ready      pc-2 off        pc-3 off", "Ctrl-C to quit")
	if strings.Contains(screen, "\x1b[") {
		t.Errorf("capture-pane without -e shows escape codes:\n%q", screen)
	}

	setStatus(t, s1, func(s *bootv1.BootSession) { s.Status.Phase = bootv1.SessionActive })
	waitFor("session Active", "3 seats: 1 running, 2 off", "pc-1 running")

	create(t, fixture.Session(ns, "pc-2-a", "pc-2", "win11"))
	waitFor("new session", "3 seats: 1 running, 1 starting, 1 off", "pc-2 starting")

	if err := admin.Delete(ctx, &bootv1.Machine{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "pc-3"}}); err != nil {
		t.Fatal(err)
	}
	waitFor("machine deleted", "2 seats: 1 running, 1 starting")
	if strings.Contains(screen, "pc-3") {
		t.Errorf("the deleted machine is still drawn:\n%s", screen)
	}
	if n := strings.Count(screen, "seats:"); n != 1 {
		t.Errorf("the grid is drawn %d times on the screen (a redraw must clear it):\n%s", n, screen)
	}

	tmux(t, socket, "send-keys", "-t", "room", "C-c")
	waitFor("Ctrl-C", "exit=0")
}

// docCommands returns the plain-kubectl commands of docs/sessions.md: every
// ```sh block without the plugin in it, and every `kubectl …` code span of
// its tables (not the watches, -w, which do not end).
func docCommands(t *testing.T) (blocks, spans []string) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(testenv.RepoRoot(), "docs", "sessions.md"))
	if err != nil {
		t.Fatal(err)
	}
	doc := string(b)
	for _, m := range regexp.MustCompile("(?s)```sh\n(.*?)```").FindAllStringSubmatch(doc, -1) {
		if !strings.Contains(m[1], "kubectl ggnet") && !strings.Contains(m[1], "go install") {
			blocks = append(blocks, m[1])
		}
	}
	for _, line := range strings.Split(doc, "\n") {
		if !strings.HasPrefix(line, "|") {
			continue
		}
		for _, m := range regexp.MustCompile("`(kubectl [^`]*)`").FindAllStringSubmatch(line, -1) {
			c := strings.ReplaceAll(m[1], `\|`, "|")
			if !strings.HasPrefix(c, "kubectl ggnet") && !strings.Contains(c, " -w") {
				spans = append(spans, c)
			}
		}
	}
	return blocks, spans
}

// TestPlainKubectlInDocs runs the plain-kubectl side of docs/sessions.md
// with the kubectl binary envtest uses, in order, against a stand-in for the
// manager: each command must succeed and do what the plugin does.
func TestPlainKubectlInDocs(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	assets, err := testenv.AssetsDir()
	if err != nil {
		t.Fatal(err)
	}
	ns := "cafe" // the docs' namespace; TestGolden's seats are seat-1…7
	if err := admin.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	create(t, fixture.Image(ns, "win11-games-2026-12"))
	for i, room := range map[int]string{31: "window", 32: "main-hall", 33: "main-hall"} {
		m := fixture.Machine(ns, fmt.Sprintf("seat-%03d", i), fixture.WithMAC(fmt.Sprintf("52:54:00:ee:00:%02x", i)),
			fixture.WithAddress(fmt.Sprintf("10.20.4.%d", i)), fixture.WithImage("win11-games-2026-12"))
		m.Labels = map[string]string{"boot.ggnet.io/room": room}
		create(t, m)
	}
	// The stand-in manager: sessions become Ready (phase and condition),
	// stopped ones Stopped, with the labels the manager sets.
	go func() {
		for ctx.Err() == nil {
			var list bootv1.BootSessionList
			if admin.List(ctx, &list, client.InNamespace(ns)) == nil {
				for i := range list.Items {
					s := &list.Items[i]
					if !strings.HasPrefix(s.Name, "seat-03") {
						continue
					}
					if s.Labels[bootv1.MachineLabel] != s.Spec.MachineRef.Name {
						// As the manager: the labels mirror the spec.
						if s.Labels == nil {
							s.Labels = map[string]string{}
						}
						s.Labels[bootv1.MachineLabel], s.Labels[bootv1.ImageLabel] = s.Spec.MachineRef.Name, s.Spec.ImageRef.Name
						_ = admin.Update(ctx, s)
						continue
					}
					want, c := bootv1.SessionReady, cond(bootv1.ReadyCondition, "True", bootv1.SucceededReason, "")
					if s.Spec.Stopped {
						want, c = bootv1.SessionStopped, cond(bootv1.ReadyCondition, "False", bootv1.StoppedReason, "")
					}
					if s.Status.Phase != want {
						s.Status.Phase, s.Status.Conditions = want, []metav1.Condition{c}
						s.Status.Script = "#!ipxe\n" + ipxe.CredentialsComment + "\n"
						_ = admin.Status().Update(ctx, s)
					}
				}
			}
			time.Sleep(50 * time.Millisecond)
		}
	}()
	// kubectl on $PATH: the envtest one, with the admin's kubeconfig and
	// the namespace.
	bin := t.TempDir()
	wrapper := fmt.Sprintf("#!/bin/sh\nexec %s --kubeconfig %s -n %s \"$@\"\n", filepath.Join(assets, "kubectl"), kubeconfigs["admin"], ns)
	if err := os.WriteFile(filepath.Join(bin, "kubectl"), []byte(wrapper), 0o755); err != nil {
		t.Fatal(err)
	}
	sh := func(script string) string {
		t.Helper()
		cmd := exec.CommandContext(ctx, "sh", "-ec", script)
		cmd.Env = append(os.Environ(), "PATH="+bin+":"+os.Getenv("PATH"))
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("%s\n%v\n%s", script, err, out)
		}
		return string(out)
	}
	sessionsOf := func(machine string) []bootv1.BootSession {
		t.Helper()
		var list bootv1.BootSessionList
		if err := admin.List(ctx, &list, client.InNamespace(ns), client.MatchingFields{"spec.machineRef.name": machine}); err != nil {
			t.Fatal(err)
		}
		return list.Items
	}

	blocks, spans := docCommands(t)
	if len(blocks) != 7 || len(spans) < 10 {
		t.Fatalf("docs/sessions.md: %d sh blocks, %d table commands; this test expects start, start a room, wait, wake, the SecureOn Secret, the retire columns, stop and the Watching table", len(blocks), len(spans))
	}
	// Start seat-031.
	sh(blocks[0])
	ss := sessionsOf("seat-031")
	if len(ss) != 1 || ss[0].Spec.ImageRef.Name != "win11-games-2026-12" {
		t.Fatalf("after the docs' start: %+v", ss)
	}
	name := ss[0].Name
	setStatus(t, &bootv1.Machine{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "seat-031"}}, func(m *bootv1.Machine) { m.Status.ActiveSession = name })
	subst := strings.NewReplacer("seat-031-x7k2p", name, "NAME", name)
	// Start the room.
	sh(blocks[1])
	for _, m := range []string{"seat-032", "seat-033"} {
		if ss := sessionsOf(m); len(ss) != 1 || ss[0].Labels[bootv1.MachineLabel] != m {
			t.Errorf("after the docs' room start, %s: %+v", m, ss)
		}
	}
	// Wait for Ready, both ways.
	sh(subst.Replace(blocks[2]))
	// Every plain-kubectl line of the Watching table, while it is Ready.
	for _, c := range spans {
		out := sh(subst.Replace(c))
		if strings.Contains(c, "activeSession") && out != name {
			t.Errorf("%s: %q, want %q", c, out, name)
		}
		if strings.Contains(c, "spec.machineRef.name=seat-031") && !strings.Contains(out, name) {
			t.Errorf("%s: %q does not list %s", c, out, name)
		}
	}
	// Wake: spec.wake set, and read back.
	if out := sh(subst.Replace(blocks[3])); !strings.HasSuffix(out, "true\n") {
		t.Errorf("the docs' wake printed %q, want spec.wake true at the end", out)
	}
	for _, s := range sessionsOf("seat-031") {
		if !s.Spec.Wake {
			t.Errorf("after the docs' wake: %s has no spec.wake", s.Name)
		}
	}
	// The SecureOn Secret, of its own type.
	sh(blocks[4])
	var sec corev1.Secret
	if err := admin.Get(ctx, client.ObjectKey{Namespace: ns, Name: "seat-031-secureon"}, &sec); err != nil || sec.Type != bootv1.SecureOnSecretType {
		t.Errorf("after the docs' SecureOn Secret: %v, type %q", err, sec.Type)
	}
	// The retire hand-over's columns: the session, no annotation, no answer.
	if out := sh(subst.Replace(blocks[5])); !strings.Contains(out, "RETIRE") || !strings.Contains(out, name) {
		t.Errorf("the docs' retire columns printed %q, want a RETIRE column and %s", out, name)
	}
	// Stop, both ways, and wait for Stopped.
	sh(subst.Replace(blocks[6]))
	for _, s := range sessionsOf("seat-031") {
		if !s.Spec.Stopped || s.Status.Phase != bootv1.SessionStopped {
			t.Errorf("after the docs' stop: %s stopped=%v phase %s", s.Name, s.Spec.Stopped, s.Status.Phase)
		}
	}
}

// TestKrewManifest checks plugins/krew/ggnet.yaml the way krew reads it: a
// Plugin named ggnet whose every platform names this version's archive for
// its os and arch, the plugin's binary, and a sha256.
func TestKrewManifest(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(testenv.RepoRoot(), "plugins", "krew", "ggnet.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var m struct {
		APIVersion string `json:"apiVersion"`
		Kind       string `json:"kind"`
		Metadata   struct {
			Name string `json:"name"`
		} `json:"metadata"`
		Spec struct {
			Version          string `json:"version"`
			ShortDescription string `json:"shortDescription"`
			Platforms        []struct {
				Selector struct {
					MatchLabels map[string]string `json:"matchLabels"`
				} `json:"selector"`
				URI    string `json:"uri"`
				SHA256 string `json:"sha256"`
				Bin    string `json:"bin"`
			} `json:"platforms"`
		} `json:"spec"`
	}
	if err := yaml.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	if m.APIVersion != "krew.googlecontainertools.github.com/v1alpha2" || m.Kind != "Plugin" || m.Metadata.Name != "ggnet" {
		t.Errorf("apiVersion %q kind %q name %q", m.APIVersion, m.Kind, m.Metadata.Name)
	}
	if !regexp.MustCompile(`^v\d+\.\d+\.\d+$`).MatchString(m.Spec.Version) || m.Spec.ShortDescription == "" {
		t.Errorf("version %q, shortDescription %q", m.Spec.Version, m.Spec.ShortDescription)
	}
	seen := map[string]bool{}
	for _, p := range m.Spec.Platforms {
		goos, arch := p.Selector.MatchLabels["os"], p.Selector.MatchLabels["arch"]
		seen[goos+"/"+arch] = true
		want := "https://github.com/ggnet/ggnet/releases/download/" + m.Spec.Version + "/kubectl-ggnet_" + goos + "_" + arch + ".tar.gz"
		if p.URI != want {
			t.Errorf("%s/%s: uri %s, want %s", goos, arch, p.URI, want)
		}
		bin := "kubectl-ggnet"
		if goos == "windows" {
			bin += ".exe"
		}
		if p.Bin != bin || !regexp.MustCompile(`^[0-9a-f]{64}$`).MatchString(p.SHA256) {
			t.Errorf("%s/%s: bin %q sha256 %q", goos, arch, p.Bin, p.SHA256)
		}
	}
	for _, p := range []string{"linux/amd64", "linux/arm64", "darwin/amd64", "darwin/arm64", "windows/amd64"} {
		if !seen[p] {
			t.Errorf("no platform %s", p)
		}
	}
}
