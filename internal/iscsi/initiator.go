package iscsi

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"time"
)

// Config says where and as whom to log in.
type Config struct {
	// Portal is the target portal, host:port.
	Portal string
	// TargetIQN is the target's name; InitiatorIQN ours.
	TargetIQN, InitiatorIQN string
	// LUN is the logical unit to read.
	LUN int
	// Username and Password are the initiator's CHAP credentials (the PC
	// proves itself). Empty Username: no CHAP offered (AuthMethod=None).
	Username, Password string
	// TargetUsername and TargetPassword, when TargetUsername is set, are
	// what the target must prove itself with (mutual CHAP); the login fails
	// when it does not.
	TargetUsername, TargetPassword string
	// Dial opens the TCP connection (default a net.Dialer); a simulator
	// passes one that dials from a given address or network namespace.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// MaxRecvDataSegmentLength is the largest data segment we accept
	// (default 256 KiB).
	MaxRecvDataSegmentLength int
}

// Session is a logged-in iSCSI session on one connection. Its methods are
// not safe for concurrent use.
type Session struct {
	conn      net.Conn
	r         *bufio.Reader
	lun       uint64
	itt       uint32
	cmdSN     uint32
	expStatSN uint32
	maxCmdSN  uint32
	tsih      uint16
	// TargetMaxRecvDataSegmentLength is what the target declared.
	TargetMaxRecvDataSegmentLength int
	// MaxBurstLength is the negotiated value.
	MaxBurstLength int
	blockSize      uint32
	blocks         uint64
	hdr            bhs
	scratch        []byte
}

// ErrMutualCHAP is returned when the target fails to prove itself.
var ErrMutualCHAP = errors.New("the target failed mutual CHAP authentication")

// Login connects to the portal and logs in: SecurityNegotiation (CHAP_A=5
// when Username is set, mutual CHAP when TargetUsername is), then
// LoginOperationalNegotiation, then full feature phase. The context bounds
// the connection and the login.
func Login(ctx context.Context, cfg Config) (*Session, error) {
	dial := cfg.Dial
	if dial == nil {
		dial = (&net.Dialer{}).DialContext
	}
	if cfg.MaxRecvDataSegmentLength <= 0 {
		cfg.MaxRecvDataSegmentLength = 256 << 10
	}
	if cfg.LUN < 0 || cfg.LUN > 255 {
		return nil, fmt.Errorf("LUN %d: want 0 to 255", cfg.LUN)
	}
	conn, err := dial(ctx, "tcp", cfg.Portal)
	if err != nil {
		return nil, fmt.Errorf("connecting to portal %s: %w", cfg.Portal, err)
	}
	s := &Session{conn: conn, r: bufio.NewReaderSize(conn, 64<<10), lun: lunField(cfg.LUN), cmdSN: 1,
		TargetMaxRecvDataSegmentLength: 8192, MaxBurstLength: 262144}
	stop := s.bind(ctx)
	err = s.login(cfg)
	stop()
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("logging in to %s at %s: %w", cfg.TargetIQN, cfg.Portal, err)
	}
	return s, nil
}

// bind makes ctx's deadline and cancellation the connection's until stop.
func (s *Session) bind(ctx context.Context) (stop func()) {
	if d, ok := ctx.Deadline(); ok {
		_ = s.conn.SetDeadline(d)
	}
	done, exited := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(exited)
		select {
		case <-ctx.Done():
			_ = s.conn.SetDeadline(time.Unix(1, 0))
		case <-done:
		}
	}()
	return func() {
		close(done)
		// Wait: a context ended meanwhile must not set its deadline after
		// this clears it (the next call would time out at once).
		<-exited
		_ = s.conn.SetDeadline(time.Time{})
	}
}

