// Package iscsi is a small in-process iSCSI initiator (RFC 7143) for
// benchmarks and tests: one connection per session, login through
// SecurityNegotiation with CHAP (CHAP_A=5, MD5; mutual CHAP when the
// target's credentials are given) and LoginOperationalNegotiation, SCSI
// READ CAPACITY, READ(10) and READ(16) with Data-In PDUs, and logout. It
// does what a netbooting PC's firmware does with its disk, not more: no
// writes, no digests, no error recovery beyond level 0.
//
// No error or message of this package carries a CHAP secret.
package iscsi

import (
	"bytes"
	"crypto/md5" //nolint:gosec // CHAP_A=5 is MD5 (RFC 1994, RFC 7143 12.1.3); not our choice.
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"strconv"
	"strings"
)

// Opcodes (RFC 7143 11.2.1.2).
const (
	opNOPOut      = 0x00
	opSCSICommand = 0x01
	opLoginReq    = 0x03
	opLogoutReq   = 0x06
	opNOPIn       = 0x20
	opSCSIResp    = 0x21
	opLoginResp   = 0x23
	opDataIn      = 0x25
	opLogoutResp  = 0x26
	opR2T         = 0x31
	opAsync       = 0x32
	opReject      = 0x3f

	immediate = 0x40
)

// Login stages (CSG, NSG).
const (
	stageSecurity    = 0
	stageOperational = 1
	stageFullFeature = 3
)

// bhsLen is the length of the Basic Header Segment.
const bhsLen = 48

// bhs is a Basic Header Segment.
type bhs [bhsLen]byte

func (h *bhs) opcode() byte            { return h[0] & 0x3f }
func (h *bhs) flags() byte             { return h[1] }
func (h *bhs) ahsLen() int             { return int(h[4]) * 4 }
func (h *bhs) dataLen() int            { return int(h[5])<<16 | int(h[6])<<8 | int(h[7]) }
func (h *bhs) itt() uint32             { return binary.BigEndian.Uint32(h[16:]) }
func (h *bhs) u32(off int) uint32      { return binary.BigEndian.Uint32(h[off:]) }
func (h *bhs) put32(off int, v uint32) { binary.BigEndian.PutUint32(h[off:], v) }

func (h *bhs) setDataLen(n int) {
	h[5], h[6], h[7] = byte(n>>16), byte(n>>8), byte(n)
}

// pad4 is n rounded up to a multiple of 4 (data segments are padded).
func pad4(n int) int { return (n + 3) &^ 3 }

// loginRequest is a Login Request PDU's header and data.
type loginRequest struct {
	transit, cont bool
	csg, nsg      int
	isid          [6]byte
	tsih          uint16
	itt           uint32
	cid           uint16
	cmdSN         uint32
	expStatSN     uint32
	data          []byte
}

// encode returns the PDU: header then the padded data segment.
func (r *loginRequest) encode() []byte {
	var h bhs
	h[0] = immediate | opLoginReq
	h[1] = byte(r.csg&3)<<2 | byte(r.nsg&3)
	if r.transit {
		h[1] |= 0x80
	} else {
		h[1] &^= 3 // NSG is reserved without T
	}
	if r.cont {
		h[1] |= 0x40
	}
	h[2], h[3] = 0, 0 // Version-max, Version-min
	h.setDataLen(len(r.data))
	copy(h[8:14], r.isid[:])
	binary.BigEndian.PutUint16(h[14:], r.tsih)
	h.put32(16, r.itt)
	binary.BigEndian.PutUint16(h[20:], r.cid)
	h.put32(24, r.cmdSN)
	h.put32(28, r.expStatSN)
	out := make([]byte, bhsLen+pad4(len(r.data)))
	copy(out, h[:])
	copy(out[bhsLen:], r.data)
	return out
}

// loginResponse is a decoded Login Response.
type loginResponse struct {
	transit, cont bool
	csg, nsg      int
	tsih          uint16
	itt           uint32
	statSN        uint32
	expCmdSN      uint32
	maxCmdSN      uint32
	class, detail byte
	data          []byte
}

func decodeLoginResponse(h *bhs, data []byte) (loginResponse, error) {
	if h.opcode() != opLoginResp {
		return loginResponse{}, fmt.Errorf("want a login response, got opcode 0x%02x", h.opcode())
	}
	f := h.flags()
	return loginResponse{
		transit: f&0x80 != 0, cont: f&0x40 != 0, csg: int(f>>2) & 3, nsg: int(f) & 3,
		tsih: binary.BigEndian.Uint16(h[14:]), itt: h.itt(),
		statSN: h.u32(24), expCmdSN: h.u32(28), maxCmdSN: h.u32(32),
		class: h[36], detail: h[37], data: data,
	}, nil
}

