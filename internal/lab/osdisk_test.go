package lab

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
)

func TestOSSerial(t *testing.T) {
	serial := "GGNET-OS-START 6.1.0-56-amd64\r\n" +
		"ggnet-os: [4.53] modules loaded\r\n" +
		"GGNET-OS-BOOT count=12\r\n" +
		"GGNET-OS-TICK 1\r\n" +
		"GGNET-OS-TICK 2\n" +
		"[   3.1] GGNET-OS-TICK 9\n" + // not at a line's start: not a tick
		"GGNET-OS-TICK 3" // incomplete line
	if n, ok := OSCount(serial); !ok || n != 12 {
		t.Errorf("OSCount = %d, %v; want 12, true", n, ok)
	}
	if got := OSTicks(serial); !reflect.DeepEqual(got, []int{1, 2}) {
		t.Errorf("OSTicks = %v; want [1 2]", got)
	}
	if OSDone(serial) {
		t.Error("OSDone before GGNET-OS-DONE")
	}
	if _, ok := OSFailure(serial); ok {
		t.Error("OSFailure without a GGNET-OS-FAIL line")
	}
	if !OSDone(serial + "\nGGNET-OS-DONE\r\n") {
		t.Error("OSDone misses GGNET-OS-DONE")
	}

	// Two boots in one console (a reboot): the last counter counts.
	if n, ok := OSCount("GGNET-OS-BOOT count=1\nGGNET-OS-BOOT count=2\n"); !ok || n != 2 {
		t.Errorf("OSCount over two boots = %d, %v; want 2, true", n, ok)
	}
	if _, ok := OSCount("GGNET-OS-BOOT count=\n"); ok {
		t.Error("OSCount took a line without a number")
	}
	reason, ok := OSFailure("GGNET-OS-START x\nGGNET-OS-FAIL iscsistart -b (login from the iBFT)\r\n")
	if !ok || reason != "iscsistart -b (login from the iBFT)" {
		t.Errorf("OSFailure = %q, %v", reason, ok)
	}
}

