package main

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"time"
)

// labNetns is the lab's network namespace, read at start: the main thread
// may later be left inside the simulator's (host.Do, runtime.LockOSThread).
var labNetns, _ = os.Readlink("/proc/self/ns/net")

// clockTicks is USER_HZ, the unit of /proc/<pid>/stat's times.
const clockTicks = 100

// cpuByProcess returns the CPU time (user+system, in ticks) of every
// process in this network namespace (the lab's: API server, etcd, manager,
// agents, tgtd, this simulator), by label, and of the whole machine.
func cpuByProcess() map[string]float64 {
	self := labNetns
	// This simulator counts whatever namespace its main thread is in.
	me := "/proc/" + strconv.Itoa(os.Getpid()) + "/ns/net"
	out := map[string]float64{}
	links, _ := filepath.Glob("/proc/[0-9]*/ns/net")
	for _, p := range links {
		if ns, err := os.Readlink(p); p != me && (err != nil || ns != self) {
			continue
		}
		dir := filepath.Dir(filepath.Dir(p))
		st, err := os.ReadFile(filepath.Join(dir, "stat"))
		if err != nil {
			continue
		}
		// Fields after the command's closing parenthesis: state is 3rd,
		// utime 14th, stime 15th.
		i := strings.LastIndexByte(string(st), ')')
		f := strings.Fields(string(st[i+1:]))
		if len(f) < 13 {
			continue
		}
		u, _ := strconv.ParseFloat(f[11], 64)
		s, _ := strconv.ParseFloat(f[12], 64)
		out[label(dir)] += u + s
	}
	if b, err := os.ReadFile("/proc/stat"); err == nil {
		f := strings.Fields(strings.SplitN(string(b), "\n", 2)[0])
		var busy float64
		for i, v := range f[1:] {
			if i == 3 || i == 4 { // idle, iowait
				continue
			}
			x, _ := strconv.ParseFloat(v, 64)
			busy += x
		}
		out["(whole machine, all users)"] = busy
	}
	return out
}

// tgtdThreads returns the threads (/proc/<pid>/task) of every tgtd in this
// network namespace, by label: one main thread and a pool per logical unit
// (tgtd -t, 16 by default).
func tgtdThreads() map[string]int {
	out := map[string]int{}
	links, _ := filepath.Glob("/proc/[0-9]*/ns/net")
	for _, p := range links {
		if ns, err := os.Readlink(p); err != nil || ns != labNetns {
			continue
		}
		dir := filepath.Dir(filepath.Dir(p))
		if l := label(dir); strings.HasPrefix(l, "tgtd") {
			if tasks, err := os.ReadDir(filepath.Join(dir, "task")); err == nil {
				out[l] += len(tasks)
			}
		}
	}
	return out
}

// loadavg is /proc/loadavg's 1, 5 and 15 minute load averages.
func loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if f := strings.Fields(string(b)); err == nil && len(f) >= 3 {
		return strings.Join(f[:3], " ")
	}
	return "?"
}

// label names a process by its program and what tells its instances apart.
func label(dir string) string {
	b, err := os.ReadFile(filepath.Join(dir, "cmdline"))
	if err != nil || len(b) == 0 {
		return "?"
	}
	args := strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
	name := filepath.Base(args[0])
	for i, a := range args {
		switch {
		case name == "bootagent" && (a == "--node-name" || a == "--server-ip") && i+1 < len(args):
			return name + " " + args[i+1]
		case name == "tgtd" && strings.HasPrefix(a, "portal="):
			return name + " " + strings.TrimPrefix(a, "portal=")
		}
	}
	return name
}

func reportCPU(a, b map[string]float64, wall time.Duration) {
	type row struct {
		name string
		sec  float64
	}
	var rows []row
	for k, v := range b {
		if d := (v - a[k]) / clockTicks; d > 0.05 {
			rows = append(rows, row{k, d})
		}
	}
	sort.Slice(rows, func(i, j int) bool { return rows[i].sec > rows[j].sec })
	fmt.Printf("CPU during the storm (%.1f s wall, %d cores = %.1f core-s available):\n", wall.Seconds(), runtime.NumCPU(), float64(runtime.NumCPU())*wall.Seconds())
	for _, r := range rows {
		fmt.Printf("  %-32s %7.1f core-s  %5.0f%% of one core\n", r.name, r.sec, 100*r.sec/wall.Seconds())
	}
}
