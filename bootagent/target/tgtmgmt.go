package target

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"os"
	"strconv"
	"strings"
	"time"
)

// tgtd's management protocol, as tgtadm speaks it (tgt usr/tgtadm.h,
// usr/tgtadm.c, usr/mgmt.c; unchanged from 1.0.85, Debian bookworm's, to
// 1.0.97). One request per connection on the Unix socket
// "/var/run/tgtd/socket.<control port>" (a path, not the abstract namespace;
// $TGT_IPC_SOCKET replaces the prefix): a struct tgtadm_req in host byte
// order whose len counts the header and the NUL-terminated text parameters
// after it ("name=value" joined by ","); then tgtd answers a struct
// tgtadm_rsp {err, len} and, when len exceeds the header, the text of a show
// (NUL-terminated) and closes. tgtd accepts only peers of its own uid and gid.
//
// Speaking it from Go keeps CHAP secrets off every process's command line:
// tgtadm would take them as --password arguments.

const (
	tgtSocketDefault = "/var/run/tgtd/socket"
	tgtLLDLen        = 64
	// tgtReqSize is sizeof(struct tgtadm_req) on Linux (LP64 and ILP32 alike:
	// the 64-bit fields fall on 8-byte offsets).
	tgtReqSize = 120
	tgtRspSize = 8
	// tgtMaxParams is MAX_MGT_BUFSIZE: tgtd drops longer requests.
	tgtMaxParams = 8 * 1024
	// tgtNoLUN is what tgtadm sends without --lun.
	tgtNoLUN = math.MaxUint64
	// tgtTimeout bounds a request when ctx has no deadline: tgtd is one
	// event loop and answers at once or is hung.
	tgtTimeout = 10 * time.Second
)

// tgtMode is enum tgtadm_mode.
type tgtMode uint32

const (
	modeSystem tgtMode = iota
	modeTarget
	modeDevice
	modePortal
	modeLLD
	modeSession
	modeConnection
	modeAccount
)

func (m tgtMode) String() string {
	names := [...]string{"system", "target", "logicalunit", "portal", "lld", "session", "connection", "account"}
	if int(m) < len(names) {
		return names[m]
	}
	return "mode" + strconv.Itoa(int(m))
}

// tgtOp is enum tgtadm_op.
type tgtOp uint32

const (
	opNew tgtOp = iota
	opDelete
	opShow
	opBind
	opUnbind
	opUpdate
	opStats
	opStart
	opStop
)

func (o tgtOp) String() string {
	names := [...]string{"new", "delete", "show", "bind", "unbind", "update", "stat", "start", "stop"}
	if int(o) < len(names) {
		return names[o]
	}
	return "op" + strconv.Itoa(int(o))
}

// Account directions (enum tgtadm_account_dir).
const (
	accountIncoming = 0
	accountOutgoing = 1
)

// tgtErrors are tgtadm's words for enum tgtadm_errno.
var tgtErrors = [...]string{
	"success", "unknown error", "out of memory", "can't find the driver", "can't find the target",
	"can't find the logical unit", "can't find the session", "can't find the connection", "can't find the binding",
	"this target already exists", "this logical unit number already exists", "this binding already exists",
	"this access control rule already exists", "this access control rule does not exist",
	"this account already exists", "can't find the account", "too many accounts", "invalid request",
	"this target already has an outgoing account", "this target is still active", "this logical unit is still active",
	"this driver is busy", "this operation isn't supported", "unknown parameter", "this device has Prevent Removal set",
}

// Codes the driver tells apart.
const (
	tgtErrNoTarget = 4
	tgtErrNoUser   = 15
	tgtErrNoACL    = 13
)

// TGTError is tgtd's refusal of a request. It names the request by mode,
// operation, target id and the parameters that are not secret.
type TGTError struct {
	Mode, Op string
	TID      int
	// Detail names the object (IQN, user, path); never a password.
	Detail string
	Code   uint32
}

func (e *TGTError) Error() string {
	msg := "tgtd error " + strconv.Itoa(int(e.Code))
	if int(e.Code) < len(tgtErrors) {
		msg = tgtErrors[e.Code]
	}
	s := "tgtd " + e.Mode + " " + e.Op
	if e.TID > 0 {
		s += " tid " + strconv.Itoa(e.TID)
	}
	if e.Detail != "" {
		s += " " + e.Detail
	}
	return s + ": " + msg
}

// tgtCode is tgtd's error code in err, or -1.
func tgtCode(err error) int {
	var te *TGTError
	if errors.As(err, &te) {
		return int(te.Code)
	}
	return -1
}