// A small GPT image with an ext4 GGDATA partition, made by the same tools as
// hack/osdisk.sh, read back by ReadGPT and ReadOSCounter.
func TestReadOSCounter(t *testing.T) {
	for _, tool := range []string{"sgdisk", "mkfs.ext4", "debugfs"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s (hack/deps.sh installs it): %v", tool, err)
		}
	}
	dir := t.TempDir()
	files := filepath.Join(dir, "files")
	if err := os.Mkdir(files, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(files, "counter"), []byte("41\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(files, "ticks"), []byte("410\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	raw := filepath.Join(dir, "disk.raw")
	data := filepath.Join(dir, "data.img")
	run(t, "truncate", "-s", "8M", raw)
	run(t, "sgdisk", "-n", "1:2048:+1M", "-t", "1:ef00", "-c", "1:ESP", "-A", "1:set:2",
		"-n", "2:6144:+4M", "-t", "2:8300", "-c", "2:GGDATA", raw)
	run(t, "mkfs.ext4", "-q", "-F", "-L", "GGDATA", "-O", "^has_journal", "-b", "1024", "-d", files, data, "4M")
	run(t, "dd", "if="+data, "of="+raw, "bs=512", "seek=6144", "conv=notrunc", "status=none")

	parts, err := ReadGPT(raw)
	if err != nil {
		t.Fatal(err)
	}
	want := []Partition{
		{Name: "ESP", FirstLBA: 2048, LastLBA: 4095, Attributes: 1 << 2},
		{Name: "GGDATA", FirstLBA: 6144, LastLBA: 14335},
	}
	if !reflect.DeepEqual(parts, want) {
		t.Errorf("ReadGPT = %+v; want %+v", parts, want)
	}
	if n, err := ReadOSCounter(raw); err != nil || n != 41 {
		t.Errorf("ReadOSCounter = %d, %v; want 41", n, err)
	}
	if n, err := ReadOSTicks(raw); err != nil || n != 410 {
		t.Errorf("ReadOSTicks = %d, %v; want 410", n, err)
	}
	if err := os.Remove(filepath.Join(files, "counter")); err != nil {
		t.Fatal(err)
	}
	run(t, "mkfs.ext4", "-q", "-F", "-L", "GGDATA", "-O", "^has_journal", "-b", "1024", "-d", files, data, "4M")
	run(t, "dd", "if="+data, "of="+raw, "bs=512", "seek=6144", "conv=notrunc", "status=none")
	if n, err := ReadOSCounter(raw); err == nil {
		t.Errorf("ReadOSCounter without /counter = %d, nil; want an error", n)
	}
	if _, err := ReadOSCounter(data); err == nil {
		t.Error("ReadOSCounter of an image without a GPT: no error")
	}
}

// The disk hack/osdisk.sh builds (built here if it is not yet: root, Debian
// packages; cached after that, then this takes about a second): both boot
// paths' files are where the firmware and the boot loaders look, and the
// counters start at 0.
func TestOSDisk(t *testing.T) {
	raw, err := OSDiskPath()
	if err != nil {
		t.Fatal(err)
	}
	parts, err := ReadGPT(raw)
	if err != nil {
		t.Fatal(err)
	}
	if len(parts) != 2 || parts[0].Name != "ESP" || parts[1].Name != "GGDATA" {
		t.Fatalf("partitions %+v; want ESP, GGDATA", parts)
	}
	if parts[0].Attributes&(1<<2) == 0 {
		t.Error("the ESP is not legacy-BIOS bootable (gptmbr.bin boots the partition that is)")
	}
	mbr := make([]byte, 512)
	f, err := os.Open(raw)
	if err != nil {
		t.Fatal(err)
	}
	_, err = f.ReadAt(mbr, 0)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	if mbr[510] != 0x55 || mbr[511] != 0xaa || allZero(mbr[:440]) {
		t.Error("no boot code in the MBR")
	}
	if mbr[450] != 0xee {
		t.Errorf("MBR partition 1 type %#x; want the protective 0xee", mbr[450])
	}

	esp := raw + "@@" + strconv.FormatInt(parts[0].Offset(), 10)
	for file, prefix := range map[string]string{
		"::EFI/BOOT/BOOTX64.EFI":      "MZ",
		"::vmlinuz":                   "MZ",
		"::initrd.img":                "\x28\xb5\x2f\xfd", // zstd
		"::syslinux/ldlinux.sys":      "",
		"::syslinux/ldlinux.c32":      "",
		"::syslinux/syslinux.cfg":     "",
		"::loader/loader.conf":        "default ggnet.conf",
		"::loader/entries/ggnet.conf": "",
	} {
		cmd := exec.Command("mcopy", "-n", "-i", esp, file, "-")
		cmd.Env = append(os.Environ(), "MTOOLS_SKIP_CHECK=1")
		out, err := cmd.Output()
		if err != nil {
			t.Errorf("mcopy %s: %v", file, err)
			continue
		}
		if !bytes.HasPrefix(out, []byte(prefix)) || len(out) == 0 {
			t.Errorf("%s starts %q; want %q", file, out[:min(len(out), 16)], prefix)
		}
		if file == "::syslinux/syslinux.cfg" || file == "::loader/entries/ggnet.conf" {
			if !strings.Contains(string(out), "console=ttyS0,115200") {
				t.Errorf("%s: no kernel command line with the serial console:\n%s", file, out)
			}
		}
	}
	if n, err := ReadOSCounter(raw); err != nil || n != 0 {
		t.Errorf("ReadOSCounter = %d, %v; want 0", n, err)
	}
	if n, err := ReadOSTicks(raw); err != nil || n != 0 {
		t.Errorf("ReadOSTicks = %d, %v; want 0", n, err)
	}
}

func run(t *testing.T, name string, args ...string) {
	t.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
}
