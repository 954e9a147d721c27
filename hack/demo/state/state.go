// Package state is the record `make demo KEEP=1` leaves of what it started
// and made, and what `make demo-down` reads to stop exactly that: each
// process by its id and start time (a pid the kernel has since given to
// another process is never signalled), the network namespace by its name
// and identity, the mounts and their loop devices, the directories. Nothing
// is ever found by a name pattern.
package state

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// Path is where the demo writes its state (root only: directory 0700, file
// 0600). /run is a tmpfs: a reboot, which ends the lab, removes it too.
const Path = "/run/ggnet-demo/state.json"

// State is what one kept demo started and made.
type State struct {
	// Netns is the network namespace's name (ip netns), NetnsID its
	// identity (the link /proc/<pid>/ns/net reads, "net:[<inode>]"): a
	// namespace of the same name made later by someone else is not ours.
	Netns   string `json:"netns"`
	NetnsID string `json:"netnsID"`
	// MountNS is the identity of the lab's mount namespace ("mnt:[<inode>]";
	// ip netns exec gives the lab one of its own, where its mounts live).
	MountNS string `json:"mountNS"`
	// Procs are the processes the demo started and left running.
	Procs []Proc `json:"procs"`
	// Mounts are the file systems the demo mounted, in its mount namespace.
	Mounts []Mount `json:"mounts"`
	// Dirs are the directories the demo made (its lab, the XFS image's,
	// envtest's etcd data and certificates), removed last.
	Dirs []string `json:"dirs"`
	// Links are the network interfaces inside the namespace (bridge, taps):
	// they go with it.
	Links []string `json:"links,omitempty"`
}

// Proc is a process by id and start time.
type Proc struct {
	Name string `json:"name"`
	PID  int    `json:"pid"`
	// StartTime is field 22 of /proc/<pid>/stat: clock ticks from boot to
	// the process's start. A reused pid has another.
	StartTime uint64 `json:"startTime"`
}

// Mount is a mount and, when it is on a loop device, that device and the
// file behind it.
type Mount struct {
	Point       string `json:"point"`
	Source      string `json:"source"`
	Loop        string `json:"loop,omitempty"`
	BackingFile string `json:"backingFile,omitempty"`
}

// Read reads the state at path; an error wrapping os.ErrNotExist when there
// is none.
func Read(path string) (*State, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return Parse(b)
}

// Parse decodes and checks a state.
func Parse(b []byte) (*State, error) {
	var s State
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&s); err != nil {
		return nil, fmt.Errorf("reading the demo's state: %w", err)
	}
	if err := s.Validate(); err != nil {
		return nil, err
	}
	return &s, nil
}

// Validate refuses a state that would have demo-down act on something it
// cannot name exactly: a pid of 1 or less, a process without start time, a
// relative or root directory or mount point, a namespace name with a slash.
func (s *State) Validate() error {
	if s.Netns != "" && (strings.ContainsAny(s.Netns, "/\x00") || s.Netns == "." || s.Netns == "..") {
		return fmt.Errorf("state: bad network namespace name %q", s.Netns)
	}
	for _, p := range s.Procs {
		if p.PID <= 1 || p.StartTime == 0 {
			return fmt.Errorf("state: process %q: pid %d, start time %d", p.Name, p.PID, p.StartTime)
		}
	}
	for _, m := range s.Mounts {
		if !safePath(m.Point) {
			return fmt.Errorf("state: bad mount point %q", m.Point)
		}
		if m.Loop != "" && (!strings.HasPrefix(m.Loop, "/dev/loop") || m.BackingFile == "") {
			return fmt.Errorf("state: bad loop device %q (backing file %q)", m.Loop, m.BackingFile)
		}
	}
	for _, d := range s.Dirs {
		if !safePath(d) {
			return fmt.Errorf("state: bad directory %q", d)
		}
	}
	return nil
}

// safePath is an absolute, clean path below a top-level directory.
func safePath(p string) bool {
	return filepath.IsAbs(p) && filepath.Clean(p) == p && strings.Count(p, "/") >= 2
}

