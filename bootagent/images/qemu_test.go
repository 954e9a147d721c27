package images

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr"
	. "github.com/onsi/gomega"
)

func qemuImg(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command("qemu-img", args...).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img %v: %v\n%s", args, err, out)
	}
}

// untrusted makes, in dir, the images an attacker could hand in, referring
// to secret (a file on the node), and good ones of the same content.
func untrusted(t *testing.T, dir, secret string) map[string]string {
	raw := filepath.Join(dir, "good.raw")
	if err := os.WriteFile(raw, bytes.Repeat([]byte("golden!!"), 1<<17), 0o644); err != nil { // 1 MiB
		t.Fatal(err)
	}
	p := func(n string) string { return filepath.Join(dir, n) }
	qemuImg(t, "convert", "-f", "raw", "-O", "qcow2", raw, p("good.qcow2"))
	qemuImg(t, "convert", "-f", "raw", "-O", "vmdk", raw, p("good.vmdk"))
	qemuImg(t, "convert", "-f", "raw", "-O", "vmdk", "-o", "subformat=streamOptimized", raw, p("stream.vmdk"))
	qemuImg(t, "convert", "-f", "raw", "-O", "vhdx", raw, p("good.vhdx"))
	qemuImg(t, "create", "-f", "qcow2", "-b", secret, "-F", "raw", p("backing.qcow2"))
	qemuImg(t, "create", "-f", "qcow2", "-o", "data_file="+secret+",data_file_raw=on", p("datafile.qcow2"), "1M")
	qemuImg(t, "create", "-f", "qcow2", p("huge.qcow2"), "2T")
	qemuImg(t, "create", "-f", "vmdk", "-b", p("good.vmdk"), "-F", "vmdk", p("child.vmdk"))
	desc := fmt.Sprintf("# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType=\"monolithicFlat\"\n\n"+
		"# Extent description\nRW 2048 FLAT %q 0\n\n# The Disk Data Base\n#DDB\nddb.virtualHWVersion = \"4\"\n", secret)
	if err := os.WriteFile(p("descriptor.vmdk"), []byte(desc), 0o644); err != nil {
		t.Fatal(err)
	}
	return map[string]string{"raw": raw, "secret": secret}
}

