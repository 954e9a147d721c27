package storage

// Persistent disks: the overlays Persist sessions keep for the machine's
// next session.
//
// Layout. A persistent disk is
//
//	<dataDir>/overlays/<namespace>/persist/<machineUID>-<imageUID>-g<generation>.raw
//
// keyed by the Machine's and the Image's UIDs, never by their names: names
// are not unique across time (a recreated Image must not reuse the old
// writes) and joined with "-" they are not unique at all (machines a-b with
// image c and a with image b-c would share one disk). generation is the
// Machine's spec.persistentDisks.resetGeneration when the disk was made; a
// disk of a lower generation is deleted once no session uses it, and the
// next session starts from a fresh clone under the new generation's name.
// Keeping the generation in the name makes a reset atomic (the old file is
// deleted, a new one is cloned under another name: no crash can leave a
// stale disk looking fresh). The garbage collector never looks into
// persist/.
//
// Lifecycle (persist_machines.go): each storage agent lists its node's disks
// in the Machine's status.persistentDisks (server-side apply, its own field
// manager), resets them when resetGeneration grows, and on the Machine's
// deletion keeps them (onDelete: Retain, the default) or deletes them once
// no session uses them (onDelete: Delete, holding NodeFinalizer(node) on the
// Machine until then). A disk is never deleted while a session or a target
// may use it, and never by anything else.
//
// Orphans (persist_orphans.go): a disk whose Machine or Image no longer
// exists is reported (metric, condition on the storage Node, Warning Event),
// never removed.
//
// The old layout, <namespace>/persist-<machine>-<image>.raw, is adopted
// into the new one (renamed) only when its name maps to exactly one
// existing (Machine, Image) pair of its namespace and no session or target
// uses it: then it can only be that pair's disk. A name two pairs map to
// (the a-b/c against a/b-c case), or none, could be either machine's disk or
// nobody's, so guessing could hand one PC another's disk: such a file is
// reported as an orphan and left for an operator, as is a legacy file in use
// (it is adopted after that session ends). A running session keeps the path
// it was served with (its status.overlayPath) for its whole life.

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/record"
	"k8s.io/client-go/util/retry"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/event"

	bootv1 "github.com/ggnet/ggnet/api/v1alpha1"
)

// persistDir is the directory of a namespace's persistent disks, under the
// namespace's overlay directory.
const persistDir = "persist"

// legacyPrefix starts the persistent disks of the old, name-keyed layout.
const legacyPrefix = "persist-"

// discardName matches a Discard session's overlay, <session>-<session UID>.raw.
var discardName = regexp.MustCompile(`-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\.raw$`)

// isLegacy reports whether a file name in <namespace>/ is a persistent disk
// of the old layout, persist-<machine>-<image>.raw — and not the overlay of a
// Discard session that happens to be named persist-..., which ends in the
// session's UID.
func isLegacy(name string) bool {
	return strings.HasPrefix(name, legacyPrefix) && strings.HasSuffix(name, ".raw") && !discardName.MatchString(name)
}

const uidPattern = `[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}`

var (
	diskName = regexp.MustCompile(`^(` + uidPattern + `)-(` + uidPattern + `)-g([0-9]{1,18})\.raw$`)
	validUID = regexp.MustCompile(`^` + uidPattern + `$`)
)

// persistState is what the role keeps for persistent disks.
type persistState struct {
	// locks serialize everything that makes, renames or deletes the disks of
	// one Machine (by namespace and UID): a new session's setup (from the
	// in-use check to its target), the Machine reconcile and adoption.
	locks keyedMutex
	// recorder records Events on Machines, BootSessions and the Node.
	recorder record.EventRecorder
	// machines wakes the Machine reconciler (the orphan scanner adopted a
	// disk of the old layout).
	machines chan event.GenericEvent
	// reported are the orphan paths the last scan reported, for Events
	// only on new ones; the gauge's namespaces, to zero those that went.
	mu       sync.Mutex
	reported map[string]bool
	gaugedNS map[string]bool
}

