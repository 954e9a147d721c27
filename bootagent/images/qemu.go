package images

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"

	bootv1 "github.com/ggnet/ggnet/api/v1alpha1"
)

// An image from outside is untrusted input to qemu-img, a large C parser
// that would follow the references an image holds: a qcow2 backing file or
// external data file, VMDK extents, each any file on the node. So:
//
//   - its header is read first, in Go, and an image that refers to other
//     files is refused before qemu-img sees it (checkHeader);
//   - qemu-img info --output=json (the format given with -f, never probed)
//     is checked next: a backing file, a data file, an extent other than the
//     image itself, or a virtual size over the cap is refused (checkInfo);
//   - qemu-img runs as nobody (when the agent is root), reaching the image
//     and its output only through the descriptors it is given (/dev/fd/3 and
//     /dev/fd/4, in a directory only root can enter), under prlimit(1):
//     address space, CPU time, file size (the virtual size), no core dumps;
//     and it is killed at a timeout, or when the agent dies.
//
// No secret is ever on its command line or in its environment.

// Qemu says how qemu-img runs.
type Qemu struct {
	// Command is qemu-img.
	Command string
	// Prlimit is prlimit(1) from util-linux.
	Prlimit string
	// UID and GID qemu-img runs as when the agent is root (nobody); a
	// negative UID keeps the agent's.
	UID, GID int
	// AddressSpace caps its virtual memory in bytes.
	AddressSpace uint64
	// InfoTimeout bounds qemu-img info.
	InfoTimeout time.Duration
	// ConvertTimeout bounds a conversion: ConvertTimeout plus ConvertPerGiB
	// for each GiB of the virtual size; its CPU time is capped the same.
	ConvertTimeout, ConvertPerGiB time.Duration
}

// DefaultQemu is qemu-img as nobody with 4 GiB of address space, 30 s for
// info and 30 min + 10 s per GiB for a conversion (about 2 h for 512 GiB).
func DefaultQemu() Qemu {
	return Qemu{Command: "qemu-img", Prlimit: "prlimit", UID: 65534, GID: 65534, AddressSpace: 4 << 30,
		InfoTimeout: 30 * time.Second, ConvertTimeout: 30 * time.Minute, ConvertPerGiB: 10 * time.Second}
}

// dropsPrivileges reports whether qemu-img runs as q.UID: the agent is root
// with CAP_SETUID and CAP_SETGID. Without them (a container whose
// capabilities were all dropped) it runs as the agent's user, its input
// checked all the same.
func (q Qemu) dropsPrivileges() bool {
	return q.UID >= 0 && os.Geteuid() == 0 && setIDCapable(procStatus())
}

// Sandbox says whom qemu-img runs as, for the agent's log at start.
func (q Qemu) Sandbox() string {
	switch {
	case q.dropsPrivileges():
		return fmt.Sprintf("qemu-img runs as uid %d under prlimit", q.UID)
	case q.UID >= 0 && os.Geteuid() == 0:
		return "qemu-img runs as root under prlimit: give the storage agent CAP_SETUID and CAP_SETGID to run it as nobody"
	default:
		return fmt.Sprintf("qemu-img runs as uid %d (the agent's) under prlimit", os.Geteuid())
	}
}

func procStatus() string {
	b, _ := os.ReadFile("/proc/self/status")
	return string(b)
}

// setIDCapable reports whether a /proc/<pid>/status shows CAP_SETGID (6)
// and CAP_SETUID (7) effective.
func setIDCapable(status string) bool {
	for _, line := range strings.Split(status, "\n") {
		if v, ok := strings.CutPrefix(line, "CapEff:"); ok {
			caps, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			return err == nil && caps&(1<<6|1<<7) == 1<<6|1<<7
		}
	}
	return false
}

// run runs qemu-img with args, files as descriptors 3, 4, ..., and a file
// size limit; it returns stdout, or an error with stderr.
func (q Qemu) run(ctx context.Context, timeout time.Duration, fsize int64, files []*os.File, args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	limits := []string{
		"--as=" + strconv.FormatUint(q.AddressSpace, 10),
		"--cpu=" + strconv.Itoa(int(timeout/time.Second)+1),
		"--fsize=" + strconv.FormatInt(fsize, 10),
		"--core=0", "--nofile=256",
		"--", q.Command,
	}
	cmd := exec.CommandContext(ctx, q.Prlimit, append(limits, args...)...)
	cmd.ExtraFiles = files
	cmd.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL=C"}
	cmd.Dir = "/"
	cmd.WaitDelay = 5 * time.Second
	// prlimit execs qemu-img: one process, killed with the agent, or with
	// its process group at the timeout.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	if q.dropsPrivileges() {
		cmd.SysProcAttr.Credential = &syscall.Credential{Uid: uint32(q.UID), Gid: uint32(q.GID), Groups: []uint32{}}
	}
	stdout := &capped{max: 4 << 20}
	stderr := &capped{max: 64 << 10}
	cmd.Stdout, cmd.Stderr = stdout, stderr
	err := cmd.Run()
	if err != nil {
		msg := strings.TrimSpace(stderr.String())
		switch {
		case ctx.Err() == context.DeadlineExceeded:
			msg = fmt.Sprintf("timed out after %s", timeout)
		case msg == "":
			msg = err.Error()
		}
		return stdout.Bytes(), errors.New(msg)
	}
	return stdout.Bytes(), nil
}

