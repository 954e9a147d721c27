package e2e

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"time"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/controller-runtime/pkg/client"

	bootv1 "github.com/ggnet/ggnet/api/v1alpha1"
	"github.com/ggnet/ggnet/bootagent/target"
	"github.com/ggnet/ggnet/internal/lab"
)

// violations checks the fault suite's invariants once a cycle is over (old
// is the session the cycle stopped, nil before the first). Each check gives
// the system its bound to converge before it reports:
//
//   - converged: every session of a seat reaches Active (its VM on) or
//     Stopped (the cycle stopped it) within convergeBound;
//   - running VMs use their disks: every seat's VM ticks again within
//     tickBound, its ticks are consecutive (each one more than the disk
//     held: no acknowledged write lost), it booted once and no read-back
//     differed;
//   - Persist disks are neither lost nor shared: two live sessions never
//     have the same overlay, a machine+image keeps its Persist overlay path
//     across sessions and no other machine+image ever gets it, every
//     Persist overlay and every Machine status.persistentDisks path (when
//     the API has them) exists, and no two Machines list the same path (the
//     counters going back across sessions is checked at each boot);
//   - no orphaned target: tgtd's targets are exactly those of the sessions
//     that are Ready, Booting or Active;
//   - no orphaned overlay: the files under the data directory's overlays/
//     are exactly the overlays of those sessions plus the Persist disks.
func (f *faults) violations(old *bootv1.BootSession) []string {
	var out []string
	add := func(format string, a ...any) { out = append(out, fmt.Sprintf(format, a...)) }

	if old != nil {
		if cur, ok := waitPhase(old, convergeBound, bootv1.SessionStopped); !ok {
			add("session %s not Stopped within %s: phase %q, conditions %+v", old.Name, convergeBound, cur.Status.Phase, cur.Status.Conditions)
		}
	}
	for _, st := range f.seats {
		if cur, ok := waitPhase(st.s, convergeBound, bootv1.SessionActive); !ok {
			add("session %s not Active within %s: phase %q, conditions %+v", st.s.Name, convergeBound, cur.Status.Phase, cur.Status.Conditions)
		}
	}
	for _, st := range f.seats {
		if !st.vm.Running() {
			add("%s: the VM stopped", st.m.Name)
			continue
		}
		if _, err := st.vm.WaitTick(st.vm.LastTick()+2, tickBound); err != nil {
			add("%s: its disk stopped working: %v", st.m.Name, err)
		}
		for _, p := range st.vm.TickProblems() {
			add("%s: %s", st.m.Name, p)
		}
	}

	var sessions bootv1.BootSessionList
	if err := api(func() error { return l.Client.List(ctx, &sessions, client.InNamespace(lab.Namespace)) }); err != nil {
		add("listing sessions: %v", err)
		return out
	}
	out = append(out, f.persistViolations(sessions.Items)...)

	// Targets and overlays converge: the storage agent collects what no live
	// session wants every few seconds.
	var last []string
	deadline := time.Now().Add(cleanBound)
	for {
		last = storageViolations(f.expected())
		if len(last) == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(time.Second)
	}
	return append(out, last...)
}

// live says whether a session in phase p has (and must have) a target.
func live(p bootv1.BootSessionPhase) bool {
	return p == bootv1.SessionReady || p == bootv1.SessionBooting || p == bootv1.SessionActive
}