// TestUntrustedImages: images that refer to other files on the node, or
// are too large, are refused with a clear reason before anything is
// converted; good ones convert to the same raw bytes. Real qemu-img.
func TestUntrustedImages(t *testing.T) {
	g := NewWithT(t)
	root := t.TempDir()
	secret := filepath.Join(t.TempDir(), "shadow")
	g.Expect(os.WriteFile(secret, bytes.Repeat([]byte("SECRET!!"), 1<<17), 0o600)).To(Succeed())
	untrusted(t, root, secret)
	raw, _ := os.ReadFile(filepath.Join(root, "good.raw"))

	s := New(t.TempDir(), logr.Discard())
	s.PathRoot = root
	ctx := context.Background()
	for name, tc := range map[string]struct {
		file, format, reason, message string
		max                           int64
	}{
		"qcow2 with a backing file on the node": {"backing.qcow2", "qcow2", ReasonUnsafeImage, "backing file " + secret + " is not allowed", 0},
		"qcow2 with an external data file":      {"datafile.qcow2", "qcow2", ReasonUnsafeImage, "external data file is not allowed", 0},
		"VMDK descriptor naming an extent":      {"descriptor.vmdk", "vmdk", ReasonUnsafeImage, "VMDK extent " + secret + " is not allowed", 0},
		"VMDK with a parent":                    {"child.vmdk", "vmdk", ReasonUnsafeImage, "backing file", 0},
		"qcow2 over the default cap":            {"huge.qcow2", "qcow2", ReasonTooLarge, "the virtual size is 2048.0 GiB, over the Image's maxVirtualSize of 512.0 GiB", 0},
		"qcow2 over the Image's cap":            {"good.qcow2", "qcow2", ReasonTooLarge, "over the Image's maxVirtualSize of 512.0 KiB", 512 << 10},
		"raw over the Image's cap":              {"good.raw", "raw", ReasonTooLarge, "over the 512.0 KiB this Image accepts", 512 << 10},
		"not what the format says":              {"good.raw", "qcow2", ReasonConvertFailed, "qemu-img info (format qcow2)", 0},
	} {
		_, err := s.Ensure(ctx, "cafe", "bad", "u-bad", Source{Path: filepath.Join(root, tc.file), Format: tc.format, MaxVirtualSize: tc.max}, nil)
		reason, msg := failure(err)
		g.Expect(reason).To(Equal(tc.reason), "%s: %v", name, err)
		g.Expect(msg).To(ContainSubstring(tc.message), name)
	}
	g.Expect(entries(t, s.Dir)).To(BeEmpty(), "nothing placed, no temporary file left")

	// An Image may lower the node's cap, never raise it past the operator's.
	small := New(t.TempDir(), logr.Discard())
	small.PathRoot = root
	small.MaxVirtualSize = 512 << 10
	_, err := small.Ensure(ctx, "cafe", "raised", "u-raised", Source{Path: filepath.Join(root, "good.qcow2"), Format: "qcow2", MaxVirtualSize: 1 << 40}, nil)
	reason, msg := failure(err)
	g.Expect(reason).To(Equal(ReasonTooLarge), "an Image's maxVirtualSize over the node's cap: %v", err)
	g.Expect(msg).To(ContainSubstring("512.0 KiB"))

	for _, f := range []struct{ file, format string }{{"good.qcow2", "qcow2"}, {"good.vmdk", "vmdk"}, {"stream.vmdk", "vmdk"}, {"good.vhdx", "vhdx"}} {
		var states []string
		r, err := s.Ensure(ctx, "cafe", strings.ReplaceAll(f.file, ".", "-"), "u1", Source{Path: filepath.Join(root, f.file), Format: f.format},
			func(p Progress) {
				if len(states) == 0 || states[len(states)-1] != string(p.State) {
					states = append(states, string(p.State))
				}
			})
		g.Expect(err).NotTo(HaveOccurred(), f.file)
		got, _ := os.ReadFile(r.Path)
		g.Expect(bytes.Equal(got, raw)).To(BeTrue(), "%s converted to the same raw bytes", f.file)
		st, _ := os.Stat(r.Path)
		g.Expect(st.Mode().Perm()).To(Equal(os.FileMode(0o600)), f.file)
		g.Expect(states).To(Equal([]string{"Pending", "Converting"}), f.file)
	}

	t.Run("over HTTP", func(t *testing.T) {
		g := NewWithT(t)
		backing, _ := os.ReadFile(filepath.Join(root, "backing.qcow2"))
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write(backing) }))
		defer srv.Close()
		_, err := s.Ensure(ctx, "cafe", "web", "u-web", Source{URL: srv.URL + "/win.qcow2", SHA256: sum(backing), Format: "qcow2"}, nil)
		reason, msg := failure(err)
		g.Expect(reason).To(Equal(ReasonUnsafeImage))
		g.Expect(msg).To(Equal("backing file " + secret + " is not allowed: an image must be one self-contained file"))
	})
}

// TestCheckInfo: the second check, on what real qemu-img info says of each
// image (here run directly, as the test's user), refuses what the header
// check refused first.
func TestCheckInfo(t *testing.T) {
	g := NewWithT(t)
	dir := t.TempDir()
	secret := filepath.Join(t.TempDir(), "shadow")
	g.Expect(os.WriteFile(secret, make([]byte, 1<<20), 0o600)).To(Succeed())
	untrusted(t, dir, secret)
	for file, want := range map[string]string{
		"backing.qcow2":   "backing file " + secret + " is not allowed",
		"datafile.qcow2":  "external data file " + secret + " is not allowed",
		"descriptor.vmdk": "VMDK extent " + secret + " is not allowed",
		"child.vmdk":      "backing file " + filepath.Join(dir, "good.vmdk") + " is not allowed",
		"huge.qcow2":      "over the Image's maxVirtualSize",
		"good.qcow2":      "",
		"good.vmdk":       "",
		"stream.vmdk":     "",
	} {
		format := strings.TrimPrefix(filepath.Ext(file), ".")
		out, err := exec.Command("qemu-img", "info", "--output=json", "-f", format, filepath.Join(dir, file)).Output()
		g.Expect(err).NotTo(HaveOccurred(), file)
		var info qemuInfo
		g.Expect(json.Unmarshal(out, &info)).To(Succeed())
		err = checkInfo(info, filepath.Join(dir, file), 512<<30)
		if want == "" {
			g.Expect(err).NotTo(HaveOccurred(), file)
			continue
		}
		_, msg := failure(err)
		g.Expect(msg).To(ContainSubstring(want), file)
	}
}

