package main

import (
	"fmt"
	"os"
	"sort"

	"github.com/ggnet/ggnet/hack/demo/state"
	"github.com/ggnet/ggnet/internal/lab"
	"github.com/ggnet/ggnet/internal/testbin"
)

// recorder is the demo's testfs.T: a testbin.Program that notes each
// directory it makes, so that a kept demo can record exactly what it left
// (state.Path) for make demo-down.
type recorder struct {
	*testbin.Program
	netns string
	dirs  []string
	lab   *lab.Lab
}

// TempDir makes a directory and notes it.
func (r *recorder) TempDir() string {
	d := r.Program.TempDir()
	r.dirs = append(r.dirs, d)
	return d
}

// Fatal records what a kept demo leaves, then fails as Program does.
func (r *recorder) Fatal(a ...any) {
	r.save()
	r.Program.Fatal(a...)
}

// Fatalf records what a kept demo leaves, then fails as Program does.
func (r *recorder) Fatalf(f string, a ...any) { r.Fatal(fmt.Sprintf(f, a...)) }

// save writes what the kept demo leaves running and on disk to state.Path:
// every process below this one with its start time, the mounts in the
// directories it made (with their loop devices), the directories, the
// network namespace and its interfaces. It does nothing unless Keep.
func (r *recorder) save() {
	if !r.Keep {
		return
	}
	if err := state.Write(state.Path, r.state()); err != nil {
		fmt.Fprintf(os.Stderr, "demo: recording the kept lab in %s: %v (make demo-down cannot tear it down)\n", state.Path, err)
		return
	}
	fmt.Printf("    recorded in %s for make demo-down\n", state.Path)
}

func (r *recorder) state() *state.State {
	s := &state.State{Netns: r.netns}
	s.NetnsID, _ = os.Readlink("/proc/self/ns/net")
	s.MountNS, _ = os.Readlink("/proc/self/ns/mnt")
	procs, err := state.Descendants(os.Getpid())
	if err != nil {
		fmt.Fprintln(os.Stderr, "demo: listing the lab's processes:", err)
	}
	s.Procs = procs
	s.Dirs = append(s.Dirs, r.dirs...)
	if r.lab != nil && r.lab.Env != nil {
		// envtest's own directories (etcd's data, kube-apiserver's
		// certificates), which its Stop would have removed.
		for _, d := range []string{r.lab.Env.ControlPlane.Etcd.DataDir, r.lab.Env.ControlPlane.APIServer.CertDir} {
			if d != "" {
				s.Dirs = append(s.Dirs, d)
			}
		}
	}
	if b, err := os.ReadFile("/proc/self/mountinfo"); err == nil {
		for _, m := range state.ParseMountInfo(b) {
			for _, d := range s.Dirs {
				if state.Under(m.Point, d) {
					mt := state.Mount{Point: m.Point, Source: m.Source}
					if f := state.LoopBacking(m.Source); f != "" {
						mt.Loop, mt.BackingFile = m.Source, f
					}
					s.Mounts = append(s.Mounts, mt)
					break
				}
			}
		}
	}
	// Deepest first, so that a mount inside a mount is unmounted first.
	sort.SliceStable(s.Mounts, func(i, j int) bool { return len(s.Mounts[i].Point) > len(s.Mounts[j].Point) })
	if ents, err := os.ReadDir("/sys/class/net"); err == nil {
		for _, e := range ents {
			s.Links = append(s.Links, e.Name())
		}
	}
	return s
}
