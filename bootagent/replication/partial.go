package replication

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/ggnet/ggnet/bootagent/images"
)

// record is how far a partial transfer got, kept beside the partial file:
// the bytes of the partial file below Done are the replica's and on disk
// (fsynced before the record was written).
type record struct {
	// SHA256 and Size are the replica's, as the peer described it; a
	// partial of another content is started over.
	SHA256 string `json:"sha256"`
	Size   int64  `json:"size"`
	// Done is the offset below which the partial file is complete.
	Done int64 `json:"done"`
}

// partial is a replica's resumable partial file, locked (flock) while a
// transfer uses it.
type partial struct {
	f                  *os.File
	dir, path, recPath string
	rec                record
	// resumed: the partial file holds an earlier transfer's bytes.
	resumed bool
}

// openPartial opens (or makes) the partial file of the replica uid in dir
// for the content m describes, and reads how far an earlier transfer got: a
// partial of another content, or without a record, is started over.
func openPartial(dir, uid string, m *ExtentMap) (*partial, error) {
	path := filepath.Join(dir, images.PartialName(uid))
	_, statErr := os.Lstat(path)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("another transfer of this replica is under way on this node")
		}
		return nil, err
	}
	p := &partial{f: f, dir: dir, path: path, recPath: path + images.PartialRecordSuffix}
	var rec record
	b, err := os.ReadFile(p.recPath)
	st, serr := f.Stat()
	switch {
	// A record counts only with the partial file it describes (a crash
	// between the rename of a finished one and the record's removal leaves
	// the record alone).
	case err == nil && statErr == nil && serr == nil && st.Size() == m.Size &&
		json.Unmarshal(b, &rec) == nil && rec.SHA256 == m.SHA256 && rec.Size == m.Size && rec.Done >= 0 && rec.Done <= m.Size:
		p.rec, p.resumed = rec, rec.Done > 0
	case err != nil && !errors.Is(err, fs.ErrNotExist):
		f.Close()
		return nil, err
	default:
		// Start over: no hole may hold an earlier content's data.
		p.rec = record{SHA256: m.SHA256, Size: m.Size}
		if err := f.Truncate(0); err != nil {
			f.Close()
			return nil, err
		}
	}
	if err := f.Truncate(m.Size); err != nil { // sparse: holes cost nothing
		f.Close()
		return nil, err
	}
	if err := p.save(p.rec.Done); err != nil {
		f.Close()
		return nil, err
	}
	return p, nil
}

// save makes the partial file durable and then records done: a crash after
// it resumes from done, a crash before it from the previous record.
func (p *partial) save(done int64) error {
	if err := unix.Fdatasync(int(p.f.Fd())); err != nil {
		return err
	}
	rec := p.rec
	rec.Done = done
	b, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	tmp := p.recPath + ".tmp"
	t, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if _, err := t.Write(b); err != nil {
		t.Close()
		return err
	}
	if err := t.Sync(); err != nil {
		t.Close()
		return err
	}
	if err := t.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, p.recPath); err != nil {
		return err
	}
	p.rec = rec
	return syncDir(p.dir)
}

// finish renames the complete partial file over dst and drops the record.
func (p *partial) finish(dst string) error {
	if err := p.f.Sync(); err != nil {
		return err
	}
	if err := os.Rename(p.path, dst); err != nil {
		return err
	}
	_ = os.Remove(p.recPath)
	return syncDir(p.dir)
}

// discard removes the partial file and its record (bad content).
func (p *partial) discard() {
	_ = os.Remove(p.recPath)
	_ = os.Remove(p.path)
	_ = syncDir(p.dir)
}

// close releases the lock (a finished or discarded partial is gone by then).
func (p *partial) close() { p.f.Close() }

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
