package controllers

import (
	"testing"

	"k8s.io/apimachinery/pkg/types"
)

func TestOwnWrites(t *testing.T) {
	o := newOwnWrites()
	key := types.NamespacedName{Namespace: "ns", Name: "s"}
	if o.superseded(key, "u1", "10") {
		t.Fatal("nothing remembered: nothing superseded")
	}
	// A reconcile read 10, wrote metadata (11) and status (12).
	o.remember(key, "u1", "12", "10", "11")
	for _, rv := range []string{"10", "11"} {
		if !o.superseded(key, "u1", rv) {
			t.Fatalf("version %s was superseded by the manager's own writes", rv)
		}
	}
	if o.superseded(key, "u2", "11") {
		t.Fatal("another session of the same name (new UID) is never skipped")
	}
	if o.len() != 0 {
		t.Fatal("a read of another session of the name ends the entry")
	}
	o.remember(key, "u1", "12", "10", "11")
	if o.superseded(key, "u1", "12") {
		t.Fatal("the version of the last write is the one to act on")
	}
	if o.len() != 0 || o.superseded(key, "u1", "11") {
		t.Fatal("once the cache caught up the entry goes (a cache never goes back)")
	}
	// A reconcile that wrote nothing leaves nothing.
	o.remember(key, "u1", "12", "12", "12")
	if o.len() != 0 {
		t.Fatal("no write: nothing superseded")
	}
	// Only metadata written: base and obj carry the same new version.
	o.remember(key, "u1", "13", "12", "13")
	if !o.superseded(key, "u1", "12") || o.superseded(key, "u1", "13") {
		t.Fatal("metadata-only write: the read version is superseded, the new one is not")
	}
	o.remember(key, "u1", "15", "13", "14")
	o.forget(key)
	if o.len() != 0 || o.superseded(key, "u1", "13") {
		t.Fatal("forget drops the entry")
	}
	// The Secrets it made, until Ready or gone.
	o.madeSecret(key, "u1")
	if !o.secretMade(key, "u1") || o.secretMade(key, "u2") {
		t.Fatal("a Secret made for u1 is u1's only")
	}
	o.forgetSecret(key)
	o.madeSecret(key, "u1")
	o.forget(key)
	if o.secretMade(key, "u1") || o.len() != 0 {
		t.Fatal("Ready or gone: the Secret is read again")
	}
	var none *ownWrites
	if none.superseded(key, "u1", "1") {
		t.Fatal("a nil memo skips nothing")
	}
}
