package helm

import (
	"strings"
	"testing"

	. "github.com/onsi/gomega"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"

	"github.com/ggnet/ggnet/bootagent/target"
)

const (
	tgtdName    = "ggnet-ggnet-tgtd"
	storageName = "ggnet-ggnet-storage"
)

// hostPaths maps each hostPath volume's host path to where the container
// mounts it.
func hostPaths(p corev1.PodSpec) map[string]string {
	vols := map[string]string{}
	for _, v := range p.Volumes {
		if v.HostPath != nil {
			vols[v.Name] = v.HostPath.Path
		}
	}
	out := map[string]string{}
	for _, m := range p.Containers[0].VolumeMounts {
		if path, ok := vols[m.Name]; ok {
			out[path] = m.MountPath
		}
	}
	return out
}

// TestTGTDDaemonSet: with the tgt driver, tgtd runs in a DaemonSet of its
// own that a chart upgrade never restarts (OnDelete), on the storage
// agent's nodes, sharing the data directory and the management socket's
// directory with the agent at the same paths; the agent no longer starts
// tgtd. With LIO there is no tgtd at all.
func TestTGTDDaemonSet(t *testing.T) {
	for _, tc := range []struct {
		name, values      string
		dataDir, portal   string
		controlPort       string
		nodeSelector      map[string]string
		tolerations       []corev1.Toleration
		priorityClassName string
	}{{
		name:         "defaults",
		dataDir:      "/var/lib/ggnet",
		portal:       "portal=$(HOST_IP):3260",
		controlPort:  "0",
		nodeSelector: map[string]string{"ggnet.io/storage": "true"},
	}, {
		name: "custom",
		values: `
agent:
  storage:
    dataDir: /srv/ggnet
    portalAddress: 10.9.0.5
    portalPort: 3261
    tgtControlPort: 7
    nodeSelector: {storage: fast}
    tolerations: [{key: dedicated, operator: Equal, value: storage, effect: NoSchedule}]
    tgtd: {priorityClassName: system-node-critical}
`,
		dataDir:           "/srv/ggnet",
		portal:            "portal=10.9.0.5:3261",
		controlPort:       "7",
		nodeSelector:      map[string]string{"ggnet.io/storage": "true", "storage": "fast"}, // Helm merges maps
		tolerations:       []corev1.Toleration{{Key: "dedicated", Operator: "Equal", Value: "storage", Effect: "NoSchedule"}},
		priorityClassName: "system-node-critical",
	}} {
		t.Run(tc.name, func(t *testing.T) {
			g := NewWithT(t)
			objs := render(t, tc.values)
			ds := typed[appsv1.DaemonSet](t, find(objs, "DaemonSet", tgtdName))
			g.Expect(ds.Spec.UpdateStrategy.Type).To(Equal(appsv1.OnDeleteDaemonSetStrategyType), "a chart upgrade never restarts tgtd")
			p := ds.Spec.Template.Spec
			storage := podSpecs(t, objs)[storageName]

			g.Expect(p.HostNetwork).To(BeTrue())
			g.Expect(p.NodeSelector).To(Equal(tc.nodeSelector))
			g.Expect(p.NodeSelector).To(Equal(storage.NodeSelector), "on the storage agent's nodes")
			g.Expect(p.Tolerations).To(Equal(tc.tolerations))
			g.Expect(p.Tolerations).To(Equal(storage.Tolerations))
			g.Expect(p.PriorityClassName).To(Equal(tc.priorityClassName))
			g.Expect(p.AutomountServiceAccountToken).To(HaveValue(BeFalse()), "tgtd needs no API access")
			g.Expect(p.Containers).To(HaveLen(1))
			c := p.Containers[0]
			g.Expect(c.Command).To(Equal([]string{"tgtd"}))
			g.Expect(c.Args).To(Equal([]string{"-f", "-C", tc.controlPort, "--iscsi", tc.portal}))
			g.Expect(c.LivenessProbe).To(BeNil(), "a liveness restart would drop every target of the node")
			g.Expect(c.ReadinessProbe.Exec.Command).To(Equal([]string{"tgtadm", "-C", tc.controlPort, "--mode", "system", "--op", "show"}))

			// The agent speaks to that tgtd and no longer runs one.
			g.Expect(args(storage)).NotTo(ContainElement("--start-tgtd"))
			g.Expect(args(storage)).To(ContainElement("--tgt-control-port=" + tc.controlPort))
			g.Expect(args(storage)).To(ContainElement("--portal=" + strings.TrimPrefix(tc.portal, "portal=")))

			// The same data directory and socket directory, at the same paths.
			mine, agent := hostPaths(p), hostPaths(storage)
			g.Expect(mine).To(HaveKeyWithValue(tc.dataDir, tc.dataDir))
			g.Expect(agent).To(HaveKeyWithValue(tc.dataDir, tc.dataDir))
			g.Expect(mine).To(HaveKeyWithValue("/var/run/tgtd", "/var/run/tgtd"))
			g.Expect(agent).To(HaveKeyWithValue("/var/run/tgtd", "/var/run/tgtd"))
			g.Expect(mine).To(HaveLen(2), "nothing else of the host")

			// No credential reaches tgtd: none on its command line, in its
			// environment or in its volumes.
			for _, a := range append(append([]string{}, c.Command...), c.Args...) {
				g.Expect(strings.ToLower(a)).NotTo(Or(ContainSubstring("password"), ContainSubstring("secret"),
					ContainSubstring("chap"), ContainSubstring("user")), a)
			}
			for _, e := range c.Env {
				if e.Name+"="+e.Value == target.TGTDEnv[0] {
					continue // glibc's mmap threshold, as every tgtd GGnet starts (target.TGTDEnv)
				}
				g.Expect(e.Value).To(BeEmpty(), e.Name)
				g.Expect(e.ValueFrom).NotTo(BeNil(), e.Name)
				g.Expect(e.ValueFrom.SecretKeyRef).To(BeNil(), e.Name)
				g.Expect(e.ValueFrom.FieldRef).NotTo(BeNil(), "only the downward API: %s", e.Name)
			}
			g.Expect(c.EnvFrom).To(BeEmpty())
			for _, v := range p.Volumes {
				g.Expect(v.Secret).To(BeNil(), v.Name)
				g.Expect(v.Projected).To(BeNil(), v.Name)
			}
		})
	}
}