// LoginError is a login the target refused (Status-Class not 0).
type LoginError struct {
	Class, Detail byte
}

func (e *LoginError) Error() string {
	return fmt.Sprintf("login refused: status 0x%02x%02x (%s)", e.Class, e.Detail, loginStatusText(e.Class, e.Detail))
}

// AuthFailed reports whether the target refused the initiator's
// authentication or authorization (status class 2, detail 1 or 2).
func (e *LoginError) AuthFailed() bool { return e.Class == 2 && (e.Detail == 1 || e.Detail == 2) }

func loginStatusText(class, detail byte) string {
	switch uint16(class)<<8 | uint16(detail) {
	case 0x0101, 0x0102:
		return "target moved"
	case 0x0200:
		return "initiator error"
	case 0x0201:
		return "authentication failure"
	case 0x0202:
		return "authorization failure"
	case 0x0203:
		return "target not found"
	case 0x0204:
		return "target removed"
	case 0x0205:
		return "unsupported version"
	case 0x0206:
		return "too many connections"
	case 0x0207:
		return "missing parameter"
	case 0x0208:
		return "cannot include in session"
	case 0x0209:
		return "session type not supported"
	case 0x020a:
		return "session does not exist"
	case 0x020b:
		return "invalid during login"
	case 0x0300:
		return "target error"
	case 0x0301:
		return "service unavailable"
	case 0x0302:
		return "out of resources"
	}
	return "unknown"
}

// kv is one text key=value pair.
type kv struct{ k, v string }

// encodeText encodes key=value pairs, each NUL-terminated (RFC 7143 6.1).
func encodeText(pairs []kv) []byte {
	var b bytes.Buffer
	for _, p := range pairs {
		b.WriteString(p.k)
		b.WriteByte('=')
		b.WriteString(p.v)
		b.WriteByte(0)
	}
	return b.Bytes()
}

// decodeText decodes a text data segment into its pairs, in order.
func decodeText(data []byte) ([]kv, error) {
	var out []kv
	for _, f := range bytes.Split(data, []byte{0}) {
		if len(f) == 0 {
			continue
		}
		k, v, ok := strings.Cut(string(f), "=")
		if !ok || k == "" {
			// Only the length: the field may be a CHAP value.
			return nil, fmt.Errorf("malformed text field of %d bytes (no key=value)", len(f))
		}
		out = append(out, kv{k, v})
	}
	return out, nil
}

func lookup(pairs []kv, key string) (string, bool) {
	for _, p := range pairs {
		if p.k == key {
			return p.v, true
		}
	}
	return "", false
}

// chapResponse is CHAP_R for identifier id, secret and challenge (RFC 1994:
// MD5 of id || secret || challenge).
func chapResponse(id byte, secret string, challenge []byte) []byte {
	h := md5.New() //nolint:gosec // CHAP_A=5.
	h.Write([]byte{id})
	h.Write([]byte(secret))
	h.Write(challenge)
	return h.Sum(nil)
}

// encodeBinary writes a binary value in hex form (0x...).
func encodeBinary(b []byte) string { return "0x" + hex.EncodeToString(b) }

// decodeBinary reads a binary value in hex (0x) or base64 (0b) form (RFC
// 7143 6.1).
func decodeBinary(s string) ([]byte, error) {
	switch {
	case len(s) > 2 && (s[:2] == "0x" || s[:2] == "0X"):
		h := s[2:]
		if len(h)%2 == 1 {
			h = "0" + h
		}
		return hex.DecodeString(h)
	case len(s) > 2 && (s[:2] == "0b" || s[:2] == "0B"):
		return base64.StdEncoding.DecodeString(s[2:])
	}
	return nil, fmt.Errorf("binary value: want 0x<hex> or 0b<base64>")
}

// scsiCommand is a SCSI Command PDU for a read (no data out).
type scsiCommand struct {
	lun         uint64 // the 8-byte LUN field
	itt         uint32
	expectedLen uint32
	cmdSN       uint32
	expStatSN   uint32
	cdb         [16]byte
}

