package storage

import (
	"testing"

	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	bootv1 "github.com/ggnet/ggnet/api/v1alpha1"
	"github.com/ggnet/ggnet/bootagent/target"
)

func TestSessionTarget(t *testing.T) {
	s := &bootv1.BootSession{ObjectMeta: metav1.ObjectMeta{Namespace: "cafe", Name: "s1"}}
	s.Status.Target = &bootv1.ISCSITarget{IQN: "iqn.2026-11.io.ggnet:cafe:s1", LUN: 1}
	s.Status.InitiatorIQN = "iqn.2026-11.io.ggnet:initiator:cafe:seat-1"
	for _, tc := range []struct {
		name string
		data map[string]string
		want target.Target
	}{
		{"mutual CHAP", map[string]string{
			bootv1.SecretKeyUsername: "cafe-s1", bootv1.SecretKeyPassword: "Xk2p9QvL0aB7cD4e",
			bootv1.SecretKeyTargetUsername: "cafe-s1-target", bootv1.SecretKeyTargetPassword: "Tq7Lm2Zx9Wc4Rb8N",
			bootv1.SecretKeyToken: "abcdefghijklmnopqrstuvwxyz234567",
		}, target.Target{CHAPUser: "cafe-s1", CHAPPassword: "Xk2p9QvL0aB7cD4e", TargetUser: "cafe-s1-target", TargetPassword: "Tq7Lm2Zx9Wc4Rb8N"}},
		{"one-way CHAP (a Secret without the target's keys)", map[string]string{
			bootv1.SecretKeyUsername: "cafe-s1", bootv1.SecretKeyPassword: "Xk2p9QvL0aB7cD4e",
		}, target.Target{CHAPUser: "cafe-s1", CHAPPassword: "Xk2p9QvL0aB7cD4e"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := NewWithT(t)
			sec := &corev1.Secret{Data: map[string][]byte{}}
			for k, v := range tc.data {
				sec.Data[k] = []byte(v)
			}
			want := tc.want
			want.IQN, want.LUN, want.Path, want.InitiatorIQN = s.Status.Target.IQN, 1, "/data/o.raw", s.Status.InitiatorIQN
			got := sessionTarget(s, sec, "/data/o.raw")
			g.Expect(got).To(Equal(want))
			g.Expect(got.Validate()).To(Succeed())
		})
	}
}
