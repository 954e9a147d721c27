package dhcp

// The reference implementation: replies built through insomniacslk/dhcp's
// DHCPv4 type, as the server did before it wrote packets itself (wire.go).
// Tests compare the server's replies with these byte for byte.

import (
	"bytes"
	"fmt"
	"net"
	"strings"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/iana"

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

// Reply builds the reply to req, or nil with the reason it is not answered.
// proxyPort is true for requests that arrived on port 4011.
func referenceReply(req *dhcpv4.DHCPv4, backend Backend, cfg *Config, proxyPort bool) (*dhcpv4.DHCPv4, Result) {
	if req.OpCode != dhcpv4.OpcodeBootRequest {
		return nil, ResultNotBootReply
	}
	if req.HWType != iana.HWTypeEthernet || len(req.ClientHWAddr) != 6 {
		return nil, ResultMalformed
	}
	r, known := backend.LookupMAC(req.ClientHWAddr)
	client := referenceClient(req)
	if cfg.Mode == ModeProxy || proxyPort {
		return refProxyReply(req, client, r, known, cfg, proxyPort)
	}
	return refReservationReply(req, client, r, known, cfg)
}

func refReservationReply(req *dhcpv4.DHCPv4, client Client, r Reservation, known bool, cfg *Config) (*dhcpv4.DHCPv4, Result) {
	if !known {
		return nil, ResultUnknownMAC
	}
	if r.Address == nil {
		return nil, ResultNoAddress
	}
	var (
		msgType dhcpv4.MessageType
		result  Result
	)
	switch req.MessageType() {
	case dhcpv4.MessageTypeDiscover:
		msgType, result = dhcpv4.MessageTypeOffer, ResultOffer
	case dhcpv4.MessageTypeRequest:
		if sid := req.ServerIdentifier(); sid != nil && !sid.Equal(cfg.ServerIP) {
			return nil, ResultOtherServer
		}
		asked := req.RequestedIPAddress()
		if asked == nil {
			asked = req.ClientIPAddr
		}
		if !asked.Equal(r.Address) {
			return refNak(req, cfg, fmt.Sprintf("address %s is not reserved for %s", asked, req.ClientHWAddr)), ResultNak
		}
		msgType, result = dhcpv4.MessageTypeAck, ResultAck
	case dhcpv4.MessageTypeInform:
		msgType, result = dhcpv4.MessageTypeAck, ResultAck
	default:
		return nil, ResultIgnoredType
	}
	resp, err := refNewReply(req, msgType, cfg)
	if err != nil {
		return nil, ResultMalformed
	}
	if req.MessageType() != dhcpv4.MessageTypeInform {
		resp.YourIPAddr = r.Address
		resp.UpdateOption(dhcpv4.OptIPAddressLeaseTime(cfg.LeaseTime))
		resp.UpdateOption(dhcpv4.OptRenewTimeValue(cfg.LeaseTime / 2))
		resp.UpdateOption(dhcpv4.OptRebindingTimeValue(cfg.LeaseTime * 7 / 8))
	}
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
	if client.Booting() && !r.LocalBoot {
		refSetBootOptions(resp, client, refChooseBootFile(client, r, cfg), cfg, false)
	}
	return resp, result
}

// proxyReply answers a PXE client beside another DHCP server: no address, only
// where to boot from. DISCOVER on 67 gets an OFFER; REQUEST (or INFORM) on
// 4011 gets an ACK.
func refProxyReply(req *dhcpv4.DHCPv4, client Client, r Reservation, known bool, cfg *Config, proxyPort bool) (*dhcpv4.DHCPv4, Result) {
	if !client.Booting() {
		return nil, ResultNotPXE
	}
	if !known {
		return nil, ResultUnknownMAC
	}
	if r.LocalBoot {
		return nil, ResultNotPXE
	}
	var (
		msgType dhcpv4.MessageType
		result  Result
	)
	switch t := req.MessageType(); {
	case t == dhcpv4.MessageTypeDiscover && !proxyPort:
		msgType, result = dhcpv4.MessageTypeOffer, ResultOffer
	case t == dhcpv4.MessageTypeRequest && !proxyPort:
		// The client's REQUEST to the address-giving server; iPXE also looks
		// at a proxy ACK to it.
		if sid := req.ServerIdentifier(); sid != nil && !sid.Equal(cfg.ServerIP) {
			return nil, ResultOtherServer
		}
		msgType, result = dhcpv4.MessageTypeAck, ResultAck
	case (t == dhcpv4.MessageTypeRequest || t == dhcpv4.MessageTypeInform) && proxyPort:
		msgType, result = dhcpv4.MessageTypeAck, ResultAck
	default:
		return nil, ResultIgnoredType
	}
	resp, err := refNewReply(req, msgType, cfg)
	if err != nil {
		return nil, ResultMalformed
	}
	resp.YourIPAddr = net.IPv4zero
	refSetBootOptions(resp, client, refChooseBootFile(client, r, cfg), cfg, true)
	return resp, result
}

// newReply starts a reply from this server: message type, siaddr and server
// identifier.
func refNewReply(req *dhcpv4.DHCPv4, msgType dhcpv4.MessageType, cfg *Config) (*dhcpv4.DHCPv4, error) {
	return dhcpv4.NewReplyFromRequest(req,
		dhcpv4.WithMessageType(msgType),
		dhcpv4.WithServerIP(cfg.ServerIP),
		dhcpv4.WithOption(dhcpv4.OptServerIdentifier(cfg.ServerIP)),
	)
}

// refChooseBootFile picks the boot file with plain strings: iPXE gets
// HTTPBase + "/" + ipxe.ScriptPath(mac, token) (the script URL with the
// reservation's token), UEFI HTTP the UEFI binary's URL, UEFI PXE the UEFI
// binary, BIOS PXE the BIOS one.
func refChooseBootFile(c Client, r Reservation, cfg *Config) BootFile {
	base := strings.TrimRight(cfg.HTTPBase, "/")
	switch {
	case c.IPXE:
		return BootFile{Name: base + "/" + ipxe.ScriptPath(r.MAC, r.Token), HTTP: true}
	case c.HTTP:
		return BootFile{Name: base + "/ipxe/" + cfg.UEFIFile, HTTP: true}
	case c.uefi(r.Firmware):
		return BootFile{Name: cfg.UEFIFile}
	default:
		return BootFile{Name: cfg.BIOSFile}
	}
}

// pxeDiscoveryControl is PXE vendor sub-option 6 = 8: no boot server
// discovery, load the boot file named in the reply.

func refSetBootOptions(resp *dhcpv4.DHCPv4, client Client, bf BootFile, cfg *Config, proxy bool) {
	resp.BootFileName = bf.Name
	resp.UpdateOption(dhcpv4.OptBootFileName(bf.Name))
	if !bf.HTTP {
		resp.ServerIPAddr = cfg.ServerIP
		resp.UpdateOption(dhcpv4.OptTFTPServerName(cfg.ServerIP.String()))
	}
	switch {
	case client.HTTP:
		// UEFI HTTP boot ignores offers without HTTPClient in option 60.
		resp.UpdateOption(dhcpv4.OptClassIdentifier("HTTPClient"))
	case client.IPXE && !proxy:
		// iPXE waits several seconds for a ProxyDHCP answer when the
		// reply says PXEClient; from the server that hands out the address
		// and the script URL there is nothing more to wait for; no-pxedhcp
		// ends iPXE's wait for ProxyDHCP offers.
		resp.UpdateOption(dhcpv4.OptGeneric(dhcpv4.GenericOptionCode(175), []byte{176, 1, 1}))
	case client.PXE:
		resp.UpdateOption(dhcpv4.OptClassIdentifier("PXEClient"))
		// Proxy or not: without PXE vendor options a firmware PXE client
		// (EDK2) asks a boot server on 4011 instead of loading the file.
		resp.UpdateOption(dhcpv4.OptGeneric(dhcpv4.OptionVendorSpecificInformation, pxeDiscoveryControl))
	}
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

// referenceReplyAddr picks where a reply goes (RFC 2131 4.1): a relay's
// giaddr at 67, else the client at port 68: on the proxy port at the
// request's source address, else its ciaddr, else broadcast; never the
// request's source port.
func referenceReplyAddr(req, resp *dhcpv4.DHCPv4, peer *net.UDPAddr, proxyPort bool) *net.UDPAddr {
	switch {
	case !req.GatewayIPAddr.IsUnspecified() && req.GatewayIPAddr != nil:
		return &net.UDPAddr{IP: req.GatewayIPAddr, Port: ServerPort}
	case proxyPort && peer != nil && !peer.IP.IsUnspecified():
		return &net.UDPAddr{IP: peer.IP, Port: ClientPort}
	case resp.MessageType() == dhcpv4.MessageTypeNak:
		return &net.UDPAddr{IP: net.IPv4bcast, Port: ClientPort}
	case !req.ClientIPAddr.IsUnspecified() && req.ClientIPAddr != nil:
		return &net.UDPAddr{IP: req.ClientIPAddr, Port: ClientPort}
	default:
		return &net.UDPAddr{IP: net.IPv4bcast, Port: ClientPort}
	}
}
