package lab

import (
	_ "embed"
	"encoding/binary"
	"fmt"
	"os"
	"regexp"
	"strconv"
)

// bootSector is the demo disk's boot sector: 512 bytes that nasm made of
// testdata/boot.asm (TestBootSector reassembles it). It is a tiny OS that
// keeps using its disk through the BIOS disk services — iPXE's SAN drive when
// booted over iSCSI: at boot it increments the 16-bit boot counter at the
// start of LBA 1 and prints "GGNET-BOOT-OK count=<n>" on COM1; then about
// twice a second it reads LBA 1, increments the 32-bit tick counter at offset
// 4, writes the sector, reads it back, compares, and prints "GGNET-TICK <n>".
// A failed disk call is retried (an OS's initiator would), printing
// "GGNET-IO-RETRY <status>" once per failure streak; a read-back that differs
// prints "GGNET-VERIFY-FAIL".
//
//go:embed testdata/boot.bin
var bootSector []byte

// What the demo disk prints on COM1.
const (
	// Marker is what the demo disk prints when it booted.
	Marker = "GGNET-BOOT-OK count="
	// TickMarker starts each tick's line.
	TickMarker = "GGNET-TICK "
	// RetryMarker starts the line printed when a disk call failed and is
	// being retried.
	RetryMarker = "GGNET-IO-RETRY "
	// VerifyFailMarker is printed when a sector read back differs from what
	// was written.
	VerifyFailMarker = "GGNET-VERIFY-FAIL"
)

var tickLine = regexp.MustCompile(`(?m)^` + TickMarker + `(\d+)\n`)

// Ticks returns the tick counters in serial (a VM's console, CRs removed)
// in the order printed, complete lines only.
func Ticks(serial string) []uint32 {
	var out []uint32
	for _, m := range tickLine.FindAllStringSubmatch(serial, -1) {
		n, err := strconv.ParseUint(m[1], 10, 32)
		if err == nil {
			out = append(out, uint32(n))
		}
	}
	return out
}

// Counters are what the demo disk keeps in LBA 1.
type Counters struct {
	Boots uint16
	Ticks uint32
}

// ReadCounters reads the demo disk's counters from a raw disk image (an
// overlay file).
func ReadCounters(path string) (Counters, error) {
	f, err := os.Open(path)
	if err != nil {
		return Counters{}, err
	}
	defer f.Close()
	b := make([]byte, 8)
	if _, err := f.ReadAt(b, 512); err != nil {
		return Counters{}, fmt.Errorf("reading LBA 1 of %s: %w", path, err)
	}
	return Counters{Boots: binary.LittleEndian.Uint16(b), Ticks: binary.LittleEndian.Uint32(b[4:])}, nil
}

// WriteDemoDisk writes a disk image of size bytes with the boot sector and
// zero counters.
func WriteDemoDisk(path string, size int64) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	if _, err := f.Write(bootSector); err != nil {
		return err
	}
	return f.Truncate(size)
}
