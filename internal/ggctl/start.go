package ggctl

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/spf13/cobra"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/watch"
	"sigs.k8s.io/controller-runtime/pkg/client"

	bootv1 "github.com/ggnet/ggnet/api/v1alpha1"
)

// wakePatch asks the boot agent to power a session's machine on
// (spec.wake): once the session is Ready, the agent on the machine's network
// broadcasts the magic packet and stamps timeline.wakeSent.
var wakePatch = client.RawPatch("application/merge-patch+json", []byte(`{"spec":{"wake":true}}`))

func (g *ggnet) wakeCommand() *cobra.Command {
	var selector string
	cmd := &cobra.Command{
		Use:   "wake (MACHINE... | -l SELECTOR)",
		Short: "Power machines on with Wake-on-LAN, through their current sessions",
		Long: `wake sets spec.wake on each machine's current session (its active session, else its newest
unfinished one): once the session is Ready, the boot agent on the machine's network broadcasts a
Wake-on-LAN magic packet (with the Machine's SecureOn password, spec.wakeOnLAN), stamps
timeline.wakeSent (kubectl ggnet timeline) and sends again while no DHCP request of the machine
arrives. A machine with no session gets none: start one with kubectl ggnet start --wake. Needs
the ggnet-operator role.`,
		Example: `  kubectl ggnet wake seat-031
  kubectl ggnet wake -l boot.ggnet.io/room=main-hall`,
		RunE: func(cmd *cobra.Command, args []string) error { return g.wake(cmd.Context(), args, selector) },
	}
	cmd.Flags().StringVarP(&selector, "selector", "l", "", "wake every Machine with these labels")
	return cmd
}

func (g *ggnet) wake(ctx context.Context, args []string, selector string) error {
	if err := oneOf(args, selector, "machine"); err != nil {
		return err
	}
	if err := g.connect(); err != nil {
		return err
	}
	ns, err := g.namespace()
	if err != nil {
		return err
	}
	machines, err := g.machinesFor(ctx, ns, args, selector)
	if err != nil {
		return err
	}
	failed := 0
	for i := range machines {
		m := &machines[i]
		s, err := g.currentSession(ctx, m)
		if err != nil {
			return err
		}
		switch {
		case s == nil:
			fmt.Fprintf(g.io.ErrOut, "error: machine %s has no session to wake it for (kubectl ggnet start %s --wake)\n", m.Name, m.Name)
			failed++
			continue
		case s.Status.Timeline.DHCP != nil:
			fmt.Fprintf(g.out(), "machine %s is already up: session %s saw its DHCP request at %s\n", m.Name, s.Name, s.Status.Timeline.DHCP.Format(time.RFC3339))
			continue
		}
		if err := g.client.Patch(ctx, s, wakePatch); err != nil {
			if apierrors.IsForbidden(err) || apierrors.IsUnauthorized(err) {
				return explain(err, "patch", "bootsessions", ns)
			}
			fmt.Fprintf(g.io.ErrOut, "error: session %s of machine %s: %v\n", s.Name, m.Name, err)
			failed++
			continue
		}
		when := "once the session is Ready"
		if s.Status.Phase == bootv1.SessionReady {
			when = "now"
		}
		fmt.Fprintf(g.out(), "machine %s: session %s wakes it %s\n", m.Name, s.Name, when)
	}
	if failed > 0 {
		return fmt.Errorf("%d of %d machines not woken", failed, len(machines))
	}
	return nil
}

type startOptions struct {
	selector  string
	image     string
	writeback string
	ttl       time.Duration
	wait      bool
	wake      bool
	timeout   time.Duration
}