// persistViolations checks that no Persist disk is lost or shared.
func (f *faults) persistViolations(sessions []bootv1.BootSession) []string {
	var out []string
	add := func(format string, a ...any) { out = append(out, fmt.Sprintf(format, a...)) }
	byPath := map[string]string{}
	for _, s := range sessions {
		if live(s.Status.Phase) && s.Status.OverlayPath != "" {
			if other, ok := byPath[s.Status.OverlayPath]; ok {
				add("sessions %s and %s share the overlay %s", other, s.Name, s.Status.OverlayPath)
			}
			byPath[s.Status.OverlayPath] = s.Name
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	keyPath := map[string]string{}
	for p, k := range f.persistPaths {
		keyPath[k] = p
	}
	for _, s := range sessions {
		if s.Spec.Writeback != bootv1.WritebackPersist || s.Status.OverlayPath == "" {
			continue
		}
		key := s.Spec.MachineRef.Name + "/" + s.Spec.ImageRef.Name
		p := s.Status.OverlayPath
		if k, ok := f.persistPaths[p]; ok && k != key {
			add("the Persist disk %s of %s is also %s's (session %s)", p, k, key, s.Name)
		}
		if q, ok := keyPath[key]; ok && q != p {
			add("%s's Persist disk moved from %s to %s (session %s): a new, empty disk", key, q, p, s.Name)
		}
		f.persistPaths[p], keyPath[key] = key, p
	}
	for p, k := range f.persistPaths {
		if _, err := os.Stat(p); err != nil {
			add("the Persist disk %s of %s is lost: %v", p, k, err)
		}
	}
	listed := map[string]string{}
	for _, m := range machinePersistentDisks() {
		if other, ok := listed[m.path]; ok && other != m.machine {
			add("Machines %s and %s list the same persistent disk %s", other, m.machine, m.path)
		}
		listed[m.path] = m.machine
		if _, err := os.Stat(m.path); err != nil {
			add("Machine %s lists the persistent disk %s (%s), which is gone: %v", m.machine, m.path, m.state, err)
		}
	}
	return out
}

type listedDisk struct{ machine, path, state string }

// machinePersistentDisks reads status.persistentDisks of every Machine in
// the lab's namespace when the API has them (read as unstructured, so that
// the suite holds with and without that field).
func machinePersistentDisks() []listedDisk {
	list := &unstructured.UnstructuredList{}
	list.SetAPIVersion(bootv1.GroupVersion.String())
	list.SetKind("MachineList")
	if err := api(func() error { return l.Client.List(ctx, list, client.InNamespace(lab.Namespace)) }); err != nil {
		return nil
	}
	var out []listedDisk
	for _, m := range list.Items {
		disks, _, _ := unstructured.NestedSlice(m.Object, "status", "persistentDisks")
		for _, d := range disks {
			dm, ok := d.(map[string]any)
			if !ok {
				continue
			}
			path, _ := dm["path"].(string)
			state, _ := dm["state"].(string)
			if path != "" {
				out = append(out, listedDisk{m.GetName(), path, state})
			}
		}
	}
	return out
}

// expectedStorage is what the storage node must hold: the targets of the
// live sessions, and their overlays plus every Persist disk.
type expectedStorage struct {
	targets  []string
	overlays []string
}

func (f *faults) expected() (expectedStorage, error) {
	var sessions bootv1.BootSessionList
	if err := api(func() error { return l.Client.List(ctx, &sessions, client.InNamespace(lab.Namespace)) }); err != nil {
		return expectedStorage{}, err
	}
	var e expectedStorage
	for _, s := range sessions.Items {
		if live(s.Status.Phase) && s.Status.Target != nil {
			e.targets = append(e.targets, s.Status.Target.IQN)
		}
		if s.Status.OverlayPath != "" && (live(s.Status.Phase) || s.Spec.Writeback == bootv1.WritebackPersist) {
			e.overlays = append(e.overlays, s.Status.OverlayPath)
		}
	}
	for _, d := range machinePersistentDisks() {
		e.overlays = append(e.overlays, d.path)
	}
	f.mu.Lock()
	for p := range f.persistPaths {
		e.overlays = append(e.overlays, p)
	}
	f.mu.Unlock()
	return e, nil
}

// storageViolations compares tgtd's targets and the overlay files with e.
func storageViolations(e expectedStorage, err error) []string {
	if err != nil {
		return []string{fmt.Sprintf("listing sessions: %v", err)}
	}
	var out []string
	list, err := (&target.TGT{ControlPort: l.TGTPort()}).List(ctx, "iqn.")
	if err != nil {
		return []string{fmt.Sprintf("listing tgtd's targets: %v", err)}
	}
	var targets []string
	for _, t := range list {
		targets = append(targets, t.IQN)
	}
	for _, d := range diff(targets, e.targets) {
		out = append(out, "orphaned target "+d)
	}
	for _, d := range diff(e.targets, targets) {
		out = append(out, "live session without its target "+d)
	}
	var files []string
	_ = filepath.WalkDir(filepath.Join(l.DataDir, "overlays"), func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			files = append(files, p)
		}
		return nil
	})
	for _, d := range diff(files, e.overlays) {
		out = append(out, "orphaned overlay "+d)
	}
	for _, d := range diff(e.overlays, files) {
		out = append(out, "missing overlay "+d)
	}
	return out
}

// diff returns the elements of a that are not in b, sorted and unique.
func diff(a, b []string) []string {
	in := map[string]bool{}
	for _, x := range b {
		in[x] = true
	}
	var out []string
	for _, x := range a {
		if !in[x] && !slices.Contains(out, x) {
			out = append(out, x)
		}
	}
	sort.Strings(out)
	return out
}