// capped keeps the first max bytes written to it.
type capped struct {
	bytes.Buffer
	max int
}

func (c *capped) Write(p []byte) (int, error) {
	if room := c.max - c.Len(); room > 0 {
		c.Buffer.Write(p[:min(len(p), room)])
	}
	return len(p), nil
}

// qemuInfo is what the checks read of qemu-img info --output=json.
type qemuInfo struct {
	VirtualSize         int64  `json:"virtual-size"`
	Filename            string `json:"filename"`
	Format              string `json:"format"`
	BackingFilename     string `json:"backing-filename"`
	FullBackingFilename string `json:"full-backing-filename"`
	FormatSpecific      struct {
		Type string `json:"type"`
		Data struct {
			DataFile string `json:"data-file"`
			Extents  []struct {
				Filename string `json:"filename"`
			} `json:"extents"`
		} `json:"data"`
	} `json:"format-specific"`
}

// info runs qemu-img info on the open image, with its format given.
func (q Qemu) info(ctx context.Context, image *os.File, format string) (qemuInfo, error) {
	out, err := q.run(ctx, q.InfoTimeout, 0, []*os.File{image}, "info", "--output=json", "-f", format, "/dev/fd/3")
	if err != nil {
		return qemuInfo{}, fail(ReasonConvertFailed, "qemu-img info (format %s): %v", format, err)
	}
	var info qemuInfo
	if err := json.Unmarshal(out, &info); err != nil {
		return qemuInfo{}, fail(ReasonConvertFailed, "qemu-img info (format %s): %v", format, err)
	}
	return info, nil
}

// checkInfo refuses an image that refers to any file but itself (named
// self in the info), or whose virtual size is over limit.
func checkInfo(info qemuInfo, self string, limit int64) error {
	if b := firstNonEmpty(info.BackingFilename, info.FullBackingFilename); b != "" {
		return fail(ReasonUnsafeImage, "backing file %s is not allowed: an image must be one self-contained file", printable(b))
	}
	if d := info.FormatSpecific.Data.DataFile; d != "" {
		return fail(ReasonUnsafeImage, "external data file %s is not allowed: an image must be one self-contained file", printable(d))
	}
	for _, e := range info.FormatSpecific.Data.Extents {
		if e.Filename != self {
			return fail(ReasonUnsafeImage, "VMDK extent %s is not allowed: give a single-file VMDK (monolithicSparse or streamOptimized)", printable(e.Filename))
		}
	}
	if info.VirtualSize <= 0 {
		return fail(ReasonConvertFailed, "qemu-img info reports no virtual size")
	}
	if limit > 0 && info.VirtualSize > limit {
		return fail(ReasonTooLarge, "the virtual size is %s, over the Image's maxVirtualSize of %s", gib(info.VirtualSize), gib(limit))
	}
	return nil
}

func firstNonEmpty(s ...string) string {
	for _, v := range s {
		if v != "" {
			return v
		}
	}
	return ""
}

// printable quotes a name from an untrusted image for a message.
func printable(s string) string {
	if len(s) > 256 {
		s = s[:256] + "..."
	}
	q := strconv.Quote(s)
	if q == `"`+s+`"` && !strings.ContainsAny(s, " ") {
		return s
	}
	return q
}

// checkHeader reads the image's header and refuses, before qemu-img reads
// it, a qcow2 with a backing file or an external data file and a VMDK whose
// data lives in other files (a descriptor file, or a sparse header that
// defers to an embedded descriptor). Formats and headers it does not know
// are left to qemu-img info and checkInfo.
func checkHeader(f *os.File, format string) error {
	head := make([]byte, 4096)
	n, err := f.ReadAt(head, 0)
	if err != nil && !errors.Is(err, io.EOF) {
		return err
	}
	head = head[:n]
	switch format {
	case "qcow2":
		return checkQCOW2(f, head)
	case "vmdk":
		return checkVMDK(f, head)
	}
	return nil
}

func checkQCOW2(f *os.File, head []byte) error {
	if len(head) < 72 || string(head[:4]) != "QFI\xfb" {
		return nil // not a qcow2: qemu-img says so
	}
	be := binary.BigEndian
	if off, size := be.Uint64(head[8:]), be.Uint32(head[16:]); off != 0 {
		name := make([]byte, min(size, 1023))
		n, _ := f.ReadAt(name, int64(off))
		return fail(ReasonUnsafeImage, "backing file %s is not allowed: an image must be one self-contained file", printable(string(name[:n])))
	}
	const externalDataFile = 1 << 2
	if be.Uint32(head[4:]) >= 3 && len(head) >= 80 && be.Uint64(head[72:])&externalDataFile != 0 {
		return fail(ReasonUnsafeImage, "an external data file is not allowed: an image must be one self-contained file")
	}
	return nil
}