func (s *Session) login(cfg Config) error {
	var isid [6]byte
	if _, err := rand.Read(isid[1:4]); err != nil {
		return err
	}
	isid[0] = 0x80 // T=10b: random ISID (RFC 7143 10.12.5)
	req := loginRequest{isid: isid, itt: s.nextITT(), cmdSN: s.cmdSN}
	send := func(transit bool, csg, nsg int, pairs []kv) (loginResponse, []kv, error) {
		req.transit, req.csg, req.nsg, req.data = transit, csg, nsg, encodeText(pairs)
		req.expStatSN = s.expStatSN
		if _, err := s.conn.Write(req.encode()); err != nil {
			return loginResponse{}, nil, err
		}
		resp, err := s.readLogin()
		if err != nil {
			return resp, nil, err
		}
		if resp.class != 0 {
			return resp, nil, &LoginError{Class: resp.class, Detail: resp.detail}
		}
		s.expStatSN = resp.statSN + 1
		s.maxCmdSN = resp.maxCmdSN
		req.tsih = resp.tsih
		got, err := decodeText(resp.data)
		// A response continued (C): ask for the rest with empty requests.
		for err == nil && resp.cont {
			req.transit, req.data = false, nil
			if _, err = s.conn.Write(req.encode()); err != nil {
				break
			}
			if resp, err = s.readLogin(); err != nil {
				break
			}
			var more []kv
			more, err = decodeText(resp.data)
			got = append(got, more...)
		}
		return resp, got, err
	}

	first := []kv{{"InitiatorName", cfg.InitiatorIQN}, {"SessionType", "Normal"}, {"TargetName", cfg.TargetIQN}}
	if cfg.Username != "" {
		if err := s.chap(cfg, first, send); err != nil {
			return err
		}
	} else {
		resp, _, err := send(true, stageSecurity, stageOperational, append(first, kv{"AuthMethod", "None"}))
		if err != nil {
			return err
		}
		if resp.transit && resp.nsg == stageFullFeature {
			return s.fullFeature(resp)
		}
	}
	return s.operational(send)
}

type sendFunc func(transit bool, csg, nsg int, pairs []kv) (loginResponse, []kv, error)

// chap runs SecurityNegotiation with CHAP (RFC 7143 12.1.3): AuthMethod,
// CHAP_A=5, then our response (and our challenge, for mutual CHAP), ending
// with the transit to LoginOperationalNegotiation.
func (s *Session) chap(cfg Config, first []kv, send sendFunc) error {
	_, got, err := send(false, stageSecurity, stageOperational, append(first, kv{"AuthMethod", "CHAP"}))
	if err != nil {
		return err
	}
	if m, _ := lookup(got, "AuthMethod"); m != "CHAP" {
		return fmt.Errorf("the target chose AuthMethod %q, want CHAP", m)
	}
	_, got, err = send(false, stageSecurity, stageOperational, []kv{{"CHAP_A", "5"}})
	if err != nil {
		return err
	}
	if a, _ := lookup(got, "CHAP_A"); a != "5" {
		return fmt.Errorf("the target chose CHAP_A %q, want 5 (MD5)", a)
	}
	idStr, _ := lookup(got, "CHAP_I")
	id, err := strconv.Atoi(idStr)
	if err != nil || id < 0 || id > 255 {
		return fmt.Errorf("the target's CHAP_I is not a byte")
	}
	cs, _ := lookup(got, "CHAP_C")
	challenge, err := decodeBinary(cs)
	if err != nil || len(challenge) == 0 {
		return fmt.Errorf("the target's CHAP_C: %v", err)
	}
	out := []kv{{"CHAP_N", cfg.Username}, {"CHAP_R", encodeBinary(chapResponse(byte(id), cfg.Password, challenge))}}
	var myID byte
	var myChallenge []byte
	if cfg.TargetUsername != "" {
		b := make([]byte, 17)
		if _, err := rand.Read(b); err != nil {
			return err
		}
		myID, myChallenge = b[0], b[1:]
		if subtle.ConstantTimeCompare(myChallenge, challenge) == 1 {
			return fmt.Errorf("the target's challenge equals ours")
		}
		out = append(out, kv{"CHAP_I", strconv.Itoa(int(myID))}, kv{"CHAP_C", encodeBinary(myChallenge)})
	}
	resp, got, err := send(true, stageSecurity, stageOperational, out)
	if err != nil {
		return err
	}
	if cfg.TargetUsername != "" {
		n, _ := lookup(got, "CHAP_N")
		rs, _ := lookup(got, "CHAP_R")
		r, err := decodeBinary(rs)
		want := chapResponse(myID, cfg.TargetPassword, myChallenge)
		if err != nil || n != cfg.TargetUsername || subtle.ConstantTimeCompare(r, want) != 1 {
			return ErrMutualCHAP
		}
	}
	if !resp.transit {
		// The target wants another round in this stage before it moves on.
		if resp, _, err = send(true, stageSecurity, stageOperational, nil); err != nil {
			return err
		}
		if !resp.transit {
			return fmt.Errorf("the target did not leave SecurityNegotiation")
		}
	}
	return nil
}

