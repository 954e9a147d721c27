package target

import (
	"errors"
	"io/fs"
	"os"
	"syscall"
)

// ConfigFS is what the LIO driver does to configfs: nothing else touches
// it. Production uses the file system (OSConfigFS); tests use a double that
// keeps configfs's rules (package configfstest). The calls are the system
// calls configfs implements, one each: no MkdirAll, no RemoveAll, no
// create-on-write, since configfs refuses or means something else by them.
type ConfigFS interface {
	// ReadFile reads an attribute (what the kernel's show prints).
	ReadFile(name string) ([]byte, error)
	// WriteFile writes an existing attribute in one write (the kernel's
	// store). It never creates a file: configfs has no such thing.
	WriteFile(name string, data []byte) error
	// Mkdir makes one group (mkdir(2)).
	Mkdir(name string) error
	// Rmdir removes one empty group (rmdir(2)).
	Rmdir(name string) error
	// Symlink links two items (symlink(2)): in LIO, a LUN to its backstore
	// or an ACL's mapped LUN to the TPG's LUN.
	Symlink(oldname, newname string) error
	// Readlink reads a link (readlink(2)). configfs answers with a path of
	// its own making, relative to the link's directory.
	Readlink(name string) (string, error)
	// ReadDir lists a group, sorted by name.
	ReadDir(name string) ([]fs.DirEntry, error)
	// Remove unlinks a link (unlink(2)); configfs refuses it for anything
	// else.
	Remove(name string) error
	// Lstat describes a name without following a link.
	Lstat(name string) (fs.FileInfo, error)
}

// OSConfigFS is ConfigFS on the real file system.
type OSConfigFS struct{}

var _ ConfigFS = OSConfigFS{}

// ReadFile implements ConfigFS.
func (OSConfigFS) ReadFile(name string) ([]byte, error) { return os.ReadFile(name) }

// WriteFile implements ConfigFS: open without O_CREAT or O_TRUNC, one write.
func (OSConfigFS) WriteFile(name string, data []byte) error {
	f, err := os.OpenFile(name, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	return errors.Join(err, f.Close())
}

// Mkdir implements ConfigFS.
func (OSConfigFS) Mkdir(name string) error { return os.Mkdir(name, 0o755) }

// Rmdir implements ConfigFS.
func (OSConfigFS) Rmdir(name string) error {
	if err := syscall.Rmdir(name); err != nil {
		return &fs.PathError{Op: "rmdir", Path: name, Err: err}
	}
	return nil
}

// Symlink implements ConfigFS.
func (OSConfigFS) Symlink(oldname, newname string) error { return os.Symlink(oldname, newname) }

// Readlink implements ConfigFS.
func (OSConfigFS) Readlink(name string) (string, error) { return os.Readlink(name) }

// ReadDir implements ConfigFS.
func (OSConfigFS) ReadDir(name string) ([]fs.DirEntry, error) { return os.ReadDir(name) }

// Remove implements ConfigFS.
func (OSConfigFS) Remove(name string) error {
	if err := syscall.Unlink(name); err != nil {
		return &fs.PathError{Op: "unlink", Path: name, Err: err}
	}
	return nil
}

// Lstat implements ConfigFS.
func (OSConfigFS) Lstat(name string) (fs.FileInfo, error) { return os.Lstat(name) }
