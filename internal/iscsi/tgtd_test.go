package iscsi

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ggnet/ggnet/bootagent/target"
	"github.com/ggnet/ggnet/internal/testtgt"
)

const prefix = "iqn.2026-11.io.ggnet:"

// disk makes a backing file of size bytes with random content and returns
// its path and content.
func disk(t *testing.T, size int) (string, []byte) {
	t.Helper()
	b := make([]byte, size)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "disk.raw")
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return p, b
}

// TestTGTD logs in to a real tgtd target made as the storage agent makes
// one (ACL, CHAP, mutual CHAP), reads the whole disk and compares it with
// the backing file, and checks that wrong credentials on either side fail.
func TestTGTD(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("this test starts tgtd: run it as root (make test does)")
	}
	tgtd := testtgt.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	path, want := disk(t, 8<<20)
	tg := target.Target{IQN: prefix + "lab:s1", LUN: 1, Path: path, InitiatorIQN: prefix + "initiator:lab:pc-1",
		CHAPUser: "s1-user", CHAPPassword: "Xk2p9QvL0aB7cD4e", TargetUser: "s1-target", TargetPassword: "Tq7Lm2Zx9Wc4Rb8N"}
	d := &target.TGT{ControlPort: tgtd.ControlPort}
	if err := d.Ensure(ctx, tg); err != nil {
		t.Fatal(err)
	}
	cfg := Config{Portal: tgtd.Portal, TargetIQN: tg.IQN, InitiatorIQN: tg.InitiatorIQN, LUN: 1,
		Username: tg.CHAPUser, Password: tg.CHAPPassword, TargetUsername: tg.TargetUser, TargetPassword: tg.TargetPassword}

	for _, c := range []struct {
		name  string
		chunk int
	}{{"1 MiB commands", 1 << 20}, {"4 KiB commands", 4 << 10}} {
		s, err := Login(ctx, cfg)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		blocks, bs, err := s.ReadCapacity(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if blocks*uint64(bs) != uint64(len(want)) {
			t.Fatalf("capacity %d blocks of %d, want %d bytes", blocks, bs, len(want))
		}
		got := make([]byte, len(want))
		if err := s.ReadAt(ctx, got, 0, c.chunk); err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("%s: the bytes read differ from the backing file's", c.name)
		}
		// The tail, and a read past the end refused before it is sent.
		tail := make([]byte, 4096)
		if err := s.ReadAt(ctx, tail, int64(len(want)-4096), 4096); err != nil || !bytes.Equal(tail, want[len(want)-4096:]) {
			t.Fatalf("reading the last block: %v", err)
		}
		if err := s.ReadAt(ctx, tail, int64(len(want)), 4096); err == nil {
			t.Fatal("a read past the end succeeded")
		}
		conns, err := d.Connections(ctx, tg.IQN)
		if err != nil || len(conns) != 1 || conns[0].Initiator != tg.InitiatorIQN {
			t.Fatalf("tgtd's connections while logged in: %v %v", conns, err)
		}
		if err := s.Logout(ctx); err != nil {
			t.Fatalf("logout: %v", err)
		}
		waitNoConnections(t, d, tg.IQN)
	}

	// Wrong credentials: each fails, and no error carries a secret.
	secrets := []string{tg.CHAPPassword, tg.TargetPassword, "WrongWrong1234", "WrongTarget12"}
	for name, mod := range map[string]func(*Config){
		"wrong password":        func(c *Config) { c.Password = "WrongWrong1234" },
		"wrong target password": func(c *Config) { c.TargetPassword = "WrongTarget12" },
		"another initiator":     func(c *Config) { c.InitiatorIQN = prefix + "initiator:lab:pc-2" },
		"no CHAP":               func(c *Config) { c.Username, c.Password, c.TargetUsername, c.TargetPassword = "", "", "", "" },
	} {
		c := cfg
		mod(&c)
		s, err := Login(ctx, c)
		if err == nil {
			s.Close()
			t.Errorf("%s: logged in", name)
			continue
		}
		for _, sec := range secrets {
			if strings.Contains(err.Error(), sec) {
				t.Errorf("%s: the error carries a secret", name)
			}
		}
		var le *LoginError
		switch {
		case name == "wrong target password":
			if !errors.Is(err, ErrMutualCHAP) {
				t.Errorf("%s: %v, want ErrMutualCHAP", name, err)
			}
		case !errors.As(err, &le) || le.Class != 2:
			t.Errorf("%s: %v, want a login refused with an initiator error", name, err)
		}
	}

	// One-way CHAP (no target credentials) logs in too.
	tg.TargetUser, tg.TargetPassword = "", ""
	if err := d.Ensure(ctx, tg); err != nil {
		t.Fatal(err)
	}
	c := cfg
	c.TargetUsername, c.TargetPassword = "", ""
	s, err := Login(ctx, c)
	if err != nil {
		t.Fatalf("one-way CHAP: %v", err)
	}
	if err := s.Logout(ctx); err != nil {
		t.Fatal(err)
	}
}

func waitNoConnections(t *testing.T, d *target.TGT, iqn string) {
	t.Helper()
	for range 50 {
		conns, err := d.Connections(context.Background(), iqn)
		if err == nil && len(conns) == 0 {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatal("tgtd still shows the session after logout")
}