// tgtRequest is one request. Params are "name=value" pairs in tgtadm's
// order; secret marks a value that must not appear in errors.
type tgtRequest struct {
	mode tgtMode
	op   tgtOp
	// tid 0 is sent as -1, tgtadm's value without --tid (all targets for a
	// show).
	tid      int
	sid      uint64
	lun      uint64
	cid      uint32
	force    bool
	outgoing bool
	params   []tgtParam
}

type tgtParam struct {
	name, value string
	secret      bool
}

// encode lays the request out as tgtd reads it.
func (r tgtRequest) encode() ([]byte, error) {
	var body []byte
	for i, p := range r.params {
		if i > 0 {
			body = append(body, ',')
		}
		body = append(body, p.name...)
		body = append(body, '=')
		body = append(body, p.value...)
	}
	if len(body) > 0 {
		body = append(body, 0) // tgtd parses it as a C string
	}
	if len(body) > tgtMaxParams {
		return nil, fmt.Errorf("tgtd %s %s: parameters longer than %d bytes", r.mode, r.op, tgtMaxParams)
	}
	b := make([]byte, tgtReqSize, tgtReqSize+len(body))
	ne := binary.NativeEndian
	ne.PutUint32(b[0:], uint32(r.mode))
	ne.PutUint32(b[4:], uint32(r.op))
	copy(b[8:8+tgtLLDLen-1], "iscsi")
	ne.PutUint32(b[72:], uint32(tgtReqSize+len(body)))
	tid := r.tid
	if tid == 0 {
		tid = -1 // tgtadm's "no --tid"; tgtd has no target 0
	}
	ne.PutUint32(b[76:], uint32(int32(tid)))
	ne.PutUint64(b[80:], r.sid)
	ne.PutUint64(b[88:], r.lun)
	ne.PutUint32(b[96:], r.cid)
	// host_no (100), device_type (104: TYPE_DISK is 0).
	if r.outgoing {
		ne.PutUint32(b[108:], accountOutgoing)
	}
	// pack (112).
	if r.force {
		ne.PutUint32(b[116:], 1)
	}
	return append(b, body...), nil
}

// describe names the request for errors, leaving secret values out.
func (r tgtRequest) describe() string {
	var parts []string
	for _, p := range r.params {
		if !p.secret {
			parts = append(parts, p.name+"="+p.value)
		}
	}
	if r.sid != 0 || r.cid != 0 {
		parts = append(parts, fmt.Sprintf("sid=%d cid=%d", r.sid, r.cid))
	}
	if r.outgoing {
		parts = append(parts, "outgoing")
	}
	return strings.Join(parts, " ")
}

// tgtClient sends requests to one tgtd.
type tgtClient struct {
	// path is the management socket.
	path string
}

func newTGTClient(prefix string, controlPort int) tgtClient {
	if prefix == "" {
		prefix = os.Getenv("TGT_IPC_SOCKET")
	}
	if prefix == "" {
		prefix = tgtSocketDefault
	}
	return tgtClient{path: prefix + "." + strconv.Itoa(controlPort)}
}

// do sends one request and returns the text tgtd answers with.
func (c tgtClient) do(ctx context.Context, r tgtRequest) (string, error) {
	if r.lun == 0 && r.mode != modeDevice {
		r.lun = tgtNoLUN
	}
	msg, err := r.encode()
	if err != nil {
		return "", err
	}
	fail := func(err error) (string, error) {
		return "", fmt.Errorf("tgtd %s %s %s: %w", r.mode, r.op, r.describe(), err)
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", c.path)
	if err != nil {
		return fail(err)
	}
	defer conn.Close()
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = time.Now().Add(tgtTimeout)
	}
	_ = conn.SetDeadline(deadline)
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Now()) })
	defer stop()

	if _, err := conn.Write(msg); err != nil {
		return fail(err)
	}
	var hdr [tgtRspSize]byte
	if _, err := io.ReadFull(conn, hdr[:]); err != nil {
		return fail(fmt.Errorf("reading the answer: %w", err))
	}
	code := binary.NativeEndian.Uint32(hdr[0:])
	n := binary.NativeEndian.Uint32(hdr[4:])
	if code != 0 {
		return "", &TGTError{Mode: r.mode.String(), Op: r.op.String(), TID: r.tid, Detail: r.describe(), Code: code}
	}
	if n <= tgtRspSize {
		return "", nil
	}
	if n > 64<<20 {
		return fail(fmt.Errorf("answer of %d bytes", n))
	}
	body := make([]byte, n-tgtRspSize)
	if _, err := io.ReadFull(conn, body); err != nil {
		return fail(fmt.Errorf("reading the answer: %w", err))
	}
	if i := strings.IndexByte(string(body), 0); i >= 0 {
		body = body[:i]
	}
	return string(body), nil
}
