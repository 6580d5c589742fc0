package main

import (
	"context"
	"strings"
	"testing"
)

// TestKeysRevoke_OldKidStartingWithADash revokes stored base64url kids
// that start with "-": given as a positional that is no flag, and after --.
func TestKeysRevoke_OldKidStartingWithADash(t *testing.T) {
	env := baseEnv(t, testDB.Fresh(t))
	mustRun(t, env, "migrate", "up")
	inst := startServe(t, env)
	if err := inst.stop(); err != nil {
		t.Fatal(err)
	}
	pool := connectTest(t, env["DATABASE_URL"])
	for _, kid := range []string{"-XyOldStyleKid0000000a", "-XyOldStyleKid0000000b"} {
		// A retired key of the default issuer as an older release stored it.
		_, err := pool.Exec(context.Background(), `INSERT INTO signing_keys
			(kid, issuer, alg, key_bits, state, public_jwk, sealed_private, kek_id, created_at, retired_at, expires_at)
			SELECT $1, issuer, alg, key_bits, 'retired', public_jwk, sealed_private, kek_id, now(), now(), now() + interval '1 hour'
			FROM signing_keys WHERE issuer = 'default' AND state = 'next'`, kid)
		if err != nil {
			t.Fatal(err)
		}
	}
	out := mustRun(t, env, "keys", "revoke", "--issuer", "default", "-XyOldStyleKid0000000a")
	if !strings.Contains(out, "revoked -XyOldStyleKid0000000a") {
		t.Fatalf("revoke of a dash kid given as a positional: %s", out)
	}
	out = mustRun(t, env, "keys", "revoke", "--", "-XyOldStyleKid0000000b")
	if !strings.Contains(out, "revoked -XyOldStyleKid0000000b") {
		t.Fatalf("revoke of a dash kid after --: %s", out)
	}
	if _, err := runCommand(t, env, "keys", "revoke", "--issuer"); err == nil {
		t.Fatal("a flag without its value was accepted")
	}
}
