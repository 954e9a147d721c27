package controllers

import (
	"regexp"
	"strings"
	"testing"

	. "github.com/onsi/gomega"

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
			add, err := missingSecretData(tc.have, "cafe", "seat-031-evening")
			g.Expect(err).NotTo(HaveOccurred())
			var keys []string
			for k := range add {
				keys = append(keys, k)
				g.Expect(tc.have).NotTo(HaveKey(k), "an existing key is never changed")
			}
			g.Expect(keys).To(ConsistOf(tc.wantKeys))
			if v, ok := add[bootv1.SecretKeyUsername]; ok {
				g.Expect(v).To(Equal("cafe-seat-031-evening"))
			}
			if v, ok := add[bootv1.SecretKeyTargetUsername]; ok {
				g.Expect(v).To(Equal("cafe-seat-031-evening-target"))
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
		add, err := missingSecretData(nil, "cafe", "s")
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

func TestUserNames(t *testing.T) {
	g := NewWithT(t)
	long := strings.Repeat("n", 63)
	g.Expect(chapUser("cafe", "s")).To(Equal("cafe-s"))
	g.Expect(chapUser(long, "s")).To(HaveLen(63))
	g.Expect(targetUser(long, "s")).To(HaveLen(63))
	g.Expect(targetUser(long, "s")).NotTo(Equal(chapUser(long, "s")))
}
