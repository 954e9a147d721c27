package dhcp

import (
	"encoding/binary"
	"errors"
	"net"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/iana"
)

// The server reads and writes DHCPv4 packets itself instead of through
// insomniacslk/dhcp's DHCPv4 type: that type parses every option into a map
// and sorts it again to serialize, 74 allocations per packet, which is most of
// the server's time in a boot storm. Request holds only what a reply needs,
// parsed without allocating; replyWriter writes a reply into a reused buffer.
// Both follow the library's rules exactly (tests compare them byte for byte
// with replies built through the library), and tests and the agent's clients
// still use the library.

const (
	headerLen = 236 // BOOTP fixed header, before the magic cookie
	optionsAt = headerLen + 4
	// bootpMinLen is the minimum BOOTP message (RFC 951); replies are padded
	// to it because some relays drop shorter ones.
	bootpMinLen = 300
	// maxPacket is the largest request read and the reply buffer size.
	maxPacket = 1500
)

var magicCookie = [4]byte{99, 130, 83, 99}

// Errors of Parse.
var (
	errShort     = errors.New("shorter than a BOOTP header")
	errCookie    = errors.New("no DHCP magic cookie")
	errTruncated = errors.New("option runs past the end of the packet")
	errNoEnd     = errors.New("options have no end marker")
)

// tracked option codes, in the order of Request.opts.
const (
	tMsgType = iota
	tServerID
	tRequestedIP
	tClassID
	tUserClass
	tArch
	tClientID
	tRelayInfo
	numTracked
)

func trackedIndex(code byte) int {
	switch code {
	case 53: // message type
		return tMsgType
	case 54: // server identifier
		return tServerID
	case 50: // requested IP address
		return tRequestedIP
	case 60: // vendor class identifier
		return tClassID
	case 77: // user class
		return tUserClass
	case 93: // client system architecture
		return tArch
	case 61: // client identifier
		return tClientID
	case 82: // relay agent information
		return tRelayInfo
	}
	return -1
}

// Request is what the server reads of a DHCPv4 request. Parse fills it from a
// packet without allocating; its byte slices point into the packet (or into
// the request's own scratch space for options sent in several pieces) and are
// valid until the next Parse.
type Request struct {
	Op     dhcpv4.OpcodeType
	HType  iana.HWType
	HLen   int // hardware address length, at most 16
	Xid    [4]byte
	Flags  uint16
	CIAddr [4]byte
	GIAddr [4]byte
	CHAddr [16]byte

	opts    [numTracked][]byte
	scratch []byte
}

// Parse reads pkt. It fails, as the library's dhcpv4.FromBytes does, on a
// packet shorter than the header, without the magic cookie, with an option
// running past the end, or with options but no end option. Repeated options are
// concatenated (RFC 3396); empty ones count as absent.
func (r *Request) Parse(pkt []byte) error {
	if len(pkt) < optionsAt {
		return errShort
	}
	if [4]byte(pkt[headerLen:optionsAt]) != magicCookie {
		return errCookie
	}
	r.Op = dhcpv4.OpcodeType(pkt[0])
	r.HType = iana.HWType(pkt[1])
	r.HLen = min(int(pkt[2]), 16)
	r.Xid = [4]byte(pkt[4:8])
	r.Flags = binary.BigEndian.Uint16(pkt[10:12])
	r.CIAddr = [4]byte(pkt[12:16])
	r.GIAddr = [4]byte(pkt[24:28])
	r.CHAddr = [16]byte(pkt[28:44])
	r.opts = [numTracked][]byte{}

	var repeated [numTracked]bool
	opts := pkt[optionsAt:]
	i, end := 0, false
	for i < len(opts) {
		code := opts[i]
		if code == 0 { // pad
			i++
			continue
		}
		if code == 255 {
			end = true
			break
		}
		if i+2 > len(opts) || i+2+int(opts[i+1]) > len(opts) {
			return errTruncated
		}
		n := int(opts[i+1])
		if t := trackedIndex(code); t >= 0 && n > 0 {
			if r.opts[t] != nil {
				repeated[t] = true
			} else {
				r.opts[t] = opts[i+2 : i+2+n : i+2+n]
			}
		}
		i += 2 + n
	}
	if !end && len(opts) > 0 { // the library accepts a packet with no options at all
		return errNoEnd
	}
	if repeated != [numTracked]bool{} {
		r.concatenate(opts[:i], &repeated)
	}
	return nil
}

// concatenate joins the pieces of each repeated option into scratch, in the
// order they appear (RFC 3396). opts is already validated.
func (r *Request) concatenate(opts []byte, repeated *[numTracked]bool) {
	if r.scratch == nil {
		r.scratch = make([]byte, 0, maxPacket)
	}
	r.scratch = r.scratch[:0]
	for t := range numTracked {
		if !repeated[t] {
			continue
		}
		start := len(r.scratch)
		for i := 0; i < len(opts); {
			code := opts[i]
			if code == 0 {
				i++
				continue
			}
			n := int(opts[i+1])
			if trackedIndex(code) == t {
				r.scratch = append(r.scratch, opts[i+2:i+2+n]...)
			}
			i += 2 + n
		}
		r.opts[t] = r.scratch[start:len(r.scratch):len(r.scratch)]
	}
}

// MAC is the client's hardware address (HLen bytes of chaddr).
func (r *Request) MAC() net.HardwareAddr { return r.CHAddr[:r.HLen:r.HLen] }

