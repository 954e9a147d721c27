package storage

import (
	"testing"

	. "github.com/onsi/gomega"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	bootv1 "github.com/ggnet/ggnet/api/v1alpha1"
	"github.com/ggnet/ggnet/controllers"
)

// TestSessionIQN: the one target name the agent accepts for a session is the
// one the manager gives it (controllers.TargetIQN), with the agent's prefix
// as the chart passes it (the manager's and a colon) or without the colon.
func TestSessionIQN(t *testing.T) {
	g := NewWithT(t)
	s := &bootv1.BootSession{ObjectMeta: metav1.ObjectMeta{Namespace: "cafe", Name: "seat-1-a"}}
	want := controllers.TargetIQN("iqn.2026-11.io.ggnet", s)
	for _, prefix := range []string{"iqn.2026-11.io.ggnet:", "iqn.2026-11.io.ggnet"} {
		g.Expect((&Role{cfg: Config{IQNPrefix: prefix}}).sessionIQN(s)).To(Equal(want), prefix)
	}
	other := &bootv1.BootSession{ObjectMeta: metav1.ObjectMeta{Namespace: "other", Name: "seat-1-a"}}
	g.Expect((&Role{cfg: Config{IQNPrefix: "iqn.2026-11.io.ggnet:"}}).sessionIQN(other)).NotTo(Equal(want), "another namespace's session of the same name")
}
