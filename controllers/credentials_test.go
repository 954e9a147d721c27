package controllers

import (
	"regexp"
	"strings"
	"testing"

	. "github.com/onsi/gomega"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	bootv1 "github.com/ggnet/ggnet/api/v1alpha1"
	"github.com/ggnet/ggnet/internal/ipxe"
)

var allKeys = []string{bootv1.SecretKeyUsername, bootv1.SecretKeyPassword, bootv1.SecretKeyTargetUsername, bootv1.SecretKeyTargetPassword, bootv1.SecretKeyToken}

func TestMissingSecretData(t *testing.T) {
	chap := regexp.MustCompile(`^[A-Za-z0-9]{16}$`)
	for name, tc := range map[string]struct {
		have     map[string][]byte
		wantKeys []string
	}{
		"new Secret": {nil, allKeys},
		"made before mutual CHAP and tokens": {
			map[string][]byte{bootv1.SecretKeyUsername: []byte("cafe-s"), bootv1.SecretKeyPassword: []byte("Xk2p9QvL0aB7cD4e")},
			[]string{bootv1.SecretKeyTargetUsername, bootv1.SecretKeyTargetPassword, bootv1.SecretKeyToken},
		},
		"only the token missing": {
			map[string][]byte{bootv1.SecretKeyUsername: []byte("u"), bootv1.SecretKeyPassword: []byte("p"),
				bootv1.SecretKeyTargetUsername: []byte("t"), bootv1.SecretKeyTargetPassword: []byte("q")},
			[]string{bootv1.SecretKeyToken},
		},
		"complete": {
			map[string][]byte{bootv1.SecretKeyUsername: nil, bootv1.SecretKeyPassword: nil, bootv1.SecretKeyTargetUsername: nil,
				bootv1.SecretKeyTargetPassword: nil, bootv1.SecretKeyToken: nil},
			nil,
		},
	} {
		t.Run(name, func(t *testing.T) {
			g := NewWithT(t)
			add, err := missingSecretData(tc.have, "0f6c3a52-9d1e-4b7a-8c25-3e4f5a6b7c8d")
			g.Expect(err).NotTo(HaveOccurred())
			var keys []string
			for k := range add {
				keys = append(keys, k)
				g.Expect(tc.have).NotTo(HaveKey(k), "an existing key is never changed")
			}
			g.Expect(keys).To(ConsistOf(tc.wantKeys))
			if v, ok := add[bootv1.SecretKeyUsername]; ok {
				g.Expect(v).To(Equal("ggnet-0f6c3a529d1e4b7a8c253e4f5a6b7c8d"))
			}
			if v, ok := add[bootv1.SecretKeyTargetUsername]; ok {
				g.Expect(v).To(Equal("ggnet-0f6c3a529d1e4b7a8c253e4f5a6b7c8d-t"))
			}
			if v, ok := add[bootv1.SecretKeyPassword]; ok {
				g.Expect(v).To(MatchRegexp(chap.String()))
			}
			if v, ok := add[bootv1.SecretKeyTargetPassword]; ok {
				g.Expect(v).To(MatchRegexp(chap.String()))
				pw := add[bootv1.SecretKeyPassword]
				if pw == "" {
					pw = string(tc.have[bootv1.SecretKeyPassword])
				}
				g.Expect(v).NotTo(Equal(pw), "the mutual secret differs")
			}
			if v, ok := add[bootv1.SecretKeyToken]; ok {
				g.Expect(ipxe.ValidToken(v)).To(BeTrue(), v)
			}
		})
	}
}

func TestCredentialsAreRandom(t *testing.T) {
	g := NewWithT(t)
	seen := map[string]bool{}
	for range 200 {
		add, err := missingSecretData(nil, "5d0b7e21-3c4a-4f6e-9b8d-1a2c3e4f5a6b")
		g.Expect(err).NotTo(HaveOccurred())
		for _, k := range []string{bootv1.SecretKeyPassword, bootv1.SecretKeyTargetPassword, bootv1.SecretKeyToken} {
			g.Expect(seen).NotTo(HaveKey(add[k]), "no value repeats")
			seen[add[k]] = true
		}
	}
	// Every character of the alphabets shows up: the draw covers all of them.
	var chap, tok strings.Builder
	for v := range seen {
		if len(v) == 16 {
			chap.WriteString(v)
		} else {
			tok.WriteString(v)
		}
	}
	for _, c := range secretAlphabet {
		g.Expect(chap.String()).To(ContainSubstring(string(c)))
	}
	for _, c := range "abcdefghijklmnopqrstuvwxyz234567" {
		g.Expect(tok.String()).To(ContainSubstring(string(c)))
	}
}

// TestUserNamesNeverCollide: tgt keeps one account list per storage node, so
// no two sessions, whatever their namespaces and names, may get the same
// CHAP user name, nor may one session's initiator user be another's target
// user. Names made of namespace and name did collide: cafe/pc1's target user
// was cafe/pc1-target's initiator user, and cafe/a-b was cafe-a/b.
func TestUserNamesNeverCollide(t *testing.T) {
	g := NewWithT(t)
	long := strings.Repeat("n", 63)
	sessions := []*bootv1.BootSession{
		session("cafe", "pc1", "6b1f0c2e-4a5d-4e8f-9a7b-0c1d2e3f4a5b"),
		session("cafe", "pc1-target", "7c2a1d3f-5b6e-4f90-8b8c-1d2e3f4a5b6c"),
		session("cafe", "a-b", "8d3b2e4a-6c7f-4a01-9c9d-2e3f4a5b6c7d"),
		session("cafe-a", "b", "9e4c3f5b-7d80-4b12-8dae-3f4a5b6c7d8e"),
		session(long, "s", "af5d4a6c-8e91-4c23-9ebf-4a5b6c7d8e9f"),
		session(long, "s-target", "b06e5b7d-9fa2-4d34-8fc0-5b6c7d8e9fa0"),
	}
	owner := map[string]string{}
	for _, s := range sessions {
		add, err := missingSecretData(nil, s.UID)
		g.Expect(err).NotTo(HaveOccurred())
		for _, k := range []string{bootv1.SecretKeyUsername, bootv1.SecretKeyTargetUsername} {
			u := add[k]
			// Well inside tgt's, iPXE's and Windows' limits on a CHAP name.
			g.Expect(u).To(MatchRegexp(`^ggnet-[0-9a-f]{32}(-t)?$`))
			g.Expect(len(u)).To(BeNumerically("<=", 40))
			g.Expect(owner).NotTo(HaveKey(u), "%s/%s's %s is %s's", s.Namespace, s.Name, k, owner[u])
			owner[u] = s.Namespace + "/" + s.Name + " " + k
		}
	}
	g.Expect(owner).To(HaveLen(2 * len(sessions)))

	again, err := missingSecretData(nil, sessions[0].UID)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(again[bootv1.SecretKeyUsername]).To(Equal("ggnet-6b1f0c2e4a5d4e8f9a7b0c1d2e3f4a5b"))
	g.Expect(again[bootv1.SecretKeyTargetUsername]).To(Equal("ggnet-6b1f0c2e4a5d4e8f9a7b0c1d2e3f4a5b-t"))

	_, err = missingSecretData(nil, "")
	g.Expect(err).To(MatchError(ContainSubstring("no UID")), "never a name that could be another session's")
}

// session is a BootSession as the API server returns it: with a UID.
func session(namespace, name string, uid types.UID) *bootv1.BootSession {
	return &bootv1.BootSession{ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name, UID: uid}}
}
