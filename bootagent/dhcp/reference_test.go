package dhcp

// The reference encoding: requests read and replies written through
// insomniacslk/dhcp's DHCPv4 type, for the same Decide the server calls.
// Tests compare the server's queries and replies with these, field for field
// and byte for byte, so they check parsing and encoding; the policy is
// Decide's alone (decide_test.go).

import (
	"bytes"
	"net"
	"reflect"
	"strings"

	"github.com/insomniacslk/dhcp/dhcpv4"

	"github.com/ggnet/ggnet/internal/ipxe"
)

// referenceClient classifies a request through the library.
func referenceClient(req *dhcpv4.DHCPv4) Client {
	var c Client
	vc := req.ClassIdentifier()
	c.PXE = strings.HasPrefix(vc, "PXEClient")
	c.HTTP = strings.HasPrefix(vc, "HTTPClient")
	if uc := req.GetOneOption(dhcpv4.OptionUserClassInformation); len(uc) > 0 {
		// iPXE sends the plain string "iPXE"; RFC 3004 clients length-prefix it.
		c.IPXE = bytes.Equal(uc, []byte("iPXE")) || bytes.Equal(uc, []byte("\x04iPXE"))
	}
	if archs := req.ClientArch(); len(archs) > 0 {
		c.Arch, c.HasArch = archs[0], true
	}
	return c
}

// referenceQuery reads a request through the library.
func referenceQuery(req *dhcpv4.DHCPv4, proxyPort bool) Query {
	q := Query{Op: req.OpCode, HType: req.HWType, MAC: req.ClientHWAddr, Type: req.MessageType(),
		CIAddr: ip4Of(req.ClientIPAddr), GIAddr: ip4Of(req.GatewayIPAddr), Client: referenceClient(req), ProxyPort: proxyPort}
	if sid := req.ServerIdentifier(); sid != nil {
		q.ServerID, q.HasServerID = ip4Of(sid), true
	}
	if ip := req.RequestedIPAddress(); ip != nil {
		q.RequestedIP, q.HasRequestedIP = ip4Of(ip), true
	}
	return q
}

// sameQuery reports whether two queries are equal (MAC by its bytes).
func sameQuery(a, b Query) bool {
	if !bytes.Equal(a.MAC, b.MAC) {
		return false
	}
	a.MAC, b.MAC = nil, nil
	return reflect.DeepEqual(a, b)
}

// referenceReply reads req and writes the reply Decide chooses through the
// library, or nil with the reason it is not answered. proxyPort is true for
// requests that arrived on port 4011.
func referenceReply(req *dhcpv4.DHCPv4, backend Backend, cfg *Config, proxyPort bool) (*dhcpv4.DHCPv4, Result) {
	q := referenceQuery(req, proxyPort)
	d := Decide(&q, backend, cfg)
	return referenceEncode(req, &d, cfg), d.Result
}

// referenceEncode writes the reply d describes to req through the library,
// nil when none is sent.
func referenceEncode(req *dhcpv4.DHCPv4, d *Decision, cfg *Config) *dhcpv4.DHCPv4 {
	switch d.Type {
	case dhcpv4.MessageTypeNone:
		return nil
	case dhcpv4.MessageTypeNak:
		return refNak(req, cfg, d.Message)
	}
	resp, err := dhcpv4.NewReplyFromRequest(req,
		dhcpv4.WithMessageType(d.Type),
		dhcpv4.WithServerIP(cfg.ServerIP),
		dhcpv4.WithOption(dhcpv4.OptServerIdentifier(cfg.ServerIP)),
	)
	if err != nil {
		return nil
	}
	resp.YourIPAddr = net.IPv4(d.YourIP[0], d.YourIP[1], d.YourIP[2], d.YourIP[3])
	if d.Lease {
		resp.UpdateOption(dhcpv4.OptIPAddressLeaseTime(cfg.LeaseTime))
		resp.UpdateOption(dhcpv4.OptRenewTimeValue(cfg.LeaseTime / 2))
		resp.UpdateOption(dhcpv4.OptRebindingTimeValue(cfg.LeaseTime * 7 / 8))
	}
	if r := d.Reservation; d.Network {
		if r.Mask != nil {
			resp.UpdateOption(dhcpv4.OptSubnetMask(r.Mask))
		}
		if r.Gateway != nil {
			resp.UpdateOption(dhcpv4.OptRouter(r.Gateway))
		}
		if len(r.DNS) > 0 {
			resp.UpdateOption(dhcpv4.OptDNS(r.DNS...))
		}
		if r.Hostname != "" {
			resp.UpdateOption(dhcpv4.OptHostName(r.Hostname))
		}
	}
	if d.Boot != BootNone {
		name := refBootFile(d.Boot, d.Reservation, cfg)
		resp.BootFileName = name
		resp.UpdateOption(dhcpv4.OptBootFileName(name))
		if d.Boot.TFTP() {
			resp.UpdateOption(dhcpv4.OptTFTPServerName(cfg.ServerIP.String()))
		}
	}
	if d.VendorClass != "" {
		resp.UpdateOption(dhcpv4.OptClassIdentifier(d.VendorClass))
	}
	if d.DiscoveryControl {
		resp.UpdateOption(dhcpv4.OptGeneric(dhcpv4.OptionVendorSpecificInformation, []byte{6, 1, 8, 255}))
	}
	if d.NoPXEDHCP {
		resp.UpdateOption(dhcpv4.OptGeneric(dhcpv4.GenericOptionCode(175), []byte{176, 1, 1}))
	}
	return resp
}

// refBootFile names boot file k with plain strings: the script URL is
// HTTPBase + "/" + ipxe.ScriptPath(mac, token).
func refBootFile(k BootKind, r Reservation, cfg *Config) string {
	base := strings.TrimRight(cfg.HTTPBase, "/")
	switch k {
	case BootScript:
		return base + "/" + ipxe.ScriptPath(r.MAC, r.Token)
	case BootUEFIHTTP:
		return base + "/ipxe/" + cfg.UEFIFile
	case BootUEFI:
		return cfg.UEFIFile
	case BootBIOS:
		return cfg.BIOSFile
	}
	return ""
}

func refNak(req *dhcpv4.DHCPv4, cfg *Config, msg string) *dhcpv4.DHCPv4 {
	resp, err := dhcpv4.NewReplyFromRequest(req,
		dhcpv4.WithMessageType(dhcpv4.MessageTypeNak),
		dhcpv4.WithOption(dhcpv4.OptServerIdentifier(cfg.ServerIP)),
		dhcpv4.WithOption(dhcpv4.OptMessage(msg)),
	)
	if err != nil {
		return nil
	}
	resp.ClientIPAddr = net.IPv4zero
	resp.YourIPAddr = net.IPv4zero
	resp.SetBroadcast()
	return resp
}
