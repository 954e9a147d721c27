package target

import (
	"context"
	"os"
	"os/exec"
	"testing"

	. "github.com/onsi/gomega"

	"github.com/ggnet/ggnet/internal/testtgt"
)

// TestTGTInitiatorChangeInPlace: Ensure with only another initiator name
// changes the target's ACL in place (the storage agent retires a prepared
// session so): the session logged in stays, a new login with the old name is
// refused, and binding the old name again lets it log in.
func TestTGTInitiatorChangeInPlace(t *testing.T) {
	g := NewWithT(t)
	tgtd := testtgt.Start(t)
	ctx := context.Background()
	d := &TGT{ControlPort: tgtd.ControlPort}
	a := mutual(sample(t, "r1"))
	g.Expect(d.Ensure(ctx, a)).To(Succeed())
	lun := a.IQN + "/1"
	perf := exec.Command("iscsi-perf", "-i", a.InitiatorIQN, "-t", "60", "iscsi://"+tgtd.Portal+"/"+lun)
	perf.Env = append(os.Environ(), "LIBISCSI_CHAP_USERNAME="+a.CHAPUser, "LIBISCSI_CHAP_PASSWORD="+a.CHAPPassword,
		"LIBISCSI_CHAP_TARGET_USERNAME="+a.TargetUser, "LIBISCSI_CHAP_TARGET_PASSWORD="+a.TargetPassword)
	g.Expect(perf.Start()).To(Succeed())
	t.Cleanup(func() { _ = perf.Process.Kill(); _ = perf.Wait() })
	var running []Connection
	g.Eventually(func() ([]Connection, error) {
		var err error
		running, err = d.Connections(ctx, a.IQN)
		return running, err
	}, "10s").Should(HaveLen(1))

	retired := a
	retired.InitiatorIQN = a.InitiatorIQN + ":retired"
	g.Expect(d.Ensure(ctx, retired)).To(Succeed())
	list, err := d.List(ctx, prefix)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(list).To(ConsistOf(HaveField("InitiatorIQN", retired.InitiatorIQN)))
	g.Expect(d.Connections(ctx, a.IQN)).To(Equal(running), "the session logged in stays")
	out, err := iscsi("iscsi-inq", loginAs(a), tgtd.Portal, lun)
	g.Expect(err).To(HaveOccurred(), "a new login with the old initiator name is refused: "+out)
	g.Expect(d.Ensure(ctx, retired)).To(Succeed(), "idempotent")

	g.Expect(d.Ensure(ctx, a)).To(Succeed())
	g.Expect(d.Connections(ctx, a.IQN)).To(Equal(running), "the session logged in stays")
	out, err = iscsi("iscsi-inq", loginAs(a), tgtd.Portal, lun)
	g.Expect(err).NotTo(HaveOccurred(), "the initiator bound again logs in: "+out)
}
