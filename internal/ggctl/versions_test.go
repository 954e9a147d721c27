package ggctl

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	bootv1 "github.com/ggnet/ggnet/api/v1alpha1"
	"github.com/ggnet/ggnet/internal/fixture"
)

// TestPinFollowCapture runs pin, follow and capture against the API server
// and checks what they wrote, what they refuse and what they print; and
// that start boots the machine's status.image.
func TestPinFollowCapture(t *testing.T) {
	ctx := context.Background()
	ns := "versions"
	newNamespace(t, ns)
	now := time.Now()
	for v := 1; v <= 3; v++ {
		im := fixture.Image(ns, fmt.Sprintf("games-v%d", v))
		im.Labels = map[string]string{bootv1.FamilyLabel: "games"}
		create(t, im)
		setStatus(t, im, func(i *bootv1.Image) {
			i.Status.Version = int64(v)
			if v < 3 {
				i.Status.Conditions = []metav1.Condition{cond(bootv1.ReadyCondition, "True", bootv1.SucceededReason, "1 storage node holds a Ready replica")}
			}
		})
	}
	for i := 1; i <= 3; i++ {
		m := fixture.Machine(ns, fmt.Sprintf("seat-%d", i), fixture.WithMAC(fmt.Sprintf("52:54:00:dd:00:%02x", i)),
			fixture.WithAddress(fmt.Sprintf("10.20.5.%d", i)))
		m.Labels = map[string]string{"boot.ggnet.io/room": map[bool]string{true: "a", false: "b"}[i < 3]}
		create(t, m)
	}
	machine := func(name string) *bootv1.Machine {
		t.Helper()
		m := &bootv1.Machine{}
		if err := admin.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, m); err != nil {
			t.Fatal(err)
		}
		return m
	}
	pinned := func(name string) string {
		if m := machine(name); m.Spec.ImageRef != nil {
			return m.Spec.ImageRef.Name
		}
		return ""
	}

	// follow a room: the family set, the latest Ready version named.
	r := run(t, "admin", now, "-n", ns, "follow", "-l", "boot.ggnet.io/room=a", "games")
	if r.code != 0 || r.out != "machine/seat-1 follows family games: image games-v2 (version 2)\nmachine/seat-2 follows family games: image games-v2 (version 2)\n" {
		t.Fatalf("follow -l: exit %d\n%s%s", r.code, r.out, r.err)
	}
	for _, n := range []string{"seat-1", "seat-2"} {
		if m := machine(n); m.Spec.ImageFamily != "games" || m.Spec.ImageRef != nil {
			t.Errorf("%s after follow: family %q, pin %v", n, m.Spec.ImageFamily, m.Spec.ImageRef)
		}
	}
	if m := machine("seat-3"); m.Spec.ImageFamily != "" {
		t.Errorf("seat-3 is not in room a, yet follows %q", m.Spec.ImageFamily)
	}

	// pin one machine to the previous version (a rollback): the family kept.
	r = run(t, "admin", now, "-n", ns, "pin", "seat-1", "image/games-v1")
	if r.code != 0 || r.out != "machine/seat-1 pinned to image games-v1 (family games, version 1)\n" || r.err != "" {
		t.Fatalf("pin: exit %d\n%s%s", r.code, r.out, r.err)
	}
	if m := machine("seat-1"); pinned("seat-1") != "games-v1" || m.Spec.ImageFamily != "games" {
		t.Errorf("seat-1 after pin: pin %q, family %q", pinned("seat-1"), m.Spec.ImageFamily)
	}
	// A version not Ready is pinned with a warning.
	r = run(t, "admin", now, "-n", ns, "pin", "seat-2", "seat-3", "games-v3")
	if r.code != 0 || !strings.Contains(r.err, "warning: image games-v3 is not Ready yet") || strings.Count(r.out, "pinned to image games-v3") != 2 {
		t.Fatalf("pin v3: exit %d\n%s%s", r.code, r.out, r.err)
	}
	// follow again removes the pin.
	if r = run(t, "admin", now, "-n", ns, "follow", "seat-2", "games"); r.code != 0 || pinned("seat-2") != "" {
		t.Fatalf("follow seat-2: exit %d, pin %q\n%s", r.code, pinned("seat-2"), r.err)
	}
	// A family with no Ready version is followed with a warning.
	r = run(t, "admin", now, "-n", ns, "follow", "seat-3", "office")
	if r.code != 0 || !strings.Contains(r.err, "warning: no Image in namespace versions has the label boot.ggnet.io/family=office yet") ||
		r.out != "machine/seat-3 follows family office\n" {
		t.Fatalf("follow office: exit %d\n%s%s", r.code, r.out, r.err)
	}

	// Usage and lookup errors.
	for _, tc := range []struct {
		args []string
		code int
		msg  string
	}{
		{[]string{"pin", "games-v1"}, ExitUsage, "name at least one machine, or select with -l"},
		{[]string{"pin", "-l", "boot.ggnet.io/room=a", "seat-1", "games-v1"}, ExitUsage, "name machines or give -l, not both"},
		{[]string{"pin"}, ExitUsage, "name the Image to pin to"},
		{[]string{"pin", "seat-1", "nope"}, ExitError, `image "nope" not found in namespace versions`},
		{[]string{"pin", "seat-9", "games-v1"}, ExitError, `machine "seat-9" not found in namespace versions`},
		{[]string{"follow", "seat-1", "Not_A-label-"}, ExitUsage, `family "Not_A-label-" is not a label value`},
		{[]string{"follow", "games"}, ExitUsage, "name at least one machine, or select with -l"},
		{[]string{"capture", "only-one"}, ExitUsage, "want SESSION and IMAGE, got 1 argument(s)"},
	} {
		r := run(t, "admin", now, append([]string{"-n", ns}, tc.args...)...)
		if r.code != tc.code || !strings.Contains(r.err, tc.msg) {
			t.Errorf("%v: exit %d, want %d and %q\n%s", tc.args, r.code, tc.code, tc.msg, r.err)
		}
	}
	if pinned("seat-1") != "games-v1" {
		t.Errorf("a refused pin changed seat-1: %q", pinned("seat-1"))
	}

	// capture refuses a Discard session and a Persist one not Stopped.
	discard := fixture.Session(ns, "seat-3-discard", "seat-3", "games-v1")
	persist := fixture.Session(ns, "seat-3-maint", "seat-3", "games-v1", fixture.WithWriteback(bootv1.WritebackPersist))
	create(t, discard, persist)
	setStatus(t, discard, func(s *bootv1.BootSession) { s.Status.Phase = bootv1.SessionStopped })
	setStatus(t, persist, func(s *bootv1.BootSession) { s.Status.Phase = bootv1.SessionActive })
	for _, tc := range []struct {
		session, msg string
	}{
		{"seat-3-discard", "session seat-3-discard has writeback Discard: only a Persist session keeps a disk to capture"},
		{"seat-3-maint", "session seat-3-maint is Active, not Stopped: shut the PC down and stop the session first (kubectl ggnet stop seat-3-maint --wait)"},
		{"nope", `session "nope" not found in namespace versions`},
	} {
		r := run(t, "admin", now, "-n", ns, "capture", tc.session, "games-v4", "--family", "games")
		if r.code != ExitError || !strings.Contains(r.err, tc.msg) {
			t.Errorf("capture %s: exit %d, want %q\n%s", tc.session, r.code, tc.msg, r.err)
		}
	}
	var none bootv1.Image
	if err := admin.Get(ctx, client.ObjectKey{Namespace: ns, Name: "games-v4"}, &none); err == nil {
		t.Fatal("a refused capture created the Image")
	}
	// Once Stopped, it captures: a raw Image from the session, in the family.
	setStatus(t, persist, func(s *bootv1.BootSession) { s.Status.Phase = bootv1.SessionStopped })
	r = run(t, "admin", now, "-n", ns, "capture", "bs/seat-3-maint", "games-v4", "--family", "games")
	if r.code != 0 || r.out != "image/games-v4 created from session seat-3-maint (machine seat-3, family games): its storage node captures the disk (kubectl get image games-v4 -w)\n" {
		t.Fatalf("capture: exit %d\n%s%s", r.code, r.out, r.err)
	}
	var im bootv1.Image
	if err := admin.Get(ctx, client.ObjectKey{Namespace: ns, Name: "games-v4"}, &im); err != nil {
		t.Fatal(err)
	}
	if im.Spec.Source.Writeback == nil || im.Spec.Source.Writeback.SessionRef.Name != "seat-3-maint" || im.Spec.Source.HTTP != nil || im.Spec.Source.Path != nil ||
		im.Spec.Format != bootv1.ImageFormatRaw || im.Labels[bootv1.FamilyLabel] != "games" {
		t.Errorf("captured Image: %+v, labels %v", im.Spec, im.Labels)
	}
	if r := run(t, "admin", now, "-n", ns, "capture", "seat-3-maint", "games-v4"); r.code != ExitError || !strings.Contains(r.err, "image games-v4 already exists") {
		t.Errorf("capture into an existing name: exit %d\n%s", r.code, r.err)
	}
	if r := run(t, "admin", now, "-n", ns, "capture", "seat-3-maint", "Bad_Name"); r.code != ExitUsage {
		t.Errorf("capture into a bad name: exit %d\n%s", r.code, r.err)
	}

	// start boots status.image (what the manager resolved), not only a pin.
	setStatus(t, machine("seat-2"), func(m *bootv1.Machine) { m.Status.Image = "games-v2" })
	r = run(t, "admin", now, "-n", ns, "start", "seat-2")
	if r.code != 0 || !strings.Contains(r.out, "machine seat-2, image games-v2, writeback Discard") {
		t.Fatalf("start seat-2: exit %d\n%s%s", r.code, r.out, r.err)
	}
	// A machine following a family with no Ready version has none.
	r = run(t, "admin", now, "-n", ns, "start", "seat-3")
	if r.code != ExitError || !strings.Contains(r.err, "machine seat-3 has no image (status.image): give --image, pin one (kubectl ggnet pin) or follow a family") {
		t.Fatalf("start seat-3: exit %d\n%s%s", r.code, r.out, r.err)
	}

	// pin, follow and capture need ggnet-admin: an operator is told so.
	create(t, &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "ggctl-operator"},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: operatorRole},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.UserKind, APIGroup: rbacv1.GroupName, Name: "ggctl-operator"}},
	})
	deadline := time.Now().Add(10 * time.Second)
	for r := run(t, "operator", now, "-n", ns, "ls", "-o", "name"); r.code != 0; r = run(t, "operator", now, "-n", ns, "ls", "-o", "name") {
		if time.Now().After(deadline) {
			t.Fatalf("operator cannot list: %s", r.err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	for _, args := range [][]string{{"pin", "seat-1", "games-v2"}, {"follow", "seat-1", "games"}, {"capture", "seat-3-maint", "games-v5"}} {
		r := run(t, "operator", now, append([]string{"-n", ns}, args...)...)
		if r.code != ExitError || !strings.Contains(r.err, "this needs the ClusterRole ggnet-admin bound to you there") {
			t.Errorf("operator %v: exit %d\n%s", args, r.code, r.err)
		}
	}
	if pinned("seat-1") != "games-v1" {
		t.Errorf("the operator's refused pin changed seat-1: %q", pinned("seat-1"))
	}
}

// A pin wins over a status.image the manager has not moved yet: pin then
// start (a rollback) boots the pinned version, not the broken one.
func TestMachineImagePinFirst(t *testing.T) {
	m := &bootv1.Machine{}
	m.Status.Image = "games-v6"
	if got := machineImage(m); got != "games-v6" {
		t.Errorf("a follower: %q, want its resolved games-v6", got)
	}
	m.Spec.ImageRef = &bootv1.LocalObjectReference{Name: "games-v5"}
	if got := machineImage(m); got != "games-v5" {
		t.Errorf("just pinned, status.image not moved yet: %q, want the pin games-v5", got)
	}
	if got := machineImage(&bootv1.Machine{}); got != "" {
		t.Errorf("no pin, no family: %q", got)
	}
}
