package replication

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// Extent is a run of data in a file: [Offset, Offset+Length).
type Extent struct {
	Offset int64 `json:"offset"`
	Length int64 `json:"length"`
}

// ExtentMap is what the server says of a replica.
type ExtentMap struct {
	// Size is the file's size in bytes (holes included).
	Size int64 `json:"size"`
	// SHA256 is the checksum recorded when the replica was placed.
	SHA256 string `json:"sha256"`
	// Extents are the data runs, in order, not overlapping, within Size.
	Extents []Extent `json:"extents"`
}

// DataBytes is the sum of the extents' lengths: what crosses the network.
func (m *ExtentMap) DataBytes() int64 {
	var n int64
	for _, e := range m.Extents {
		n += e.Length
	}
	return n
}

// check refuses a map that is not in order, overlaps or lies outside the
// file (a peer's answer is not trusted further than that).
func (m *ExtentMap) check() error {
	if m.Size < 0 {
		return fmt.Errorf("negative size %d", m.Size)
	}
	var end int64
	for i, e := range m.Extents {
		if e.Offset < end || e.Length <= 0 || e.Offset > m.Size-e.Length {
			return fmt.Errorf("extent %d (%d+%d) is out of order or outside the %d-byte file", i, e.Offset, e.Length, m.Size)
		}
		end = e.Offset + e.Length
	}
	return nil
}

// maxExtents bounds an extent map: a file more fragmented than that is
// described with its smallest holes taken as data.
const maxExtents = 1 << 18

// Extents returns the data extents of f (size bytes) found with SEEK_DATA and
// SEEK_HOLE; holes shorter than minHole are taken as data (joined to their
// neighbours). A file system without SEEK_DATA support reports the whole
// file as data, which the kernel does by itself.
func Extents(f *os.File, size int64, minHole int64) ([]Extent, error) {
	var out []Extent
	fd := int(f.Fd())
	for off := int64(0); off < size; {
		data, err := unix.Seek(fd, off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			break // no data after off
		}
		if err != nil {
			return nil, fmt.Errorf("SEEK_DATA at %d: %w", off, err)
		}
		if data >= size {
			break
		}
		hole, err := unix.Seek(fd, data, unix.SEEK_HOLE)
		if err != nil {
			return nil, fmt.Errorf("SEEK_HOLE at %d: %w", data, err)
		}
		hole = min(hole, size)
		if n := len(out); n > 0 && data-(out[n-1].Offset+out[n-1].Length) < minHole {
			out[n-1].Length = hole - out[n-1].Offset
		} else {
			out = append(out, Extent{Offset: data, Length: hole - data})
		}
		off = hole
	}
	return out, nil
}

// extentMap describes f (size bytes), joining ever larger holes until the
// map has at most maxExtents extents.
func extentMap(f *os.File, size int64) ([]Extent, error) {
	for minHole := int64(0); ; minHole = max(2*minHole, 64<<10) {
		ext, err := Extents(f, size, minHole)
		if err != nil || len(ext) <= maxExtents {
			return ext, err
		}
	}
}
