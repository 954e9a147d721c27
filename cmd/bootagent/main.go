// Command bootagent runs on GGnet nodes. The boot role answers DHCP, TFTP and
// HTTP for PXE clients from an informer cache of Machines and BootSessions.
// The storage role (image replicas, overlays, iSCSI targets) is chosen by
// --storage on storage nodes.
package main

import (
	"errors"
	"flag"
	"net"
	"os"
	"strings"
	"time"

	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	"github.com/ggnet/ggnet/bootagent/agent"
	"github.com/ggnet/ggnet/bootagent/dhcp"
	"github.com/ggnet/ggnet/internal/ipxe"
)

func main() {
	var (
		cfg                  agent.Config
		bootRole, storage    bool
		ifaces, mode, server string
		fallback             string
		st                   storageFlags
	)
	b := &cfg.Boot
	flag.BoolVar(&bootRole, "boot", false, "Run the boot role: DHCP, TFTP and HTTP iPXE services.")
	flag.BoolVar(&storage, "storage", false, "Run the storage role: image replicas, overlays and iSCSI targets.")
	flag.StringVar(&cfg.Namespace, "namespace", "", "Watch only this namespace (default: all).")
	flag.StringVar(&ifaces, "dhcp-interfaces", "", "Comma-separated boot network interfaces to answer DHCP on (default: any, unbound).")
	flag.StringVar(&mode, "dhcp-mode", "reservation", "DHCP mode: reservation (hand out reserved addresses) or proxy (proxyDHCP beside another DHCP server).")
	flag.StringVar(&b.DHCPListen, "dhcp-listen", ":67", "DHCP listen address.")
	flag.StringVar(&b.ProxyListen, "proxy-listen", ":4011", "proxyDHCP listen address (proxy mode).")
	flag.IntVar(&b.DHCPWorkers, "dhcp-workers", 8, "DHCP workers per socket.")
	flag.StringVar(&server, "server-ip", "", "This agent's IPv4 address on the boot network (siaddr, server identifier).")
	flag.StringVar(&b.DHCP.UEFIFile, "uefi-boot-file", "ipxe.efi", "Boot file for UEFI PXE clients: ipxe.efi or snponly.efi.")
	flag.StringVar(&b.DHCP.BIOSFile, "bios-boot-file", "undionly.kpxe", "Boot file for BIOS PXE clients.")
	flag.DurationVar(&b.DHCP.LeaseTime, "lease-time", 12*time.Hour, "Lease time of reservations.")
	flag.StringVar(&b.TFTPListen, "tftp-listen", ":69", "TFTP listen address; - turns TFTP off.")
	flag.StringVar(&b.HTTPListen, "http-listen", ":8880", "HTTP listen address (scripts, iPXE binaries, /healthz, /readyz, /metrics).")
	flag.StringVar(&b.HTTP.BaseURL, "http-base-url", "", "The agent's HTTP address as clients see it (default http://<server-ip>:<http port>).")
	flag.StringVar(&b.HTTP.IPXERoot, "ipxe-root", "/usr/lib/ipxe", "Directory of the iPXE binaries (Debian package ipxe).")
	flag.StringVar(&fallback, "fallback", "retry", "What a known machine without a session does: retry or exit.")
	flag.DurationVar(&b.HTTP.LongPoll, "long-poll", 60*time.Second, "How long an AutoSession script request waits for its session.")
	flag.BoolVar(&b.Discovery, "discovery", false, "Record unknown PXE clients as Machines awaiting approval.")
	flag.StringVar(&b.DiscoveryNamespace, "discovery-namespace", "", "Namespace of discovered Machines.")
	st.bind(flag.CommandLine)
	zapOpts := zap.Options{}
	zapOpts.BindFlags(flag.CommandLine)
	flag.Parse()
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
	b.DHCP.ServerIP = net.ParseIP(server).To4()
	b.HTTP.Fallback = ipxe.Failure(fallback)
	if b.HTTP.BaseURL == "" && b.DHCP.ServerIP != nil {
		_, port, err := net.SplitHostPort(b.HTTPListen)
		if err != nil {
			fail(err, "Bad --http-listen")
		}
		b.HTTP.BaseURL = "http://" + net.JoinHostPort(server, port)
	}

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
