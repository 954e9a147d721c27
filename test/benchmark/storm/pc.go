package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/ggnet/ggnet/internal/ipxe"
	"github.com/ggnet/ggnet/internal/iscsi"
)

// Stages of a boot, in order.
const (
	stDHCP = iota
	stScript
	stLogin
	stRead
	nStages
)

var stageNames = [nStages]string{"DHCP", "script", "login", "read"}

// pc is one simulated PC.
type pc struct {
	name string
	mac  net.HardwareAddr
	ip   string // its reservation
}

// result is one PC's boot: the stages of its successful attempt, the whole
// time from power-on, and what went wrong on the way.
type result struct {
	pc      *pc
	ok      bool
	stages  [nStages]time.Duration
	total   time.Duration
	doneAt  time.Duration // since the storm's start
	agent   string        // the boot agent whose script it booted with
	portal  string
	target  string
	retries int // whole attempts started again
	waits   int // fallback scripts (no Ready session yet) fetched
	// on is the power-on; toScript the time from it to the session's
	// script of the attempt that booted (failed attempts included).
	on       time.Time
	toScript time.Duration
	errs     []string // each failed attempt's error, without secrets
}

// sim is what the PCs share.
type sim struct {
	dhcp *dhcpClient
	// do runs a function inside the simulator's network namespace.
	do        func(func() error) error
	readBytes int64
	chunk     int
	// first is the Image's first 4 KiB, to check each disk read.
	first []byte
	// maxAttempts bounds whole boot attempts per PC; pcTimeout its time.
	maxAttempts int
	retryDelay  time.Duration
}

// dial opens a TCP connection from local inside the simulator's namespace.
func (s *sim) dial(ctx context.Context, local netip.Addr, addr string) (net.Conn, error) {
	var c net.Conn
	err := s.do(func() error {
		var err error
		d := net.Dialer{LocalAddr: net.TCPAddrFromAddrPort(netip.AddrPortFrom(local, 0)), Timeout: 10 * time.Second}
		c, err = d.DialContext(ctx, "tcp", addr)
		return err
	})
	return c, err
}

// boot powers the PC on and boots it: DHCP, script, iSCSI login, the first
// readBytes of the disk, logout. A failed attempt starts again from DHCP
// after retryDelay, as a PC whose firmware retries network boot.
func (s *sim) boot(ctx context.Context, p *pc, start time.Time) result {
	on := time.Now()
	r := result{pc: p, on: on}
	for attempt := 0; attempt < s.maxAttempts && ctx.Err() == nil; attempt++ {
		if attempt > 0 {
			r.retries++
			select {
			case <-time.After(s.retryDelay):
			case <-ctx.Done():
			}
		}
		stages, err := s.attempt(ctx, p, &r)
		if err != nil {
			r.errs = append(r.errs, err.Error())
			continue
		}
		r.ok, r.stages = true, stages
		break
	}
	r.total = time.Since(on)
	r.doneAt = time.Since(start)
	return r
}

type stageError struct {
	stage int
	err   error
}

func (e *stageError) Error() string { return stageNames[e.stage] + ": " + e.err.Error() }

