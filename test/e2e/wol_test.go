package e2e

import (
	"bytes"
	"errors"
	"net"
	"os/exec"
	"sync"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	bootv1 "github.com/ggnet/ggnet/api/v1alpha1"
	"github.com/ggnet/ggnet/bootagent/wol"
	"github.com/ggnet/ggnet/internal/lab"
)

// wolFrame is one Wake-on-LAN datagram seen on the bridge.
type wolFrame struct {
	at      time.Time
	dst     net.HardwareAddr
	payload []byte
}

// captureWOL plugs a host into the lab's bridge (another PC's NIC on the
// boot LAN) and captures, with an AF_PACKET socket on its eth0, every UDP
// datagram to port wol.Port that reaches it, until the spec ends. The
// capture is not on the bridge itself: with no VM running, the bridge's
// only ports are taps no QEMU holds open, so it has no carrier, and the
// kernel drops what is sent on it before any tap on the bridge sees it
// (a real boot LAN has a NIC with carrier; the host is that link here).
func captureWOL(name, ip string) func() []wolFrame {
	GinkgoHelper()
	h, err := l.AddHost(name, ip)
	Expect(err).NotTo(HaveOccurred())
	// The host goes with the spec: the lab's bridge keeps no carrier of it.
	DeferCleanup(func() { _ = exec.Command("ip", "netns", "del", h.Netns).Run() })
	htons := func(v uint16) uint16 { return v<<8 | v>>8 }
	fd := -1
	Expect(h.Do(func() error {
		var err error
		fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(htons(unix.ETH_P_ALL)))
		if err != nil {
			return err
		}
		ifi, err := net.InterfaceByName("eth0")
		if err != nil {
			return err
		}
		return unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: ifi.Index})
	})).To(Succeed())
	Expect(unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Usec: 200000})).To(Succeed())
	var mu sync.Mutex
	var frames []wolFrame
	done := make(chan struct{})
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		buf := make([]byte, 65536)
		for {
			select {
			case <-done:
				return
			default:
			}
			n, _, err := unix.Recvfrom(fd, buf, 0)
			if err != nil {
				if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
					continue
				}
				return
			}
			f := buf[:n]
			// Ethernet, IPv4, UDP to port 9.
			if n < 14+20+8 || f[12] != 0x08 || f[13] != 0x00 || f[14+9] != 17 {
				continue
			}
			udp := 14 + int(f[14]&0x0f)*4
			if n < udp+8 || int(f[udp+2])<<8|int(f[udp+3]) != wol.Port {
				continue
			}
			mu.Lock()
			frames = append(frames, wolFrame{at: time.Now(), dst: net.HardwareAddr(bytes.Clone(f[:6])), payload: bytes.Clone(f[udp+8:])})
			mu.Unlock()
		}
	}()
	DeferCleanup(func() {
		close(done)
		<-stopped
		unix.Close(fd)
	})
	return func() []wolFrame {
		mu.Lock()
		defer mu.Unlock()
		return append([]wolFrame(nil), frames...)
	}
}