// setupPersist registers what keeps the persistent (Persist) disks of this
// node: the Machine reconciler (status, reset, deletion) and the orphan
// scanner.
func (r *Role) setupPersist(mgr ctrl.Manager) error {
	r.persist = &persistState{
		recorder: mgr.GetEventRecorderFor(r.cfg.FieldOwner()),
		machines: make(chan event.GenericEvent, 64),
		reported: map[string]bool{},
		gaugedNS: map[string]bool{},
	}
	if err := (&persistReconciler{Role: r, Client: mgr.GetClient()}).setup(mgr); err != nil {
		return err
	}
	// Every Resync: the persistent disks of this node that no existing
	// Machine and Image own are reported, and disks of the old layout that
	// surely belong to one (Machine, Image) pair are adopted.
	return mgr.Add(r.periodic("Scanning persistent disks", r.cfg.Resync, true, r.scanOrphans))
}

// diskFile is one persistent disk file of the UID-keyed layout.
type diskFile struct {
	Path       string
	MachineUID types.UID
	ImageUID   types.UID
	Generation int64
}

// parseDisk reads a file name of the persist directory.
func parseDisk(dir, name string) (diskFile, bool) {
	m := diskName.FindStringSubmatch(name)
	if m == nil {
		return diskFile{}, false
	}
	gen, err := strconv.ParseInt(m[3], 10, 64)
	if err != nil {
		return diskFile{}, false
	}
	return diskFile{Path: filepath.Join(dir, name), MachineUID: types.UID(m[1]), ImageUID: types.UID(m[2]), Generation: gen}, true
}

// persistPath is the directory of a namespace's persistent disks.
func (r *Role) persistPath(namespace string) string {
	return filepath.Join(r.overlays.Dir(), namespace, persistDir)
}

// diskPath is where the disk of (machine, image) made at generation lives.
func (r *Role) diskPath(namespace string, machine, image types.UID, gen int64) string {
	return filepath.Join(r.persistPath(namespace), fmt.Sprintf("%s-%s-g%d.raw", machine, image, gen))
}

// legacyPath is the old layout's disk of (machine, image) by name.
func (r *Role) legacyPath(namespace, machine, image string) string {
	return r.overlays.Path(namespace, legacyPrefix+machine+"-"+image)
}

// discardPath is a Discard session's own overlay.
func (r *Role) discardPath(s *bootv1.BootSession) string {
	return r.overlays.Path(s.Namespace, s.Name+"-"+string(s.UID))
}

// listDisks returns a namespace's disk files of the UID-keyed layout and the
// names of other files in its persist directory (reported, never touched).
// Files starting with "." are temporary.
func (r *Role) listDisks(namespace string) (disks []diskFile, unknown []string, err error) {
	dir := r.persistPath(namespace)
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil, nil
	}
	if err != nil {
		return nil, nil, err
	}
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".") {
			continue
		}
		if d, ok := parseDisk(dir, e.Name()); ok && e.Type().IsRegular() {
			disks = append(disks, d)
		} else {
			unknown = append(unknown, filepath.Join(dir, e.Name()))
		}
	}
	sort.Slice(disks, func(i, j int) bool {
		if disks[i].ImageUID != disks[j].ImageUID {
			return disks[i].ImageUID < disks[j].ImageUID
		}
		return disks[i].Generation < disks[j].Generation
	})
	return disks, unknown, nil
}

// machineDisks returns the disk files of one Machine.
func (r *Role) machineDisks(namespace string, machine types.UID) ([]diskFile, error) {
	all, _, err := r.listDisks(namespace)
	if err != nil {
		return nil, err
	}
	var out []diskFile
	for _, d := range all {
		if d.MachineUID == machine {
			out = append(out, d)
		}
	}
	return out, nil
}

// lockMachine serializes the disk work on one Machine.
func (r *Role) lockMachine(namespace string, uid types.UID) (unlock func()) {
	return r.persist.locks.lock(namespace + "/" + string(uid))
}

// sessionFinished reports whether the manager marked a session done.
func sessionFinished(s *bootv1.BootSession) bool {
	return s.Status.Phase == bootv1.SessionStopped || s.Status.Phase == bootv1.SessionFailed
}

// diskUsers is who may be using persistent disks of a namespace on this
// node: the Persist sessions scheduled here that hold the storage finalizer
// (a target may exist until teardown removed it) or are live (about to get
// one), and the targets tgtd serves (nil when not asked for).
type diskUsers struct {
	sessions []*bootv1.BootSession
	targets  map[string]string // path -> IQN
}