// MessageType is option 53, or MessageTypeNone when it is absent or not one
// byte.
func (r *Request) MessageType() dhcpv4.MessageType {
	if v := r.opts[tMsgType]; len(v) == 1 {
		return dhcpv4.MessageType(v[0])
	}
	return dhcpv4.MessageTypeNone
}

// ip4 returns a tracked option that holds exactly one IPv4 address.
func (r *Request) ip4(t int) ([4]byte, bool) {
	if v := r.opts[t]; len(v) == 4 {
		return [4]byte(v), true
	}
	return [4]byte{}, false
}

// Query is what Decide reads of the request; proxyPort is true for a
// request that arrived on port 4011. Its MAC points into r.
func (r *Request) Query(proxyPort bool) Query {
	q := Query{Op: r.Op, HType: r.HType, MAC: r.MAC(), Type: r.MessageType(), CIAddr: r.CIAddr, GIAddr: r.GIAddr,
		Client: r.Client(), ProxyPort: proxyPort}
	q.ServerID, q.HasServerID = r.ip4(tServerID)
	q.RequestedIP, q.HasRequestedIP = r.ip4(tRequestedIP)
	return q
}

// Client classifies the requesting client from options 60, 77 and 93.
func (r *Request) Client() Client {
	var c Client
	vc := r.opts[tClassID]
	c.PXE = hasPrefix(vc, "PXEClient")
	c.HTTP = hasPrefix(vc, "HTTPClient")
	if uc := r.opts[tUserClass]; len(uc) > 0 {
		// iPXE sends the plain string "iPXE"; RFC 3004 clients length-prefix it.
		c.IPXE = string(uc) == "iPXE" || string(uc) == "\x04iPXE"
	}
	if a := r.opts[tArch]; len(a) >= 2 && len(a)%2 == 0 {
		c.Arch, c.HasArch = iana.Arch(binary.BigEndian.Uint16(a)), true
	}
	return c
}

func hasPrefix(b []byte, prefix string) bool {
	return len(b) >= len(prefix) && string(b[:len(prefix)]) == prefix
}

// replyWriter writes a reply into a buffer it reuses. Options must be added
// in increasing code order, which is the order the library writes them in;
// relay agent information (82) goes last (RFC 3046).
type replyWriter struct {
	b []byte
}

// header starts the reply to req: BOOTREPLY, the request's hardware type,
// address, transaction ID, flags and giaddr; yiaddr and siaddr as given; the
// boot file name (truncated to the field) and the magic cookie.
func (w *replyWriter) header(req *Request, yiaddr, siaddr [4]byte, flags uint16, file []byte) {
	if cap(w.b) < maxPacket {
		w.b = make([]byte, 0, maxPacket)
	}
	b := w.b[:optionsAt]
	clear(b)
	b[0] = byte(dhcpv4.OpcodeBootReply)
	b[1] = byte(req.HType)
	b[2] = byte(req.HLen)
	copy(b[4:8], req.Xid[:])
	binary.BigEndian.PutUint16(b[10:12], flags)
	copy(b[16:20], yiaddr[:])
	copy(b[20:24], siaddr[:])
	copy(b[24:28], req.GIAddr[:])
	copy(b[28:28+req.HLen], req.CHAddr[:req.HLen])
	copy(b[108:108+127], file) // the file field keeps a terminating zero
	copy(b[headerLen:], magicCookie[:])
	w.b = b
}

// option appends one option, split into 255-byte pieces when longer
// (RFC 3396), as the library does; an empty value is written as length 0.
func (w *replyWriter) option(code dhcpv4.OptionCode, data []byte) {
	w.b = appendOption(w.b, code.Code(), data)
}

func (w *replyWriter) optionString(code dhcpv4.OptionCode, s string) {
	w.b = appendOption(w.b, code.Code(), s)
}

func appendOption[T string | []byte](b []byte, code byte, data T) []byte {
	if len(data) == 0 {
		return append(b, code, 0)
	}
	for len(data) > 0 {
		n := min(len(data), 255)
		b = append(b, code, byte(n))
		b = append(b, data[:n]...)
		data = data[n:]
	}
	return b
}

func (w *replyWriter) optionIPs(code dhcpv4.OptionCode, ips ...net.IP) {
	n := 0
	for _, ip := range ips {
		if ip.To4() != nil {
			n += 4
		}
	}
	if n == 0 || n > 255 {
		var buf [256 * 4]byte
		b := buf[:0]
		for _, ip := range ips {
			b = append(b, ip.To4()...)
		}
		w.option(code, b)
		return
	}
	w.b = append(w.b, code.Code(), byte(n))
	for _, ip := range ips {
		w.b = append(w.b, ip.To4()...)
	}
}

func (w *replyWriter) optionUint32(code dhcpv4.OptionCode, v uint32) {
	w.b = append(w.b, code.Code(), 4)
	w.b = binary.BigEndian.AppendUint32(w.b, v)
}

// finish appends the copied relay agent information (option 82), the end
// option and the padding to the BOOTP minimum, and returns the packet.
func (w *replyWriter) finish(req *Request) []byte {
	if v := req.opts[tRelayInfo]; v != nil {
		w.option(dhcpv4.OptionRelayAgentInformation, v)
	}
	w.b = append(w.b, 255)
	for len(w.b) < bootpMinLen {
		w.b = append(w.b, 0)
	}
	return w.b
}

func ip4Of(ip net.IP) [4]byte {
	if v4 := ip.To4(); v4 != nil {
		return [4]byte(v4)
	}
	return [4]byte{}
}
