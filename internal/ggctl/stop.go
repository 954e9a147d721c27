package ggctl

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"sigs.k8s.io/controller-runtime/pkg/client"

	bootv1 "github.com/ggnet/ggnet/api/v1alpha1"
)

type stopOptions struct {
	machine  string
	selector string
	wait     bool
	timeout  time.Duration
}

// stopPatch is the stop: spec.stopped=true (the same as kubectl patch bs
// NAME --type merge -p '{"spec":{"stopped":true}}').
var stopPatch = client.RawPatch("application/merge-patch+json", []byte(`{"spec":{"stopped":true}}`))

func (g *ggnet) stopCommand() *cobra.Command {
	var o stopOptions
	cmd := &cobra.Command{
		Use:   "stop (SESSION... | --machine MACHINE | -l SELECTOR) [--wait]",
		Short: "Stop boot sessions",
		Long: `Stop sets spec.stopped=true on each session: the storage node removes its iSCSI target and, for
Discard, the overlay (the machine's writes). A stopped session cannot be started again; start a new
one. --machine stops the machine's sessions that are not stopped yet; -l selects Machines by label,
as start does, and stops their sessions. With --wait it waits until each is Stopped. Needs the
ggnet-operator role.`,
		Example: `  kubectl ggnet stop seat-031-x7k2p
  kubectl ggnet stop --machine seat-031
  kubectl ggnet stop -l boot.ggnet.io/room=main-hall --wait`,
		RunE: func(cmd *cobra.Command, args []string) error { return g.stop(cmd.Context(), args, o) },
	}
	fs := cmd.Flags()
	fs.StringVar(&o.machine, "machine", "", "stop this Machine's sessions")
	fs.StringVarP(&o.selector, "selector", "l", "", "stop the sessions of every Machine with these labels")
	fs.BoolVar(&o.wait, "wait", false, "wait until every session is Stopped")
	fs.DurationVar(&o.timeout, "timeout", 5*time.Minute, "how long --wait waits")
	return cmd
}

// sessionName accepts NAME, bootsession/NAME and bootsessions.boot.ggnet.io/NAME.
func sessionName(arg string) string {
	if kind, name, ok := strings.Cut(arg, "/"); ok {
		switch kind {
		case "bs", "bootsession", "bootsessions", "bootsession.boot.ggnet.io", "bootsessions.boot.ggnet.io":
			return name
		}
	}
	return arg
}

func (g *ggnet) stop(ctx context.Context, args []string, o stopOptions) error {
	given := 0
	for _, b := range []bool{len(args) > 0, o.machine != "", o.selector != ""} {
		if b {
			given++
		}
	}
	if given != 1 {
		return usagef("name sessions, or give --machine or -l (exactly one of them)")
	}
	if err := g.connect(); err != nil {
		return err
	}
	ns, err := g.namespace()
	if err != nil {
		return err
	}
	var names []string
	switch {
	case len(args) > 0:
		for _, a := range args {
			names = append(names, sessionName(a))
		}
	default:
		var machines []string
		if o.machine != "" {
			machines = []string{o.machine}
		} else {
			ms, err := g.machinesFor(ctx, ns, nil, o.selector)
			if err != nil {
				return err
			}
			for _, m := range ms {
				machines = append(machines, m.Name)
			}
		}
		for _, m := range machines {
			var list bootv1.BootSessionList
			if err := g.client.List(ctx, &list, client.InNamespace(ns), client.MatchingFields{"spec.machineRef.name": m}); err != nil {
				return explain(err, "list", "bootsessions", ns)
			}
			sortSessions(list.Items)
			n := 0
			for _, s := range list.Items {
				if !s.Spec.Stopped && s.Status.Phase != bootv1.SessionStopped {
					names = append(names, s.Name)
					n++
				}
			}
			if n == 0 && o.machine != "" {
				fmt.Fprintf(g.out(), "machine %s has no session to stop\n", m)
			}
		}
		if len(names) == 0 {
			return nil
		}
	}
	failed := 0
	var stopped []string
	for _, n := range names {
		s := &bootv1.BootSession{}
		s.Namespace, s.Name = ns, n
		if err := g.client.Get(ctx, client.ObjectKeyFromObject(s), s); err != nil {
			if apierrors.IsNotFound(err) && !isNoKind(err) {
				fmt.Fprintf(g.io.ErrOut, "error: session %q not found in namespace %s (kubectl ggnet ls -n %s)\n", n, ns, ns)
				failed++
				continue
			}
			return explain(err, "get", "bootsessions", ns)
		}
		if s.Spec.Stopped {
			fmt.Fprintf(g.out(), "bootsession/%s already stopped (%s)\n", n, orDefault(string(s.Status.Phase), "no phase yet"))
			stopped = append(stopped, n)
			continue
		}
		if err := g.client.Patch(ctx, s, stopPatch); err != nil {
			if apierrors.IsForbidden(err) || apierrors.IsUnauthorized(err) {
				return explain(err, "patch", "bootsessions", ns)
			}
			fmt.Fprintf(g.io.ErrOut, "error: stopping %s: %v\n", n, err)
			failed++
			continue
		}
		fmt.Fprintf(g.out(), "bootsession/%s stopping (machine %s)\n", n, s.Spec.MachineRef.Name)
		stopped = append(stopped, n)
	}
	if o.wait && len(stopped) > 0 {
		if err := g.waitSessions(ctx, ns, stopped, o.timeout, "Stopped", stoppedOrGone); err != nil {
			return err
		}
	}
	if failed > 0 {
		return silentError{}
	}
	return nil
}