// users lists the disk users of a namespace; withTargets asks the target
// daemon too (required before deleting or moving a disk: the cache may not
// show yet a session that just got its target).
func (r *Role) users(ctx context.Context, c client.Reader, namespace string, withTargets bool) (*diskUsers, error) {
	var list bootv1.BootSessionList
	if err := c.List(ctx, &list, client.InNamespace(namespace)); err != nil {
		return nil, err
	}
	u := &diskUsers{}
	for i := range list.Items {
		s := &list.Items[i]
		if s.Status.StorageNode != r.cfg.NodeName || s.Spec.Writeback != bootv1.WritebackPersist {
			continue
		}
		live := !s.Spec.Stopped && s.DeletionTimestamp == nil && !sessionFinished(s)
		if live || hasFinalizer(s) {
			u.sessions = append(u.sessions, s)
		}
	}
	if withTargets {
		ts, err := r.cfg.Driver.List(ctx, ownedIQNPrefix(r.cfg.IQNPrefix, r.cfg.Namespace))
		if err != nil {
			return nil, fmt.Errorf("listing the targets: %w", err)
		}
		u.targets = map[string]string{}
		for _, t := range ts {
			u.targets[t.Path] = t.IQN
		}
	}
	return u, nil
}

// userOf names who uses one of paths, or returns "": a session (other than
// except) whose overlay is one of them, or a session of machine whose
// overlay is not known yet (it may be about to use them), or a target
// (other than exceptIQN) backed by one of them.
func (u *diskUsers) userOf(paths map[string]bool, machine string, except types.UID, exceptIQN string) string {
	for _, s := range u.sessions {
		if s.UID == except {
			continue
		}
		if paths[s.Status.OverlayPath] || (s.Spec.MachineRef.Name == machine && s.Status.OverlayPath == "") {
			return "session " + s.Name
		}
	}
	for p, iqn := range u.targets {
		if paths[p] && iqn != exceptIQN {
			return "target " + iqn
		}
	}
	return ""
}

// overlayError is a failure to make the disk itself (not to decide which).
type overlayError struct{ err error }

func (e *overlayError) Error() string { return e.err.Error() }
func (e *overlayError) Unwrap() error { return e.err }

// waitFor is why a session waits for its persistent disk.
type waitFor struct{ reason, msg string }

