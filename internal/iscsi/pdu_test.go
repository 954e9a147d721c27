package iscsi

import (
	"bytes"
	"encoding/hex"
	"testing"
)

func TestLoginRequestEncoding(t *testing.T) {
	r := loginRequest{transit: true, csg: stageOperational, nsg: stageFullFeature, isid: [6]byte{0x80, 1, 2, 3, 0, 0},
		tsih: 0x1234, itt: 7, cid: 0, cmdSN: 9, expStatSN: 11, data: encodeText([]kv{{"HeaderDigest", "None"}})}
	b := r.encode()
	if b[0] != 0x43 {
		t.Errorf("opcode byte 0x%02x, want 0x43 (immediate login request)", b[0])
	}
	if b[1] != 0x87 {
		t.Errorf("flags 0x%02x, want 0x87 (T, CSG 1, NSG 3)", b[1])
	}
	if got := int(b[5])<<16 | int(b[6])<<8 | int(b[7]); got != len("HeaderDigest=None\x00") {
		t.Errorf("data segment length %d", got)
	}
	if len(b)%4 != 0 || len(b) != 48+pad4(18) {
		t.Errorf("PDU of %d bytes, want the data padded to 4", len(b))
	}
	if !bytes.Equal(b[8:16], []byte{0x80, 1, 2, 3, 0, 0, 0x12, 0x34}) {
		t.Errorf("ISID/TSIH % x", b[8:16])
	}
	if !bytes.Equal(b[16:20], []byte{0, 0, 0, 7}) || !bytes.Equal(b[24:32], []byte{0, 0, 0, 9, 0, 0, 0, 11}) {
		t.Errorf("ITT/CmdSN/ExpStatSN % x", b[16:32])
	}
	// Without T, NSG is reserved and left 0.
	r.transit = false
	if b := r.encode(); b[1] != 0x04 {
		t.Errorf("flags without T 0x%02x, want 0x04", b[1])
	}
}

func TestText(t *testing.T) {
	in := []kv{{"CHAP_A", "5"}, {"TargetName", "iqn.2026-11.io.ggnet:a:b"}}
	got, err := decodeText(encodeText(in))
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0] != in[0] || got[1] != in[1] {
		t.Errorf("round trip %v", got)
	}
	if _, err := decodeText([]byte("CHAP_R0xdeadbeef\x00")); err == nil {
		t.Error("a field without = decoded")
	} else if bytes.Contains([]byte(err.Error()), []byte("deadbeef")) {
		t.Error("an error names a value")
	}
}

// The CHAP response is MD5(id || secret || challenge) (RFC 1994 4.1).
func TestCHAPResponse(t *testing.T) {
	challenge, _ := hex.DecodeString("00112233445566778899aabbccddeeff")
	got := hex.EncodeToString(chapResponse(0x2a, "Xk2p9QvL0aB7cD4e", challenge))
	// python3 -c 'import hashlib;print(hashlib.md5(bytes([42])+b"Xk2p9QvL0aB7cD4e"+bytes.fromhex("00112233445566778899aabbccddeeff")).hexdigest())'
	if want := "4ae666ea5737a136c1e551b32a08ca1f"; got != want {
		t.Errorf("CHAP_R %s, want %s", got, want)
	}
	for s, want := range map[string]string{"0x0a0B": "0a0b", "0xabc": "0abc", "0bAAEC": "000102"} {
		b, err := decodeBinary(s)
		if err != nil || hex.EncodeToString(b) != want {
			t.Errorf("decodeBinary(%q) = %x, %v; want %s", s, b, err, want)
		}
	}
	if _, err := decodeBinary("123"); err == nil {
		t.Error("a binary value without 0x or 0b decoded")
	}
}

func TestSCSICommandEncoding(t *testing.T) {
	c := scsiCommand{lun: lunField(1), itt: 5, expectedLen: 1 << 20, cmdSN: 3, expStatSN: 4, cdb: read10(0x01020304, 2048)}
	b := c.encode()
	if b[0] != 0x01 || b[1] != 0xc1 {
		t.Errorf("opcode/flags % x, want 01 c1 (F, R, simple)", b[:2])
	}
	if !bytes.Equal(b[8:16], []byte{0, 1, 0, 0, 0, 0, 0, 0}) {
		t.Errorf("LUN % x", b[8:16])
	}
	if !bytes.Equal(b[20:24], []byte{0, 0x10, 0, 0}) {
		t.Errorf("expected length % x", b[20:24])
	}
	if !bytes.Equal(b[32:42], []byte{0x28, 0, 1, 2, 3, 4, 0, 0x08, 0, 0}) {
		t.Errorf("READ(10) CDB % x", b[32:42])
	}
	r16 := read16(1<<33, 70000)
	if !bytes.Equal(r16[:14], []byte{0x88, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 1, 0x11, 0x70}) {
		t.Errorf("READ(16) CDB % x", r16[:14])
	}
	if l := logoutRequest(9, 0, 3, 4); l[0] != 0x46 || l[1] != 0x80 {
		t.Errorf("logout % x", l[:2])
	}
}

func TestLoginResponseDecoding(t *testing.T) {
	var h bhs
	h[0] = opLoginResp
	h[1] = 0x80 | 1<<2 | 3
	h[14], h[15] = 0, 9
	h.put32(24, 100)
	h.put32(28, 5)
	h.put32(32, 36)
	h[36], h[37] = 2, 1
	r, err := decodeLoginResponse(&h, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !r.transit || r.csg != 1 || r.nsg != 3 || r.tsih != 9 || r.statSN != 100 || r.expCmdSN != 5 || r.maxCmdSN != 36 {
		t.Errorf("%+v", r)
	}
	e := &LoginError{Class: r.class, Detail: r.detail}
	if !e.AuthFailed() || e.Error() != "login refused: status 0x0201 (authentication failure)" {
		t.Errorf("%v", e)
	}
	h[0] = opSCSIResp
	if _, err := decodeLoginResponse(&h, nil); err == nil {
		t.Error("a SCSI response decoded as a login response")
	}
}

func TestSense(t *testing.T) {
	fixed := []byte{0, 18, 0x70, 0, 0x05, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x21, 0x00, 0, 0, 0, 0}
	if k, a, q := parseSense(fixed); k != 5 || a != 0x21 || q != 0 {
		t.Errorf("fixed sense %x %x %x", k, a, q)
	}
	desc := []byte{0, 8, 0x72, 0x03, 0x11, 0x01, 0, 0, 0, 0}
	if k, a, q := parseSense(desc); k != 3 || a != 0x11 || q != 1 {
		t.Errorf("descriptor sense %x %x %x", k, a, q)
	}
}
