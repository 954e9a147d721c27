package lab

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"unicode/utf16"
)

// The real-OS demo disk (hack/osdisk.sh): a Debian kernel and an initramfs
// on a GPT disk that boots on BIOS (SYSLINUX) and UEFI (systemd-boot). Its
// init logs in to the target from the iBFT iPXE left, increments /counter on
// the ext4 partition GGDATA, then ticks ten times about half a second apart
// (incrementing /ticks, which counts every tick of every boot), and powers
// off. What it prints on COM1 (115200 baud):
const (
	// OSMarker is printed, followed by the new counter, once /counter was
	// incremented and synced.
	OSMarker = "GGNET-OS-BOOT count="
	// OSTickMarker starts each tick's line: GGNET-OS-TICK <i>, i = 1..10 in
	// each boot, printed after /ticks was incremented and synced.
	OSTickMarker = "GGNET-OS-TICK "
	// OSDoneMarker is printed after the last tick, the data partition
	// unmounted, just before the power-off.
	OSDoneMarker = "GGNET-OS-DONE"
	// OSFailMarker starts the line printed on any failure (followed by the
	// reason), just before the power-off.
	OSFailMarker = "GGNET-OS-FAIL "
	// OSTicksPerBoot is how many ticks a boot prints.
	OSTicksPerBoot = 10
)

// The data partition's name in the GPT (and its file system's label).
const osDataPartition = "GGDATA"

var (
	osCountLine = regexp.MustCompile(`(?m)^` + OSMarker + `(\d+)\r?\n`)
	osTickLine  = regexp.MustCompile(`(?m)^` + OSTickMarker + `(\d+)\r?\n`)
	osFailLine  = regexp.MustCompile(`(?m)^` + OSFailMarker + `(.*?)\r?\n`)
	osDoneLine  = regexp.MustCompile(`(?m)^` + OSDoneMarker + `\r?\n`)
)

// OSCount returns the counter of the last complete GGNET-OS-BOOT line in
// serial, and whether there was one.
func OSCount(serial string) (int, bool) {
	m := osCountLine.FindAllStringSubmatch(serial, -1)
	if len(m) == 0 {
		return 0, false
	}
	n, err := strconv.Atoi(m[len(m)-1][1])
	if err != nil {
		return 0, false
	}
	return n, true
}

// OSTicks returns the tick numbers of the complete GGNET-OS-TICK lines in
// serial, in the order printed.
func OSTicks(serial string) []int {
	var out []int
	for _, m := range osTickLine.FindAllStringSubmatch(serial, -1) {
		if n, err := strconv.Atoi(m[1]); err == nil {
			out = append(out, n)
		}
	}
	return out
}

// OSFailure returns the reason of the first complete GGNET-OS-FAIL line in
// serial, and whether there was one.
func OSFailure(serial string) (string, bool) {
	m := osFailLine.FindStringSubmatch(serial)
	if m == nil {
		return "", false
	}
	return m[1], true
}

// OSDone tells whether serial has the line the OS prints before powering off
// after a boot that went well.
func OSDone(serial string) bool {
	return osDoneLine.MatchString(serial)
}

var osDisk struct {
	sync.Mutex
	path string
}

// OSDiskPath returns the absolute path of the real-OS demo disk's raw image,
// building it first if needed (hack/osdisk.sh: a few minutes the first time,
// then well under a second). Runs the script once per process. The image is
// the cached original: boot copies of it, never it.
func OSDiskPath() (string, error) {
	osDisk.Lock()
	defer osDisk.Unlock()
	if osDisk.path != "" {
		return osDisk.path, nil
	}
	root, err := repoRoot()
	if err != nil {
		return "", err
	}
	cmd := exec.Command(filepath.Join(root, "hack", "osdisk.sh"))
	cmd.Dir = root
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("hack/osdisk.sh: %w: %s", err, strings.TrimSpace(stderr.String()))
	}
	lines := strings.Split(strings.TrimSpace(stdout.String()), "\n")
	path := strings.TrimSpace(lines[len(lines)-1])
	if !filepath.IsAbs(path) {
		return "", fmt.Errorf("hack/osdisk.sh printed %q, not a path", stdout.String())
	}
	if _, err := os.Stat(path); err != nil {
		return "", fmt.Errorf("hack/osdisk.sh: %w", err)
	}
	osDisk.path = path
	return path, nil
}

