// Package ggctl is the logic of `kubectl ggnet`, the kubectl plugin for
// GGnet (cmd/kubectl-ggnet): starting, stopping and watching BootSessions,
// a machine's script and timeline, statistics, a live room grid and the
// images. It talks to the API server with the user's kubeconfig and RBAC
// (the chart's ggnet-viewer role reads, ggnet-operator also starts and stops
// sessions) and needs nothing else: no Prometheus, no access to Secrets.
//
// Exit codes: 0 ok, 1 error, 2 usage (a wrong flag, argument or value).
package ggctl

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/cli-runtime/pkg/genericiooptions"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/ggnet/ggnet/internal/scheme"
)

// Exit codes.
const (
	ExitOK    = 0
	ExitError = 1
	ExitUsage = 2
)

// StdStreams are the process's standard streams.
func StdStreams() genericiooptions.IOStreams {
	return genericiooptions.IOStreams{In: os.Stdin, Out: os.Stdout, ErrOut: os.Stderr}
}

// Options are what a run of the plugin uses besides its arguments; the zero
// value of each field is the real thing (tests inject a clock, a time zone, a
// terminal width and a config).
type Options struct {
	// Now is the clock (ages, --since); time.Now when nil.
	Now func() time.Time
	// Location is the time zone of printed clock times; time.Local when nil.
	Location *time.Location
	// Width is the terminal's width for `room`; 0 asks the terminal (or
	// $COLUMNS), 80 when neither answers.
	Width int
	// RESTConfig, when set, is used instead of the kubeconfig flags.
	RESTConfig *rest.Config
	// Context, when set, is the run's context (cancelled: `room -w` and
	// `start --wait` return); otherwise SIGINT and SIGTERM cancel it.
	Context context.Context
}

func (o *Options) now() time.Time {
	if o.Now != nil {
		return o.Now()
	}
	return time.Now()
}

func (o *Options) loc() *time.Location {
	if o.Location != nil {
		return o.Location
	}
	return time.Local
}

// usageError is a wrong flag, argument or value: exit code 2.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usagef(format string, a ...any) error { return &usageError{fmt.Sprintf(format, a...)} }

// silentError has been reported already (a partial failure whose lines are
// printed): exit 1 without another message.
type silentError struct{}

func (silentError) Error() string { return "" }

// Main runs the plugin with args and returns its exit code.
func Main(args []string, streams genericiooptions.IOStreams) int {
	return Run(args, streams, Options{})
}

// Run runs the plugin with args and opts and returns its exit code; errors
// are written to streams.ErrOut.
func Run(args []string, streams genericiooptions.IOStreams, opts Options) int {
	ctx := opts.Context
	if ctx == nil {
		var stop context.CancelFunc
		ctx, stop = signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		defer stop()
	}
	g := &ggnet{opts: opts, io: streams}
	root := g.rootCommand()
	root.SetArgs(args)
	root.SetOut(streams.Out)
	root.SetErr(streams.ErrOut)
	err := root.ExecuteContext(ctx)
	if err == nil {
		return ExitOK
	}
	var se silentError
	if errors.As(err, &se) {
		return ExitError
	}
	var ue *usageError
	if errors.As(err, &ue) || isCobraUsage(err) {
		fmt.Fprintf(streams.ErrOut, "error: %v\nSee '%s --help'.\n", err, commandPath(root, args))
		return ExitUsage
	}
	fmt.Fprintf(streams.ErrOut, "error: %v\n", err)
	return ExitError
}

// isCobraUsage says whether err is cobra's own complaint about the command
// line (an unknown command; flags go through SetFlagErrorFunc).
func isCobraUsage(err error) bool {
	s := err.Error()
	return strings.HasPrefix(s, "unknown command") || strings.HasPrefix(s, "unknown flag") ||
		strings.HasPrefix(s, "unknown shorthand flag") || strings.Contains(s, "flag needs an argument") ||
		strings.HasPrefix(s, "invalid argument")
}