// operational runs LoginOperationalNegotiation and enters full feature phase.
func (s *Session) operational(send sendFunc) error {
	pairs := []kv{
		{"HeaderDigest", "None"}, {"DataDigest", "None"},
		{"MaxRecvDataSegmentLength", "262144"},
		{"MaxConnections", "1"},
		{"InitialR2T", boolKey(true)}, {"ImmediateData", boolKey(true)},
		{"MaxBurstLength", "16776192"}, {"FirstBurstLength", "262144"},
		{"DefaultTime2Wait", "0"}, {"DefaultTime2Retain", "0"},
		{"MaxOutstandingR2T", "1"},
		{"DataPDUInOrder", boolKey(true)}, {"DataSequenceInOrder", boolKey(true)},
		{"ErrorRecoveryLevel", "0"},
	}
	for range 4 {
		resp, got, err := send(true, stageOperational, stageFullFeature, pairs)
		if err != nil {
			return err
		}
		if n, ok := numKey(got, "MaxRecvDataSegmentLength"); ok && n > 0 {
			s.TargetMaxRecvDataSegmentLength = n
		}
		if n, ok := numKey(got, "MaxBurstLength"); ok && n > 0 {
			s.MaxBurstLength = n
		}
		if d, _ := lookup(got, "HeaderDigest"); d != "" && d != "None" {
			return fmt.Errorf("the target wants HeaderDigest %s", d)
		}
		if d, _ := lookup(got, "DataDigest"); d != "" && d != "None" {
			return fmt.Errorf("the target wants DataDigest %s", d)
		}
		if resp.transit && resp.nsg == stageFullFeature {
			return s.fullFeature(resp)
		}
		pairs = nil
	}
	return fmt.Errorf("the target did not leave LoginOperationalNegotiation")
}

func (s *Session) fullFeature(resp loginResponse) error {
	if resp.tsih == 0 {
		return fmt.Errorf("the target's final login response has no TSIH")
	}
	s.tsih = resp.tsih
	s.cmdSN = resp.expCmdSN
	s.maxCmdSN = resp.maxCmdSN
	return nil
}

func (s *Session) nextITT() uint32 {
	s.itt++
	if s.itt == 0xffffffff {
		s.itt = 1
	}
	return s.itt
}

// readPDU reads one PDU's header into s.hdr and its data segment into a
// buffer it returns (valid until the next call), skipping any AHS.
func (s *Session) readPDU() ([]byte, error) {
	if _, err := io.ReadFull(s.r, s.hdr[:]); err != nil {
		return nil, err
	}
	if n := s.hdr.ahsLen(); n > 0 {
		if _, err := s.r.Discard(n); err != nil {
			return nil, err
		}
	}
	return s.readData()
}

func (s *Session) readLogin() (loginResponse, error) {
	data, err := s.readPDU()
	if err != nil {
		return loginResponse{}, err
	}
	if s.hdr.opcode() == opReject {
		return loginResponse{}, fmt.Errorf("the target rejected the login request (reason 0x%02x)", s.hdr[2])
	}
	return decodeLoginResponse(&s.hdr, data)
}

