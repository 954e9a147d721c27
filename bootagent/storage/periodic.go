package storage

import (
	"context"
	"time"

	"sigs.k8s.io/controller-runtime/pkg/manager"
)

// periodic runs fn at once and then every d until the role stops, logging
// its errors as what. With afterSync it first waits for the informer
// caches: work that judges files by the sessions it sees must not run on an
// empty cache.
func (r *Role) periodic(what string, d time.Duration, afterSync bool, fn func(context.Context) error) manager.Runnable {
	return manager.RunnableFunc(func(ctx context.Context) error {
		if afterSync && !r.mgr.GetCache().WaitForCacheSync(ctx) {
			return nil
		}
		t := time.NewTicker(d)
		defer t.Stop()
		for {
			if err := fn(ctx); err != nil && ctx.Err() == nil {
				r.log.Error(err, what)
			}
			select {
			case <-ctx.Done():
				return nil
			case <-t.C:
			}
		}
	})
}
