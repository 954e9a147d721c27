package storage

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"syscall"
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

func TestTransient(t *testing.T) {
	for _, tc := range []struct {
		name string
		err  error
		want bool
	}{
		{"tgtd not listening", fmt.Errorf("tgtd target show: %w", &net.OpError{Op: "dial", Net: "unix", Err: os.NewSyscallError("connect", syscall.ECONNREFUSED)}), true},
		{"socket gone", fmt.Errorf("tgtd target show: %w", &net.OpError{Op: "dial", Net: "unix", Err: os.NewSyscallError("connect", syscall.ENOENT)}), true},
		{"tgtd died mid-answer", fmt.Errorf("tgtd target new: reading the answer: %w", io.ErrUnexpectedEOF), true},
		{"timeout", fmt.Errorf("tgtd target show: %w", context.DeadlineExceeded), true},
		{"tgtd refused the request", fmt.Errorf("ensure: %w", &target.TGTError{Mode: "account", Op: "new", Detail: "user u", Code: 17}), false},
		{"invalid target", errors.New(`target IQN "x": not an iqn. name`), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			NewWithT(t).Expect(transient(tc.err)).To(Equal(tc.want))
		})
	}
}

func TestWasStorageReady(t *testing.T) {
	now := metav1.Now()
	cond := func(status metav1.ConditionStatus, reason string) []metav1.Condition {
		return []metav1.Condition{{Type: bootv1.StorageReadyCondition, Status: status, Reason: reason}}
	}
	for _, tc := range []struct {
		name   string
		status bootv1.BootSessionStatus
		want   bool
	}{
		{"new session", bootv1.BootSessionStatus{}, false},
		{"waiting for its image", bootv1.BootSessionStatus{Conditions: cond(metav1.ConditionFalse, ReasonImageNotOnNode)}, false},
		{"ready now", bootv1.BootSessionStatus{Conditions: cond(metav1.ConditionTrue, ReasonTargetReady)}, true},
		{"target unavailable after it was made", bootv1.BootSessionStatus{OverlayPath: "/data/overlays/cafe/s-uid.raw",
			Conditions: cond(metav1.ConditionFalse, bootv1.TargetUnavailableReason)}, true},
		// A new Persist session whose disk's users could not be checked
		// while tgtd was away: it has no disk yet, and is provisioned as new
		// (taking it for a running one marked it OverlayLost for good).
		{"target unavailable before any overlay", bootv1.BootSessionStatus{Conditions: cond(metav1.ConditionFalse, bootv1.TargetUnavailableReason)}, false},
		{"overlay lost", bootv1.BootSessionStatus{Conditions: cond(metav1.ConditionFalse, bootv1.OverlayLostReason)}, true},
		{"stamped by the manager", bootv1.BootSessionStatus{Timeline: bootv1.SessionTimeline{StorageReady: &now},
			Conditions: cond(metav1.ConditionFalse, bootv1.StorageFailedReason)}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			NewWithT(t).Expect(wasStorageReady(&bootv1.BootSession{Status: tc.status})).To(Equal(tc.want))
		})
	}
}

func TestScrub(t *testing.T) {
	g := NewWithT(t)
	sec := &corev1.Secret{Data: map[string][]byte{
		bootv1.SecretKeyUsername: []byte("ggnet-u"), bootv1.SecretKeyPassword: []byte("Xk2p9QvL0aB7cD4e"),
		bootv1.SecretKeyTargetPassword: []byte("Tq7Lm2Zx9Wc4Rb8N"), bootv1.SecretKeyToken: []byte("abcdefghijklmnopqrstuvwxyz234567"),
	}}
	got := scrub("tgtd said Xk2p9QvL0aB7cD4e and Tq7Lm2Zx9Wc4Rb8N for ggnet-u at abcdefghijklmnopqrstuvwxyz234567", sec)
	g.Expect(got).To(Equal("tgtd said [redacted] and [redacted] for ggnet-u at [redacted]"))
}
