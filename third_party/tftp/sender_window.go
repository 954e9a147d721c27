package tftp

import (
	"encoding/binary"
	"fmt"
	"io"
	"net"
)

// maxWindowSize is the largest windowsize RFC 7440 allows.
const maxWindowSize = 65535

// maxWindowBytes bounds the data of a window a transfer holds: the window
// granted is also at most this over the block size (2 blocks of 65464, 89
// of 1468).
const maxWindowBytes = 128 << 10

// parseWindowSize parses a windowsize option value: decimal digits only, no
// sign or spaces, between 1 and 65535 (RFC 7440, section 3).
func parseWindowSize(v string) (int, error) {
	if len(v) == 0 || len(v) > 5 {
		return 0, fmt.Errorf("windowsize %q: not 1 to 5 digits", v)
	}
	n := 0
	for _, c := range []byte(v) {
		if c < '0' || c > '9' {
			return 0, fmt.Errorf("windowsize %q: not a decimal number", v)
		}
		n = n*10 + int(c-'0')
	}
	if n < 1 || n > maxWindowSize {
		return 0, fmt.Errorf("windowsize %d: out of range 1..%d", n, maxWindowSize)
	}
	return n, nil
}

// readFromWindow sends r with the negotiated windowsize (RFC 7440): up to
// s.windowSize DATA packets, then it waits for an ACK. An ACK of block k in
// the window acknowledges every block up to k; the next window starts at
// k+1, so an ACK of a block before the window's last is also how the
// receiver asks for the rest again. ACKs of blocks before the window
// (duplicates, stale ones) are ignored: answering them would resend a
// window the receiver may already have, and the receiver's ACKs of those
// duplicates would again be answered (the Sorcerer's Apprentice). If no
// ACK comes within the timeout, the window is sent again, up to s.retries
// times. The transfer ends when the last block, the first one shorter than
// the block size, is acknowledged.
func (s *sender) readFromWindow(r io.Reader) (n int64, err error) {
	blk := len(s.send) - 4
	w := s.windowSize
	free := make([][]byte, w)
	for i := range free {
		free[i] = make([]byte, 4+blk)
		binary.BigEndian.PutUint16(free[i][0:2], opDATA)
	}
	win := make([][]byte, 0, w) // win[i] is block s.block+i, ready to send
	last := false               // win holds the last block
	s.block = 1                 // the first block not yet acknowledged
	fill := func() error {
		for len(win) < w && !last {
			b := free[len(free)-1]
			free = free[:len(free)-1]
			l, err := io.ReadFull(r, b[4:])
			if err != nil && err != io.ErrUnexpectedEOF && err != io.EOF {
				return err
			}
			n += int64(l)
			binary.BigEndian.PutUint16(b[2:4], s.block+uint16(len(win)))
			win = append(win, b[:4+l])
			last = l < blk
		}
		return nil
	}
	s.retry.reset()
	for {
		if err := fill(); err != nil {
			s.abort(err)
			return n, err
		}
		acked, err := s.sendWindow(win)
		if err != nil {
			if _, ok := err.(net.Error); ok && s.retry.count() < s.retries {
				s.retry.backoff()
				continue
			}
			s.abort(err)
			return n, err
		}
		s.retry.reset()
		if last && acked == len(win) {
			if s.hook != nil {
				s.hook.OnSuccess(s.buildTransferStats())
			}
			return n, nil
		}
		for _, b := range win[:acked] {
			free = append(free, b[:cap(b)])
		}
		win = append(win[:0], win[acked:]...)
		s.block += uint16(acked)
	}
}

// sendWindow sends the packets of win, then returns how many of them the
// receiver acknowledged, at least one.
func (s *sender) sendWindow(win [][]byte) (int, error) {
	if err := s.conn.setDeadline(s.timeout); err != nil {
		return 0, err
	}
	for _, p := range win {
		if err := s.conn.sendTo(p, s.addr); err != nil {
			return 0, err
		}
		s.datagramsSent++
	}
	for {
		n, addr, err := s.conn.readFrom(s.receive)
		if err != nil {
			return 0, err
		}
		if !addr.IP.Equal(s.addr.IP) || (s.tid != 0 && addr.Port != s.tid) {
			continue
		}
		p, err := parsePacket(s.receive[:n])
		if err != nil {
			continue
		}
		switch p := p.(type) {
		case pACK:
			// Blocks acknowledged counting from the window's first one
			// (block numbers wrap at 65535).
			k := int(p.block() - (s.block - 1))
			if k >= 1 && k <= len(win) {
				s.datagramsAcked++
				return k, nil
			}
		case pERROR:
			return 0, fmt.Errorf("sending block %d: code=%d, error: %s",
				s.block, p.code(), p.message())
		}
	}
}
