package v1alpha1_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/controller-runtime/pkg/client"

	bootv1 "github.com/ggnet/ggnet/api/v1alpha1"
	"github.com/ggnet/ggnet/internal/fixture"
	"github.com/ggnet/ggnet/internal/testenv"
)

// expectRefused asserts that err is an Invalid error whose message contains
// every one of wants, and prints the message the user would read.
func expectRefused(err error, wants ...string) {
	GinkgoHelper()
	Expect(err).To(HaveOccurred(), "the API server accepted an invalid object")
	Expect(apierrors.IsInvalid(err)).To(BeTrue(), "want Invalid, got %v", err)
	for _, w := range wants {
		Expect(err.Error()).To(ContainSubstring(w))
	}
	GinkgoWriter.Printf("refused: %s\n", err)
}

var _ = Describe("Machine validation", func() {
	DescribeTable("refuses bad input with a message a person understands",
		func(opt fixture.MachineOption, wants ...string) {
			ns := newNamespace()
			expectRefused(k8sClient.Create(ctx, fixture.Machine(ns, "seat-1", opt)), wants...)
		},
		Entry("malformed MAC", fixture.WithMAC("52:54:00:12:34"),
			"spec.mac", "mac must be six lowercase hex pairs separated by colons, like 52:54:00:12:34:56"),
		Entry("uppercase MAC", fixture.WithMAC("52:54:00:AB:CD:EF"),
			"spec.mac", "mac must be six lowercase hex pairs separated by colons"),
		Entry("dash-separated MAC", fixture.WithMAC("52-54-00-ab-cd-ef"),
			"spec.mac", "mac must be six lowercase hex pairs separated by colons"),
		Entry("bad IPv4 address", fixture.WithAddress("10.20.0.300"),
			"spec.ipv4.address", "address must be an IPv4 address such as 10.20.0.31"),
		Entry("IPv6 address", fixture.WithAddress("fd00::31"),
			"spec.ipv4.address", "address must be an IPv4 address"),
		Entry("prefix too long", func(m *bootv1.Machine) { m.Spec.IPv4.PrefixLength = 33 },
			"spec.ipv4.prefixLength", "less than or equal to 32"),
		Entry("prefix zero", func(m *bootv1.Machine) { m.Spec.IPv4.PrefixLength = 0 },
			"spec.ipv4.prefixLength"),
		Entry("gateway equal to the address", func(m *bootv1.Machine) { m.Spec.IPv4.Gateway = "10.20.0.31" },
			"gateway must differ from the reserved address"),
		Entry("gateway not an address", func(m *bootv1.Machine) { m.Spec.IPv4.Gateway = "router" },
			"spec.ipv4.gateway", "gateway must be an IPv4 address"),
		Entry("bad DNS entry", func(m *bootv1.Machine) { m.Spec.IPv4.DNS = []string{"10.20.0.1", "dns.local"} },
			"spec.ipv4.dns", "every dns entry must be an IPv4 address"),
		Entry("too many DNS servers", func(m *bootv1.Machine) {
			m.Spec.IPv4.DNS = []string{"10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5"}
		}, "spec.ipv4.dns", "must have at most 4 items"),
		Entry("unknown boot policy", fixture.WithBootPolicy("Always"),
			"spec.bootPolicy", `Unsupported value: "Always"`, `"Manual", "AutoSession", "LocalBoot"`),
		Entry("unknown firmware", func(m *bootv1.Machine) { m.Spec.Firmware = "CSM" },
			"spec.firmware", `Unsupported value: "CSM"`),
		Entry("hostname with an underscore", func(m *bootv1.Machine) { m.Spec.Hostname = "seat_1" },
			"spec.hostname", "hostname must be a DNS label"),
	)

	It("refuses a Machine without a MAC", func() {
		ns := newNamespace()
		u := &unstructured.Unstructured{Object: map[string]any{
			"apiVersion": "boot.ggnet.io/v1alpha1", "kind": "Machine",
			"metadata": map[string]any{"name": "seat-1", "namespace": ns},
			"spec":     map[string]any{"hostname": "seat-1"},
		}}
		expectRefused(k8sClient.Create(ctx, u), "spec.mac", "Required value")
	})

	It("accepts a Machine without a reservation, for proxyDHCP", func() {
		ns := newNamespace()
		m := fixture.Machine(ns, "seat-1", func(m *bootv1.Machine) { m.Spec.IPv4 = nil })
		Expect(k8sClient.Create(ctx, m)).To(Succeed())
		Expect(m.Spec.BootPolicy).To(Equal(bootv1.BootPolicyManual), "default boot policy")
		Expect(m.Spec.Firmware).To(Equal(bootv1.FirmwareAuto), "default firmware")
	})

	// The older Machine wins a MAC or an address: an old Machine edited to a
	// victim's MAC would boot the victim's PC into another image.
	DescribeTable("refuses taking a MAC or an address after creation",
		func(create, update fixture.MachineOption, wants ...string) {
			ns := newNamespace()
			m := fixture.Machine(ns, "seat-1", create)
			Expect(k8sClient.Create(ctx, m)).To(Succeed())
			update(m)
			expectRefused(k8sClient.Update(ctx, m), wants...)
		},
		Entry("another MAC", fixture.WithMAC("52:54:00:12:34:56"), fixture.WithMAC("52:54:00:65:43:21"),
			"spec.mac", "mac is immutable: a new NIC is a new Machine — create one"),
		Entry("another address", fixture.WithAddress("10.20.0.31"), fixture.WithAddress("10.20.0.32"),
			"spec.ipv4.address", "ipv4.address is immutable"),
		Entry("an address added to a Machine made without a reservation",
			func(m *bootv1.Machine) { m.Spec.IPv4 = nil },
			func(m *bootv1.Machine) {
				m.Spec.IPv4 = &bootv1.IPv4Reservation{Address: "10.20.0.32", PrefixLength: 24}
			},
			"spec.ipv4.address", "ipv4.address is immutable"),
		Entry("another reservation with another address", fixture.WithAddress("10.20.0.31"), func(m *bootv1.Machine) {
			m.Spec.IPv4 = &bootv1.IPv4Reservation{Address: "10.30.0.31", PrefixLength: 16}
		}, "spec.ipv4.address", "ipv4.address is immutable"),
	)

	It("takes every other change, and removing the reservation", func() {
		ns := newNamespace()
		m := fixture.Machine(ns, "seat-1", fixture.WithAddress("10.20.0.31"))
		Expect(k8sClient.Create(ctx, m)).To(Succeed())
		mac := m.Spec.MAC
		Expect(k8sClient.Update(ctx, m)).To(Succeed(), "the same MAC and address again")
		m.Spec.Hostname = "seat-one"
		m.Spec.BootPolicy = bootv1.BootPolicyAutoSession
		m.Spec.IPv4.PrefixLength = 16
		m.Spec.IPv4.Gateway = "10.20.0.254"
		m.Spec.IPv4.DNS = []string{"10.20.0.53"}
		Expect(k8sClient.Update(ctx, m)).To(Succeed())
		m.Spec.IPv4 = nil
		Expect(k8sClient.Update(ctx, m)).To(Succeed(), "giving up an address takes nothing from anyone")
		Expect(m.Spec.MAC).To(Equal(mac))
		Expect(m.Spec.IPv4).To(BeNil())
	})
})