func (g *ggnet) startCommand() *cobra.Command {
	var o startOptions
	cmd := &cobra.Command{
		Use:   "start (MACHINE... | -l SELECTOR) [--image IMAGE] [--writeback Discard|Persist] [--wait]",
		Short: "Start a boot session for each machine",
		Long: `Start creates one BootSession for each machine named or selected (-l selects Machines by
label, e.g. -l boot.ggnet.io/room=main-hall). The session boots the machine's image, status.image
(its pin, spec.imageRef, or the latest Ready version of its family, spec.imageFamily), unless
--image names another Image. With --wait it waits until each session is Ready (the PC may then
boot) and fails if one fails or --timeout passes. Needs the ggnet-operator role.`,
		Example: `  kubectl ggnet start seat-031
  kubectl ggnet start -l boot.ggnet.io/room=main-hall --image win11-games-2026-12 --wait
  kubectl ggnet start seat-031 --writeback Persist`,
		RunE: func(cmd *cobra.Command, args []string) error { return g.start(cmd.Context(), args, o) },
	}
	fs := cmd.Flags()
	fs.StringVarP(&o.selector, "selector", "l", "", "start a session for every Machine with these labels")
	fs.StringVar(&o.image, "image", "", "the Image to boot (default: each Machine's status.image, its pin or its family's latest Ready version)")
	fs.StringVar(&o.writeback, "writeback", "", "Discard (default: the writes are thrown away) or Persist (kept on the machine's persistent disk)")
	fs.DurationVar(&o.ttl, "ttl", 0, "delete the session this long after it stopped or failed (spec.ttlSecondsAfterFinished; 0 keeps it)")
	fs.BoolVar(&o.wait, "wait", false, "wait until every session is Ready")
	fs.DurationVar(&o.timeout, "timeout", 5*time.Minute, "how long --wait waits")
	fs.BoolVar(&o.wake, "wake", false, "power the machines on with Wake-on-LAN once their sessions are Ready (spec.wake)")
	return cmd
}

// machinesFor returns the Machines named by args or selected by selector,
// which the caller checked are not both given.
func (g *ggnet) machinesFor(ctx context.Context, ns string, args []string, selector string) ([]bootv1.Machine, error) {
	if selector != "" {
		sel, err := labels.Parse(selector)
		if err != nil {
			return nil, usagef("-l %q: %v", selector, err)
		}
		var list bootv1.MachineList
		if err := g.client.List(ctx, &list, client.InNamespace(ns), client.MatchingLabelsSelector{Selector: sel}); err != nil {
			return nil, explain(err, "list", "machines", ns)
		}
		if len(list.Items) == 0 {
			return nil, fmt.Errorf("no Machine in namespace %s has the labels %s (kubectl get machines -n %s --show-labels)", ns, selector, ns)
		}
		sortMachines(list.Items)
		return list.Items, nil
	}
	var out []bootv1.Machine
	for _, name := range args {
		var m bootv1.Machine
		if err := g.client.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, &m); err != nil {
			if apierrors.IsNotFound(err) && !isNoKind(err) {
				return nil, fmt.Errorf("machine %q not found in namespace %s (kubectl get machines -n %s)", name, ns, ns)
			}
			return nil, explain(err, "get", "machines", ns)
		}
		out = append(out, m)
	}
	return out, nil
}

func oneOf(args []string, selector, what string) error {
	switch {
	case len(args) > 0 && selector != "":
		return usagef("name %ss or give -l, not both", what)
	case len(args) == 0 && selector == "":
		return usagef("name at least one %s, or select with -l", what)
	}
	return nil
}

