package target

import (
	"context"
	"os"
	"os/exec"
	"strconv"
	"syscall"
	"time"

	"github.com/go-logr/logr"
)

// SuperviseTGTD keeps a tgtd running on controlPort until ctx ends. tgtd is
// started in a session of its own and is not stopped with the agent: a
// restart of the agent must not cut the machines off their disks. When tgtd
// stops answering on its management socket it is started again; it comes
// back empty and the storage role's resync rebuilds every target from the
// desired state. tgtd's command line is TGTDArgs': the control port, the
// portal and, when ioThreads is above 0, the I/O threads per logical unit.
//
// It serves the lab and `make demo` (--start-tgtd), where the agent is a host
// process. A session of its own does not save tgtd in a container: every
// process of a PID namespace dies with its init. The chart therefore runs
// tgtd in a DaemonSet of its own (charts/ggnet/templates/tgtd.yaml) and the
// agent only speaks to it over its socket.
func SuperviseTGTD(ctx context.Context, controlPort int, portal string, ioThreads int, log logr.Logger) {
	d := &TGT{ControlPort: controlPort}
	check := func() bool {
		c, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		return d.Ping(c) == nil
	}
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		if ctx.Err() != nil {
			return
		}
		if !check() {
			cmd := exec.Command("tgtd", TGTDArgs(controlPort, portal, ioThreads)...)
			cmd.Env = append(os.Environ(), TGTDEnv...)
			cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
			log.Info("Starting tgtd", "controlPort", controlPort, "portal", portal, "ioThreads", ioThreads)
			if err := cmd.Start(); err != nil {
				log.Error(err, "Starting tgtd")
			} else {
				go func() { _ = cmd.Wait() }()
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// TGTDEnv is the environment GGnet gives every tgtd it starts (on top of its
// own; the chart's DaemonSet sets the same, charts/ggnet/templates/tgtd.yaml):
// glibc's mmap threshold at 4 MiB. tgtd allocates a buffer for every READ
// (1 MiB for a firmware's or Windows' large reads) and frees it after; above
// glibc's default threshold each one was a fresh mmap, page-faulted in and
// zeroed page by page and unmapped again, which made 22-25% of tgtd's CPU in
// a boot storm and the copy into those cold pages most of the rest
// (docs/benchmarks.md, "Boot storm": tgtd's CPU per GiB served 4.8x lower
// with it). Setting it also turns off glibc's adaptive threshold.
var TGTDEnv = []string{"MALLOC_MMAP_THRESHOLD_=4194304"}

// TGTDArgs is tgtd's command line (without the program): in the foreground,
// its management socket on controlPort, its iSCSI portal (none when portal
// is empty) and, when ioThreads is above 0, ioThreads I/O threads per logical
// unit (-t, --nr_iothreads). tgtd applies -t to every logical unit it makes
// with the rdwr backing store: each LU gets a pool of its own of that many
// threads (16 when -t is not given), so a tgtd with 200 LUs has 200 pools.
func TGTDArgs(controlPort int, portal string, ioThreads int) []string {
	args := []string{"-f", "-C", strconv.Itoa(controlPort)}
	if portal != "" {
		args = append(args, "--iscsi", "portal="+portal)
	}
	if ioThreads > 0 {
		args = append(args, "-t", strconv.Itoa(ioThreads))
	}
	return args
}
