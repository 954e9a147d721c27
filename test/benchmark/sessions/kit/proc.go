package kit

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
)

// clockTicks is USER_HZ, the unit of /proc/<pid>/stat's times (100 on
// every Linux architecture Go runs on).
const clockTicks = 100

// stat reads a process's command name, parent and CPU time (user+system).
func stat(pid int) (comm string, ppid int, cpu time.Duration, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return "", 0, 0, err
	}
	s := string(b)
	open, end := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
	if open < 0 || end < open {
		return "", 0, 0, fmt.Errorf("/proc/%d/stat: unexpected %q", pid, s)
	}
	comm = s[open+1 : end]
	f := strings.Fields(s[end+1:])
	// After the comm: state(0) ppid(1) ... utime(11) stime(12).
	if len(f) < 13 {
		return "", 0, 0, fmt.Errorf("/proc/%d/stat: short", pid)
	}
	ppid, _ = strconv.Atoi(f[1])
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return comm, ppid, time.Duration(ut+st) * time.Second / clockTicks, nil
}

// ChildrenNamed returns the PIDs of this process's children whose command
// name is name (envtest's etcd and kube-apiserver).
func ChildrenNamed(name string) []int {
	var out []int
	dirs, _ := filepath.Glob("/proc/[0-9]*")
	me := os.Getpid()
	for _, d := range dirs {
		pid, err := strconv.Atoi(filepath.Base(d))
		if err != nil {
			continue
		}
		if comm, ppid, _, err := stat(pid); err == nil && ppid == me && comm == name {
			out = append(out, pid)
		}
	}
	return out
}

// CPU samples the CPU time of named processes.
type CPU struct {
	names []string
	pids  []int
	mu    sync.Mutex
	start []time.Duration
	t0    time.Time
	// peak is the highest rate (cores) seen over one sampling interval.
	peak  []float64
	last  []time.Duration
	lastT time.Time
	stop  chan struct{}
	done  chan struct{}
}

// NewCPU watches the processes (name and pid each).
func NewCPU(names []string, pids []int) *CPU {
	return &CPU{names: names, pids: pids}
}

func (c *CPU) read() []time.Duration {
	out := make([]time.Duration, len(c.pids))
	for i, p := range c.pids {
		if _, _, t, err := stat(p); err == nil {
			out[i] = t
		}
	}
	return out
}

// Start begins a window, sampled every interval for the peak.
func (c *CPU) Start(interval time.Duration) {
	c.mu.Lock()
	c.start, c.t0 = c.read(), time.Now()
	c.last, c.lastT = c.start, c.t0
	c.peak = make([]float64, len(c.pids))
	c.stop, c.done = make(chan struct{}), make(chan struct{})
	c.mu.Unlock()
	go func() {
		defer close(c.done)
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			select {
			case <-c.stop:
				return
			case <-t.C:
				c.sample()
			}
		}
	}()
}

func (c *CPU) sample() {
	now, cur := time.Now(), c.read()
	c.mu.Lock()
	defer c.mu.Unlock()
	dt := now.Sub(c.lastT).Seconds()
	for i := range cur {
		if r := (cur[i] - c.last[i]).Seconds() / dt; r > c.peak[i] {
			c.peak[i] = r
		}
	}
	c.last, c.lastT = cur, now
}

// CPUUse is one process's use over a window.
type CPUUse struct {
	Name string
	PID  int
	// CPU is the CPU time used; Cores the mean over the window; Peak the
	// highest over one sampling interval.
	CPU         time.Duration
	Cores, Peak float64
}

// Stop ends the window.
func (c *CPU) Stop() []CPUUse {
	close(c.stop)
	<-c.done
	c.sample()
	end, t := c.read(), time.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]CPUUse, len(c.pids))
	for i := range c.pids {
		d := end[i] - c.start[i]
		out[i] = CPUUse{Name: c.names[i], PID: c.pids[i], CPU: d, Cores: d.Seconds() / t.Sub(c.t0).Seconds(), Peak: c.peak[i]}
	}
	return out
}

// RSSBytes is a process's resident set size.
func RSSBytes(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "VmRSS:") {
			f := strings.Fields(strings.TrimPrefix(l, "VmRSS:"))
			if len(f) > 0 {
				kb, _ := strconv.ParseInt(f[0], 10, 64)
				return kb << 10
			}
		}
	}
	return 0
}

// LoadAvg is the first field of /proc/loadavg: how busy the machine was
// (other work shares it).
func LoadAvg() string {
	b, _ := os.ReadFile("/proc/loadavg")
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}
