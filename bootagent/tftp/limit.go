package tftp

import (
	"net/netip"
	"sync"
)

// limiter bounds concurrent transfers in total and per source address.
type limiter struct {
	maxTotal, maxPerSource int

	mu        sync.Mutex
	total     int
	perSource map[netip.Addr]int // only addresses with a transfer running
}

func newLimiter(maxTotal, maxPerSource int) *limiter {
	return &limiter{maxTotal: maxTotal, maxPerSource: maxPerSource, perSource: map[netip.Addr]int{}}
}

// acquire takes a slot for a transfer from src, or returns ErrTooBusy or
// ErrTooBusySource. A nil error must be paired with release(src).
func (l *limiter) acquire(src netip.Addr) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.total >= l.maxTotal {
		return ErrTooBusy
	}
	if l.perSource[src] >= l.maxPerSource {
		return ErrTooBusySource
	}
	l.total++
	l.perSource[src]++
	return nil
}

func (l *limiter) release(src netip.Addr) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.total--
	if n := l.perSource[src] - 1; n > 0 {
		l.perSource[src] = n
	} else {
		delete(l.perSource, src)
	}
}
