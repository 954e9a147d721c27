package ggctl

import (
	"context"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"

	"github.com/spf13/cobra"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	bootv1 "github.com/ggnet/ggnet/api/v1alpha1"
	"github.com/ggnet/ggnet/internal/ipxe"
)

func (g *ggnet) getMachine(ctx context.Context, ns, name string) (*bootv1.Machine, error) {
	m := &bootv1.Machine{}
	if err := g.client.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, m); err != nil {
		if apierrors.IsNotFound(err) && !isNoKind(err) {
			return nil, fmt.Errorf("machine %q not found in namespace %s (kubectl get machines -n %s)", name, ns, ns)
		}
		return nil, explain(err, "get", "machines", ns)
	}
	return m, nil
}

func (g *ggnet) getSession(ctx context.Context, ns, name string) (*bootv1.BootSession, error) {
	s := &bootv1.BootSession{}
	if err := g.client.Get(ctx, client.ObjectKey{Namespace: ns, Name: sessionName(name)}, s); err != nil {
		if apierrors.IsNotFound(err) && !isNoKind(err) {
			return nil, fmt.Errorf("session %q not found in namespace %s (kubectl ggnet ls -n %s)", name, ns, ns)
		}
		return nil, explain(err, "get", "bootsessions", ns)
	}
	return s, nil
}

// currentSession is the session a machine boots into: status.activeSession,
// else its newest session that has not finished (one the manager has not
// made active yet, waiting for instance for MachineBusy). nil when none.
func (g *ggnet) currentSession(ctx context.Context, m *bootv1.Machine) (*bootv1.BootSession, error) {
	if m.Status.ActiveSession != "" {
		s := &bootv1.BootSession{}
		err := g.client.Get(ctx, client.ObjectKey{Namespace: m.Namespace, Name: m.Status.ActiveSession}, s)
		if err == nil {
			return s, nil
		}
		if !apierrors.IsNotFound(err) {
			return nil, explain(err, "get", "bootsessions", m.Namespace)
		}
	}
	list, err := g.listSessions(ctx, m.Namespace, m.Name, "", "")
	if err != nil {
		return nil, err
	}
	var best *bootv1.BootSession
	for i := range list {
		s := &list[i]
		if finished(s) || s.Spec.Stopped {
			continue
		}
		if best == nil || s.CreationTimestamp.After(best.CreationTimestamp.Time) ||
			s.CreationTimestamp.Equal(&best.CreationTimestamp) && s.Name > best.Name {
			best = s
		}
	}
	return best, nil
}

func (g *ggnet) activeCommand() *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use:   "active MACHINE [-o name]",
		Short: "Show the session a machine boots into now",
		Long: `active shows the machine's active session (status.activeSession; else its newest session that
has not finished): phase, image, storage node, target, timeline so far and why it is not Ready.
It exits 1 when the machine has no session. -o name prints bootsession/NAME only.`,
		Args: exactArgs(1, "one MACHINE"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if output != "" && output != "name" {
				return usagef("-o %q: want name", output)
			}
			return g.active(cmd.Context(), args[0], output)
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", "", "name: print bootsession/NAME only")
	return cmd
}

func (g *ggnet) active(ctx context.Context, name, output string) error {
	if err := g.connect(); err != nil {
		return err
	}
	ns, err := g.namespace()
	if err != nil {
		return err
	}
	m, err := g.getMachine(ctx, ns, name)
	if err != nil {
		return err
	}
	s, err := g.currentSession(ctx, m)
	if err != nil {
		return err
	}
	if s == nil {
		return fmt.Errorf("machine %s has no session (boot policy %s): start one with kubectl ggnet start %s",
			m.Name, orDefault(string(m.Spec.BootPolicy), string(bootv1.BootPolicyManual)), m.Name)
	}
	if output == "name" {
		fmt.Fprintf(g.out(), "bootsession/%s\n", s.Name)
		return nil
	}
	t := newTable(g.out())
	kv := func(k, v string) { row(t, k+":", v) }
	kv("Machine", machineSummary(m))
	kv("Session", s.Name)
	if m.Status.ActiveSession == "" {
		kv("Active", "not yet (the manager has not made it the machine's active session)")
	}
	kv("Phase", string(s.Status.Phase))
	kv("Image", s.Spec.ImageRef.Name)
	kv("Writeback", orDefault(string(s.Spec.Writeback), string(bootv1.WritebackDiscard)))
	kv("Storage node", s.Status.StorageNode)
	if s.Status.Target != nil {
		kv("Target", fmt.Sprintf("%s at %s LUN %d", s.Status.Target.IQN, s.Status.Target.Portal, s.Status.Target.LUN))
	}
	kv("Initiator", s.Status.InitiatorIQN)
	kv("Age", g.age(s.CreationTimestamp))
	for _, ct := range []string{bootv1.ReadyCondition, bootv1.ScheduledCondition, bootv1.StorageReadyCondition, bootv1.BootFailedCondition} {
		if c := condition(s.Status.Conditions, ct); c != nil {
			v := string(c.Status) + " " + c.Reason
			if c.Message != "" {
				v += ": " + c.Message
			}
			kv(ct, v)
		}
	}
	last := ""
	for _, st := range timelineSteps(s) {
		last = st.name + " at +" + seconds(st.at.Sub(s.CreationTimestamp.Time))
	}
	kv("Last step", last)
	if err := t.Flush(); err != nil {
		return err
	}
	fmt.Fprintf(g.out(), "\nkubectl ggnet timeline %s   kubectl ggnet stop %s\n", s.Name, s.Name)
	return nil
}

