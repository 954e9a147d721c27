package httpboot

import (
	"net"
	"net/http"
	"net/netip"
	"sync"
	"time"
)

// Bounds of the boot HTTP server (the contract's "Bounds").
const (
	ReadHeaderTimeout = 5 * time.Second
	ReadTimeout       = 10 * time.Second
	IdleTimeout       = 30 * time.Second
	MaxHeaderBytes    = 8 << 10
	// WriteTimeout bounds writing an answer; only a long poll extends it
	// (Handler sets its own deadline).
	WriteTimeout = 15 * time.Second
	// DefaultMaxConns is the default connection cap (--http-max-conns).
	DefaultMaxConns = 512
	// DefaultMaxConnsPerSource is the default connection cap per remote IP
	// address (--http-max-conns-per-source).
	DefaultMaxConnsPerSource = 16
)

// NewServer returns the boot HTTP server for handler with its timeouts: a
// write may last WriteTimeout, except a long poll's, which Handler extends
// to the long poll and WriteTimeout more.
func NewServer(handler http.Handler) *http.Server {
	return &http.Server{
		Handler:           handler,
		ReadHeaderTimeout: ReadHeaderTimeout,
		ReadTimeout:       ReadTimeout,
		WriteTimeout:      WriteTimeout,
		IdleTimeout:       IdleTimeout,
		MaxHeaderBytes:    MaxHeaderBytes,
	}
}

// LimitListener returns a listener that holds at most n connections open at
// once and at most perSource from one remote IP address: Accept waits for a
// slot, so connections past n wait in the kernel's backlog until one closes
// (like golang.org/x/net/netutil), while a connection past its source's cap
// is closed at once, so that one host cannot take every slot.
func LimitListener(l net.Listener, n, perSource int) net.Listener {
	return &limitListener{Listener: l, slots: make(chan struct{}, n), done: make(chan struct{}),
		perSource: perSource, bySource: map[netip.Addr]int{}}
}

type limitListener struct {
	net.Listener
	slots     chan struct{}
	closeOnce sync.Once
	done      chan struct{}

	perSource int
	mu        sync.Mutex
	bySource  map[netip.Addr]int
}

func (l *limitListener) Accept() (net.Conn, error) {
	for {
		select {
		case l.slots <- struct{}{}:
		case <-l.done:
			return nil, net.ErrClosed
		}
		c, err := l.Listener.Accept()
		if err != nil {
			<-l.slots
			return nil, err
		}
		src := sourceOf(c)
		l.mu.Lock()
		over := l.bySource[src] >= l.perSource
		if !over {
			l.bySource[src]++
		}
		l.mu.Unlock()
		if over {
			_ = c.Close()
			<-l.slots
			continue
		}
		return &limitConn{Conn: c, release: func() {
			l.mu.Lock()
			if l.bySource[src]--; l.bySource[src] <= 0 {
				delete(l.bySource, src)
			}
			l.mu.Unlock()
			<-l.slots
		}}, nil
	}
}

// sourceOf is a connection's remote IP address (invalid when it has none,
// such as a pipe: those share one count).
func sourceOf(c net.Conn) netip.Addr {
	if a, ok := c.RemoteAddr().(*net.TCPAddr); ok {
		return a.AddrPort().Addr().Unmap()
	}
	return netip.Addr{}
}

func (l *limitListener) Close() error {
	err := l.Listener.Close()
	l.closeOnce.Do(func() { close(l.done) })
	return err
}

type limitConn struct {
	net.Conn
	once    sync.Once
	release func()
}

func (c *limitConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.release)
	return err
}