func (c *scsiCommand) encode() []byte {
	var h bhs
	h[0] = opSCSICommand
	h[1] = 0x80 | 0x01 // F, simple task attribute
	if c.expectedLen > 0 {
		h[1] |= 0x40 // R
	}
	binary.BigEndian.PutUint64(h[8:], c.lun)
	h.put32(16, c.itt)
	h.put32(20, c.expectedLen)
	h.put32(24, c.cmdSN)
	h.put32(28, c.expStatSN)
	copy(h[32:], c.cdb[:])
	return h[:]
}

// lunField encodes a LUN below 256 in the single-level peripheral device
// addressing form (SAM-5 4.7.2: 00b, bus 0).
func lunField(lun int) uint64 { return uint64(lun&0xff) << 48 }

// read10 is a READ(10) CDB.
func read10(lba uint32, blocks uint16) [16]byte {
	var c [16]byte
	c[0] = 0x28
	binary.BigEndian.PutUint32(c[2:], lba)
	binary.BigEndian.PutUint16(c[7:], blocks)
	return c
}

// read16 is a READ(16) CDB.
func read16(lba uint64, blocks uint32) [16]byte {
	var c [16]byte
	c[0] = 0x88
	binary.BigEndian.PutUint64(c[2:], lba)
	binary.BigEndian.PutUint32(c[10:], blocks)
	return c
}

// readCapacity10 is a READ CAPACITY(10) CDB.
func readCapacity10() [16]byte {
	var c [16]byte
	c[0] = 0x25
	return c
}

// readCapacity16 is a READ CAPACITY(16) CDB (SERVICE ACTION IN(16)).
func readCapacity16(alloc uint32) [16]byte {
	var c [16]byte
	c[0], c[1] = 0x9e, 0x10
	binary.BigEndian.PutUint32(c[10:], alloc)
	return c
}

// logoutRequest is a Logout Request PDU (reason 0: close the session).
func logoutRequest(itt uint32, cid uint16, cmdSN, expStatSN uint32) []byte {
	var h bhs
	h[0] = immediate | opLogoutReq
	h[1] = 0x80 // F, reason 0
	h.put32(16, itt)
	binary.BigEndian.PutUint16(h[20:], cid)
	h.put32(24, cmdSN)
	h.put32(28, expStatSN)
	return h[:]
}

// nopOut answers a target's NOP-In ping (its TTT and LUN echoed).
func nopOut(ttt uint32, lun []byte, cmdSN, expStatSN uint32) []byte {
	var h bhs
	h[0] = immediate | opNOPOut
	h[1] = 0x80
	copy(h[8:16], lun)
	h.put32(16, 0xffffffff)
	h.put32(20, ttt)
	h.put32(24, cmdSN)
	h.put32(28, expStatSN)
	return h[:]
}

// SCSIError is a command that ended with a status other than GOOD.
type SCSIError struct {
	Status           byte
	SenseKey, ASC, Q byte
	Response         byte
}

func (e *SCSIError) Error() string {
	if e.Response != 0 {
		return fmt.Sprintf("SCSI command failed at the target (iSCSI response 0x%02x)", e.Response)
	}
	return fmt.Sprintf("SCSI status 0x%02x, sense key 0x%x ASC/ASCQ 0x%02x/0x%02x", e.Status, e.SenseKey, e.ASC, e.Q)
}

// parseSense reads the sense key, ASC and ASCQ from a SCSI Response's data
// segment (2-byte length, then fixed or descriptor format sense data).
func parseSense(data []byte) (key, asc, q byte) {
	if len(data) < 2 {
		return 0, 0, 0
	}
	n := int(binary.BigEndian.Uint16(data))
	s := data[2:]
	if n < len(s) {
		s = s[:n]
	}
	if len(s) < 1 {
		return 0, 0, 0
	}
	switch s[0] & 0x7f {
	case 0x70, 0x71:
		if len(s) >= 14 {
			return s[2] & 0xf, s[12], s[13]
		}
	case 0x72, 0x73:
		if len(s) >= 4 {
			return s[1] & 0xf, s[2], s[3]
		}
	}
	return 0, 0, 0
}

// boolKey is a key's value as iSCSI spells booleans.
func boolKey(b bool) string {
	if b {
		return "Yes"
	}
	return "No"
}

// numKey parses a numerical key's value.
func numKey(pairs []kv, key string) (int, bool) {
	v, ok := lookup(pairs, key)
	if !ok {
		return 0, false
	}
	n, err := strconv.Atoi(v)
	return n, err == nil
}