func machineSummary(m *bootv1.Machine) string {
	s := m.Name + " (" + m.Spec.MAC
	if m.Spec.IPv4 != nil {
		s += ", " + m.Spec.IPv4.Address
	}
	return s + ")"
}

func (g *ggnet) scriptCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "script MACHINE",
		Short: "Show the iPXE script the machine will be served",
		Long: `script prints what the boot agent serves the machine when it asks for its script: its session's
script (the manager renders a preview into the session's status.script; the agent adds the CHAP
credentials from the session's Secret as it serves it, shown here as ****), or, with no session
ready, what it gets instead. It reads no Secret: ggnet-viewer is enough.`,
		Args: exactArgs(1, "one MACHINE"),
		RunE: func(cmd *cobra.Command, args []string) error { return g.script(cmd.Context(), args[0]) },
	}
}

// maskedCredentials replace the preview's comment line: what the agent adds
// (the manager always makes mutual CHAP credentials), with the values
// masked.
const maskedCredentials = "set username ****\nset password ****\nset reverse-username ****\nset reverse-password ****\n"

// MaskScript turns a session's script preview into the script as served,
// with every credential written ****. A script that sets credentials
// itself (it should not) has their values masked too.
func MaskScript(preview string) string {
	lines := strings.SplitAfter(preview, "\n")
	var b strings.Builder
	for _, l := range lines {
		if strings.TrimRight(l, "\n") == ipxe.CredentialsComment {
			b.WriteString(maskedCredentials)
			continue
		}
		f := strings.Fields(l)
		if len(f) >= 2 && f[0] == "set" {
			switch f[1] {
			case "username", "password", "reverse-username", "reverse-password":
				b.WriteString("set " + f[1] + " ****\n")
				continue
			}
		}
		b.WriteString(l)
	}
	return b.String()
}

func (g *ggnet) script(ctx context.Context, name string) error {
	if err := g.connect(); err != nil {
		return err
	}
	ns, err := g.namespace()
	if err != nil {
		return err
	}
	m, err := g.getMachine(ctx, ns, name)
	if err != nil {
		return err
	}
	w := g.out()
	if m.Spec.BootPolicy == bootv1.BootPolicyLocalBoot {
		fmt.Fprintf(w, "# %s: boot policy LocalBoot: the agent sends it to its local disk; it gets no script\n", m.Name)
		return nil
	}
	if c := condition(m.Status.Conditions, bootv1.ConflictCondition); c != nil && c.Status == metav1.ConditionTrue {
		fmt.Fprintf(w, "# %s: Conflict (%s: %s): the agent serves it nothing until that is resolved\n", m.Name, c.Reason, c.Message)
		return nil
	}
	s, err := g.currentSession(ctx, m)
	if err != nil {
		return err
	}
	path := "boot/<no token: no session>/" + m.Spec.MAC + ".ipxe"
	switch {
	case s == nil && m.Spec.BootPolicy == bootv1.BootPolicyAutoSession:
		fmt.Fprintf(w, "# %s: no session yet; boot policy AutoSession: when it network-boots the agent asks for a session\n"+
			"# of image %s and holds the script request until it is Ready (a fallback that retries otherwise)\n",
			m.Name, imageOf(m))
		return nil
	case s == nil:
		fmt.Fprintf(w, "# %s: no session: the agent serves the fallback script (\"no boot session\") and the machine\n"+
			"# goes on to its next boot device. Start one: kubectl ggnet start %s\n", m.Name, m.Name)
		return nil
	case s.Status.Script == "":
		fmt.Fprintf(w, "# %s: session %s is %s, not Ready (%s):\n# the agent holds the script request for a while, then serves a fallback that asks again\n",
			m.Name, s.Name, orDefault(string(s.Status.Phase), "new"), readySummary(s))
		return nil
	}
	if s.Status.CHAPSecretRef != nil {
		path = "boot/****/" + m.Spec.MAC + ".ipxe"
	}
	fmt.Fprintf(w, "# %s: session %s (%s), served as %s\n", m.Name, s.Name, s.Status.Phase, path)
	_, err = io.WriteString(w, MaskScript(s.Status.Script))
	return err
}

