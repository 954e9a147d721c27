package overlay

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
	"time"

	. "github.com/onsi/gomega"

	"github.com/ggnet/ggnet/internal/testfs"
)

func TestReflinkOverlays(t *testing.T) {
	g := NewWithT(t)
	data := testfs.XFS(t, 512<<20)
	s, err := Open(data, 0)
	g.Expect(err).NotTo(HaveOccurred())

	image := filepath.Join(data, "image.raw")
	content := bytes.Repeat([]byte("golden!!"), 1<<20) // 8 MiB
	g.Expect(os.WriteFile(image, content, 0o644)).To(Succeed())

	path := s.Path("cafe", "seat-1-a")
	created, err := s.Ensure(path, image)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(created).To(BeTrue())
	got, err := os.ReadFile(path)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(bytes.Equal(got, content)).To(BeTrue(), "the overlay starts as the image")

	// Writes to the overlay never reach the image.
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	g.Expect(err).NotTo(HaveOccurred())
	_, err = f.WriteAt([]byte("SESSION WRITE"), 4096)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(f.Close()).To(Succeed())
	img, _ := os.ReadFile(image)
	g.Expect(bytes.Equal(img, content)).To(BeTrue())

	// A second Ensure (a restart) keeps the existing overlay.
	created, err = s.Ensure(path, image)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(created).To(BeFalse())
	got, _ = os.ReadFile(path)
	g.Expect(string(got[4096 : 4096+13])).To(Equal("SESSION WRITE"))

	list, err := s.List()
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(list).To(Equal([]string{"cafe/seat-1-a.raw"}))

	g.Expect(s.Remove(path)).To(Succeed())
	g.Expect(s.Remove(path)).To(Succeed(), "removing twice is fine")
	_, err = os.Stat(path)
	g.Expect(os.IsNotExist(err)).To(BeTrue())
}

func TestRefusesWithoutReflink(t *testing.T) {
	_, err := Open(testfs.Tmpfs(t), 0)
	NewWithT(t).Expect(err).To(MatchError(ErrNoReflink))
	NewWithT(t).Expect(err.Error()).To(ContainSubstring("mkfs.xfs -m reflink=1"))
}

func TestReserve(t *testing.T) {
	g := NewWithT(t)
	data := testfs.XFS(t, 512<<20)
	s, err := Open(data, 1<<40) // more than the disk
	g.Expect(err).NotTo(HaveOccurred())
	image := filepath.Join(data, "image.raw")
	g.Expect(os.WriteFile(image, []byte("x"), 0o644)).To(Succeed())
	_, err = s.Ensure(s.Path("cafe", "s"), image)
	g.Expect(err).To(MatchError(ErrLowSpace))
	g.Expect(err.Error()).To(ContainSubstring("reserved for running sessions"))
}

// TestSweep: the temporary files a crash left (an overlay being made, a
// reflink probe of an older version) are removed at start; overlays, and
// temporary files written since the start, are not. With a namespace only
// that namespace's directory is swept.
func TestSweep(t *testing.T) {
	g := NewWithT(t)
	data := testfs.XFS(t, 512<<20)
	s, err := Open(data, 0)
	g.Expect(err).NotTo(HaveOccurred())
	write := func(rel string, age time.Duration) string {
		p := filepath.Join(s.Dir(), rel)
		g.Expect(os.MkdirAll(filepath.Dir(p), 0o700)).To(Succeed())
		g.Expect(os.WriteFile(p, []byte("x"), 0o600)).To(Succeed())
		old := time.Now().Add(-age)
		g.Expect(os.Chtimes(p, old, old)).To(Succeed())
		return p
	}
	start := time.Now()
	litter := []string{
		write("cafe/.tmp-seat-1-a-uid.raw-123456", time.Hour),
		write("cafe/persist/.tmp-m1-i1.raw-99", time.Minute),
		write(".reflink-probe-4242", time.Hour),
	}
	kept := []string{
		write("cafe/seat-1-a-uid.raw", time.Hour),           // a running session's overlay
		write("cafe/persist/m1-i1.raw", time.Hour),          // a persistent disk
		write("cafe/.tmp-seat-2-b-uid.raw-7", -time.Second), // being made now
		write("cafe/.other-tool.tmp", time.Hour),            // not a name this package makes
		write("lab/.tmp-seat-9-z-uid.raw-1", time.Hour),     // another namespace (swept last)
	}

	removed, err := s.Sweep(start, "cafe")
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(removed).To(ConsistOf(litter[0], litter[1]), "only the namespace's litter")
	for _, p := range append(kept, litter[2]) {
		g.Expect(p).To(BeAnExistingFile())
	}

	removed, err = s.Sweep(start, "")
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(removed).To(ConsistOf(litter[2], kept[4]))
	for _, p := range kept[:4] {
		g.Expect(p).To(BeAnExistingFile())
	}
	list, err := s.List()
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(list).To(ConsistOf("cafe/seat-1-a-uid.raw", "cafe/persist/m1-i1.raw"))

	// The probe leaves nothing behind.
	_, err = Open(data, 0)
	g.Expect(err).NotTo(HaveOccurred())
	entries, _ := os.ReadDir(s.Dir())
	for _, e := range entries {
		g.Expect(e.Name()).NotTo(HavePrefix(".reflink-probe-"))
	}
}
