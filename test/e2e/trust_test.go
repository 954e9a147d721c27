package e2e

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/fields"
	"sigs.k8s.io/controller-runtime/pkg/client"

	bootv1 "github.com/ggnet/ggnet/api/v1alpha1"
	"github.com/ggnet/ggnet/internal/ipxe"
	"github.com/ggnet/ggnet/internal/lab"
)

// credentials are the values of every session Secret the suite saw; no log
// line of the whole run and no process's command line may hold one.
var credentials struct {
	sync.Mutex
	values map[string]string // value -> which
}

var secretKeys = []string{bootv1.SecretKeyUsername, bootv1.SecretKeyPassword, bootv1.SecretKeyTargetUsername,
	bootv1.SecretKeyTargetPassword, bootv1.SecretKeyToken}

// rememberCredentials records the session's Secret values (all five must be
// there) and checks that no process's command line holds one right now.
func rememberCredentials(s *bootv1.BootSession) {
	GinkgoHelper()
	sec := sessionSecret(s)
	credentials.Lock()
	defer credentials.Unlock()
	if credentials.values == nil {
		credentials.values = map[string]string{}
	}
	for _, k := range secretKeys {
		v := string(sec.Data[k])
		Expect(v).NotTo(BeEmpty(), "the session Secret has %s", k)
		if k != bootv1.SecretKeyUsername && k != bootv1.SecretKeyTargetUsername {
			credentials.values[v] = s.Name + "/" + k
		}
	}
	expectNoCredentialInCommandLines()
}

func sessionSecret(s *bootv1.BootSession) *corev1.Secret {
	GinkgoHelper()
	Expect(s.Status.CHAPSecretRef).NotTo(BeNil())
	var sec corev1.Secret
	// Retried: the fault suite restarts the API server under it.
	Expect(api(func() error {
		return l.Client.Get(ctx, client.ObjectKey{Namespace: s.Namespace, Name: s.Status.CHAPSecretRef.Name}, &sec)
	})).To(Succeed())
	return &sec
}

// expectNoCHAPSecretOnScreen checks a VM's console (what iPXE, the kernel
// and the OS's init printed — on a real PC, its screen) for any CHAP secret
// the suite saw. The token may be there: iPXE shows the script's URL.
func expectNoCHAPSecretOnScreen(console, vm string) {
	GinkgoHelper()
	credentials.Lock()
	defer credentials.Unlock()
	for v, which := range credentials.values {
		if strings.HasSuffix(which, "/"+bootv1.SecretKeyPassword) || strings.HasSuffix(which, "/"+bootv1.SecretKeyTargetPassword) {
			// A boolean, so that a failure does not print the secret.
			Expect(strings.Contains(console, v)).To(BeFalse(), "%s is on the console of %s", which, vm)
		}
	}
}

// expectNoCredentialInCommandLines reads every process's command line (the
// manager, the agent, tgtd and whatever they started) for a known secret.
func expectNoCredentialInCommandLines() {
	GinkgoHelper()
	cmdlines, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range cmdlines {
		b, err := os.ReadFile(p)
		if err != nil {
			continue // the process ended
		}
		line := strings.ReplaceAll(string(b), "\x00", " ")
		for v, which := range credentials.values {
			// A boolean, so that a failure does not print the secret.
			Expect(strings.Contains(line, v)).To(BeFalse(), "%s is on the command line of %s", which, p)
		}
	}
}

var _ = AfterSuite(func() {
	if l == nil {
		return
	}
	logs, err := l.Logs()
	Expect(err).NotTo(HaveOccurred())
	Expect(logs).To(HaveKey("bootagent.log"))
	Expect(logs).To(HaveKey("manager.log"))
	credentials.Lock()
	defer credentials.Unlock()
	Expect(credentials.values).NotTo(BeEmpty(), "the suite saw session Secrets")
	for name, text := range logs {
		for v, which := range credentials.values {
			Expect(strings.Contains(text, v)).To(BeFalse(), "%s is in %s", which, name)
		}
	}
})

// metric returns the sum of the agent's samples of a metric whose line
// contains all of the given substrings.
func metric(name string, contains ...string) float64 {
	GinkgoHelper()
	return metricAt(Default, lab.MetricsBase, name, contains...)
}

// metricAt is metric of the /metrics at base, checked with g.
func metricAt(g Gomega, base, name string, contains ...string) float64 {
	GinkgoHelper()
	resp, err := http.Get(base + "/metrics")
	g.Expect(err).NotTo(HaveOccurred())
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	g.Expect(err).NotTo(HaveOccurred())
	var sum float64
lines:
	for _, line := range strings.Split(string(b), "\n") {
		if !strings.HasPrefix(line, name+"{") && !strings.HasPrefix(line, name+" ") {
			continue
		}
		for _, c := range contains {
			if !strings.Contains(line, c) {
				continue lines
			}
		}
		var v float64
		_, _ = fmt.Sscanf(line[strings.LastIndexByte(line, ' ')+1:], "%g", &v)
		sum += v
	}
	return sum
}