func imageOf(m *bootv1.Machine) string {
	if img := machineImage(m); img != "" {
		return img
	}
	if m.Spec.ImageFamily != "" {
		return "<none: family " + m.Spec.ImageFamily + " has no Ready version>"
	}
	return "<none: set spec.imageRef or spec.imageFamily>"
}

// step is one row of a timeline.
type step struct {
	name string
	at   time.Time
	note string
}

// timelineSteps are the session's steps in time order, from its creation.
func timelineSteps(s *bootv1.BootSession) []step {
	tl := s.Status.Timeline
	var out []step
	add := func(name string, t *metav1.Time, note string) {
		if t != nil && !t.IsZero() {
			out = append(out, step{name, t.Time, note})
		}
	}
	add("created", &s.CreationTimestamp, "")
	add("scheduled", tl.Scheduled, s.Status.StorageNode)
	add("storageReady", tl.StorageReady, "")
	add("ready", tl.Ready, "")
	add("dhcp", tl.DHCP, s.Status.MAC)
	add("scriptServed", tl.ScriptServed, "")
	for i, l := range tl.Logins {
		note := l.Initiator
		if l.Address != "" {
			note += " from " + l.Address
		}
		at := l.At
		add(fmt.Sprintf("login %d", i+1), &at, strings.TrimSpace(note))
		if l.LoggedOutAt != nil {
			add(fmt.Sprintf("logout %d", i+1), l.LoggedOutAt, "")
		}
	}
	if len(tl.Logins) == 0 {
		add("iscsiLogin", tl.ISCSILogin, "")
	}
	add("iscsiLogout", tl.ISCSILogout, "no session left")
	add("stopping", tl.Stopping, "")
	add("stopped", tl.Stopped, "")
	sort.SliceStable(out, func(i, j int) bool { return out[i].at.Before(out[j].at) })
	return out
}

func (g *ggnet) timelineCommand() *cobra.Command {
	var width int
	cmd := &cobra.Command{
		Use:   "timeline SESSION",
		Short: "Show a session's steps as a waterfall",
		Long: `timeline shows when each step of the session happened (status.timeline), from its creation:
scheduled, storageReady, ready, dhcp, scriptServed, each iSCSI login and logout (the firmware's
first, then the OS's), stopping, stopped — with the time since the previous step and a bar.`,
		Args: exactArgs(1, "one SESSION"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if width < 10 || width > 200 {
				return usagef("--bar-width %d: want 10 to 200", width)
			}
			return g.timeline(cmd.Context(), args[0], width)
		},
	}
	cmd.Flags().IntVar(&width, "bar-width", 40, "width of the bars in columns")
	return cmd
}

func (g *ggnet) timeline(ctx context.Context, name string, width int) error {
	if err := g.connect(); err != nil {
		return err
	}
	ns, err := g.namespace()
	if err != nil {
		return err
	}
	s, err := g.getSession(ctx, ns, name)
	if err != nil {
		return err
	}
	fmt.Fprintf(g.out(), "%s/%s: machine %s, image %s, %s, created %s ago\n", s.Namespace, s.Name, s.Spec.MachineRef.Name,
		s.Spec.ImageRef.Name, orDefault(string(s.Status.Phase), "no phase yet"), g.age(s.CreationTimestamp))
	fmt.Fprint(g.out(), Waterfall(timelineSteps(s), width))
	return nil
}

// Waterfall renders steps (in time order, the first the origin) as rows:
// name, time from the first, time from the previous, a bar from the
// previous step to this one on a scale of width columns, and a note.
func Waterfall(steps []step, width int) string {
	if len(steps) == 0 {
		return ""
	}
	t0 := steps[0].at
	span := steps[len(steps)-1].at.Sub(t0)
	col := func(t time.Time) int {
		if span <= 0 {
			return 0
		}
		c := int(float64(t.Sub(t0)) / float64(span) * float64(width))
		return min(c, width)
	}
	var b strings.Builder
	t := newTable(&b)
	fmt.Fprintf(t, "STEP\tAT\t+STEP\t\tNOTE\n")
	prev := t0
	for i, st := range steps {
		from, to := col(prev), col(st.at)
		bar := strings.Repeat(" ", from)
		if i == 0 {
			bar += "|"
		} else {
			bar += strings.Repeat("█", max(to-from, 1))
		}
		bar += strings.Repeat(" ", max(width+1-len([]rune(bar)), 0))
		delta := ""
		if i > 0 {
			delta = "+" + seconds(st.at.Sub(prev))
		}
		fmt.Fprintf(t, "%s\t%s\t%s\t[%s]\t%s\n", st.name, seconds(st.at.Sub(t0)), delta, bar, st.note)
		prev = st.at
	}
	_ = t.Flush()
	lines := strings.Split(b.String(), "\n")
	for i, l := range lines {
		lines[i] = strings.TrimRight(l, " ")
	}
	return strings.Join(lines, "\n")
}
