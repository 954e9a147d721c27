package wol

import (
	"bytes"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	bootv1 "github.com/ggnet/ggnet/api/v1alpha1"
)

func TestMagicPacket(t *testing.T) {
	mac := net.HardwareAddr{0x52, 0x54, 0x00, 0x0a, 0x0b, 0x0c}
	repeat := bytes.Repeat(mac, 16)
	ff := bytes.Repeat([]byte{0xff}, 6)
	for _, tc := range []struct {
		name     string
		mac      net.HardwareAddr
		password []byte
		want     []byte
		err      string
	}{
		{name: "no password", mac: mac, want: append(append([]byte{}, ff...), repeat...)},
		{name: "6-byte SecureOn", mac: mac, password: []byte{1, 2, 3, 4, 5, 6},
			want: append(append(append([]byte{}, ff...), repeat...), 1, 2, 3, 4, 5, 6)},
		{name: "4-byte SecureOn", mac: mac, password: []byte{0xde, 0xad, 0xbe, 0xef},
			want: append(append(append([]byte{}, ff...), repeat...), 0xde, 0xad, 0xbe, 0xef)},
		{name: "5-byte password", mac: mac, password: []byte{1, 2, 3, 4, 5}, err: "4 or 6 bytes"},
		{name: "EUI-64", mac: net.HardwareAddr{1, 2, 3, 4, 5, 6, 7, 8}, err: "6-byte MAC"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := MagicPacket(tc.mac, tc.password)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err = %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, tc.want) {
				t.Fatalf("packet\n% x\nwant\n% x", got, tc.want)
			}
			if len(got) != 102+len(tc.password) {
				t.Fatalf("length %d", len(got))
			}
		})
	}
}

func TestParsePassword(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want []byte
	}{
		{"aa:bb:cc:dd:ee:ff", []byte{0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff}},
		{"AA-BB-CC-00-01-0F", []byte{0xaa, 0xbb, 0xcc, 0x00, 0x01, 0x0f}},
		{"01:02:03:04:05:06\n", []byte{1, 2, 3, 4, 5, 6}},
		{"01:02:03:04:05", nil},
		{"01:02:03:04:05:0g", nil},
		{"01:02-03:04:05:06", nil},
		{"0102:03:04:05:06:", nil},
		{"secret-password!!", nil},
		{"", nil},
	} {
		got, err := ParsePassword(tc.in)
		if tc.want == nil {
			if !errors.Is(err, ErrBadPassword) {
				t.Errorf("ParsePassword(%q) = % x, %v; want ErrBadPassword", tc.in, got, err)
			}
			if err != nil && strings.Contains(err.Error(), strings.TrimSpace(tc.in)) && tc.in != "" {
				t.Errorf("the error %q contains the password", err)
			}
			continue
		}
		if err != nil || !bytes.Equal(got, tc.want) {
			t.Errorf("ParsePassword(%q) = % x, %v; want % x", tc.in, got, err, tc.want)
		}
	}
}

func TestWants(t *testing.T) {
	now := metav1.Now()
	ready := func(f func(*bootv1.BootSession)) *bootv1.BootSession {
		s := &bootv1.BootSession{Spec: bootv1.BootSessionSpec{Wake: true}, Status: bootv1.BootSessionStatus{Phase: bootv1.SessionReady}}
		f(s)
		return s
	}
	for name, tc := range map[string]struct {
		s    *bootv1.BootSession
		want bool
	}{
		"ready, asks":       {ready(func(*bootv1.BootSession) {}), true},
		"does not ask":      {ready(func(s *bootv1.BootSession) { s.Spec.Wake = false }), false},
		"provisioning":      {ready(func(s *bootv1.BootSession) { s.Status.Phase = bootv1.SessionProvisioning }), false},
		"booting":           {ready(func(s *bootv1.BootSession) { s.Status.Phase = bootv1.SessionBooting }), false},
		"DHCP seen":         {ready(func(s *bootv1.BootSession) { s.Status.Timeline.DHCP = &now }), false},
		"being stopped":     {ready(func(s *bootv1.BootSession) { s.Spec.Stopped = true }), false},
		"being deleted":     {ready(func(s *bootv1.BootSession) { s.DeletionTimestamp = &now }), false},
		"sent, no DHCP yet": {ready(func(s *bootv1.BootSession) { s.Status.Timeline.WakeSent = &now }), true},
	} {
		if got := Wants(tc.s); got != tc.want {
			t.Errorf("%s: Wants = %v, want %v", name, got, tc.want)
		}
	}
}

func TestDue(t *testing.T) {
	cfg := Config{Resend: 30 * time.Second, MaxSends: 3}
	t0 := time.Date(2026, 11, 27, 8, 0, 0, 0, time.UTC)
	st := &sendState{}
	if !due(st, nil, t0, cfg) {
		t.Fatal("a session never woken is due at once")
	}
	st.count, st.last = 1, t0
	if due(st, nil, t0.Add(29*time.Second), cfg) {
		t.Fatal("due again before Resend")
	}
	if !due(st, nil, t0.Add(30*time.Second), cfg) {
		t.Fatal("not due again after Resend")
	}
	st.count, st.last = 3, t0
	if due(st, nil, t0.Add(time.Hour), cfg) {
		t.Fatal("due past MaxSends")
	}
	// A session an earlier run woke (wakeSent set, nothing in memory): one
	// packet counted, the next after Resend from wakeSent.
	sent := metav1.NewTime(t0)
	st = &sendState{}
	if due(st, &sent, t0.Add(10*time.Second), cfg) {
		t.Fatal("an agent restarted right after waking sends again at once")
	}
	if st.count != 1 || !st.last.Equal(t0) {
		t.Fatalf("state from wakeSent: %+v", st)
	}
	if !due(st, &sent, t0.Add(31*time.Second), cfg) {
		t.Fatal("not due after Resend from wakeSent")
	}
}

func TestSecureOnPasswordOnlyFromItsSecretType(t *testing.T) {
	data := map[string][]byte{PasswordKey: []byte("0a:1b:2c:3d:4e:5f")}
	for _, typ := range []corev1.SecretType{corev1.SecretTypeOpaque, "", corev1.SecretTypeServiceAccountToken, "boot.ggnet.io/chap"} {
		_, err := SecureOnPassword(&corev1.Secret{Type: typ, Data: data})
		if err == nil || !strings.Contains(err.Error(), bootv1.SecureOnSecretType) {
			t.Errorf("type %q: err = %v, want a refusal naming %s", typ, err, bootv1.SecureOnSecretType)
		}
		if err != nil && strings.Contains(err.Error(), "0a:1b") {
			t.Errorf("type %q: the error holds the password: %v", typ, err)
		}
	}
	pw, err := SecureOnPassword(&corev1.Secret{Type: bootv1.SecureOnSecretType, Data: data})
	if err != nil || !bytes.Equal(pw, []byte{0x0a, 0x1b, 0x2c, 0x3d, 0x4e, 0x5f}) {
		t.Fatalf("SecureOnPassword = %x, %v", pw, err)
	}
	if _, err := SecureOnPassword(&corev1.Secret{Type: bootv1.SecureOnSecretType, Data: map[string][]byte{PasswordKey: []byte("not-a-mac")}}); err == nil {
		t.Error("a malformed password was accepted")
	}
}
