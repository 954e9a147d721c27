package lab

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"os/exec"
	"runtime"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Host is another computer on the boot LAN — a customer's laptop on a café
// floor: a network namespace of its own, nested in the lab's, with a veth on
// the lab's bridge and an address in the lab's subnet. It can send anything
// any program can, not only what a PC's firmware sends.
type Host struct {
	// Netns is the host's network namespace (ip netns name).
	Netns string
	// IP is the host's address on the boot LAN.
	IP string
	// MAC is the host's own MAC on the boot LAN.
	MAC string
}

// AddHost plugs a new host with address ip into the lab's bridge. It is
// removed when the test ends.
func (l *Lab) AddHost(name, ip string) (*Host, error) {
	h := &Host{Netns: fmt.Sprintf("%s-%d", name, rand.IntN(1<<20)), IP: ip}
	peer := fmt.Sprintf("vh%d", rand.IntN(1<<20))
	if out, err := exec.Command("ip", "netns", "add", h.Netns).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("ip netns add %s: %v %s", h.Netns, err, out)
	}
	l.t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", h.Netns).Run() })
	for _, args := range [][]string{
		{"link", "add", peer, "type", "veth", "peer", "name", "eth0", "netns", h.Netns},
		{"link", "set", peer, "master", Bridge},
		{"link", "set", peer, "up"},
		{"-n", h.Netns, "link", "set", "lo", "up"},
		{"-n", h.Netns, "addr", "add", ip + "/24", "dev", "eth0"},
		{"-n", h.Netns, "link", "set", "eth0", "up"},
	} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			return nil, fmt.Errorf("ip %s: %v %s", strings.Join(args, " "), err, out)
		}
	}
	l.t.Cleanup(func() { _ = exec.Command("ip", "link", "del", peer).Run() })
	iface, err := h.run("cat", "/sys/class/net/eth0/address")
	if err != nil {
		return nil, err
	}
	h.MAC = strings.TrimSpace(iface)
	return h, nil
}

// run runs a command inside the host and returns its combined output.
func (h *Host) run(name string, args ...string) (string, error) {
	out, err := exec.Command("ip", append([]string{"netns", "exec", h.Netns, name}, args...)...).CombinedOutput()
	return string(out), err
}

// Run runs a command inside the host (for example libiscsi's iscsi-inq) and
// returns its combined output and error.
func (h *Host) Run(name string, args ...string) (string, error) { return h.run(name, args...) }

// HTTPClient returns an HTTP client whose connections start from the host.
func (h *Host) HTTPClient() *http.Client {
	return &http.Client{
		Timeout: 30 * time.Second,
		Transport: &http.Transport{
			DisableKeepAlives: true,
			DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
				var c net.Conn
				err := h.inNetns(func() error {
					var err error
					c, err = (&net.Dialer{}).DialContext(ctx, network, addr)
					return err
				})
				return c, err
			},
		},
	}
}

// inNetns runs f on an OS thread that has entered the host's network
// namespace: sockets f opens belong to the host. The thread is never handed
// back to the Go scheduler (it ends with its goroutine), so nothing else
// ever runs inside the host by accident.
func (h *Host) inNetns(f func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		fd, err := unix.Open("/var/run/netns/"+h.Netns, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			errc <- fmt.Errorf("opening the network namespace of %s: %w", h.Netns, err)
			return
		}
		defer unix.Close(fd)
		if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("entering the network namespace of %s: %w", h.Netns, err)
			return
		}
		errc <- f()
	}()
	return <-errc
}

// Do runs f on an OS thread inside the host's network namespace (as
// inNetns): sockets f opens belong to the host and keep to it afterwards,
// whichever thread later uses them. A simulator opens its PCs' sockets so.
func (h *Host) Do(f func() error) error { return h.inNetns(f) }

// AddAddresses gives the host's eth0 more addresses (host addresses, /32),
// in one batch: a simulator's PCs each have their own, the one DHCP leased
// them. The lab's side needs a route to them (RouteVia).
func (h *Host) AddAddresses(ips []string) error {
	var b strings.Builder
	for _, ip := range ips {
		fmt.Fprintf(&b, "addr add %s/32 dev eth0\n", ip)
	}
	cmd := exec.Command("ip", "-n", h.Netns, "-batch", "-")
	cmd.Stdin = strings.NewReader(b.String())
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("adding %d addresses to %s: %v %s", len(ips), h.Netns, err, out)
	}
	return nil
}

// RouteVia routes prefix (e.g. 10.98.0.0/16) through the host from the
// lab's namespace: the host's extra addresses then answer, and the lab's
// neighbour table holds one entry for all of them.
func (h *Host) RouteVia(prefix string) error {
	if out, err := exec.Command("ip", "route", "add", prefix, "via", h.IP, "dev", Bridge).CombinedOutput(); err != nil {
		return fmt.Errorf("ip route add %s via %s: %v %s", prefix, h.IP, err, out)
	}
	return nil
}
