package overlay

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

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
