package main

import (
	"encoding/binary"
	"io"
	"net"
	"os"
	"sync"
	"time"
)

// tgtProxy stands between the storage agent and tgtd's management socket
// and times every request: tgtd takes one request per connection (a struct
// tgtadm_req whose first two fields are the mode and the operation, then
// text parameters; bootagent/target/tgtmgmt.go), answers and closes. The
// agent finds the proxy through $TGT_IPC_SOCKET, the prefix of the socket
// path that tgtadm and the agent both honour. Only the mode and operation
// are read: the parameters, which carry CHAP secrets, are passed through
// unread and never kept.
type tgtProxy struct {
	ln   net.Listener
	to   string
	mu   sync.Mutex
	reqs []tgtCall
}

// tgtCall is one request to tgtd: what it was, when it was sent, how long
// until tgtd's answer was read to its end.
type tgtCall struct {
	What  string
	Start time.Time
	Took  time.Duration
}

func newTGTProxy(listen, to string) (*tgtProxy, error) {
	_ = os.Remove(listen)
	ln, err := net.Listen("unix", listen)
	if err != nil {
		return nil, err
	}
	p := &tgtProxy{ln: ln, to: to}
	go p.serve()
	return p, nil
}

func (p *tgtProxy) Close() { _ = p.ln.Close() }

func (p *tgtProxy) serve() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		go p.one(c)
	}
}

// tgtd's enum tgtadm_mode and tgtadm_op (usr/tgtadm.h).
var (
	tgtModes = []string{"system", "target", "device", "portal", "lld", "session", "connection", "account"}
	tgtOps   = []string{"new", "delete", "show", "bind", "unbind", "update", "stat", "start", "stop"}
)

func name(list []string, i uint32) string {
	if int(i) < len(list) {
		return list[i]
	}
	return "?"
}

func (p *tgtProxy) one(c net.Conn) {
	defer c.Close()
	start := time.Now()
	up, err := net.Dial("unix", p.to)
	if err != nil {
		return
	}
	defer up.Close()
	var hdr [8]byte
	if _, err := io.ReadFull(c, hdr[:]); err != nil {
		return
	}
	what := name(tgtModes, binary.NativeEndian.Uint32(hdr[0:])) + " " + name(tgtOps, binary.NativeEndian.Uint32(hdr[4:]))
	if _, err := up.Write(hdr[:]); err != nil {
		return
	}
	go func() { _, _ = io.Copy(up, c) }()
	_, _ = io.Copy(c, up)
	took := time.Since(start)
	p.mu.Lock()
	p.reqs = append(p.reqs, tgtCall{What: what, Start: start, Took: took})
	p.mu.Unlock()
}

// calls returns the requests that started in [from, to).
func (p *tgtProxy) calls(from, to time.Time) []tgtCall {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []tgtCall
	for _, r := range p.reqs {
		if !r.Start.Before(from) && r.Start.Before(to) {
			out = append(out, r)
		}
	}
	return out
}
