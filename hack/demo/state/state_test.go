package state

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// stat builds a /proc/<pid>/stat line: pid, comm, state, ppid, fields 5-21
// as 0, start time (22), and the rest.
func stat(pid, comm, state, ppid, start string) string {
	return pid + " (" + comm + ") " + state + " " + ppid + strings.Repeat(" 0", 17) + " " + start + " 1234 56 18446744073709551615"
}

func TestParseStat(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		want     Stat
		wantErr  bool
	}{
		{"plain", stat("42", "tgtd", "S", "1", "987654"), Stat{Comm: "tgtd", State: 'S', PPID: 1, StartTime: 987654}, false},
		{"spaces and parens in the name", stat("7", "a) b (c", "R", "3", "5"), Stat{Comm: "a) b (c", State: 'R', PPID: 3, StartTime: 5}, false},
		{"zombie", stat("7", "etcd", "Z", "1", "11"), Stat{Comm: "etcd", State: 'Z', PPID: 1, StartTime: 11}, false},
		{"no name", "42 tgtd S 1", Stat{}, true},
		{"short", "42 (tgtd) S 1 0 0", Stat{}, true},
		{"bad start", stat("42", "tgtd", "S", "1", "x"), Stat{}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseStat([]byte(tc.in))
			if (err != nil) != tc.wantErr || got != tc.want {
				t.Fatalf("ParseStat(%q) = %+v, %v; want %+v, error %v", tc.in, got, err, tc.want, tc.wantErr)
			}
		})
	}
}

// The real /proc/self/stat parses, and its start time is this process's.
func TestReadStatSelf(t *testing.T) {
	st, err := ReadStat(os.Getpid())
	if err != nil || st.StartTime == 0 || st.PPID != os.Getppid() {
		t.Fatalf("ReadStat(self) = %+v, %v", st, err)
	}
}

func TestCheck(t *testing.T) {
	p := Proc{Name: "manager", PID: 4242, StartTime: 1000}
	for _, tc := range []struct {
		name string
		st   Stat
		err  error
		want Status
	}{
		{"same process", Stat{State: 'S', StartTime: 1000}, nil, Running},
		{"no such pid", Stat{}, os.ErrNotExist, Gone},
		{"ended, not reaped", Stat{State: 'Z', StartTime: 1000}, nil, Gone},
		// The pid was given to another process: never ours to signal.
		{"pid reused", Stat{State: 'S', StartTime: 2000}, nil, Reused},
		{"pid reused by a zombie", Stat{State: 'Z', StartTime: 2000}, nil, Reused},
		{"unreadable", Stat{}, errors.New("permission denied"), Reused},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := p.Check(func(pid int) (Stat, error) {
				if pid != p.PID {
					t.Fatalf("read pid %d, want %d", pid, p.PID)
				}
				return tc.st, tc.err
			})
			if got != tc.want {
				t.Fatalf("Check = %s, want %s", got, tc.want)
			}
		})
	}
}

func TestWriteRead(t *testing.T) {
	path := filepath.Join(t.TempDir(), "run", "state.json")
	s := &State{Netns: "ggnet-demo", NetnsID: "net:[4026532001]", MountNS: "mnt:[4026532002]",
		Procs:  []Proc{{Name: "etcd", PID: 100, StartTime: 5}, {Name: "bootagent", PID: 101, StartTime: 6}},
		Mounts: []Mount{{Point: "/tmp/ggnet-lab-2/mnt", Source: "/dev/loop3", Loop: "/dev/loop3", BackingFile: "/tmp/ggnet-lab-2/xfs.img"}},
		Dirs:   []string{"/tmp/ggnet-lab-1", "/tmp/ggnet-lab-2"}, Links: []string{"ggbr0", "ggtap0", "lo"}}
	if err := Write(path, s); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("state file mode %v, %v; want 0600", fi.Mode(), err)
	}
	if di, _ := os.Stat(filepath.Dir(path)); di.Mode().Perm() != 0o700 {
		t.Fatalf("state directory mode %v; want 0700", di.Mode())
	}
	got, err := Read(path)
	if err != nil || !reflect.DeepEqual(got, s) {
		t.Fatalf("Read = %+v, %v; want %+v", got, err, s)
	}
	if _, err := Read(filepath.Join(t.TempDir(), "none.json")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("Read of a missing file: %v, want ErrNotExist", err)
	}
}

// A state that names something inexactly is refused before anything is
// done with it.
func TestParseRefuses(t *testing.T) {
	for _, in := range []string{
		`{"netns":"x","procs":[{"name":"init","pid":1,"startTime":5}]}`,
		`{"netns":"x","procs":[{"name":"p","pid":0,"startTime":5}]}`,
		`{"netns":"x","procs":[{"name":"p","pid":99,"startTime":0}]}`,
		`{"netns":"x","dirs":["/"]}`,
		`{"netns":"x","dirs":["/tmp"]}`,
		`{"netns":"x","dirs":["tmp/ggnet-lab-1"]}`,
		`{"netns":"x","dirs":["/tmp/a/../../etc"]}`,
		`{"netns":"../x"}`,
		`{"netns":"x","mounts":[{"point":"/tmp/a/mnt","source":"/dev/sda","loop":"/dev/sda","backingFile":"f"}]}`,
		`{"netns":"x","mounts":[{"point":"/tmp/a/mnt","source":"/dev/loop1","loop":"/dev/loop1"}]}`,
		`{"netns":"x","pids":[1]}`,
		`not json`,
	} {
		if s, err := Parse([]byte(in)); err == nil {
			t.Errorf("Parse(%s) = %+v, want an error", in, s)
		}
	}
}

func TestBelow(t *testing.T) {
	children := map[int][]Proc{
		10: {{Name: "etcd", PID: 11}, {Name: "bootagent", PID: 12}},
		12: {{Name: "tgtadm", PID: 13}},
		1:  {{Name: "other", PID: 20}},
		20: {{Name: "its child", PID: 21}},
	}
	var got []int
	for _, p := range below(10, children) {
		got = append(got, p.PID)
	}
	if want := []int{11, 12, 13}; !reflect.DeepEqual(got, want) {
		t.Fatalf("below(10) = %v, want %v", got, want)
	}
}

func TestParseMountInfo(t *testing.T) {
	in := "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n" +
		"530 22 7:3 / /tmp/ggnet-lab-2/mnt rw,relatime - xfs /dev/loop3 rw,attr2\n" +
		"531 22 0:50 / /tmp/a\\040b rw - tmpfs ggnet\\040test rw\n"
	want := []MountInfo{{"/", "/dev/sda1"}, {"/tmp/ggnet-lab-2/mnt", "/dev/loop3"}, {"/tmp/a b", "ggnet test"}}
	if got := ParseMountInfo([]byte(in)); !reflect.DeepEqual(got, want) {
		t.Fatalf("ParseMountInfo = %+v, want %+v", got, want)
	}
}

func TestUnder(t *testing.T) {
	for _, tc := range []struct {
		path, dir string
		want      bool
	}{
		{"/tmp/ggnet-lab-2/mnt", "/tmp/ggnet-lab-2", true},
		{"/tmp/ggnet-lab-2", "/tmp/ggnet-lab-2", true},
		{"/tmp/ggnet-lab-20/mnt", "/tmp/ggnet-lab-2", false},
	} {
		if got := Under(tc.path, tc.dir); got != tc.want {
			t.Errorf("Under(%q, %q) = %v, want %v", tc.path, tc.dir, got, tc.want)
		}
	}
}