// ReadCapacity asks the LUN's size: READ CAPACITY(10), and (16) when the
// disk has 2^32 blocks or more.
func (s *Session) ReadCapacity(ctx context.Context) (blocks uint64, blockSize uint32, err error) {
	stop := s.bind(ctx)
	defer stop()
	buf := make([]byte, 32)
	if err := s.command(readCapacity10(), buf[:8]); err != nil {
		return 0, 0, fmt.Errorf("READ CAPACITY(10): %w", err)
	}
	last, bs := binary.BigEndian.Uint32(buf), binary.BigEndian.Uint32(buf[4:])
	blocks = uint64(last) + 1
	if last == 0xffffffff {
		if err := s.command(readCapacity16(32), buf); err != nil {
			return 0, 0, fmt.Errorf("READ CAPACITY(16): %w", err)
		}
		blocks, bs = binary.BigEndian.Uint64(buf)+1, binary.BigEndian.Uint32(buf[8:])
	}
	if bs == 0 || bs%512 != 0 {
		return 0, 0, fmt.Errorf("block size %d", bs)
	}
	s.blocks, s.blockSize = blocks, bs
	return blocks, bs, nil
}

// ReadAt fills p with the disk's bytes from byte offset off, in commands of
// at most chunk bytes (READ(10), or READ(16) past 2^32 blocks). Offsets and
// lengths are in whole blocks; ReadCapacity must have been called.
func (s *Session) ReadAt(ctx context.Context, p []byte, off int64, chunk int) error {
	if s.blockSize == 0 {
		return errors.New("ReadAt before ReadCapacity")
	}
	bs := int64(s.blockSize)
	if off%bs != 0 || int64(len(p))%bs != 0 || chunk <= 0 || int64(chunk)%bs != 0 {
		return fmt.Errorf("offset, length and chunk must be multiples of the block size %d", bs)
	}
	if (off+int64(len(p)))/bs > int64(s.blocks) {
		return fmt.Errorf("read past the end of the disk (%d blocks)", s.blocks)
	}
	stop := s.bind(ctx)
	defer stop()
	for len(p) > 0 {
		n := min(len(p), chunk)
		lba, count := uint64(off/bs), uint32(int64(n)/bs)
		cdb := read16(lba, count)
		if lba+uint64(count) <= 0xffffffff && count <= 0xffff {
			cdb = read10(uint32(lba), uint16(count))
		}
		if err := s.command(cdb, p[:n]); err != nil {
			return fmt.Errorf("reading %d bytes at %d: %w", n, off, err)
		}
		p, off = p[n:], off+int64(n)
	}
	return nil
}

// command sends a SCSI command that reads len(into) bytes and waits for its
// Data-In PDUs and status. A UNIT ATTENTION (the first command after a
// login, or after a LUN changed) is sent again, as any initiator does.
func (s *Session) command(cdb [16]byte, into []byte) error {
	for range 4 {
		err := s.command1(cdb, into)
		var se *SCSIError
		if !errors.As(err, &se) || se.Status != 0x02 || se.SenseKey != 0x6 {
			return err
		}
	}
	return errors.New("UNIT ATTENTION four times in a row")
}

func (s *Session) command1(cdb [16]byte, into []byte) error {
	itt := s.nextITT()
	c := scsiCommand{lun: s.lun, itt: itt, expectedLen: uint32(len(into)), cmdSN: s.cmdSN, expStatSN: s.expStatSN, cdb: cdb}
	if _, err := s.conn.Write(c.encode()); err != nil {
		return err
	}
	s.cmdSN++
	got := 0
	for {
		if err := s.readHeader(); err != nil {
			return err
		}
		switch s.hdr.opcode() {
		case opDataIn:
			if s.hdr.itt() != itt {
				return fmt.Errorf("Data-In for task 0x%x, want 0x%x", s.hdr.itt(), itt)
			}
			off, n := int(s.hdr.u32(40)), s.hdr.dataLen()
			if off < 0 || off+n > len(into) {
				return fmt.Errorf("Data-In of %d bytes at offset %d past the %d-byte buffer", n, off, len(into))
			}
			// Straight into the caller's buffer, then the padding.
			if _, err := io.ReadFull(s.r, into[off:off+n]); err != nil {
				return err
			}
			if pad := pad4(n) - n; pad > 0 {
				if _, err := s.r.Discard(pad); err != nil {
					return err
				}
			}
			got += n
			s.window(s.hdr.u32(28), s.hdr.u32(32))
			if f := s.hdr.flags(); f&0x01 != 0 { // S: status in this PDU
				s.expStatSN = s.hdr.u32(24) + 1
				if st := s.hdr[3]; st != 0 {
					return &SCSIError{Status: st}
				}
				return s.residual(f, got, len(into))
			}
		case opSCSIResp:
			data, err := s.readData()
			if err != nil {
				return err
			}
			if s.hdr.itt() != itt {
				return fmt.Errorf("SCSI response for task 0x%x, want 0x%x", s.hdr.itt(), itt)
			}
			s.expStatSN = s.hdr.u32(24) + 1
			s.window(s.hdr.u32(28), s.hdr.u32(32))
			if s.hdr[2] != 0 {
				return &SCSIError{Response: s.hdr[2]}
			}
			if st := s.hdr[3]; st != 0 {
				e := &SCSIError{Status: st}
				e.SenseKey, e.ASC, e.Q = parseSense(data)
				return e
			}
			return s.residual(s.hdr.flags(), got, len(into))
		default:
			if err := s.unsolicited(); err != nil {
				return err
			}
		}
	}
}