func (g *ggnet) start(ctx context.Context, args []string, o startOptions) error {
	if err := oneOf(args, o.selector, "machine"); err != nil {
		return err
	}
	var wb bootv1.WritebackPolicy
	switch strings.ToLower(o.writeback) {
	case "":
	case "discard":
		wb = bootv1.WritebackDiscard
	case "persist":
		wb = bootv1.WritebackPersist
	default:
		return usagef("--writeback %q: want Discard or Persist", o.writeback)
	}
	if o.ttl < 0 {
		return usagef("--ttl must not be negative")
	}
	if err := g.connect(); err != nil {
		return err
	}
	ns, err := g.namespace()
	if err != nil {
		return err
	}
	machines, err := g.machinesFor(ctx, ns, args, o.selector)
	if err != nil {
		return err
	}
	images := map[string]*bootv1.Image{}
	var created []string
	failed := 0
	for i := range machines {
		m := &machines[i]
		img := o.image
		if img == "" {
			img = machineImage(m)
		}
		if img == "" {
			fmt.Fprintf(g.io.ErrOut, "error: machine %s has no image (status.image): give --image, pin one (kubectl ggnet pin) or follow a family with a Ready version (kubectl ggnet follow)\n", m.Name)
			failed++
			continue
		}
		if _, seen := images[img]; !seen {
			var im bootv1.Image
			switch err := g.client.Get(ctx, client.ObjectKey{Namespace: ns, Name: img}, &im); {
			case apierrors.IsNotFound(err) && !isNoKind(err):
				images[img] = nil
			case err != nil:
				return explain(err, "get", "images", ns)
			default:
				images[img] = &im
			}
		}
		im := images[img]
		if im == nil {
			fmt.Fprintf(g.io.ErrOut, "error: image %q not found in namespace %s (kubectl ggnet images -n %s)\n", img, ns, ns)
			failed++
			continue
		}
		if im.Status.ReadyReplicas == 0 {
			fmt.Fprintf(g.io.ErrOut, "warning: image %s has no Ready replica yet: the session of %s waits for it\n", img, m.Name)
		}
		if m.Status.ActiveSession != "" {
			fmt.Fprintf(g.io.ErrOut, "warning: machine %s is in session %s: the new session waits until it stops (kubectl ggnet stop %s)\n",
				m.Name, m.Status.ActiveSession, m.Status.ActiveSession)
		}
		s := &bootv1.BootSession{
			ObjectMeta: metav1.ObjectMeta{
				Namespace: ns, GenerateName: m.Name + "-",
				// The manager sets them too; set here, `kubectl get bs -l`
				// finds the session at once.
				Labels: map[string]string{bootv1.MachineLabel: m.Name, bootv1.ImageLabel: img},
			},
			Spec: bootv1.BootSessionSpec{
				MachineRef: bootv1.LocalObjectReference{Name: m.Name},
				ImageRef:   bootv1.LocalObjectReference{Name: img},
				Writeback:  wb,
				Wake:       o.wake,
			},
		}
		if o.ttl > 0 {
			ttl := int32(o.ttl / time.Second)
			s.Spec.TTLSecondsAfterFinished = &ttl
		}
		if err := g.client.Create(ctx, s); err != nil {
			if apierrors.IsForbidden(err) || apierrors.IsUnauthorized(err) || noCRD(err) {
				return explain(err, "create", "bootsessions", ns)
			}
			fmt.Fprintf(g.io.ErrOut, "error: starting a session for %s: %v\n", m.Name, err)
			failed++
			continue
		}
		fmt.Fprintf(g.out(), "bootsession/%s created: machine %s, image %s, writeback %s\n", s.Name, m.Name, img, orDefault(string(s.Spec.Writeback), "Discard"))
		created = append(created, s.Name)
	}
	if o.wait && len(created) > 0 {
		if err := g.waitSessions(ctx, ns, created, o.timeout, "Ready", readyOrFailed); err != nil {
			return err
		}
	}
	if failed > 0 {
		return silentError{}
	}
	return nil
}

func noCRD(err error) bool { return apierrors.IsNotFound(err) && isNoKind(err) }

func orDefault(s, d string) string {
	if s == "" {
		return d
	}
	return s
}

// readyOrFailed: done when the session is Ready (or past it), an error when
// it failed or stopped.
func readyOrFailed(s *bootv1.BootSession) (bool, error) {
	switch s.Status.Phase {
	case bootv1.SessionReady, bootv1.SessionBooting, bootv1.SessionActive:
		return true, nil
	case bootv1.SessionFailed:
		return true, fmt.Errorf("session %s failed: %s", s.Name, readySummary(s))
	case bootv1.SessionStopping, bootv1.SessionStopped:
		return true, fmt.Errorf("session %s was stopped before it was Ready", s.Name)
	}
	return false, nil
}

// stoppedOrGone: done when the session is Stopped (or deleted).
func stoppedOrGone(s *bootv1.BootSession) (bool, error) {
	return s.Status.Phase == bootv1.SessionStopped, nil
}