func (s *sim) attempt(ctx context.Context, p *pc, r *result) ([nStages]time.Duration, error) {
	var st [nStages]time.Duration
	t := time.Now()
	dctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	l, err := s.dhcp.exchange(dctx, p.mac)
	cancel()
	if err != nil {
		return st, &stageError{stDHCP, fmt.Errorf("no lease after %d DISCOVERs: %w", l.attempts, err)}
	}
	if l.ip.String() != p.ip {
		return st, &stageError{stDHCP, fmt.Errorf("leased %s, reserved %s", l.ip, p.ip)}
	}
	if !strings.HasPrefix(l.bootFile, "http://") {
		return st, &stageError{stDHCP, fmt.Errorf("boot file %q is not iPXE's script URL", l.bootFile)}
	}
	st[stDHCP] = time.Since(t)

	t = time.Now()
	info, err := s.script(ctx, l, r)
	if err != nil {
		return st, &stageError{stScript, err}
	}
	st[stScript] = time.Since(t)
	r.toScript = time.Since(r.on)
	r.agent = l.server.String()

	t = time.Now()
	cfg := iscsi.Config{Portal: net.JoinHostPort(info.Server, strconv.Itoa(info.Port)), TargetIQN: info.TargetIQN,
		InitiatorIQN: info.InitiatorIQN, LUN: int(info.LUN), Username: info.Username, Password: info.Password,
		TargetUsername: info.TargetUsername, TargetPassword: info.TargetPassword,
		Dial: func(ctx context.Context, _, addr string) (net.Conn, error) { return s.dial(ctx, l.ip, addr) }}
	r.portal, r.target = cfg.Portal, cfg.TargetIQN
	lctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	sess, err := iscsi.Login(lctx, cfg)
	cancel()
	if err != nil {
		return st, &stageError{stLogin, err}
	}
	st[stLogin] = time.Since(t)

	t = time.Now()
	rctx, cancel := context.WithTimeout(ctx, 30*time.Minute)
	err = s.read(rctx, sess)
	cancel()
	if err != nil {
		sess.Close()
		return st, &stageError{stRead, err}
	}
	lctx, cancel = context.WithTimeout(ctx, 10*time.Second)
	err = sess.Logout(lctx)
	cancel()
	if err != nil {
		return st, &stageError{stRead, fmt.Errorf("logout: %w", err)}
	}
	st[stRead] = time.Since(t)
	return st, nil
}

// script fetches the script from the leased address, as iPXE does, until
// it is a session's (a fallback script means: no Ready session yet, ask
// again).
func (s *sim) script(ctx context.Context, l lease, r *result) (ipxe.Info, error) {
	hc := &http.Client{Timeout: 120 * time.Second, Transport: &http.Transport{
		DisableKeepAlives: true,
		DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) {
			return s.dial(ctx, l.ip, addr)
		},
	}}
	for ctx.Err() == nil {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, l.bootFile, nil)
		if err != nil {
			return ipxe.Info{}, errors.New("bad script URL")
		}
		resp, err := hc.Do(req)
		if err != nil {
			// The error would name the URL, whose path holds the token.
			return ipxe.Info{}, fmt.Errorf("GET the script from %s: %w", l.server, unwrapURL(err))
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			return ipxe.Info{}, err
		}
		if resp.StatusCode != http.StatusOK {
			return ipxe.Info{}, fmt.Errorf("script: %s", resp.Status)
		}
		if strings.Contains(string(body), "sanboot ") {
			info, err := ipxe.Parse(string(body))
			if err != nil {
				// Not the error itself: it could quote a line with a secret.
				return info, errors.New("the script does not parse")
			}
			if info.Username == "" {
				return info, errors.New("the script carries no CHAP credentials")
			}
			return info, nil
		}
		r.waits++
		select {
		case <-time.After(time.Second):
		case <-ctx.Done():
		}
	}
	return ipxe.Info{}, ctx.Err()
}

// unwrapURL drops net/http's "Get <url>:" wrapping: the URL holds the
// script token.
func unwrapURL(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

// read reads the disk's first readBytes in chunks and checks the first
// 4 KiB against the Image.
func (s *sim) read(ctx context.Context, sess *iscsi.Session) error {
	blocks, bs, err := sess.ReadCapacity(ctx)
	if err != nil {
		return err
	}
	n := min(s.readBytes, int64(blocks)*int64(bs))
	buf := make([]byte, s.chunk)
	for off := int64(0); off < n; off += int64(s.chunk) {
		p := buf[:min(int64(s.chunk), n-off)]
		if err := sess.ReadAt(ctx, p, off, s.chunk); err != nil {
			return err
		}
		if off == 0 && len(p) >= len(s.first) && !bytes.Equal(p[:len(s.first)], s.first) {
			return errors.New("the disk's first 4 KiB differ from the Image's")
		}
	}
	return nil
}
