package lab

import (
	"context"
	"fmt"
	"time"

	"sigs.k8s.io/controller-runtime/pkg/client"

	bootv1 "github.com/ggnet/ggnet/api/v1alpha1"
)

// WaitPhase polls s (updated in place) until its phase is phase or timeout
// passes; the error names the phase it is in and its conditions.
func (l *Lab) WaitPhase(ctx context.Context, s *bootv1.BootSession, phase bootv1.BootSessionPhase, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if err := l.Client.Get(ctx, client.ObjectKeyFromObject(s), s); err == nil && s.Status.Phase == phase {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	return fmt.Errorf("session %s is %s, not %s, after %s (conditions %+v)", s.Name, s.Status.Phase, phase, timeout, s.Status.Conditions)
}