// newSessionDisk resolves, and makes when missing, the persistent disk of a
// Persist session that was never StorageReady: the (Machine UID, Image UID)
// disk at the Machine's resetGeneration. A disk of a lower generation is
// deleted first (a reset), and a disk of the old layout that is surely this
// pair's is adopted. It waits (never guesses) while the Machine is unknown,
// while another session or target uses the disk, and for a Machine being
// deleted that has no disk here. On success the Machine's lock is held
// until unlock: the caller makes the target first, so that nothing judges
// the disk unused in between.
func (r *sessionReconciler) newSessionDisk(ctx context.Context, s *bootv1.BootSession, img *bootv1.Image, replica string) (path string, created bool, unlock func(), w *waitFor, err error) {
	var m bootv1.Machine
	if err := r.Get(ctx, types.NamespacedName{Namespace: s.Namespace, Name: s.Spec.MachineRef.Name}, &m); err != nil {
		if apierrors.IsNotFound(err) {
			return "", false, nil, &waitFor{bootv1.MachineNotFoundReason, "Machine " + s.Spec.MachineRef.Name +
				" is not known to this storage node yet; its persistent disk is keyed by the Machine's UID"}, nil
		}
		return "", false, nil, nil, err
	}
	if !validUID.MatchString(string(m.UID)) || !validUID.MatchString(string(img.UID)) {
		return "", false, nil, nil, fmt.Errorf("machine UID %q or image UID %q is not a UUID", m.UID, img.UID)
	}
	release := r.lockMachine(s.Namespace, m.UID)
	defer func() {
		if err != nil || w != nil {
			release()
		}
	}()
	disks, err := r.machineDisks(s.Namespace, m.UID)
	if err != nil {
		return "", false, nil, nil, err
	}
	var slot []diskFile
	paths := map[string]bool{}
	for _, d := range disks {
		if d.ImageUID == img.UID {
			slot = append(slot, d)
			paths[d.Path] = true
		}
	}
	legacy := ""
	if len(slot) == 0 {
		if legacy, err = r.legacyOf(ctx, &m, img); err != nil {
			return "", false, nil, nil, err
		}
		if legacy != "" {
			paths[legacy] = true
		}
	}
	users, err := r.users(ctx, r.Client, s.Namespace, true)
	if err != nil {
		return "", false, nil, nil, err
	}
	if who := users.userOf(paths, m.Name, s.UID, s.Status.Target.IQN); who != "" {
		return "", false, nil, &waitFor{bootv1.PersistentDiskInUseReason, fmt.Sprintf(
			"the persistent disk of Machine %s for Image %s is in use by %s; this session waits until it is released", m.Name, img.Name, who)}, nil
	}

	gen := m.Spec.PersistentDisks.ResetGenerationOrZero()
	var current *diskFile
	for i := range slot {
		d := &slot[i]
		if d.Generation < gen {
			// No session or target uses it: this is the reset.
			if err := r.overlays.Remove(d.Path); err != nil {
				return "", false, nil, nil, err
			}
			r.log.Info("Reset a persistent disk", "Machine", s.Namespace+"/"+m.Name, "path", d.Path, "generation", d.Generation, "resetGeneration", gen)
			r.persist.recorder.Eventf(&m, corev1.EventTypeNormal, bootv1.PersistentDiskResetReason,
				"Deleted the persistent disk for Image %s on node %s (generation %d < resetGeneration %d); session %s starts from a fresh clone",
				img.Name, r.cfg.NodeName, d.Generation, gen, s.Name)
			continue
		}
		if current == nil || d.Generation > current.Generation {
			current = d
		}
	}
	if current != nil {
		return current.Path, false, release, nil, nil
	}
	deleting := &waitFor{bootv1.MachineDeletingReason, "Machine " + m.Name +
		" is being deleted and has no persistent disk for Image " + img.Name + " on this node; none is made"}
	if m.DeletionTimestamp != nil {
		return "", false, nil, deleting, nil
	}
	if m.Spec.PersistentDisks.OnDeleteOrDefault() == bootv1.PersistentDiskDelete {
		// Before the disk exists: a Machine deleted right after must find
		// the finalizer that makes this node delete it.
		if err := r.machineFinalizer(ctx, &m, true); errors.Is(err, errMachineDeleting) {
			return "", false, nil, deleting, nil
		} else if err != nil {
			return "", false, nil, nil, err
		}
	}
	if legacy != "" {
		adopted, err := r.adoptLegacy(&m, img, legacy, gen)
		if err != nil {
			return "", false, nil, nil, err
		}
		if adopted != "" {
			return adopted, false, release, nil, nil
		}
	}
	path = r.diskPath(s.Namespace, m.UID, img.UID, gen)
	created, err = r.overlays.Ensure(path, replica)
	if err != nil {
		return "", false, nil, nil, &overlayError{err}
	}
	if created {
		r.persist.recorder.Eventf(&m, corev1.EventTypeNormal, bootv1.PersistentDiskCreatedReason,
			"Made the persistent disk for Image %s on node %s (a fresh clone, generation %d) for session %s", img.Name, r.cfg.NodeName, gen, s.Name)
	}
	return path, created, release, nil, nil
}

// legacyOf returns the Machine's old-layout disk for the Image
// (persist-<machine>-<image>.raw) when it exists and its name maps to
// exactly this (Machine, Image) pair among the namespace's Machines and
// Images; otherwise "" (a name two pairs map to stays an orphan).
func (r *Role) legacyOf(ctx context.Context, m *bootv1.Machine, img *bootv1.Image) (string, error) {
	legacy := r.legacyPath(m.Namespace, m.Name, img.Name)
	if !regularFile(legacy) {
		return "", nil
	}
	pairs, err := r.legacyPairs(ctx, m.Namespace, filepath.Base(legacy))
	if err != nil || len(pairs) != 1 || pairs[0] != [2]string{m.Name, img.Name} {
		return "", err
	}
	return legacy, nil
}

