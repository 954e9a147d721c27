package helm

import (
	"testing"

	. "github.com/onsi/gomega"
)

// TestScriptBindingValues: the per-source HTTP cap is always passed; the
// neighbour (ARP) binding is left to the agent's per-mode default unless
// the values say otherwise.
func TestScriptBindingValues(t *testing.T) {
	g := NewWithT(t)
	boot := func(values string) []string { return args(podSpecs(t, render(t, values))["ggnet-ggnet-boot"]) }
	a := boot("")
	g.Expect(a).To(ContainElement("--http-max-conns-per-source=16"))
	for _, x := range a {
		g.Expect(x).NotTo(HavePrefix("--bind-neighbors"))
	}
	g.Expect(boot("agent: {boot: {bindNeighbors: false, httpMaxConnsPerSource: 4}}")).To(ContainElements("--bind-neighbors=false", "--http-max-conns-per-source=4"))
	g.Expect(boot("agent: {boot: {bindNeighbors: true}}")).To(ContainElement("--bind-neighbors=true"))
	out, err := helm(t, "template", "ggnet", chart, "--set", "agent.boot.bindNeighbors=maybe")
	g.Expect(err).To(HaveOccurred(), out)
}
