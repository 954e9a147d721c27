// Command bootagent runs on GGnet nodes. The boot role answers DHCP, TFTP and
// HTTP for PXE clients from an informer cache of Machines, BootSessions and
// the session Secrets (label boot.ggnet.io/session).
// The storage role (image replicas, overlays, iSCSI targets) is chosen by
// --storage on storage nodes.
package main

import (
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"strings"
	"time"

	"github.com/go-logr/logr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	"github.com/ggnet/ggnet/bootagent/agent"
	"github.com/ggnet/ggnet/bootagent/dhcp"
	"github.com/ggnet/ggnet/bootagent/ra"
	"github.com/ggnet/ggnet/internal/ipxe"
)

func main() {
	var (
		cfg                  agent.Config
		bootRole, storage    bool
		ifaces, mode, server string
		fallback, ipv6RA     string
		requireToken         bool
		pprofAddr            string
		st                   storageFlags
	)
	b := &cfg.Boot
	flag.BoolVar(&bootRole, "boot", false, "Run the boot role: DHCP, TFTP and HTTP iPXE services.")
	flag.BoolVar(&storage, "storage", false, "Run the storage role: image replicas, overlays and iSCSI targets.")
	flag.StringVar(&cfg.Namespace, "namespace", "", "Watch only this namespace (default: all).")
	flag.StringVar(&ifaces, "dhcp-interfaces", "", "Comma-separated boot network interfaces to answer DHCP on (default: the interface that holds --server-ip; the agent fails to start when none does).")
	flag.StringVar(&mode, "dhcp-mode", "reservation", "DHCP mode: reservation (hand out reserved addresses) or proxy (proxyDHCP beside another DHCP server).")
	flag.StringVar(&b.DHCPListen, "dhcp-listen", ":67", "DHCP listen address.")
	flag.StringVar(&b.ProxyListen, "proxy-listen", ":4011", "proxyDHCP listen address (proxy mode).")
	flag.IntVar(&b.DHCPWorkers, "dhcp-workers", 8, "DHCP workers per socket.")
	flag.StringVar(&server, "server-ip", "", "This agent's IPv4 address on the boot network (siaddr, server identifier).")
	flag.StringVar(&b.DHCP.UEFIFile, "uefi-boot-file", "snponly.efi", "Boot file for UEFI PXE clients: snponly.efi (iPXE on the firmware's NIC driver) or ipxe.efi (iPXE's own drivers; Debian's is a link out of --ipxe-root, which is not served).")
	flag.StringVar(&b.DHCP.BIOSFile, "bios-boot-file", "undionly.kpxe", "Boot file for BIOS PXE clients.")
	flag.DurationVar(&b.DHCP.LeaseTime, "lease-time", 12*time.Hour, "Lease time of reservations.")
	flag.StringVar(&b.TFTPListen, "tftp-listen", "", "TFTP listen address (default <server-ip>:69, or :69 without --server-ip); - turns TFTP off.")
	flag.IntVar(&b.TFTPMaxPerSource, "tftp-max-per-source", 8, "Concurrent TFTP transfers allowed per source IP address.")
	flag.StringVar(&b.HTTPListen, "http-listen", "", "HTTP listen address of boot scripts and iPXE binaries (default <server-ip>:8880, or :8880 without --server-ip).")
	flag.IntVar(&b.HTTPMaxConns, "http-max-conns", 512, "Open connections the boot HTTP server accepts at once; more wait in the listen backlog.")
	flag.IntVar(&b.HTTPMaxConnsPerSource, "http-max-conns-per-source", 16,
		"Open connections one IP address may hold on the boot HTTP server and on the metrics listener; past it its new connections are closed at once.")
	flag.IntVar(&b.HTTP.MaxLongPolls, "max-long-polls", 1000, "AutoSession script requests waiting for their session at once (one per MAC); past it a PC gets a retry script.")
	flag.StringVar(&b.MetricsListen, "metrics-listen", ":8881", "Listen address of /healthz, /readyz and /metrics; keep it off the boot network. - turns it off.")
	flag.BoolVar(&requireToken, "require-script-token", true,
		"Serve boot scripts only at /boot/<token>/<mac>.ipxe with the token this agent's DHCP handed out. Set false only with an external DHCP server that cannot hand out tokens: /boot/<mac>.ipxe is then served to the address bound to the MAC.")
	flag.BoolVar(&b.BindNeighbors, "bind-neighbors", false,
		"Also bind a script requester's IPv4 address to the MAC the boot interfaces' neighbour table (ARP) maps it to. Weaker than a reserved address: "+
			"anyone on the boot LAN can forge ARP. Default: false in reservation mode (only the reserved address binds); true in proxy mode, where "+
			"the agent hands out no address. In proxy mode --bind-neighbors=false lets the token alone authorize a script request "+
			"(for PCs behind a router, whose ARP entry is the router's).",
	)
	flag.StringVar(&b.HTTP.BaseURL, "http-base-url", "", "The agent's HTTP address as clients see it (default http://<server-ip>:<http port>).")
	flag.StringVar(&b.HTTP.IPXERoot, "ipxe-root", "/usr/lib/ipxe", "Directory of the iPXE binaries (Debian package ipxe).")
	flag.StringVar(&fallback, "fallback", "retry", "What a known machine without a session does: retry or exit.")
	flag.DurationVar(&b.HTTP.LongPoll, "long-poll", 60*time.Second, "How long an AutoSession script request waits for its session.")
	flag.BoolVar(&b.Discovery, "discovery", false, "Record unknown PXE clients as Machines awaiting approval.")
	flag.StringVar(&b.DiscoveryNamespace, "discovery-namespace", "", "Namespace of discovered Machines.")
	flag.IntVar(&b.DiscoveryMax, "discovery-max", 1000, "Discovered Machines kept at most in total (besides a rate of a few per second); past it unknown clients are not recorded.")
	flag.StringVar(&ipv6RA, "ipv6-ra", "auto",
		"Answer IPv6 router solicitations of known Machines on the boot interfaces with a router advertisement that configures nothing (lifetime 0, no prefix, M=O=0), "+
			"so that iPXE's IPv6 autoconfiguration ends at once instead of after about 16 s: auto (not while a real IPv6 router is heard on the interface), on, or off. Needs CAP_NET_RAW (docs/ipv6.md).")
	flag.StringVar(&pprofAddr, "pprof-bind-address", "",
		"Serve Go's /debug/pprof/ (profiles and execution traces) on this address, for benchmarks; keep it on loopback. Default: off.")
	st.bind(flag.CommandLine)
	zapOpts := zap.Options{}
	zapOpts.BindFlags(flag.CommandLine)
	flag.Parse()
	bindNeighborsSet := false
	flag.Visit(func(f *flag.Flag) { bindNeighborsSet = bindNeighborsSet || f.Name == "bind-neighbors" })
	ctrl.SetLogger(zap.New(zap.UseFlagOptions(&zapOpts)))
	log := ctrl.Log.WithName("bootagent")

	fail := func(err error, msg string) {
		log.Error(err, msg)
		os.Exit(1)
	}
	if !bootRole && !storage {
		fail(errors.New("no role: pass --boot, --storage or both"), "Unable to start")
	}
	ctx := ctrl.SetupSignalHandler()
	if pprofAddr != "" {
		// The agent runs on the host's network, on the boot LAN: its
		// profiles are for whoever is on the node, never for the LAN.
		host, _, err := net.SplitHostPort(pprofAddr)
		if ip := net.ParseIP(host); err != nil || ip == nil || !ip.IsLoopback() {
			fail(fmt.Errorf("--pprof-bind-address %q: want a loopback address and port, e.g. 127.0.0.1:6060", pprofAddr), "Unable to start")
		}
		servePprof(pprofAddr, log)
	}
	restCfg := ctrl.GetConfigOrDie()
	roles := make(chan error, 2)
	if storage {
		role, err := st.role(ctx, restCfg, cfg.Namespace, log.WithName("storage"))
		if err != nil {
			fail(err, "Unable to configure the storage role")
		}
		go func() { roles <- role.Run(ctx) }()
	}
	if !bootRole {
		if err := <-roles; err != nil {
			fail(err, "Storage role stopped")
		}
		return
	}
	if ifaces != "" {
		b.Interfaces = strings.Split(ifaces, ",")
	}
	b.DHCP.Mode = dhcp.Mode(mode)
	raMode, err := ra.ParseMode(ipv6RA)
	if err != nil {
		fail(err, "Bad --ipv6-ra")
	}
	b.IPv6RA = raMode
	if !bindNeighborsSet {
		b.BindNeighbors = b.DHCP.Mode == dhcp.ModeProxy
	}
	b.DHCP.ServerIP = net.ParseIP(server).To4()
	b.HTTP.Fallback = ipxe.Failure(fallback)
	b.ScriptTokenOptional = !requireToken
	if b.HTTP.BaseURL == "" && b.DHCP.ServerIP != nil {
		port := "8880"
		if b.HTTPListen != "" {
			_, p, err := net.SplitHostPort(b.HTTPListen)
			if err != nil {
				fail(err, "Bad --http-listen")
			}
			port = p
		}
		b.HTTP.BaseURL = "http://" + net.JoinHostPort(b.DHCP.ServerIP.String(), port)
	}
	if b.ScriptTokenOptional {
		log.Info("Serving boot scripts without a token (--require-script-token=false): only the requester's address is checked")
	}

	cfg.NodeName = st.nodeName // --node-name: the boot role's field manager is per node
	a, err := agent.New(restCfg, cfg, log)
	if err != nil {
		fail(err, "Unable to configure the boot agent")
	}
	log.Info("Starting boot agent")
	go func() { roles <- a.Run(ctx) }()
	if err := <-roles; err != nil {
		fail(err, "Boot agent stopped")
	}
}

// servePprof serves net/http/pprof on addr (--pprof-bind-address), for
// benchmarks: /debug/pprof/trace?seconds=N is the execution trace that shows
// what held the agent's core while a DHCP worker waited for it.
func servePprof(addr string, log logr.Logger) {
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	srv := &http.Server{Addr: addr, Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := srv.ListenAndServe(); err != nil {
			log.Error(err, "Serving pprof", "addr", addr)
		}
	}()
}