// TestQemuSandbox: qemu-img runs as nobody under prlimit's limits, with
// nothing in its environment, and is killed at its timeout. A shell stands
// in for qemu-img to show what it gets.
func TestQemuSandbox(t *testing.T) {
	g := NewWithT(t)
	q := DefaultQemu()
	q.Command = "sh"
	t.Setenv("GGNET_TEST_SECRET", "hunter2")
	out, err := q.run(context.Background(), 10*time.Second, 1<<20, nil, "-c", "id -u; id -g; ulimit -v; ulimit -c; env")
	g.Expect(err).NotTo(HaveOccurred())
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	g.Expect(lines[:4]).To(Equal([]string{"65534", "65534", "4194304", "0"}), "nobody, 4 GiB of address space, no core dumps")
	g.Expect(string(out)).NotTo(ContainSubstring("hunter2"), "the agent's environment is not passed on")

	start := time.Now()
	q.Command = "sleep"
	_, err = q.run(context.Background(), 300*time.Millisecond, 0, nil, "30")
	g.Expect(err).To(MatchError("timed out after 300ms"))
	g.Expect(time.Since(start)).To(BeNumerically("<", 5*time.Second))

	q.Command = "sh"
	f, err := os.OpenFile(filepath.Join(t.TempDir(), "out"), os.O_CREATE|os.O_RDWR, 0o666)
	g.Expect(err).NotTo(HaveOccurred())
	defer f.Close()
	g.Expect(f.Chmod(0o666)).To(Succeed())
	write := "dd if=/dev/zero of=/dev/fd/3 bs=8192 count=1 status=none"
	_, err = q.run(context.Background(), 10*time.Second, 1<<20, []*os.File{f}, "-c", write)
	g.Expect(err).NotTo(HaveOccurred(), "the output descriptor is writable")
	_, err = q.run(context.Background(), 10*time.Second, 4096, []*os.File{f}, "-c", write)
	g.Expect(err).To(HaveOccurred(), "the file size limit holds")
}

func TestSetIDCapable(t *testing.T) {
	g := NewWithT(t)
	g.Expect(setIDCapable("Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t000001fffeffffff\n")).To(BeTrue())
	g.Expect(setIDCapable("CapEff:\t000001fffeffff3f\n")).To(BeFalse(), "setuid and setgid dropped")
	g.Expect(setIDCapable("CapEff:\t0000000000000000\n")).To(BeFalse())
	g.Expect(setIDCapable("")).To(BeFalse())
}

// TestConvertWithoutSetIDCaps runs the test binary again as root without
// CAP_SETUID and CAP_SETGID (the chart's agent container drops every
// capability): qemu-img then runs as the agent's user, and an image still
// converts, and an unsafe one is still refused.
func TestConvertWithoutSetIDCaps(t *testing.T) {
	g := NewWithT(t)
	if os.Getenv("GGNET_TEST_NO_SETID") == "" {
		cmd := exec.Command("setpriv", "--bounding-set=-setuid,-setgid", os.Args[0], "-test.run=^TestConvertWithoutSetIDCaps$", "-test.v")
		cmd.Env = append(os.Environ(), "GGNET_TEST_NO_SETID=1")
		out, err := cmd.CombinedOutput()
		g.Expect(err).NotTo(HaveOccurred(), string(out))
		g.Expect(string(out)).To(ContainSubstring("--- PASS: TestConvertWithoutSetIDCaps"))
		return
	}
	q := DefaultQemu()
	g.Expect(q.dropsPrivileges()).To(BeFalse())
	g.Expect(q.Sandbox()).To(ContainSubstring("give the storage agent CAP_SETUID and CAP_SETGID"))
	root := t.TempDir()
	secret := filepath.Join(t.TempDir(), "shadow")
	g.Expect(os.WriteFile(secret, make([]byte, 1<<20), 0o600)).To(Succeed())
	untrusted(t, root, secret)
	raw, _ := os.ReadFile(filepath.Join(root, "good.raw"))
	s := New(t.TempDir(), logr.Discard())
	s.PathRoot = root
	r, err := s.Ensure(context.Background(), "cafe", "win", "u1", Source{Path: filepath.Join(root, "good.qcow2"), Format: "qcow2"}, nil)
	g.Expect(err).NotTo(HaveOccurred())
	got, _ := os.ReadFile(r.Path)
	g.Expect(bytes.Equal(got, raw)).To(BeTrue())
	_, err = s.Ensure(context.Background(), "cafe", "bad", "u2", Source{Path: filepath.Join(root, "child.vmdk"), Format: "vmdk"}, nil)
	reason, _ := failure(err)
	g.Expect(reason).To(Equal(ReasonUnsafeImage))
}