var _ = Describe("Image validation", func() {
	DescribeTable("refuses bad input",
		func(opt fixture.ImageOption, wants ...string) {
			ns := newNamespace()
			expectRefused(k8sClient.Create(ctx, fixture.Image(ns, "win11", opt)), wants...)
		},
		Entry("no source", func(i *bootv1.Image) { i.Spec.Source = bootv1.ImageSource{} },
			"exactly one of http, path or writeback must be set"),
		Entry("two sources", func(i *bootv1.Image) {
			i.Spec.Source.HTTP = &bootv1.HTTPSource{URL: "http://images.local/a.raw", SHA256: strings.Repeat("a", 64)}
		}, "exactly one of http, path or writeback must be set"),
		Entry("ftp URL", fixture.WithHTTPSource("ftp://images.local/a.raw", strings.Repeat("a", 64)),
			"spec.source.http.url", "url must be an http:// or https:// URL"),
		Entry("short checksum", fixture.WithHTTPSource("http://images.local/a.raw", "abc"),
			"spec.source.http.sha256", "sha256 must be 64 lowercase hex digits"),
		Entry("relative path", func(i *bootv1.Image) { i.Spec.Source.Path.Path = "images/a.raw" },
			"spec.source.path.path", "path must be absolute"),
		Entry("unknown format", func(i *bootv1.Image) { i.Spec.Format = "iso" },
			"spec.format", `Unsupported value: "iso"`, `"raw", "qcow2", "vmdk", "vhdx", "vpc"`),
	)

	It("refuses a change of source", func() {
		ns := newNamespace()
		img := fixture.Image(ns, "win11")
		Expect(k8sClient.Create(ctx, img)).To(Succeed())
		img.Spec.Source.Path.Path = "/srv/other.raw"
		expectRefused(k8sClient.Update(ctx, img), "spec.source", "source is immutable: create a new Image for a new version")
	})
})