var extentLine = regexp.MustCompile(`(?m)^\s*(?:RW|RDONLY|NOACCESS)\s+\d+\s+\w+\s+"([^"]*)"`)

func checkVMDK(f *os.File, head []byte) error {
	switch {
	case len(head) >= 20 && string(head[:4]) == "KDMV":
		if binary.LittleEndian.Uint64(head[12:]) == 0 {
			return fail(ReasonUnsafeImage, "a VMDK whose sparse header defers to a descriptor of extents is not allowed: "+
				"give a single-file VMDK (monolithicSparse or streamOptimized)")
		}
		return nil
	case len(head) >= 4 && string(head[:4]) == "COWD":
		return nil
	}
	desc := make([]byte, 64<<10)
	n, _ := f.ReadAt(desc, 0)
	if m := extentLine.FindSubmatch(desc[:n]); m != nil {
		return fail(ReasonUnsafeImage, "VMDK extent %s is not allowed: a VMDK descriptor file keeps its data in other files; "+
			"give a single-file VMDK (monolithicSparse or streamOptimized)", printable(string(m[1])))
	}
	return fail(ReasonUnsafeImage, "not a single-file VMDK (no sparse header): give a monolithicSparse or streamOptimized VMDK")
}

// convert checks the image at src (header, then qemu-img info) and converts
// it to raw in a new temporary file beside it, whose name it returns (to be
// removed by the caller). The free space must hold the whole virtual size
// above the reserve before it starts, and is watched while it runs.
func (s *Store) convert(ctx context.Context, src, format string, limit int64, guard *spaceGuard, progress func(Progress)) (string, error) {
	in, err := os.Open(src)
	if err != nil {
		return "", err
	}
	defer in.Close()
	if err := checkHeader(in, format); err != nil {
		return "", err
	}
	s.slots()
	release, err := acquire(ctx, s.conversions)
	if err != nil {
		return "", err
	}
	defer release()
	q := s.Qemu
	if q.dropsPrivileges() {
		// Readable by qemu-img's user through its descriptor; the
		// directory keeps everyone else out.
		if err := in.Chmod(0o644); err != nil {
			return "", err
		}
	}
	info, err := q.info(ctx, in, format)
	if err != nil {
		return "", err
	}
	if err := checkInfo(info, "/dev/fd/3", limit); err != nil {
		return "", err
	}
	progress(Progress{State: bootv1.ReplicaConverting, Total: info.VirtualSize})
	if err := guard.need(info.VirtualSize); err != nil {
		return "", err
	}
	out, err := os.CreateTemp(filepath.Dir(src), tmpConvert+"*")
	if err != nil {
		return "", diskErr(err)
	}
	defer out.Close()
	name := out.Name()
	if err := out.Truncate(info.VirtualSize); err != nil {
		return name, diskErr(err)
	}
	if q.dropsPrivileges() {
		if err := out.Chmod(0o666); err != nil {
			return name, err
		}
	}
	cctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	go s.watchSpace(cctx, guard, cancel)
	timeout := q.ConvertTimeout + time.Duration(info.VirtualSize>>30)*q.ConvertPerGiB
	start := time.Now()
	_, err = q.run(cctx, timeout, info.VirtualSize, []*os.File{in, out},
		"convert", "-n", "--target-is-zero", "-f", format, "-O", "raw", "/dev/fd/3", "/dev/fd/4")
	if cause := context.Cause(cctx); err != nil && cause != nil && !errors.Is(cause, context.Canceled) {
		return name, cause
	}
	if err != nil {
		if ctx.Err() != nil {
			return name, ctx.Err()
		}
		if isNoSpace(err.Error()) {
			return name, fail(ReasonDiskFull, "converting to raw: %v", err)
		}
		return name, fail(ReasonConvertFailed, "qemu-img convert from %s: %v", format, err)
	}
	s.Log.Info("Converted image", "format", format, "virtualSize", info.VirtualSize, "duration", time.Since(start).String())
	return name, nil
}

// watchSpace cancels a conversion whose free space fell into the reserve.
func (s *Store) watchSpace(ctx context.Context, guard *spaceGuard, cancel context.CancelCauseFunc) {
	every := s.SpaceCheckInterval
	if every <= 0 {
		every = 5 * time.Second
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if room, err := guard.room(); err == nil && room < 0 {
			cancel(fail(ReasonDiskFull, "stopped converting: the free space fell to %s, below the %s reserved for running sessions",
				gib(max(room+int64(guard.reserve), 0)), gib(int64(guard.reserve))))
			return
		}
	}
}
