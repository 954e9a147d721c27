package target

import (
	"context"
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