// repoRoot is the directory of go.mod above this file.
func repoRoot() (string, error) {
	_, file, _, ok := runtime.Caller(0)
	if ok {
		dir := filepath.Dir(file)
		for d := dir; ; d = filepath.Dir(d) {
			if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
				return d, nil
			}
			if filepath.Dir(d) == d {
				break
			}
		}
	}
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("finding the repository: go env GOMOD: %w", err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		return "", errors.New("finding the repository: not inside the GGnet module")
	}
	return filepath.Dir(gomod), nil
}

// Partition is a GPT partition of a disk image.
type Partition struct {
	Name       string
	FirstLBA   uint64
	LastLBA    uint64
	Attributes uint64
}

// Offset is where the partition starts in the image, in bytes (512-byte
// sectors).
func (p Partition) Offset() int64 { return int64(p.FirstLBA) * 512 }

// Size is the partition's length in bytes.
func (p Partition) Size() int64 { return int64(p.LastLBA-p.FirstLBA+1) * 512 }

// ReadGPT returns the used entries of a disk image's GPT (512-byte sectors),
// read from the primary header at LBA 1.
func ReadGPT(rawPath string) ([]Partition, error) {
	f, err := os.Open(rawPath)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	hdr := make([]byte, 92)
	if _, err := f.ReadAt(hdr, 512); err != nil {
		return nil, fmt.Errorf("%s: GPT header: %w", rawPath, err)
	}
	if string(hdr[:8]) != "EFI PART" {
		return nil, fmt.Errorf("%s: no GPT (LBA 1 has no EFI PART signature)", rawPath)
	}
	entriesLBA := binary.LittleEndian.Uint64(hdr[72:])
	count := binary.LittleEndian.Uint32(hdr[80:])
	size := binary.LittleEndian.Uint32(hdr[84:])
	if size < 128 || size > 4096 || count > 1024 {
		return nil, fmt.Errorf("%s: GPT header: %d entries of %d bytes", rawPath, count, size)
	}
	table := make([]byte, int(count)*int(size))
	if _, err := f.ReadAt(table, int64(entriesLBA)*512); err != nil {
		return nil, fmt.Errorf("%s: GPT entries: %w", rawPath, err)
	}
	var parts []Partition
	for i := 0; i < int(count); i++ {
		e := table[i*int(size) : (i+1)*int(size)]
		if allZero(e[:16]) { // unused entry: no type GUID
			continue
		}
		name := make([]uint16, 0, 36)
		for j := 56; j+1 < 128; j += 2 {
			c := binary.LittleEndian.Uint16(e[j:])
			if c == 0 {
				break
			}
			name = append(name, c)
		}
		parts = append(parts, Partition{
			Name:       string(utf16.Decode(name)),
			FirstLBA:   binary.LittleEndian.Uint64(e[32:]),
			LastLBA:    binary.LittleEndian.Uint64(e[40:]),
			Attributes: binary.LittleEndian.Uint64(e[48:]),
		})
	}
	return parts, nil
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// ReadOSCounter reads /counter from the data partition of a raw image of
// the real-OS demo disk (the original, or a copy a boot wrote to), without
// mounting anything: debugfs (e2fsprogs) reads the ext4 file system at the
// partition's offset. What the OS synced is there once it powered off (the
// file system has no journal to replay).
func ReadOSCounter(rawPath string) (int, error) { return readOSNumber(rawPath, "counter") }

// ReadOSTicks reads /ticks, the ticks of all boots together, like
// ReadOSCounter.
func ReadOSTicks(rawPath string) (int, error) { return readOSNumber(rawPath, "ticks") }

func readOSNumber(rawPath, file string) (int, error) {
	parts, err := ReadGPT(rawPath)
	if err != nil {
		return 0, err
	}
	var data *Partition
	for i := range parts {
		if parts[i].Name == osDataPartition {
			data = &parts[i]
		}
	}
	if data == nil {
		return 0, fmt.Errorf("%s: no %s partition", rawPath, osDataPartition)
	}
	// e2fsprogs' unix I/O manager takes the offset as an option after '?'.
	img := fmt.Sprintf("%s?offset=%d", rawPath, data.Offset())
	cmd := exec.Command("debugfs", "-R", "cat /"+file, img)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return 0, fmt.Errorf("debugfs %s: %w: %s", img, err, strings.TrimSpace(stderr.String()))
	}
	s := strings.TrimSpace(stdout.String())
	n, err := strconv.Atoi(s)
	if err != nil {
		// debugfs exits 0 when the file is missing; its reason is on stderr.
		return 0, fmt.Errorf("%s: /%s on %s: %q (%s)", rawPath, file, osDataPartition, s, strings.TrimSpace(stderr.String()))
	}
	return n, nil
}