var _ = Describe("BootSession validation", func() {
	var ns string
	BeforeEach(func() { ns = newNamespace() })

	DescribeTable("refuses a change of an immutable field",
		func(change func(*bootv1.BootSession), wants ...string) {
			s := fixture.Session(ns, "seat-1-a", "seat-1", "win11")
			Expect(k8sClient.Create(ctx, s)).To(Succeed())
			change(s)
			expectRefused(k8sClient.Update(ctx, s), wants...)
		},
		Entry("machineRef", func(s *bootv1.BootSession) { s.Spec.MachineRef.Name = "seat-2" },
			"spec.machineRef", "machineRef is immutable: create a new BootSession"),
		Entry("imageRef", func(s *bootv1.BootSession) { s.Spec.ImageRef.Name = "win10" },
			"spec.imageRef", "imageRef is immutable"),
		Entry("writeback", func(s *bootv1.BootSession) { s.Spec.Writeback = bootv1.WritebackPersist },
			"spec.writeback", "writeback is immutable"),
	)

	It("refuses restarting a stopped session", func() {
		s := fixture.Session(ns, "seat-1-a", "seat-1", "win11")
		s.Spec.Stopped = true
		Expect(k8sClient.Create(ctx, s)).To(Succeed())
		s.Spec.Stopped = false
		expectRefused(k8sClient.Update(ctx, s), "a stopped session cannot be restarted")
	})

	It("refuses an unknown writeback policy", func() {
		expectRefused(k8sClient.Create(ctx, fixture.Session(ns, "a", "seat-1", "win11", fixture.WithWriteback("Keep"))),
			"spec.writeback", `Unsupported value: "Keep"`, `"Discard", "Persist"`)
	})

	It("refuses a session without a machineRef", func() {
		u := &unstructured.Unstructured{Object: map[string]any{
			"apiVersion": "boot.ggnet.io/v1alpha1", "kind": "BootSession",
			"metadata": map[string]any{"name": "a", "namespace": ns},
			"spec":     map[string]any{"imageRef": map[string]any{"name": "win11"}},
		}}
		expectRefused(k8sClient.Create(ctx, u), "spec.machineRef", "Required value")
	})

	It("selects sessions by machine with a field selector", func() {
		Expect(k8sClient.Create(ctx, fixture.Session(ns, "a", "seat-1", "win11"))).To(Succeed())
		Expect(k8sClient.Create(ctx, fixture.Session(ns, "b", "seat-2", "win11"))).To(Succeed())
		var list bootv1.BootSessionList
		Expect(k8sClient.List(ctx, &list, client.InNamespace(ns),
			client.MatchingFields{"spec.machineRef.name": "seat-2"})).To(Succeed())
		Expect(list.Items).To(HaveLen(1))
		Expect(list.Items[0].Name).To(Equal("b"))
	})
})

var _ = Describe("Samples", func() {
	It("pass kubectl apply --dry-run=server", func() {
		user, err := env.AddUser(envtestAdmin(), nil)
		Expect(err).NotTo(HaveOccurred())
		kubeconfig, err := user.KubeConfig()
		Expect(err).NotTo(HaveOccurred())
		dir := GinkgoT().TempDir()
		kc := filepath.Join(dir, "kubeconfig")
		Expect(os.WriteFile(kc, kubeconfig, 0o600)).To(Succeed())
		assets, err := testenv.AssetsDir()
		Expect(err).NotTo(HaveOccurred())
		kubectl := filepath.Join(assets, "kubectl")

		run := func(args ...string) string {
			cmd := exec.Command(kubectl, append([]string{"--kubeconfig", kc}, args...)...)
			out, err := cmd.CombinedOutput()
			Expect(err).NotTo(HaveOccurred(), "kubectl %v: %s", args, out)
			return string(out)
		}
		run("create", "namespace", "cafe")
		out := run("apply", "--dry-run=server", "-k", filepath.Join(testenv.RepoRoot(), "config", "samples"))
		GinkgoWriter.Println(out)
		Expect(out).To(ContainSubstring("image.boot.ggnet.io/win11-games-2026-11 created (server dry run)"))
		Expect(out).To(ContainSubstring("machine.boot.ggnet.io/seat-031 created (server dry run)"))
		Expect(out).To(ContainSubstring("bootsession.boot.ggnet.io/seat-031-evening created (server dry run)"))
	})
})
