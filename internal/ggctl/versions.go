package ggctl

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"

	"github.com/spf13/cobra"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation"
	"sigs.k8s.io/controller-runtime/pkg/client"

	bootv1 "github.com/ggnet/ggnet/api/v1alpha1"
)

// Image versions: pin, follow and capture.

func (g *ggnet) pinCommand() *cobra.Command {
	var selector string
	cmd := &cobra.Command{
		Use:   "pin (MACHINE... | -l SELECTOR) IMAGE",
		Short: "Pin machines to one Image (a version of a family): rolling back is pinning the previous one",
		Long: `pin sets spec.imageRef on each machine: the machine boots IMAGE (status.image) whatever newer
version its family (spec.imageFamily, kept) gets, until kubectl ggnet follow unpins it. Rolling
back is pinning the previous version. A session a PC is running on is never stopped for it: the
new image is used from the machine's next session (an AutoSession machine's prepared session
that no PC booted from is replaced at once). Needs the ggnet-admin role.`,
		Example: `  kubectl ggnet pin seat-031 games-v6
  kubectl ggnet pin -l boot.ggnet.io/room=main-hall games-v6`,
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 {
				return usagef("name the Image to pin to")
			}
			return g.pin(cmd.Context(), args[:len(args)-1], selector, args[len(args)-1])
		},
	}
	cmd.Flags().StringVarP(&selector, "selector", "l", "", "pin every Machine with these labels")
	return cmd
}

func (g *ggnet) followCommand() *cobra.Command {
	var selector string
	cmd := &cobra.Command{
		Use:   "follow (MACHINE... | -l SELECTOR) FAMILY",
		Short: "Make machines follow the latest Ready version of an image family",
		Long: `follow sets spec.imageFamily on each machine and removes its pin (spec.imageRef): the machine
boots the Ready Image with the label boot.ggnet.io/family=FAMILY and the highest status.version
(status.image), and moves to each new version once it is Ready. While the family has no Ready
version the machine is Ready=False NoReadyImageInFamily. A session a PC is running on is never
stopped for a new version: it is used from the machine's next session. Needs the ggnet-admin
role.`,
		Example: `  kubectl ggnet follow seat-031 games
  kubectl ggnet follow -l boot.ggnet.io/room=main-hall games`,
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 {
				return usagef("name the image family to follow")
			}
			return g.follow(cmd.Context(), args[:len(args)-1], selector, args[len(args)-1])
		},
	}
	cmd.Flags().StringVarP(&selector, "selector", "l", "", "make every Machine with these labels follow the family")
	return cmd
}

func (g *ggnet) captureCommand() *cobra.Command {
	var family string
	cmd := &cobra.Command{
		Use:   "capture SESSION IMAGE [--family FAMILY]",
		Short: "Make a new Image from a stopped Persist session's disk (a maintenance boot)",
		Long: `capture creates the Image IMAGE (format raw) whose source is the disk of SESSION, a stopped
session with writeback Persist: the storage node that holds the disk clones it by reflink
(instant, no copy) and checksums it, and the other storage nodes replicate it. With --family the
Image joins that family (label boot.ggnet.io/family) as its next version, which the machines that
follow the family boot once it is Ready. The session must be Persist and Stopped (kubectl ggnet
stop SESSION --wait). Needs the ggnet-admin role.`,
		Example: `  kubectl ggnet start seat-001 --image games-v5 --writeback Persist --wait
  # patch the games on seat-001, shut it down, then:
  kubectl ggnet stop seat-001-x7k2p --wait
  kubectl ggnet capture seat-001-x7k2p games-v6 --family games
  kubectl get image games-v6 -w`,
		Args: exactArgs(2, "SESSION and IMAGE"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.capture(cmd.Context(), sessionName(args[0]), imageName(args[1]), family)
		},
	}
	cmd.Flags().StringVar(&family, "family", "", "the image family the new Image is a version of")
	return cmd
}

// imageName accepts NAME, image/NAME and images.boot.ggnet.io/NAME.
func imageName(arg string) string {
	if kind, name, ok := strings.Cut(arg, "/"); ok {
		switch kind {
		case "image", "images", "image.boot.ggnet.io", "images.boot.ggnet.io":
			return name
		}
	}
	return arg
}

// patchMachines applies patch to each machine, printing done(m) for each
// one patched and an error line for each one that failed; a Forbidden or
// Unauthorized answer ends it with explain.
func (g *ggnet) patchMachines(ctx context.Context, ns string, machines []bootv1.Machine, patch client.Patch, done func(*bootv1.Machine) string) error {
	failed := 0
	for i := range machines {
		m := &machines[i]
		if err := g.client.Patch(ctx, m, patch); err != nil {
			if apierrors.IsForbidden(err) || apierrors.IsUnauthorized(err) || noCRD(err) {
				return explain(err, "patch", "machines", ns)
			}
			fmt.Fprintf(g.io.ErrOut, "error: machine %s: %v\n", m.Name, err)
			failed++
			continue
		}
		fmt.Fprintln(g.out(), done(m))
	}
	if failed > 0 {
		return silentError{}
	}
	return nil
}

