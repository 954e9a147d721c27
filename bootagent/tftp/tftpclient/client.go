// Package tftpclient is a small TFTP read client for tests and benchmarks of
// the boot agent's server. Unlike pin/tftp's client it negotiates the
// windowsize option (RFC 7440) and receives the way EDK2's PXE client
// (Mtftp4Dxe) does: one ACK per window, and an ACK of the last block in
// order as soon as a block arrives out of order or the timeout passes. It
// also reports what the server negotiated and how the blocks arrived.
package tftpclient

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"strconv"
	"time"
)

// Options of a read request. Option values are sent as given ("" leaves the
// option out), so tests can send malformed ones.
type Options struct {
	BlockSize  string // blksize (RFC 2348)
	WindowSize string // windowsize (RFC 7440)
	TSize      bool   // tsize 0 (RFC 2349)
	Timeout    time.Duration
	Retries    int
	// Drop, when set, is asked for every DATA packet that arrives, with
	// its block number and how many times that number arrived before; true
	// discards it as if it were lost.
	Drop func(block uint16, seen int) bool
	// DuplicateACKs sends every ACK twice.
	DuplicateACKs bool
}

// Result of a transfer.
type Result struct {
	Data       []byte
	OACK       map[string]string // nil if the server answered with DATA
	BlockSize  int               // negotiated
	WindowSize int               // negotiated
	Packets    int               // DATA packets received, dropped and duplicates included
	Duplicates int               // DATA packets of a block already received
	ACKs       int               // ACKs sent, the one of the OACK included
	Timeouts   int               // times the client's timeout passed
	MaxAhead   int               // most blocks received beyond the last ACKed one
	Duration   time.Duration     // from the request to the last ACK
}

// Get reads name from server (host:port).
func Get(server, name string, o Options) (*Result, error) {
	if o.Timeout == 0 {
		o.Timeout = time.Second
	}
	if o.Retries == 0 {
		o.Retries = 3
	}
	raddr, err := net.ResolveUDPAddr("udp4", server)
	if err != nil {
		return nil, err
	}
	conn, err := net.ListenUDP("udp4", nil)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	rq := binary.BigEndian.AppendUint16(nil, 1)
	rq = append(append(rq, name...), 0)
	rq = append(rq, "octet\x00"...)
	for _, kv := range [][2]string{{"blksize", o.BlockSize}, {"windowsize", o.WindowSize}} {
		if kv[1] != "" {
			rq = append(append(append(append(rq, kv[0]...), 0), kv[1]...), 0)
		}
	}
	if o.TSize {
		rq = append(rq, "tsize\x000\x00"...)
	}

	res := &Result{BlockSize: 512, WindowSize: 1}
	start := time.Now()
	var peer *net.UDPAddr
	buf := make([]byte, 65536)
	ack := func(block uint16) error {
		p := binary.BigEndian.AppendUint16(nil, 4)
		p = binary.BigEndian.AppendUint16(p, block)
		for range 1 + btoi(o.DuplicateACKs) {
			if _, err := conn.WriteToUDP(p, peer); err != nil {
				return err
			}
		}
		res.ACKs++
		return nil
	}
	// read returns the next packet from the server's transfer port.
	read := func() ([]byte, error) {
		_ = conn.SetReadDeadline(time.Now().Add(o.Timeout))
		for {
			n, from, err := conn.ReadFromUDP(buf)
			if err != nil {
				return nil, err
			}
			if peer == nil && from.IP.Equal(raddr.IP) {
				peer = from
			}
			if peer != nil && from.Port == peer.Port && from.IP.Equal(peer.IP) && n >= 4 {
				return buf[:n], nil
			}
		}
	}

	// The request, until the first answer.
	var first []byte
	for try := 0; ; try++ {
		if _, err := conn.WriteToUDP(rq, raddr); err != nil {
			return nil, err
		}
		first, err = read()
		if err == nil {
			break
		}
		if !isTimeout(err) || try >= o.Retries {
			return nil, err
		}
		res.Timeouts++
	}
	expected := uint16(1) // next block in order
	switch op := binary.BigEndian.Uint16(first); op {
	case 6: // OACK
		res.OACK = map[string]string{}
		f := bytes.Split(first[2:], []byte{0})
		for i := 0; i+1 < len(f); i += 2 {
			res.OACK[string(f[i])] = string(f[i+1])
		}
		if v, ok := res.OACK["blksize"]; ok {
			if res.BlockSize, err = strconv.Atoi(v); err != nil {
				return nil, fmt.Errorf("OACK blksize %q", v)
			}
		}
		if v, ok := res.OACK["windowsize"]; ok {
			if res.WindowSize, err = strconv.Atoi(v); err != nil || res.WindowSize < 1 {
				return nil, fmt.Errorf("OACK windowsize %q", v)
			}
		}
		if err := ack(0); err != nil {
			return nil, err
		}
		first = nil
	case 3: // DATA: the server ignored every option
	case 5:
		return nil, fmt.Errorf("TFTP error %d: %s", binary.BigEndian.Uint16(first[2:]), bytes.TrimRight(first[4:], "\x00"))
	default:
		return nil, fmt.Errorf("unexpected opcode %d", op)
	}

	var data bytes.Buffer
	seen := map[uint16]int{}
	inWindow := 0 // blocks received in order since the last ACK
	retries := 0
	for {
		p := first
		first = nil
		if p == nil {
			p, err = read()
			if err != nil {
				if !isTimeout(err) || retries >= o.Retries {
					return nil, fmt.Errorf("waiting for block %d: %w", expected, err)
				}
				retries++
				res.Timeouts++
				inWindow = 0
				if err := ack(expected - 1); err != nil {
					return nil, err
				}
				continue
			}
		}
		switch binary.BigEndian.Uint16(p) {
		case 5:
			return nil, fmt.Errorf("TFTP error %d: %s", binary.BigEndian.Uint16(p[2:]), bytes.TrimRight(p[4:], "\x00"))
		case 3:
		default:
			continue
		}
		block := binary.BigEndian.Uint16(p[2:])
		res.Packets++
		n := seen[block]
		seen[block]++
		if o.Drop != nil && o.Drop(block, n) {
			continue
		}
		if ahead := int(block - (expected - 1 - uint16(inWindow))); ahead > res.MaxAhead && ahead <= 65535/2 {
			res.MaxAhead = ahead
		}
		if block != expected {
			if behind := expected - 1 - block; behind < 1<<15 {
				res.Duplicates++ // a block received before
			}
			// Out of order: say at once where the server has to resume.
			inWindow = 0
			if err := ack(expected - 1); err != nil {
				return nil, err
			}
			continue
		}
		retries = 0
		payload := p[4:]
		data.Write(payload)
		expected++
		inWindow++
		if len(payload) < res.BlockSize {
			if err := ack(block); err != nil {
				return nil, err
			}
			res.Data = data.Bytes()
			res.Duration = time.Since(start)
			return res, nil
		}
		if inWindow == res.WindowSize {
			inWindow = 0
			if err := ack(block); err != nil {
				return nil, err
			}
		}
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}
