package target

import (
	"bufio"
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	. "github.com/onsi/gomega"

	"github.com/ggnet/ggnet/internal/testtgt"
)

// initiator is a qemu-io process holding one iSCSI session to a LUN, taking
// qemu-io commands one at a time (Debian's qemu-block-extra has its iscsi
// driver). qemu does no mutual CHAP; the secret goes through a file.
type initiator struct {
	t     *testing.T
	cmd   *exec.Cmd
	in    io.WriteCloser
	lines chan string
}

func startInitiator(t *testing.T, portal string, x Target) *initiator {
	t.Helper()
	for _, tool := range []string{"qemu-io", "stdbuf"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s: %v (hack/deps.sh installs qemu-utils and qemu-block-extra)", tool, err)
		}
	}
	pw := filepath.Join(t.TempDir(), "chap")
	if err := os.WriteFile(pw, []byte(x.CHAPPassword), 0o600); err != nil {
		t.Fatal(err)
	}
	opts := "driver=raw,file.driver=iscsi,file.transport=tcp,file.portal=" + portal + ",file.target=" + x.IQN +
		",file.lun=1,file.initiator-name=" + x.InitiatorIQN + ",file.user=" + x.CHAPUser + ",file.password-secret=chap"
	// stdbuf: a line of output per command as it completes, not at exit.
	cmd := exec.Command("stdbuf", "-oL", "qemu-io", "--object", "secret,id=chap,file="+pw, "--image-opts", opts)
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	i := &initiator{t: t, cmd: cmd, in: in, lines: make(chan string, 64)}
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			i.lines <- sc.Text()
		}
		close(i.lines)
	}()
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	return i
}

// do runs a qemu-io command and waits for the line that says it succeeded;
// any other outcome (a failed pattern check, an I/O error, qemu-io gone)
// fails the test with what qemu-io said.
func (i *initiator) do(command, success string) {
	i.t.Helper()
	if _, err := io.WriteString(i.in, command+"\n"); err != nil {
		i.t.Fatalf("qemu-io %q: %v", command, err)
	}
	var said []string
	timeout := time.After(30 * time.Second)
	for {
		select {
		case l, ok := <-i.lines:
			if !ok {
				i.t.Fatalf("qemu-io exited during %q: %s", command, strings.Join(said, "\n"))
			}
			said = append(said, l)
			if strings.Contains(l, "failed") || strings.Contains(l, "error") {
				i.t.Fatalf("qemu-io %q: %s", command, strings.Join(said, "\n"))
			}
			if strings.Contains(l, success) {
				return
			}
		case <-timeout:
			i.t.Fatalf("qemu-io %q: no answer in 30s: %s", command, strings.Join(said, "\n"))
		}
	}
}

// TestTGTAdoptedByANewAgent: tgtd outlives the agent. A new driver (what a
// restarted or upgraded storage agent makes) re-attaches to the running
// tgtd: Ensure keeps the target (same tid) and the logged-in initiator's
// session (same I_T nexus), which reads what it wrote before and writes on.
func TestTGTAdoptedByANewAgent(t *testing.T) {
	g := NewWithT(t)
	tgtd := testtgt.Start(t)
	ctx := context.Background()
	x := sample(t, "adopt")
	before := &TGT{ControlPort: tgtd.ControlPort}
	g.Expect(before.Ensure(ctx, x)).To(Succeed())

	pc := startInitiator(t, tgtd.Portal, x)
	pc.do("write -P 0x5a 0 65536", "wrote 65536/65536 bytes")
	conns, err := before.Connections(ctx, x.IQN)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(conns).To(HaveLen(1))
	g.Expect(conns[0].Initiator).To(Equal(x.InitiatorIQN))
	tid := func(d *TGT) int {
		all, err := d.show(ctx)
		g.Expect(err).NotTo(HaveOccurred())
		for _, t := range all {
			if t.iqn == x.IQN {
				return t.tid
			}
		}
		return 0
	}
	oldTid := tid(before)
	g.Expect(oldTid).NotTo(BeZero())

	// The agent is gone; a new one starts with nothing in memory.
	after := &TGT{ControlPort: tgtd.ControlPort}
	g.Expect(after.Ensure(ctx, x)).To(Succeed())
	g.Expect(after.Ensure(ctx, x)).To(Succeed(), "and its resyncs")
	g.Expect(tid(after)).To(Equal(oldTid), "the target was adopted, not made again")
	g.Expect(after.Connections(ctx, x.IQN)).To(Equal(conns), "the initiator's session is untouched")
	list, err := after.List(ctx, prefix)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(list).To(Equal([]Target{{IQN: x.IQN, LUN: 1, Path: x.Path, InitiatorIQN: x.InitiatorIQN, CHAPUser: x.CHAPUser}}))

	pc.do("read -P 0x5a 0 65536", "read 65536/65536 bytes")
	pc.do("write -P 0xa5 65536 4096", "wrote 4096/4096 bytes")
	pc.do("read -P 0xa5 65536 4096", "read 4096/4096 bytes")
	g.Expect(after.Connections(ctx, x.IQN)).To(Equal(conns), "still the first session")
	_, _ = io.WriteString(pc.in, "quit\n")
	g.Expect(pc.cmd.Wait()).To(Succeed())

	// What the initiator wrote is in the backing file.
	b, err := os.ReadFile(x.Path)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(b[0]).To(Equal(byte(0x5a)))
	g.Expect(b[65535]).To(Equal(byte(0x5a)))
	g.Expect(b[65536]).To(Equal(byte(0xa5)))
}