// commandPath is the command args name (kubectl ggnet ls), for the help hint.
func commandPath(root *cobra.Command, args []string) string {
	c, _, err := root.Find(args)
	if err != nil {
		c = root
	}
	return c.CommandPath()
}

// ggnet is one run: the flags, the streams and the client.
type ggnet struct {
	opts   Options
	io     genericiooptions.IOStreams
	flags  *genericclioptions.ConfigFlags
	client client.WithWatch
}

func (g *ggnet) rootCommand() *cobra.Command {
	root := &cobra.Command{
		Use:   "kubectl-ggnet",
		Short: "Start, stop and watch GGnet boot sessions",
		Long: `kubectl ggnet starts, stops and watches GGnet BootSessions with your kubeconfig and your RBAC:
the ggnet-viewer role can run every read command (ls, active, script, timeline, stats, room,
images); starting and stopping sessions needs ggnet-operator; pin, follow and capture (which
change Machines and create Images) need ggnet-admin.

Exit codes: 0 ok, 1 error, 2 usage.`,
		SilenceUsage:  true,
		SilenceErrors: true,
		// kubectl runs kubectl-ggnet; show the name the user typed.
		Annotations: map[string]string{cobra.CommandDisplayNameAnnotation: "kubectl ggnet"},
	}
	root.CompletionOptions.DisableDefaultCmd = true
	g.flags = genericclioptions.NewConfigFlags(true)
	g.flags.AddFlags(root.PersistentFlags())
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return &usageError{err.Error()} })
	root.AddCommand(g.startCommand(), g.stopCommand(), g.lsCommand(), g.activeCommand(), g.scriptCommand(),
		g.timelineCommand(), g.statsCommand(), g.roomCommand(), g.imagesCommand(), g.wakeCommand(),
		g.pinCommand(), g.followCommand(), g.captureCommand())
	for _, c := range root.Commands() {
		c.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return &usageError{err.Error()} })
	}
	return root
}

// connect builds the client and reads the namespace from the kubeconfig.
func (g *ggnet) connect() error {
	if g.client != nil {
		return nil
	}
	cfg := g.opts.RESTConfig
	if cfg == nil {
		var err error
		if cfg, err = g.flags.ToRESTConfig(); err != nil {
			return fmt.Errorf("reading the kubeconfig: %w", err)
		}
	}
	cfg = rest.CopyConfig(cfg)
	cfg.UserAgent = "kubectl-ggnet"
	c, err := client.NewWithWatch(cfg, client.Options{Scheme: scheme.New()})
	if err != nil {
		return fmt.Errorf("connecting to the API server %s: %w", cfg.Host, err)
	}
	g.client = c
	return nil
}

// namespace is -n, else the kubeconfig context's namespace, else "default".
func (g *ggnet) namespace() (string, error) {
	if g.flags.Namespace != nil && *g.flags.Namespace != "" {
		return *g.flags.Namespace, nil
	}
	if g.opts.RESTConfig != nil {
		return "default", nil
	}
	ns, _, err := g.flags.ToRawKubeConfigLoader().Namespace()
	if err != nil {
		return "", fmt.Errorf("reading the namespace from the kubeconfig: %w", err)
	}
	return ns, nil
}

// scope is the namespace to list in: "" for all with -A (which, as in
// kubectl, wins over -n).
func (g *ggnet) scope(all bool) (string, error) {
	if all {
		return "", nil
	}
	return g.namespace()
}

func (g *ggnet) out() io.Writer { return g.io.Out }

func addAllNamespaces(fs *pflag.FlagSet, p *bool) {
	fs.BoolVarP(p, "all-namespaces", "A", false, "every namespace (needs list permission cluster-wide)")
}

// exactArgs, minArgs: usage errors (exit 2) with what is missing.
func exactArgs(n int, what string) cobra.PositionalArgs {
	return func(_ *cobra.Command, args []string) error {
		if len(args) != n {
			return usagef("want %s, got %d argument(s)", what, len(args))
		}
		return nil
	}
}