var _ = Describe("A laptop on the café floor", Ordered, func() {
	It("cannot fetch another seat's script nor log in to its disk, and the seat still boots", func() {
		m := machine(bootv1.BootPolicyManual, bootv1.WritebackPersist)
		s := session(m, "victim", bootv1.WritebackPersist)
		sec := sessionSecret(s)
		mac, err := net.ParseMAC(m.Spec.MAC)
		Expect(err).NotTo(HaveOccurred())
		laptop, err := l.AddHost("laptop", "10.99.0.250")
		Expect(err).NotTo(HaveOccurred())
		get := func(path string) int {
			GinkgoHelper()
			resp, err := laptop.HTTPClient().Get(lab.HTTPBase + "/" + path)
			Expect(err).NotTo(HaveOccurred())
			defer resp.Body.Close()
			body, _ := io.ReadAll(resp.Body)
			for v, which := range map[string]string{string(sec.Data[bootv1.SecretKeyPassword]): "password", string(sec.Data[bootv1.SecretKeyTargetPassword]): "target password"} {
				Expect(strings.Contains(string(body), v)).To(BeFalse(), "the laptop got the seat's %s from /%s", which, path)
			}
			return resp.StatusCode
		}
		forbidden := metric("ggnet_http_script_requests_total", `result="forbidden"`)

		By("asking for the script without a token, with a guessed token, and with the seat's real token")
		Expect(get(ipxe.ScriptPath(mac, ""))).To(Equal(http.StatusForbidden))
		Expect(get(ipxe.ScriptPath(mac, strings.Repeat("a", 32)))).To(Equal(http.StatusForbidden))
		// Even a token that leaked does not help from another address.
		Expect(get(ipxe.ScriptPath(mac, string(sec.Data[bootv1.SecretKeyToken])))).To(Equal(http.StatusForbidden))
		By("reporting a failed boot for the seat")
		Expect(get(ipxe.ScriptPath(mac, strings.Repeat("b", 32)) + "?failed=0x1")).To(Equal(http.StatusForbidden))

		Expect(metric("ggnet_http_script_requests_total", `result="forbidden"`) - forbidden).To(BeNumerically(">=", 4))
		Expect(l.Client.Get(ctx, client.ObjectKeyFromObject(s), s)).To(Succeed())
		Expect(s.Status.Timeline.ScriptServed).To(BeNil(), "no side effect: the script was not served")
		Expect(s.Status.Phase).To(Equal(bootv1.SessionReady))
		for _, c := range s.Status.Conditions {
			Expect(c.Type).NotTo(Equal(bootv1.BootFailedCondition), "no side effect: no boot failure recorded")
		}
		Eventually(func() []string {
			var evs corev1.EventList
			_ = l.Client.List(ctx, &evs, client.InNamespace(lab.Namespace),
				client.MatchingFieldsSelector{Selector: fields.OneTermEqualSelector("involvedObject.name", m.Name)})
			var reasons []string
			for _, e := range evs.Items {
				reasons = append(reasons, e.Reason)
				Expect(strings.Contains(e.Message, string(sec.Data[bootv1.SecretKeyToken]))).To(BeFalse(), "the token is in an Event")
			}
			return reasons
		}, 30*time.Second).Should(ContainElement(bootv1.ScriptForbiddenReason))

		By("logging in to the seat's target with what the laptop can learn: the portal, the IQNs, a CHAP user name")
		portal := s.Status.Target.Portal
		lun := s.Status.Target.LUN
		for _, url := range []string{
			fmt.Sprintf("iscsi://%s/%s/%d", portal, s.Status.Target.IQN, lun),
			fmt.Sprintf("iscsi://%s%%%s@%s/%s/%d", sec.Data[bootv1.SecretKeyUsername], "GuessedSecret123", portal, s.Status.Target.IQN, lun),
		} {
			out, err := laptop.Run("iscsi-inq", "-i", s.Status.InitiatorIQN, url)
			Expect(err).To(HaveOccurred(), "iscsi-inq %s logged in:\n%s", url, out)
		}

		By("the seat itself boots, twice (its Persist disk intact)")
		Expect(boot(m).Count).To(Equal(1))
		Expect(l.Client.Get(ctx, client.ObjectKeyFromObject(s), s)).To(Succeed())
		Expect(s.Status.Timeline.ScriptServed).NotTo(BeNil())
		stop(s)
		s2 := session(m, "victim-2", bootv1.WritebackPersist)
		Expect(boot(m).Count).To(Equal(2))
		stop(s2)
	})
})
