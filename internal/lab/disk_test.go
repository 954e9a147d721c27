package lab

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	. "github.com/onsi/gomega"
)

// The embedded bytes are exactly what nasm makes of testdata/boot.asm. On a
// machine without nasm the source cannot be checked; the sector's shape and
// messages still are.
func TestBootSector(t *testing.T) {
	g := NewWithT(t)
	g.Expect(bootSector).To(HaveLen(512))
	g.Expect(bootSector[510:]).To(Equal([]byte{0x55, 0xaa}))
	for _, s := range []string{Marker, TickMarker, RetryMarker, VerifyFailMarker} {
		g.Expect(bytes.Contains(bootSector, []byte(s))).To(BeTrue(), s)
	}
	if _, err := exec.LookPath("nasm"); err != nil {
		t.Log("nasm is not installed: testdata/boot.bin not reassembled from testdata/boot.asm")
		return
	}
	out := filepath.Join(t.TempDir(), "boot.bin")
	b, err := exec.Command("nasm", "-f", "bin", "-o", out, "testdata/boot.asm").CombinedOutput()
	g.Expect(err).NotTo(HaveOccurred(), string(b))
	want, err := os.ReadFile(out)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(bytes.Equal(bootSector, want)).To(BeTrue(), "testdata/boot.bin is not what nasm makes of testdata/boot.asm")
}

func TestTicks(t *testing.T) {
	g := NewWithT(t)
	serial := "iPXE\n" + Marker + "3\nGGNET-TICK 7\nGGNET-TICK 8\n" + RetryMarker + "1\nGGNET-TICK 9\nGGNET-TICK 1"
	g.Expect(Ticks(serial)).To(Equal([]uint32{7, 8, 9}), "the last line is not complete")
}

// The demo disk booted from a local drive (no network, QEMU TCG) keeps
// ticking, each tick one more than the disk held; a second boot counts on.
func TestDemoDiskTicks(t *testing.T) {
	g := NewWithT(t)
	disk := filepath.Join(t.TempDir(), "demo.raw")
	g.Expect(WriteDemoDisk(disk, 1<<20)).To(Succeed())
	run := func(wantBoot string, ticks int) []uint32 {
		serial := filepath.Join(t.TempDir(), "serial.txt")
		cmd := exec.Command("qemu-system-x86_64", "-machine", "pc,accel=tcg", "-m", "32", "-display", "none",
			"-serial", "file:"+serial, "-monitor", "none", "-no-reboot", "-nic", "none",
			"-drive", "file="+disk+",format=raw,if=ide")
		g.Expect(cmd.Start()).To(Succeed())
		defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
		var got []uint32
		g.Eventually(func() int {
			b, _ := os.ReadFile(serial)
			s := strings.ReplaceAll(string(b), "\r", "")
			g.Expect(s).NotTo(ContainSubstring(VerifyFailMarker))
			g.Expect(s).NotTo(ContainSubstring(RetryMarker))
			if strings.Contains(s, Marker) {
				g.Expect(s).To(ContainSubstring(Marker + wantBoot + "\n"))
			}
			got = Ticks(s)
			return len(got)
		}, 2*time.Minute, 200*time.Millisecond).Should(BeNumerically(">=", ticks))
		return got
	}
	first := run("1", 3)
	g.Expect(first[0]).To(Equal(uint32(1)))
	for i := 1; i < len(first); i++ {
		g.Expect(first[i]).To(Equal(first[i-1]+1), "ticks %v", first)
	}
	c, err := ReadCounters(disk)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(c.Boots).To(Equal(uint16(1)))
	g.Expect(c.Ticks).To(BeNumerically(">=", first[len(first)-1]))

	second := run("2", 1)
	g.Expect(second[0]).To(Equal(c.Ticks+1), "the second boot's first tick counts on from the disk")
}
