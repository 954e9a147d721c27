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
// desired state. tgtd's command line carries only the control port and the
// portal.
//
// It serves the lab and `make demo` (--start-tgtd), where the agent is a host
// process. A session of its own does not save tgtd in a container: every
// process of a PID namespace dies with its init. The chart therefore runs
// tgtd in a DaemonSet of its own (charts/ggnet/templates/tgtd.yaml) and the
// agent only speaks to it over its socket.
func SuperviseTGTD(ctx context.Context, controlPort int, portal string, log logr.Logger) {
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
			args := []string{"-f", "-C", strconv.Itoa(controlPort)}
			if portal != "" {
				args = append(args, "--iscsi", "portal="+portal)
			}
			cmd := exec.Command("tgtd", args...)
			cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
			log.Info("Starting tgtd", "controlPort", controlPort, "portal", portal)
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