func (g *ggnet) pin(ctx context.Context, args []string, selector, image string) error {
	if err := oneOf(args, selector, "machine"); err != nil {
		return err
	}
	image = imageName(image)
	if err := g.connect(); err != nil {
		return err
	}
	ns, err := g.namespace()
	if err != nil {
		return err
	}
	var im bootv1.Image
	if err := g.client.Get(ctx, client.ObjectKey{Namespace: ns, Name: image}, &im); err != nil {
		if apierrors.IsNotFound(err) && !isNoKind(err) {
			return fmt.Errorf("image %q not found in namespace %s (kubectl ggnet images -n %s)", image, ns, ns)
		}
		return explain(err, "get", "images", ns)
	}
	if !meta.IsStatusConditionTrue(im.Status.Conditions, bootv1.ReadyCondition) {
		fmt.Fprintf(g.io.ErrOut, "warning: image %s is not Ready yet: the machines' sessions wait for it\n", image)
	}
	machines, err := g.machinesFor(ctx, ns, args, selector)
	if err != nil {
		return err
	}
	p, err := json.Marshal(map[string]any{"spec": map[string]any{"imageRef": map[string]string{"name": image}}})
	if err != nil {
		return err
	}
	what := "image " + image
	if f := im.Labels[bootv1.FamilyLabel]; f != "" && im.Status.Version > 0 {
		what += fmt.Sprintf(" (family %s, version %d)", f, im.Status.Version)
	}
	return g.patchMachines(ctx, ns, machines, client.RawPatch("application/merge-patch+json", p), func(m *bootv1.Machine) string {
		return fmt.Sprintf("machine/%s pinned to %s", m.Name, what)
	})
}

func (g *ggnet) follow(ctx context.Context, args []string, selector, family string) error {
	if err := oneOf(args, selector, "machine"); err != nil {
		return err
	}
	if errs := validation.IsValidLabelValue(family); len(errs) > 0 || family == "" {
		return usagef("family %q is not a label value: at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit", family)
	}
	if err := g.connect(); err != nil {
		return err
	}
	ns, err := g.namespace()
	if err != nil {
		return err
	}
	var list bootv1.ImageList
	if err := g.client.List(ctx, &list, client.InNamespace(ns), client.MatchingLabels{bootv1.FamilyLabel: family}); err != nil {
		return explain(err, "list", "images", ns)
	}
	var latest *bootv1.Image
	for i := range list.Items {
		x := &list.Items[i]
		if x.DeletionTimestamp == nil && x.Status.Version > 0 && meta.IsStatusConditionTrue(x.Status.Conditions, bootv1.ReadyCondition) &&
			(latest == nil || x.Status.Version > latest.Status.Version) {
			latest = x
		}
	}
	switch {
	case len(list.Items) == 0:
		fmt.Fprintf(g.io.ErrOut, "warning: no Image in namespace %s has the label %s=%s yet: the machines wait for a Ready one (NoReadyImageInFamily)\n",
			ns, bootv1.FamilyLabel, family)
	case latest == nil:
		fmt.Fprintf(g.io.ErrOut, "warning: family %s has no Ready version yet: the machines wait for one (NoReadyImageInFamily)\n", family)
	}
	machines, err := g.machinesFor(ctx, ns, args, selector)
	if err != nil {
		return err
	}
	p, err := json.Marshal(map[string]any{"spec": map[string]any{"imageFamily": family, "imageRef": nil}})
	if err != nil {
		return err
	}
	now := ""
	if latest != nil {
		now = fmt.Sprintf(": image %s (version %d)", latest.Name, latest.Status.Version)
	}
	return g.patchMachines(ctx, ns, machines, client.RawPatch("application/merge-patch+json", p), func(m *bootv1.Machine) string {
		return fmt.Sprintf("machine/%s follows family %s%s", m.Name, family, now)
	})
}

func (g *ggnet) capture(ctx context.Context, session, image, family string) error {
	if family != "" {
		if errs := validation.IsValidLabelValue(family); len(errs) > 0 {
			return usagef("--family %q is not a label value: at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit", family)
		}
	}
	if errs := validation.IsDNS1123Subdomain(image); len(errs) > 0 {
		return usagef("image name %q: %s", image, errs[0])
	}
	if err := g.connect(); err != nil {
		return err
	}
	ns, err := g.namespace()
	if err != nil {
		return err
	}
	var s bootv1.BootSession
	if err := g.client.Get(ctx, client.ObjectKey{Namespace: ns, Name: session}, &s); err != nil {
		if apierrors.IsNotFound(err) && !isNoKind(err) {
			return fmt.Errorf("session %q not found in namespace %s (kubectl ggnet ls -n %s)", session, ns, ns)
		}
		return explain(err, "get", "bootsessions", ns)
	}
	if s.Spec.Writeback != bootv1.WritebackPersist {
		return fmt.Errorf("session %s has writeback %s: only a Persist session keeps a disk to capture "+
			"(boot the maintenance machine with kubectl ggnet start %s --writeback Persist)", s.Name, orDefault(string(s.Spec.Writeback), "Discard"), s.Spec.MachineRef.Name)
	}
	if s.Status.Phase != bootv1.SessionStopped {
		return fmt.Errorf("session %s is %s, not Stopped: shut the PC down and stop the session first (kubectl ggnet stop %s --wait)",
			s.Name, orDefault(string(s.Status.Phase), "new"), s.Name)
	}
	im := &bootv1.Image{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: image},
		Spec: bootv1.ImageSpec{
			Source: bootv1.ImageSource{Writeback: &bootv1.WritebackSource{SessionRef: bootv1.LocalObjectReference{Name: s.Name}}},
			Format: bootv1.ImageFormatRaw,
		},
	}
	if family != "" {
		im.Labels = map[string]string{bootv1.FamilyLabel: family}
	}
	if err := g.client.Create(ctx, im); err != nil {
		if apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("image %s already exists in namespace %s: an Image is immutable; capture into a new name", image, ns)
		}
		return explain(err, "create", "images", ns)
	}
	of := ""
	if family != "" {
		of = ", family " + family
	}
	fmt.Fprintf(g.out(), "image/%s created from session %s (machine %s%s): its storage node captures the disk (kubectl get image %s -w)\n",
		image, s.Name, s.Spec.MachineRef.Name, of, image)
	return nil
}