var _ = Describe("Wake-on-LAN", func() {
	It("a Ready session with spec.wake: the magic packet with the SecureOn password is broadcast on the boot LAN, wakeSent stamped, sent again until the machine's DHCP, then the machine boots", func() {
		const password = "0a:1b:2c:3d:4e:5f"
		sec := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: lab.Namespace, Name: "seat-secureon"},
			Type: bootv1.SecureOnSecretType, Data: map[string][]byte{wol.PasswordKey: []byte(password)}}
		Expect(l.Client.Create(ctx, sec)).To(Succeed())
		DeferCleanup(func() { _ = l.Client.Delete(ctx, sec) })
		m := machine(bootv1.BootPolicyManual, bootv1.WritebackDiscard)
		// A patch, not an update: the manager writes the new Machine (its
		// finalizer, its status) at the same time, and an update of the
		// copy machine() returned would conflict with that.
		before := m.DeepCopy()
		m.Spec.WakeOnLAN = &bootv1.WakeOnLAN{SecureOnSecretRef: &bootv1.LocalObjectReference{Name: sec.Name}}
		Expect(l.Client.Patch(ctx, m, client.MergeFrom(before))).To(Succeed())

		// The lab's boot agent sends (its Waker, with the default resend time).
		frames := captureWOL("sleeper", "10.99.0.248")

		s := &bootv1.BootSession{ObjectMeta: metav1.ObjectMeta{Namespace: lab.Namespace, Name: "wake"}, Spec: bootv1.BootSessionSpec{
			MachineRef: bootv1.LocalObjectReference{Name: m.Name}, ImageRef: bootv1.LocalObjectReference{Name: "demo"}, Wake: true}}
		Expect(l.Client.Create(ctx, s)).To(Succeed())
		Expect(l.WaitPhase(ctx, s, bootv1.SessionReady, time.Minute)).To(Succeed())
		rememberCredentials(s)

		By("the magic packet: broadcast, 6×0xff, 16× the MAC, the SecureOn password")
		Eventually(func() int { return len(frames()) }, 30*time.Second, 100*time.Millisecond).Should(BeNumerically(">=", 1))
		mac, err := net.ParseMAC(m.Spec.MAC)
		Expect(err).NotTo(HaveOccurred())
		want := append(bytes.Repeat([]byte{0xff}, 6), bytes.Repeat(mac, 16)...)
		want = append(want, 0x0a, 0x1b, 0x2c, 0x3d, 0x4e, 0x5f)
		first := frames()[0]
		Expect(first.dst.String()).To(Equal("ff:ff:ff:ff:ff:ff"))
		Expect(first.payload).To(Equal(want), "% x", first.payload)
		Eventually(func() *metav1.Time {
			_ = l.Client.Get(ctx, client.ObjectKeyFromObject(s), s)
			return s.Status.Timeline.WakeSent
		}, 30*time.Second).ShouldNot(BeNil())

		By("no DHCP from the machine: sent again after the resend time")
		Eventually(func() int { return len(frames()) }, wol.DefaultResend+20*time.Second, 100*time.Millisecond).Should(BeNumerically(">=", 2))
		f := frames()
		Expect(f[1].payload).To(Equal(want))
		Expect(f[1].at.Sub(f[0].at)).To(BeNumerically(">=", wol.DefaultResend-time.Second))

		By("the machine powers on (as the packet would make it): DHCP, boot, and no more packets")
		b := boot(m)
		Expect(b.Count).To(Equal(1))
		Eventually(phase(s), 30*time.Second).ShouldNot(Equal(bootv1.SessionReady))
		n := len(frames())
		Consistently(func() int { return len(frames()) }, wol.DefaultResend+5*time.Second, time.Second).Should(Equal(n), "no packet once the machine booted")
		Eventually(func() *metav1.Time {
			_ = l.Client.Get(ctx, client.ObjectKeyFromObject(s), s)
			return s.Status.Timeline.DHCP
		}, 30*time.Second).ShouldNot(BeNil())
		Expect(s.Status.Timeline.WakeSent).NotTo(BeNil(), "wakeSent stays after the agent's DHCP and script stamps")
		Expect(s.Status.Timeline.WakeSent.Time).To(BeTemporally("<=", s.Status.Timeline.DHCP.Add(time.Second)))

		logs, err := l.Logs()
		Expect(err).NotTo(HaveOccurred())
		Expect(logs["bootagent.log"]).To(ContainSubstring("Sent a wake-on-LAN magic packet"))
		for name, text := range logs {
			Expect(text).NotTo(ContainSubstring(password), "the SecureOn password is in %s", name)
			Expect(text).NotTo(ContainSubstring("0a1b2c3d4e5f"), "the SecureOn password is in %s", name)
		}
		stop(s)
	})
})
