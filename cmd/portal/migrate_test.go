package main

import (
	"fmt"
	"io/fs"
	"strings"
	"testing"

	"github.com/ehealth-nl/portal/migrations"
)

// embeddedMigrations is how many migrations this binary carries.
func embeddedMigrations(t testing.TB) int {
	t.Helper()
	ups, err := fs.Glob(migrations.Files, "*.up.sql")
	if err != nil || len(ups) == 0 {
		t.Fatalf("embedded migrations: %v %v", ups, err)
	}
	return len(ups)
}

// TestMigrateDown_SaysWhatItDropsAndNeedsYes: without --yes, migrate down
// lists the migrations it would revert and what they drop, changes
// nothing and fails with one line asking for --yes; with --yes it reverts.
func TestMigrateDown_SaysWhatItDropsAndNeedsYes(t *testing.T) {
	env := map[string]string{"DATABASE_URL": testDB.Fresh(t)}
	before := mustRun(t, env, "migrate", "version")
	n := embeddedMigrations(t)

	out, err := runCommand(t, env, "migrate", "down", fmt.Sprint(n))
	if err == nil || !strings.Contains(err.Error(), "--yes") || strings.Contains(err.Error(), "\n") {
		t.Fatalf("migrate down without --yes: err %v", err)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != n+1 || !strings.HasPrefix(lines[len(lines)-1], "  0001 issuers_and_signing_keys: drops ") {
		t.Fatalf("the plan does not list the %d migrations newest first:\n%s", n, out)
	}
	for _, want := range []string{"0002 modules_api_keys_launches: drops table launches, table api_keys, table modules",
		"table signing_keys, table issuers", "0004 api_key_issuers: drops column api_keys.issuers"} {
		if !strings.Contains(out, want) {
			t.Errorf("the plan lacks %q:\n%s", want, out)
		}
	}
	if got := mustRun(t, env, "migrate", "version"); got != before {
		t.Fatalf("migrate down without --yes changed the schema: %q, was %q", got, before)
	}

	out, err = runCommand(t, env, "migrate", "down")
	if err == nil || !strings.Contains(out, "would revert") || strings.Count(strings.TrimSpace(out), "\n") != 1 {
		t.Fatalf("migrate down (one step) without --yes: %v\n%s", err, out)
	}
	if _, err := runCommand(t, env, "migrate", "down", fmt.Sprint(n+1)); err == nil || !strings.Contains(err.Error(), "only") {
		t.Fatalf("migrate down past the first migration: %v", err)
	}

	out = mustRun(t, env, "migrate", "down", "--yes")
	if out == before || !strings.HasPrefix(out, "schema version ") {
		t.Fatalf("migrate down --yes: %q, was %q", out, before)
	}
	out = mustRun(t, env, "migrate", "down", fmt.Sprint(n-1), "--yes")
	if !strings.HasPrefix(out, "schema version 0;") {
		t.Fatalf("migrate down --yes to nothing: %q", out)
	}
	mustRun(t, env, "migrate", "up")
	if got := mustRun(t, env, "migrate", "version"); got != before {
		t.Fatalf("after up again: %q, was %q", got, before)
	}
}