// TestTGTDOnlyForTGT: no tgtd with the LIO driver or without the storage
// role; with LIO the agent mounts no tgtd socket directory either.
func TestTGTDOnlyForTGT(t *testing.T) {
	g := NewWithT(t)
	objs := render(t, "agent: {storage: {targetDriver: lio}}")
	g.Expect(find(objs, "DaemonSet", tgtdName)).To(BeNil())
	storage := podSpecs(t, objs)[storageName]
	g.Expect(args(storage)).NotTo(ContainElement(HavePrefix("--tgt-control-port")))
	g.Expect(hostPaths(storage)).NotTo(HaveKey("/var/run/tgtd"))

	objs = render(t, "agent: {storage: {enabled: false}}")
	g.Expect(find(objs, "DaemonSet", tgtdName)).To(BeNil())
	g.Expect(find(objs, "DaemonSet", storageName)).To(BeNil())
}

// TestTGTDLowPortal: a portal below 1024 gives tgtd NET_BIND_SERVICE and
// nothing else; the default portal needs no capability.
func TestTGTDLowPortal(t *testing.T) {
	g := NewWithT(t)
	caps := func(values string) *corev1.Capabilities {
		return podSpecs(t, render(t, values))[tgtdName].Containers[0].SecurityContext.Capabilities
	}
	g.Expect(caps("")).To(Equal(&corev1.Capabilities{Drop: []corev1.Capability{"ALL"}}))
	g.Expect(caps("agent: {storage: {portalPort: 860}}")).To(Equal(&corev1.Capabilities{
		Drop: []corev1.Capability{"ALL"}, Add: []corev1.Capability{"NET_BIND_SERVICE"}}))
}