// Write writes s to path atomically, readable by root only.
func Write(path string, s *State) error {
	if err := s.Validate(); err != nil {
		return err
	}
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, append(b, '\n'), 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// Stat is what demo-down needs of /proc/<pid>/stat.
type Stat struct {
	Comm      string
	State     byte
	PPID      int
	StartTime uint64
}

// ParseStat parses the content of /proc/<pid>/stat. The command name (field
// 2) is in parentheses and may itself hold spaces and parentheses: the
// fields after it are counted from the last ')'.
func ParseStat(b []byte) (Stat, error) {
	s := string(b)
	open, end := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
	if open < 0 || end < open {
		return Stat{}, fmt.Errorf("stat %q: no command name", s)
	}
	// Fields from 3 (state) on.
	f := strings.Fields(s[end+1:])
	if len(f) < 20 {
		return Stat{}, fmt.Errorf("stat %q: %d fields after the command name, want 20 or more", s, len(f))
	}
	st := Stat{Comm: s[open+1 : end]}
	if len(f[0]) != 1 {
		return Stat{}, fmt.Errorf("stat %q: state %q", s, f[0])
	}
	st.State = f[0][0]
	var err error
	if st.PPID, err = strconv.Atoi(f[1]); err != nil {
		return Stat{}, fmt.Errorf("stat %q: ppid: %w", s, err)
	}
	// Field 22 is the 20th after the command name.
	if st.StartTime, err = strconv.ParseUint(f[19], 10, 64); err != nil {
		return Stat{}, fmt.Errorf("stat %q: start time: %w", s, err)
	}
	return st, nil
}

// ReadStat reads /proc/<pid>/stat.
func ReadStat(pid int) (Stat, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return Stat{}, err
	}
	return ParseStat(b)
}

// Status is what became of a recorded process.
type Status int

const (
	// Running: the pid is the recorded process, still running.
	Running Status = iota
	// Gone: no process has the pid, or only a zombie (it ended).
	Gone
	// Reused: another process has the pid now.
	Reused
)

func (s Status) String() string {
	return [...]string{"running", "gone", "pid reused by another process"}[s]
}

// Check says what became of p, reading stat with read (ReadStat in
// production).
func (p Proc) Check(read func(pid int) (Stat, error)) Status {
	st, err := read(p.PID)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return Gone
	case err != nil:
		// Unreadable: not known to be ours, so never signalled.
		return Reused
	case st.StartTime != p.StartTime:
		return Reused
	case st.State == 'Z' || st.State == 'X':
		return Gone
	}
	return Running
}

// Descendants returns every process below root (children, their children,
// ...) with its start time, from a walk of /proc.
func Descendants(root int) ([]Proc, error) {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil, err
	}
	children := map[int][]Proc{}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		st, err := ReadStat(pid)
		if err != nil || st.State == 'Z' || st.State == 'X' {
			continue
		}
		children[st.PPID] = append(children[st.PPID], Proc{Name: st.Comm, PID: pid, StartTime: st.StartTime})
	}
	return below(root, children), nil
}

// below lists the processes under root in children (by parent), parents
// before their children.
func below(root int, children map[int][]Proc) []Proc {
	var out []Proc
	queue := []int{root}
	seen := map[int]bool{root: true}
	for len(queue) > 0 {
		pid := queue[0]
		queue = queue[1:]
		for _, c := range children[pid] {
			if !seen[c.PID] {
				seen[c.PID] = true
				out = append(out, c)
				queue = append(queue, c.PID)
			}
		}
	}
	return out
}

// MountInfo is a line of /proc/<pid>/mountinfo.
type MountInfo struct{ Point, Source string }

// ParseMountInfo parses /proc/<pid>/mountinfo: the mount point is field 5,
// the source the second field after the " - " separator; both have spaces,
// tabs, newlines and backslashes octal-escaped.
func ParseMountInfo(b []byte) []MountInfo {
	var out []MountInfo
	for _, line := range strings.Split(string(b), "\n") {
		pre, post, ok := strings.Cut(line, " - ")
		if !ok {
			continue
		}
		f, g := strings.Fields(pre), strings.Fields(post)
		if len(f) < 5 || len(g) < 2 {
			continue
		}
		out = append(out, MountInfo{Point: unescape(f[4]), Source: unescape(g[1])})
	}
	return out
}

func unescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// Under says whether path is dir or inside it.
func Under(path, dir string) bool {
	return path == dir || strings.HasPrefix(path, strings.TrimSuffix(dir, "/")+"/")
}

// LoopBacking returns the file behind a loop device (/dev/loopN), "" when
// it has none or is not a loop device.
func LoopBacking(dev string) string {
	b, err := os.ReadFile(filepath.Join("/sys/block", filepath.Base(dev), "loop", "backing_file"))
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

// LoopAutoclear says whether the kernel detaches a loop device once nothing
// holds it.
func LoopAutoclear(dev string) bool {
	b, err := os.ReadFile(filepath.Join("/sys/block", filepath.Base(dev), "loop", "autoclear"))
	return err == nil && strings.TrimSpace(string(b)) == "1"
}