// residual checks that an underflow was not a short read.
func (s *Session) residual(flags byte, got, want int) error {
	if flags&0x02 != 0 || got < want { // U
		return fmt.Errorf("short read: %d of %d bytes", got, want)
	}
	return nil
}

func (s *Session) window(expCmdSN, maxCmdSN uint32) {
	if int32(maxCmdSN-expCmdSN) >= -1 {
		s.maxCmdSN = maxCmdSN
	}
}

func (s *Session) readHeader() error {
	if _, err := io.ReadFull(s.r, s.hdr[:]); err != nil {
		return err
	}
	if n := s.hdr.ahsLen(); n > 0 {
		if _, err := s.r.Discard(n); err != nil {
			return err
		}
	}
	return nil
}

// readData reads the data segment of the header just read.
func (s *Session) readData() ([]byte, error) {
	n := pad4(s.hdr.dataLen())
	if n > 16<<20 {
		return nil, fmt.Errorf("data segment of %d bytes", n)
	}
	if cap(s.scratch) < n {
		s.scratch = make([]byte, n)
	}
	b := s.scratch[:n]
	if _, err := io.ReadFull(s.r, b); err != nil {
		return nil, err
	}
	return b[:s.hdr.dataLen()], nil
}

// unsolicited handles a PDU the target sent on its own: a NOP-In ping is
// answered, an asynchronous message or a reject ends the command.
func (s *Session) unsolicited() error {
	op := s.hdr.opcode()
	if _, err := s.readData(); err != nil {
		return err
	}
	switch op {
	case opNOPIn:
		if ttt := s.hdr.u32(20); ttt != 0xffffffff {
			lun := append([]byte(nil), s.hdr[8:16]...)
			_, err := s.conn.Write(nopOut(ttt, lun, s.cmdSN, s.expStatSN))
			return err
		}
		return nil
	case opAsync:
		return fmt.Errorf("asynchronous message from the target (event %d)", s.hdr[36])
	case opReject:
		return fmt.Errorf("the target rejected a PDU (reason 0x%02x)", s.hdr[2])
	case opR2T:
		return errors.New("R2T for a read")
	}
	return fmt.Errorf("unexpected PDU opcode 0x%02x", op)
}

// Logout closes the session (reason 0) and the connection.
func (s *Session) Logout(ctx context.Context) error {
	defer s.conn.Close()
	stop := s.bind(ctx)
	defer stop()
	if _, err := s.conn.Write(logoutRequest(s.nextITT(), 0, s.cmdSN, s.expStatSN)); err != nil {
		return err
	}
	for {
		if err := s.readHeader(); err != nil {
			return err
		}
		if s.hdr.opcode() != opLogoutResp {
			if err := s.unsolicited(); err != nil {
				return err
			}
			continue
		}
		if _, err := s.readData(); err != nil {
			return err
		}
		if r := s.hdr[2]; r != 0 {
			return fmt.Errorf("logout response 0x%02x", r)
		}
		return nil
	}
}

// Close drops the connection without logging out.
func (s *Session) Close() error { return s.conn.Close() }

// TSIH is the session's target-assigned identifying handle.
func (s *Session) TSIH() uint16 { return s.tsih }
