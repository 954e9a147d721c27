package target

import (
	"context"
	"os/exec"
	"strconv"
	"time"

	"github.com/go-logr/logr"
)

// SuperviseTGTD runs tgtd in the foreground and starts it again whenever it
// exits, until ctx ends. tgtd comes back empty; the storage role's resync
// rebuilds every target from the desired state.
func SuperviseTGTD(ctx context.Context, controlPort int, portal string, log logr.Logger) {
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		args := []string{"-f", "-C", strconv.Itoa(controlPort)}
		if portal != "" {
			args = append(args, "--iscsi", "portal="+portal)
		}
		start := time.Now()
		cmd := exec.CommandContext(ctx, "tgtd", args...)
		log.Info("Starting tgtd", "controlPort", controlPort, "portal", portal)
		err := cmd.Run()
		if ctx.Err() != nil {
			return
		}
		if time.Since(start) > time.Minute {
			backoff = 100 * time.Millisecond
		}
		log.Info("tgtd exited; starting it again", "error", errString(err), "after", backoff.String())
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 10*time.Second)
	}
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}