// waitSessions waits until done says so for every session in names,
// watching the namespace's sessions. A deleted session counts as done for
// "Stopped" and as an error otherwise. It prints each as it gets there.
func (g *ggnet) waitSessions(ctx context.Context, ns string, names []string, timeout time.Duration, state string,
	done func(*bootv1.BootSession) (bool, error)) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	pending := map[string]*bootv1.BootSession{}
	for _, n := range names {
		pending[n] = nil
	}
	var errs []error
	settle := func(s *bootv1.BootSession) {
		if _, ok := pending[s.Name]; !ok {
			return
		}
		pending[s.Name] = s
		ok, err := done(s)
		if !ok {
			return
		}
		delete(pending, s.Name)
		if err != nil {
			errs = append(errs, err)
			return
		}
		fmt.Fprintf(g.out(), "bootsession/%s %s (%s)\n", s.Name, strings.ToLower(state), s.Status.Phase)
	}
	for len(pending) > 0 {
		var list bootv1.BootSessionList
		if err := g.client.List(ctx, &list, client.InNamespace(ns)); err != nil {
			if ctx.Err() != nil {
				break
			}
			return explain(err, "list", "bootsessions", ns)
		}
		seen := map[string]bool{}
		for i := range list.Items {
			seen[list.Items[i].Name] = true
			settle(&list.Items[i])
		}
		for n := range pending {
			if !seen[n] {
				delete(pending, n)
				if state != "Stopped" {
					errs = append(errs, fmt.Errorf("session %s was deleted", n))
				} else {
					fmt.Fprintf(g.out(), "bootsession/%s deleted\n", n)
				}
			}
		}
		if len(pending) == 0 {
			break
		}
		w, err := g.client.Watch(ctx, &bootv1.BootSessionList{}, client.InNamespace(ns),
			&client.ListOptions{Raw: &metav1.ListOptions{ResourceVersion: list.ResourceVersion}})
		if err != nil {
			if ctx.Err() != nil {
				break
			}
			return explain(err, "watch", "bootsessions", ns)
		}
		for ev := range w.ResultChan() {
			s, ok := ev.Object.(*bootv1.BootSession)
			if !ok {
				continue
			}
			if ev.Type == watch.Deleted {
				if _, ok := pending[s.Name]; ok {
					delete(pending, s.Name)
					if state != "Stopped" {
						errs = append(errs, fmt.Errorf("session %s was deleted", s.Name))
					} else {
						fmt.Fprintf(g.out(), "bootsession/%s deleted\n", s.Name)
					}
				}
			} else {
				settle(s)
			}
			if len(pending) == 0 {
				break
			}
		}
		w.Stop()
		if ctx.Err() != nil {
			break
		}
	}
	if len(pending) > 0 {
		var left []string
		for n, s := range pending {
			if s == nil {
				left = append(left, n)
				continue
			}
			left = append(left, fmt.Sprintf("%s (%s: %s)", n, orDefault(string(s.Status.Phase), "no phase yet"), readySummary(s)))
		}
		sort.Strings(left)
		if ctx.Err() == context.DeadlineExceeded {
			errs = append(errs, fmt.Errorf("timed out after %s waiting for %d session(s) to be %s: %s (kubectl ggnet ls; raise --timeout)",
				timeout, len(left), state, strings.Join(left, ", ")))
		} else {
			errs = append(errs, fmt.Errorf("interrupted waiting for %s", strings.Join(left, ", ")))
		}
	}
	return errors.Join(errs...)
}

// readySummary is the Ready condition as "reason: message".
func readySummary(s *bootv1.BootSession) string {
	for _, c := range s.Status.Conditions {
		if c.Type == bootv1.ReadyCondition {
			if c.Message != "" {
				return c.Reason + ": " + c.Message
			}
			return c.Reason
		}
	}
	return "not reconciled yet (is the GGnet manager running?)"
}

// machineImage is the Image a machine boots when none is given: its pin
// (spec.imageRef, which status.image follows: a rollback just pinned is
// booted even before the manager has seen it), else the one the manager
// resolved (status.image: its family's latest Ready version).
func machineImage(m *bootv1.Machine) string {
	switch {
	case m.Spec.ImageRef != nil && m.Spec.ImageRef.Name != "":
		return m.Spec.ImageRef.Name
	case m.Status.Image != "":
		return m.Status.Image
	}
	return ""
}
