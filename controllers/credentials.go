package controllers

import (
	"crypto/rand"
	"encoding/base32"
	"errors"
	"math/big"
	"strings"

	"k8s.io/apimachinery/pkg/types"

	bootv1 "github.com/ggnet/ggnet/api/v1alpha1"
)

// chapSecretLength is the length of both CHAP secrets: the Windows
// initiator takes 12 to 16 bytes.
const chapSecretLength = 16

// secretAlphabet is what CHAP secrets are drawn from: [A-Za-z0-9].
const secretAlphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"

// tokenEncoding writes a script token: base32 in [a-z2-7], no padding.
var tokenEncoding = base32.NewEncoding("abcdefghijklmnopqrstuvwxyz234567").WithPadding(base32.NoPadding)

// sessionSecretName is the name of a session's Secret.
func sessionSecretName(session string) string { return session + "-chap" }

// chapUser is the initiator's CHAP user name: "ggnet-" and the session's
// UID without dashes, 38 characters of [a-z0-9-]. tgt's accounts are one
// list per tgtd, shared by every namespace, so the name must be unique on a
// storage node: the UID is unique cluster-wide and never reused, where names
// built from namespace and name collide (cafe/a-b and cafe-a/b) or, cut and
// hashed, can be forged. Well inside every limit: iSCSI text values (RFC 3720,
// 255 bytes), the Windows initiator's CHAP name (223) and ipxe.Render's
// charset and 255.
func chapUser(uid types.UID) string {
	return "ggnet-" + strings.ReplaceAll(string(uid), "-", "")
}

// targetUser is the target's user name for mutual CHAP: chapUser and "-t",
// which no chapUser ends with (a UID without dashes has none).
func targetUser(uid types.UID) string {
	return chapUser(uid) + "-t"
}

// randomSecret returns n characters of secretAlphabet from crypto/rand.
func randomSecret(n int) (string, error) {
	b := make([]byte, n)
	max := big.NewInt(int64(len(secretAlphabet)))
	for i := range b {
		k, err := rand.Int(rand.Reader, max)
		if err != nil {
			return "", err
		}
		b[i] = secretAlphabet[k.Int64()]
	}
	return string(b), nil
}

// newToken returns a script token: base32 ([a-z2-7]) of 20 bytes from
// crypto/rand, 32 characters.
func newToken() (string, error) {
	b := make([]byte, 20)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return tokenEncoding.EncodeToString(b), nil
}

// missingSecretData returns the keys a session's Secret lacks, with new
// values; it never changes a key that is there (a Secret made before mutual
// CHAP and tokens gets only the new keys). The mutual CHAP secret differs
// from the initiator's. User names come from the session's UID. The values
// are credentials: never log them.
func missingSecretData(have map[string][]byte, uid types.UID) (map[string]string, error) {
	if uid == "" {
		return nil, errors.New("the session has no UID to name its CHAP users after")
	}
	add := map[string]string{}
	if _, ok := have[bootv1.SecretKeyUsername]; !ok {
		add[bootv1.SecretKeyUsername] = chapUser(uid)
	}
	if _, ok := have[bootv1.SecretKeyTargetUsername]; !ok {
		add[bootv1.SecretKeyTargetUsername] = targetUser(uid)
	}
	password := string(have[bootv1.SecretKeyPassword])
	if _, ok := have[bootv1.SecretKeyPassword]; !ok {
		pw, err := randomSecret(chapSecretLength)
		if err != nil {
			return nil, err
		}
		add[bootv1.SecretKeyPassword], password = pw, pw
	}
	if _, ok := have[bootv1.SecretKeyTargetPassword]; !ok {
		for {
			pw, err := randomSecret(chapSecretLength)
			if err != nil {
				return nil, err
			}
			if pw != password {
				add[bootv1.SecretKeyTargetPassword] = pw
				break
			}
		}
	}
	if _, ok := have[bootv1.SecretKeyToken]; !ok {
		t, err := newToken()
		if err != nil {
			return nil, err
		}
		add[bootv1.SecretKeyToken] = t
	}
	return add, nil
}