// adoptLegacy moves a disk of the old layout to the (Machine, Image) pair's
// place in the UID-keyed layout. The caller holds the Machine's lock, made
// sure with legacyOf that the file is this pair's, that nothing uses it and
// that the pair has no disk yet, and added the finalizer the Machine's
// onDelete wants. It returns the new path ("" when the place was taken).
func (r *Role) adoptLegacy(m *bootv1.Machine, img *bootv1.Image, legacy string, gen int64) (string, error) {
	to := r.diskPath(m.Namespace, m.UID, img.UID, gen)
	if err := os.MkdirAll(filepath.Dir(to), 0o700); err != nil {
		return "", err
	}
	if _, err := os.Lstat(to); err == nil {
		return "", nil
	}
	if err := os.Rename(legacy, to); err != nil {
		return "", err
	}
	r.log.Info("Adopted a persistent disk of the old layout", "Machine", m.Namespace+"/"+m.Name, "from", legacy, "to", to)
	r.persist.recorder.Eventf(m, corev1.EventTypeNormal, bootv1.PersistentDiskAdoptedReason,
		"Adopted %s as the persistent disk for Image %s on node %s (now %s)", legacy, img.Name, r.cfg.NodeName, to)
	return to, nil
}

// legacyPairs returns the (Machine, Image) name pairs of a namespace whose
// old-layout disk is named name (persist-<machine>-<image>.raw).
func (r *Role) legacyPairs(ctx context.Context, namespace, name string) ([][2]string, error) {
	if !isLegacy(name) {
		return nil, nil
	}
	rest, ok := strings.CutPrefix(name, legacyPrefix)
	if !ok {
		return nil, nil
	}
	rest, ok = strings.CutSuffix(rest, ".raw")
	if !ok {
		return nil, nil
	}
	c := r.mgr.GetClient()
	var machines bootv1.MachineList
	if err := c.List(ctx, &machines, client.InNamespace(namespace)); err != nil {
		return nil, err
	}
	var images bootv1.ImageList
	if err := c.List(ctx, &images, client.InNamespace(namespace)); err != nil {
		return nil, err
	}
	have := map[string]bool{}
	for _, i := range images.Items {
		have[i.Name] = true
	}
	var out [][2]string
	for _, m := range machines.Items {
		if image, ok := strings.CutPrefix(rest, m.Name+"-"); ok && have[image] {
			out = append(out, [2]string{m.Name, image})
		}
	}
	return out, nil
}

// errMachineDeleting: a Machine being deleted takes no new finalizer.
var errMachineDeleting = errors.New("the Machine is being deleted")

// machineFinalizer adds or removes this node's finalizer on a Machine
// (read from the API server, not the cache). Adding one to a Machine being
// deleted fails with errMachineDeleting.
func (r *Role) machineFinalizer(ctx context.Context, m *bootv1.Machine, add bool) error {
	fin := bootv1.NodeFinalizer(r.cfg.NodeName)
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		cur := &bootv1.Machine{}
		if err := r.reader.Get(ctx, client.ObjectKeyFromObject(m), cur); err != nil {
			return err
		}
		if cur.UID != m.UID {
			if add {
				return errMachineDeleting // that Machine is gone; another has its name
			}
			return nil
		}
		if controllerutil.ContainsFinalizer(cur, fin) == add {
			return nil
		}
		if add && cur.DeletionTimestamp != nil {
			return errMachineDeleting
		}
		if add {
			controllerutil.AddFinalizer(cur, fin)
		} else {
			controllerutil.RemoveFinalizer(cur, fin)
		}
		if err := r.mgr.GetClient().Update(ctx, cur); err != nil {
			return err
		}
		m.Finalizers = cur.Finalizers
		return nil
	})
	if apierrors.IsNotFound(err) && add {
		return errMachineDeleting
	}
	return client.IgnoreNotFound(err)
}

func regularFile(p string) bool {
	fi, err := os.Lstat(p)
	return err == nil && fi.Mode().IsRegular()
}

// keyedMutex is one mutex per key, made on demand and dropped when unused.
type keyedMutex struct {
	mu sync.Mutex
	m  map[string]*keyedEntry
}

type keyedEntry struct {
	sync.Mutex
	n int
}

func (k *keyedMutex) lock(key string) (unlock func()) {
	k.mu.Lock()
	if k.m == nil {
		k.m = map[string]*keyedEntry{}
	}
	e := k.m[key]
	if e == nil {
		e = &keyedEntry{}
		k.m[key] = e
	}
	e.n++
	k.mu.Unlock()
	e.Lock()
	var once sync.Once
	return func() {
		once.Do(func() {
			e.Unlock()
			k.mu.Lock()
			if e.n--; e.n == 0 {
				delete(k.m, key)
			}
			k.mu.Unlock()
		})
	}
}
