package ggctl

import (
	"context"
	"fmt"
	"sort"
	"strings"

	"github.com/spf13/cobra"
	"sigs.k8s.io/controller-runtime/pkg/client"

	bootv1 "github.com/ggnet/ggnet/api/v1alpha1"
)

func (g *ggnet) imagesCommand() *cobra.Command {
	var all bool
	cmd := &cobra.Command{
		Use:   "images [-A]",
		Short: "List Images with their family, version, replicas per storage node and sizes",
		Long: `images lists each Image (family and version, phase, raw size, Ready replicas) and, below it,
its replica on each storage node: state, size and, for a replica that is not Ready, its reason and
message, and the progress of its transfer (bytes done of total, rate, the node it replicates from).`,
		Args: exactArgs(0, "no arguments"),
		RunE: func(cmd *cobra.Command, _ []string) error { return g.images(cmd.Context(), all) },
	}
	addAllNamespaces(cmd.Flags(), &all)
	return cmd
}

func (g *ggnet) images(ctx context.Context, all bool) error {
	if err := g.connect(); err != nil {
		return err
	}
	ns, err := g.scope(all)
	if err != nil {
		return err
	}
	var list bootv1.ImageList
	if err := g.client.List(ctx, &list, client.InNamespace(ns)); err != nil {
		return explain(err, "list", "images", ns)
	}
	if len(list.Items) == 0 {
		fmt.Fprintf(g.io.ErrOut, "No Images in %s.\n", orDefault(ns, "any namespace"))
		return nil
	}
	sort.SliceStable(list.Items, func(i, j int) bool {
		a, b := list.Items[i], list.Items[j]
		if a.Namespace != b.Namespace {
			return a.Namespace < b.Namespace
		}
		return naturalLess(a.Name, b.Name)
	})
	t := newTable(g.out())
	head := []string{"IMAGE", "FAMILY", "VERSION", "PHASE", "SIZE", "READY", "AGE", "NODE", "REPLICA", "REPLICA SIZE", "REASON"}
	if ns == "" {
		head = append([]string{"NAMESPACE"}, head...)
	}
	row(t, head...)
	for _, im := range list.Items {
		reps := append([]bootv1.ImageReplica(nil), im.Status.Replicas...)
		sort.SliceStable(reps, func(i, j int) bool { return naturalLess(reps[i].Node, reps[j].Node) })
		version := ""
		if im.Status.Version > 0 {
			version = fmt.Sprint(im.Status.Version)
		}
		first := []string{im.Name, im.Labels[bootv1.FamilyLabel], version, string(im.Status.Phase), humanBytes(im.Status.SizeBytes),
			fmt.Sprintf("%d/%d", im.Status.ReadyReplicas, len(reps)), g.age(im.CreationTimestamp)}
		if ns == "" {
			first = append([]string{im.Namespace}, first...)
		}
		if len(reps) == 0 {
			row(t, append(first, "", "", "", "no replica yet")...)
			continue
		}
		for i, r := range reps {
			lead := first
			if i > 0 {
				lead = make([]string, len(first))
				for k := range lead {
					lead[k] = " "
				}
			}
			reason := r.Reason
			if r.State != bootv1.ReplicaReady && r.Message != "" {
				reason += ": " + r.Message
			}
			if p := replicaProgress(r); p != "" {
				reason = strings.TrimPrefix(reason+" ("+p+")", " ")
			}
			row(t, append(append([]string(nil), lead...), r.Node, string(r.State), humanBytes(r.SizeBytes), reason)...)
		}
	}
	return t.Flush()
}

// replicaProgress is a transfer's progress for the REASON column: done of
// total, the rate and the node it replicates from; "" for a replica not in
// transfer.
func replicaProgress(r bootv1.ImageReplica) string {
	if r.State == bootv1.ReplicaReady || r.State == bootv1.ReplicaFailed || r.BytesTotal <= 0 {
		return ""
	}
	p := fmt.Sprintf("%s/%s", orDefault(humanBytes(r.BytesDone), "0B"), humanBytes(r.BytesTotal))
	if r.BytesPerSecond > 0 {
		p += " at " + humanBytes(r.BytesPerSecond) + "/s"
	}
	if r.SourceNode != "" {
		p += " from " + r.SourceNode
	}
	return p
}
