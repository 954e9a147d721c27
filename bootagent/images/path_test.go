package images

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/go-logr/logr"
	. "github.com/onsi/gomega"
	"golang.org/x/sys/unix"
)

// failure is the reason and message of a failed Ensure ("" when it did not
// fail with an *Error).
func failure(err error) (string, string) {
	var ie *Error
	if errors.As(err, &ie) {
		return ie.Reason, ie.Err.Error()
	}
	return "", ""
}

// TestPathSources: a path source is adopted only from under the image path
// root, through os.Root, and only when it is a regular file. Needs root
// (mknod).
func TestPathSources(t *testing.T) {
	g := NewWithT(t)
	base := t.TempDir()
	root := filepath.Join(base, "images")
	outside := filepath.Join(base, "etc")
	for _, d := range []string{root, outside, filepath.Join(root, "sub")} {
		g.Expect(os.MkdirAll(d, 0o755)).To(Succeed())
	}
	shadow := filepath.Join(outside, "shadow")
	g.Expect(os.WriteFile(shadow, []byte("root:$6$secret:19000:0:99999:7:::\n"), 0o600)).To(Succeed())
	good := bytes.Repeat([]byte("golden"), 1<<16)
	g.Expect(os.WriteFile(filepath.Join(root, "win11.raw"), good, 0o644)).To(Succeed())
	g.Expect(os.Symlink(shadow, filepath.Join(root, "shadow.raw"))).To(Succeed())
	g.Expect(os.Symlink("../etc/shadow", filepath.Join(root, "relative.raw"))).To(Succeed())
	g.Expect(os.Symlink("/dev/zero", filepath.Join(root, "zero-link.raw"))).To(Succeed())
	g.Expect(os.Symlink("../win11.raw", filepath.Join(root, "sub", "inside.raw"))).To(Succeed())
	g.Expect(unix.Mknod(filepath.Join(root, "zero.raw"), unix.S_IFCHR|0o600, int(unix.Mkdev(1, 5)))).To(Succeed())
	g.Expect(unix.Mkfifo(filepath.Join(root, "fifo.raw"), 0o600)).To(Succeed())
	g.Expect(os.Mkdir(filepath.Join(root, "dir.raw"), 0o755)).To(Succeed())

	s := New(t.TempDir(), logr.Discard())
	s.PathRoot = root
	ctx := context.Background()
	for name, tc := range map[string]struct {
		path, reason, message string
	}{
		"symlink to a file outside the root": {filepath.Join(root, "shadow.raw"), ReasonPathNotAllowed, "path escapes from parent"},
		"relative symlink out of the root":   {filepath.Join(root, "relative.raw"), ReasonPathNotAllowed, "path escapes from parent"},
		"symlink to /dev/zero":               {filepath.Join(root, "zero-link.raw"), ReasonPathNotAllowed, "path escapes from parent"},
		"..":                                 {root + "/../etc/shadow", ReasonPathNotAllowed, "is not under the image path root " + root},
		"a file outside the root":            {shadow, ReasonPathNotAllowed, "is not under the image path root"},
		"/dev/zero":                          {"/dev/zero", ReasonPathNotAllowed, "is not under the image path root"},
		"a device under the root":            {filepath.Join(root, "zero.raw"), ReasonPathNotAllowed, "is a device, not a regular file"},
		"a FIFO under the root":              {filepath.Join(root, "fifo.raw"), ReasonPathNotAllowed, "is a named pipe (FIFO), not a regular file"},
		"a directory under the root":         {filepath.Join(root, "dir.raw"), ReasonPathNotAllowed, "is a directory, not a regular file"},
		"the root itself":                    {root, ReasonPathNotAllowed, "is not under the image path root"},
		"missing":                            {filepath.Join(root, "missing.raw"), ReasonSourceMissing, "does not exist"},
	} {
		start := time.Now()
		_, err := s.Ensure(ctx, "cafe", "bad", "u-bad", Source{Path: tc.path, Format: "raw"}, nil)
		reason, msg := failure(err)
		g.Expect(reason).To(Equal(tc.reason), "%s: %v", name, err)
		g.Expect(msg).To(ContainSubstring(tc.message), name)
		g.Expect(msg).NotTo(ContainSubstring("$6$"), name)
		g.Expect(time.Since(start)).To(BeNumerically("<", 5*time.Second), "%s: nothing blocks", name)
	}
	g.Expect(entries(t, s.Dir)).To(BeEmpty(), "nothing placed, no temporary file left")

	r, err := s.Ensure(ctx, "cafe", "win11", "u1", Source{Path: filepath.Join(root, "win11.raw"), SHA256: sum(good), Format: "raw"}, nil)
	g.Expect(err).NotTo(HaveOccurred(), "a regular file under the root is adopted")
	placed, _ := os.ReadFile(r.Path)
	g.Expect(bytes.Equal(placed, good)).To(BeTrue())
	r, err = s.Ensure(ctx, "cafe", "inside", "u2", Source{Path: filepath.Join(root, "sub", "inside.raw"), SHA256: sum(good), Format: "raw"}, nil)
	g.Expect(err).NotTo(HaveOccurred(), "a symbolic link that stays inside the root is followed")
	g.Expect(r.SHA256).To(Equal(sum(good)))

	s.PathRoot = ""
	_, err = s.Ensure(ctx, "cafe", "off", "u3", Source{Path: filepath.Join(root, "win11.raw"), Format: "raw"}, nil)
	reason, msg := failure(err)
	g.Expect(reason).To(Equal(ReasonPathNotAllowed))
	g.Expect(msg).To(ContainSubstring("path sources are off on this node"))
	g.Expect(msg).To(ContainSubstring("--image-path-root"))
}
