package ggctl

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"

	"github.com/spf13/cobra"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	bootv1 "github.com/ggnet/ggnet/api/v1alpha1"
)

type lsOptions struct {
	phases      []string
	storageNode string
	image       string
	machine     string
	selector    string
	all         bool
	output      string
}

var allPhases = []bootv1.BootSessionPhase{bootv1.SessionPending, bootv1.SessionProvisioning, bootv1.SessionReady,
	bootv1.SessionBooting, bootv1.SessionActive, bootv1.SessionStopping, bootv1.SessionStopped, bootv1.SessionFailed}

func (g *ggnet) lsCommand() *cobra.Command {
	var o lsOptions
	cmd := &cobra.Command{
		Use:     "ls [--phase P[,P]] [--storage-node N] [--image I] [--machine M] [-l SELECTOR] [-A] [-o wide|name|json|yaml]",
		Aliases: []string{"list"},
		Short:   "List boot sessions",
		Long: `ls lists BootSessions, filtered by phase, storage node, image, machine and label (-l selects
sessions by their labels: boot.ggnet.io/machine, boot.ggnet.io/image, boot.ggnet.io/storage-node,
boot.ggnet.io/auto-session). --machine and --image are server-side field selectors on
spec.machineRef.name and spec.imageRef.name; --storage-node matches status.storageNode.`,
		Example: `  kubectl ggnet ls
  kubectl ggnet ls -A --phase Pending,Provisioning
  kubectl ggnet ls --storage-node storage-1 -o wide`,
		Args: exactArgs(0, "no arguments"),
		RunE: func(cmd *cobra.Command, _ []string) error { return g.ls(cmd.Context(), o) },
	}
	fs := cmd.Flags()
	fs.StringSliceVar(&o.phases, "phase", nil, "only these phases (Pending, Provisioning, Ready, Booting, Active, Stopping, Stopped, Failed)")
	fs.StringVar(&o.storageNode, "storage-node", "", "only sessions on this storage node")
	fs.StringVar(&o.image, "image", "", "only sessions of this Image")
	fs.StringVar(&o.machine, "machine", "", "only sessions of this Machine")
	fs.StringVarP(&o.selector, "selector", "l", "", "only sessions with these labels")
	fs.StringVarP(&o.output, "output", "o", "", "wide, name, json or yaml")
	addAllNamespaces(fs, &o.all)
	return cmd
}

// parsePhases checks --phase against the API's phases (any case).
func parsePhases(in []string) (map[bootv1.BootSessionPhase]bool, error) {
	if len(in) == 0 {
		return nil, nil
	}
	out := map[bootv1.BootSessionPhase]bool{}
	for _, p := range in {
		ok := false
		for _, q := range allPhases {
			if strings.EqualFold(p, string(q)) {
				out[q], ok = true, true
			}
		}
		if !ok {
			return nil, usagef("--phase %q: want one of %s", p, phaseList())
		}
	}
	return out, nil
}

func phaseList() string {
	var s []string
	for _, p := range allPhases {
		s = append(s, string(p))
	}
	return strings.Join(s, ", ")
}

// listSessions lists the sessions in ns ("" for all) that match the
// server-side filters.
func (g *ggnet) listSessions(ctx context.Context, ns, machine, image, selector string) ([]bootv1.BootSession, error) {
	opts := []client.ListOption{client.InNamespace(ns)}
	fl := fields.Set{}
	if machine != "" {
		fl["spec.machineRef.name"] = machine
	}
	if image != "" {
		fl["spec.imageRef.name"] = image
	}
	if len(fl) > 0 {
		opts = append(opts, client.MatchingFieldsSelector{Selector: fields.SelectorFromSet(fl)})
	}
	if selector != "" {
		sel, err := labels.Parse(selector)
		if err != nil {
			return nil, usagef("-l %q: %v", selector, err)
		}
		opts = append(opts, client.MatchingLabelsSelector{Selector: sel})
	}
	var list bootv1.BootSessionList
	if err := g.client.List(ctx, &list, opts...); err != nil {
		return nil, explain(err, "list", "bootsessions", ns)
	}
	sortSessions(list.Items)
	return list.Items, nil
}

func (g *ggnet) ls(ctx context.Context, o lsOptions) error {
	phases, err := parsePhases(o.phases)
	if err != nil {
		return err
	}
	switch o.output {
	case "", "wide", "name", "json", "yaml":
	default:
		return usagef("-o %q: want wide, name, json or yaml", o.output)
	}
	if err := g.connect(); err != nil {
		return err
	}
	ns, err := g.scope(o.all)
	if err != nil {
		return err
	}
	items, err := g.listSessions(ctx, ns, o.machine, o.image, o.selector)
	if err != nil {
		return err
	}
	var out []bootv1.BootSession
	for _, s := range items {
		if phases != nil && !phases[s.Status.Phase] {
			continue
		}
		if o.storageNode != "" && s.Status.StorageNode != o.storageNode {
			continue
		}
		out = append(out, s)
	}
	switch o.output {
	case "name":
		for _, s := range out {
			fmt.Fprintf(g.out(), "bootsession/%s\n", s.Name)
		}
		return nil
	case "json", "yaml":
		list := bootv1.BootSessionList{Items: out}
		list.APIVersion, list.Kind = "v1", "List"
		for i := range list.Items {
			list.Items[i].APIVersion, list.Items[i].Kind = bootv1.GroupVersion.String(), "BootSession"
			list.Items[i].ManagedFields = nil
		}
		var b []byte
		if o.output == "json" {
			b, err = json.MarshalIndent(list, "", "    ")
			b = append(b, '\n')
		} else {
			b, err = yaml.Marshal(list)
		}
		if err != nil {
			return err
		}
		_, err = g.out().Write(b)
		return err
	}
	if len(out) == 0 {
		where := "in namespace " + ns
		if ns == "" {
			where = "in any namespace"
		}
		fmt.Fprintf(g.io.ErrOut, "No sessions %s match.\n", where)
		return nil
	}
	t := newTable(g.out())
	head := []string{"NAME", "MACHINE", "IMAGE", "PHASE", "NODE", "AGE"}
	if o.output == "wide" {
		head = append(head, "WRITEBACK", "REASON", "TARGET", "LOGINS")
	}
	if ns == "" {
		head = append([]string{"NAMESPACE"}, head...)
	}
	row(t, head...)
	for _, s := range out {
		r := []string{s.Name, s.Spec.MachineRef.Name, s.Spec.ImageRef.Name, string(s.Status.Phase), s.Status.StorageNode, g.age(s.CreationTimestamp)}
		if o.output == "wide" {
			reason, target := "", ""
			if c := condition(s.Status.Conditions, bootv1.ReadyCondition); c != nil {
				reason = c.Reason
			}
			if s.Status.Target != nil && s.Status.Target.IQN != "" {
				target = s.Status.Target.IQN + "@" + s.Status.Target.Portal
			}
			r = append(r, orDefault(string(s.Spec.Writeback), string(bootv1.WritebackDiscard)), reason, target, loginCount(&s))
		}
		if ns == "" {
			r = append([]string{s.Namespace}, r...)
		}
		row(t, r...)
	}
	return t.Flush()
}

// loginCount is "open/total" of the session's iSCSI logins.
func loginCount(s *bootv1.BootSession) string {
	open := 0
	for _, l := range s.Status.Timeline.Logins {
		if l.LoggedOutAt == nil {
			open++
		}
	}
	return fmt.Sprintf("%d/%d", open, len(s.Status.Timeline.Logins))
}
