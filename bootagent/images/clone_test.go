package images

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	. "github.com/onsi/gomega"
)

func TestChecksumSkipsHolesButHashesThem(t *testing.T) {
	for _, tc := range []struct {
		name string
		size int64
		// data runs: offset and length
		runs [][2]int64
	}{
		{"all hole", 5<<20 + 17, nil},
		{"data at both ends", 9 << 20, [][2]int64{{0, 3 << 20}, {8 << 20, 1 << 20}}},
		{"data in the middle, odd sizes", 200<<20 + 4095, [][2]int64{{70<<20 + 13, 5<<20 + 1}, {199 << 20, 4096}}},
		{"empty", 0, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := NewWithT(t)
			p := filepath.Join(t.TempDir(), "disk.raw")
			f, err := os.Create(p)
			g.Expect(err).NotTo(HaveOccurred())
			defer f.Close()
			g.Expect(f.Truncate(tc.size)).To(Succeed())
			rng := rand.NewChaCha8([32]byte{1})
			for _, r := range tc.runs {
				b := make([]byte, r[1])
				_, _ = rng.Read(b)
				_, err := f.WriteAt(b, r[0])
				g.Expect(err).NotTo(HaveOccurred())
			}
			full, err := os.ReadFile(p)
			g.Expect(err).NotTo(HaveOccurred())
			want := sha256.Sum256(full)

			var last [2]int64
			calls := 0
			sum, err := Checksum(context.Background(), f, tc.size, func(done, total int64) {
				calls++
				g.Expect(done).To(BeNumerically(">=", last[0]), "progress only moves on")
				last = [2]int64{done, total}
			})
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(sum).To(Equal(hex.EncodeToString(want[:])))
			g.Expect(last).To(Equal([2]int64{tc.size, tc.size}))
			if tc.size > 2*checksumReport {
				g.Expect(calls).To(BeNumerically(">", 3), "progress along the way, not only at the ends")
			}
		})
	}
}

func TestChecksumStopsWithItsContext(t *testing.T) {
	g := NewWithT(t)
	f, err := os.Create(filepath.Join(t.TempDir(), "disk.raw"))
	g.Expect(err).NotTo(HaveOccurred())
	defer f.Close()
	g.Expect(f.Truncate(1 << 30)).To(Succeed())
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err = Checksum(ctx, f, 1<<30, nil)
	g.Expect(err).To(MatchError(context.Canceled))
}

func TestReflinkFailsWithoutReflinks(t *testing.T) {
	g := NewWithT(t)
	dir := t.TempDir()
	src, err := os.Create(filepath.Join(dir, "src"))
	g.Expect(err).NotTo(HaveOccurred())
	defer src.Close()
	_, err = src.WriteString("disk")
	g.Expect(err).NotTo(HaveOccurred())
	// A pipe is no file to clone into: FICLONE fails, and there is no
	// fallback copy.
	r, w, err := os.Pipe()
	g.Expect(err).NotTo(HaveOccurred())
	defer r.Close()
	defer w.Close()
	g.Expect(Reflink(w, src)).To(MatchError(ContainSubstring("cloning " + src.Name() + " by reflink")))
}
