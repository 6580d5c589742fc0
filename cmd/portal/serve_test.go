package main

import (
	"context"
	"encoding/base64"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/ehealth-nl/portal/internal/keys"
	"github.com/ehealth-nl/portal/internal/pgtest"
	"github.com/ehealth-nl/portal/internal/postgres"
)

// TestServe_TwoInstancesFollowRotationAndRevocation runs two instances on
// one database with a one-hour poll interval, rotates and revokes through
// the command line, and watches both JWKS follow by NOTIFY alone.
func TestServe_TwoInstancesFollowRotationAndRevocation(t *testing.T) {
	env := with(baseEnv(t, testDB.Fresh(t)), "PORTAL_KEYRING_REFRESH", "1h", "PORTAL_KEYRING_MAX_STALENESS", "61m", "PORTAL_PUBLISH_LEAD", "2h", "PORTAL_RETIRE_GRACE", "2h", "PORTAL_ROTATION_PERIOD", "24h")
	a := startServe(t, env)
	b := startServe(t, env)
	jwksA, jwksB := a.URL+"/.well-known/jwks.json", b.URL+"/issuers/default/jwks.json"
	states := keyStates(t, env)
	active, next := kidIn(states, "active"), kidIn(states, "next")
	if active == "" || next == "" || len(states) != 2 {
		t.Fatalf("after two starts: %v, want one active and one next key", states)
	}
	for _, u := range []string{jwksA, jwksB} {
		if kids := jwksKids(t, u); !slices.Equal(kids, []string{active, next}) {
			t.Fatalf("%s: %v, want [%s %s]", u, kids, active, next)
		}
	}

	// A forced rotation is refused while the next key is younger than the lead.
	if _, err := runCommand(t, env, "keys", "rotate"); err == nil || !strings.Contains(err.Error(), "publish lead") {
		t.Fatalf("keys rotate with a fresh next key: err = %v, want a refusal naming the publish lead", err)
	}
	out := mustRun(t, env, "keys", "rotate", "--ignore-publish-lead")
	if !strings.Contains(out, "activated "+next) {
		t.Fatalf("keys rotate: %s", out)
	}
	states = keyStates(t, env)
	newNext := kidIn(states, "next")
	want := []string{next, newNext, active} // active, next, retired
	for _, u := range []string{jwksA, jwksB} {
		waitFor(t, u+" to show the rotation", func() bool { return slices.Equal(jwksKids(t, u), want) })
	}

	out = mustRun(t, env, "keys", "revoke", next)
	if !strings.Contains(out, "revoked "+next) || !strings.Contains(out, "activated "+newNext) {
		t.Fatalf("keys revoke: %s", out)
	}
	for _, u := range []string{jwksA, jwksB} {
		waitFor(t, u+" to drop the revoked key", func() bool {
			kids := jwksKids(t, u)
			return !slices.Contains(kids, next) && len(kids) > 0 && kids[0] == newNext
		})
	}
	if logs := a.Logs.String() + b.Logs.String(); strings.Contains(logs, `"reason":"poll"`) {
		t.Fatal("an instance refreshed by polling; the test must show NOTIFY alone")
	}
}

// TestServe_WrongKEKIsNotReadyNamingTheKid starts serve with a KEK that
// opens none of the keys: it starts, publishes nothing, and /readyz answers
// 503 naming the kids; the log names them once with the KEK they need.
func TestServe_WrongKEKIsNotReadyNamingTheKid(t *testing.T) {
	env := baseEnv(t, testDB.Fresh(t))
	mustRun(t, env, "migrate", "up")
	inst := startServe(t, env)
	if err := inst.stop(); err != nil {
		t.Fatal(err)
	}
	states := keyStates(t, env)
	active := kidIn(states, "active")

	wrong := startServe(t, with(env, "PORTAL_KEK", newKEKBase64(t)))
	status, _, body := httpGet(t, wrong.URL+"/readyz")
	if status != 503 || !strings.Contains(string(body), active) {
		t.Fatalf("readyz with the wrong KEK: %d %s, want 503 naming the active key %s", status, body, active)
	}
	if kids := jwksKids(t, wrong.URL+"/.well-known/jwks.json"); len(kids) != 0 {
		t.Fatalf("JWKS with the wrong KEK: %v, want no key published", kids)
	}
	oldID := keys.KEKIDFor(decodeB64(t, env["PORTAL_KEK"]))
	logs := wrong.Logs.String()
	for kid := range states {
		if n := strings.Count(logs, `"kid":"`+kid+`"`); n != 1 || !strings.Contains(logs, oldID) {
			t.Fatalf("the log should name kid %s once and the KEK it needs (%s); it does %d times:\n%s", kid, oldID, n, logs)
		}
	}
}

// TestServe_StartsWhenAnotherIssuerIsBroken flips a byte of a second
// issuer's active key: serve starts, the default issuer serves, and
// /readyz answers 200 naming the broken issuer and kid.
func TestServe_StartsWhenAnotherIssuerIsBroken(t *testing.T) {
	env := baseEnv(t, testDB.Fresh(t))
	mustRun(t, env, "migrate", "up")
	mustRun(t, env, "issuers", "add", "--slug", "second", "--client-id", "portal-second", "--fhir-base-url", "https://fhir.example.org/fhir")
	broken := kidIn(keyStates(t, env, "--issuer", "second"), "active")
	pool := connectTest(t, env["DATABASE_URL"])
	if _, err := pool.Exec(context.Background(), `UPDATE signing_keys SET sealed_private = sealed_private || '\x00'::bytea WHERE kid = $1`, broken); err != nil {
		t.Fatal(err)
	}
	inst := startServe(t, env)
	status, _, body := httpGet(t, inst.URL+"/readyz")
	if status != 200 || !strings.Contains(string(body), `"second"`) || !strings.Contains(string(body), broken) {
		t.Fatalf("readyz with issuer second broken: %d %s, want 200 naming second and %s", status, body, broken)
	}
	if kids := jwksKids(t, inst.URL+"/.well-known/jwks.json"); len(kids) != 2 {
		t.Fatalf("default JWKS: %v", kids)
	}
	if kids := jwksKids(t, inst.URL+"/issuers/second/jwks.json"); slices.Contains(kids, broken) {
		t.Fatalf("issuer second publishes its broken key: %v", kids)
	}
}

// TestKeysReseal_OldKEKCanBeDropped walks the KEK change an operator makes:
// put a new KEK first in the ring, reseal, remove the old one.
func TestKeysReseal_OldKEKCanBeDropped(t *testing.T) {
	env := baseEnv(t, testDB.Fresh(t))
	inst := startServe(t, env)
	before := jwksKids(t, inst.URL+"/.well-known/jwks.json")
	if err := inst.stop(); err != nil {
		t.Fatal(err)
	}
	mustRun(t, env, "issuers", "add", "--slug", "second", "--client-id", "portal-second", "--fhir-base-url", "https://fhir.example.org/fhir")

	oldID := keys.KEKIDFor(decodeB64(t, env["PORTAL_KEK"]))
	newKEK := newKEKBase64(t)
	ring := with(env, "PORTAL_KEK", "", "PORTAL_KEKS", newKEK+","+env["PORTAL_KEK"])
	out := mustRun(t, ring, "keys", "reseal")
	if !strings.Contains(out, "resealed 2 key(s)") || !strings.Contains(out, "still sealed under KEK "+oldID+": 2") {
		t.Fatalf("reseal of the default issuer: %s", out)
	}
	out = mustRun(t, ring, "keys", "reseal", "--all-issuers")
	if !strings.Contains(out, "resealed 2 key(s)") || !strings.Contains(out, "older KEKs may be removed") {
		t.Fatalf("reseal of all issuers: %s", out)
	}

	onlyNew := with(env, "PORTAL_KEK", newKEK)
	inst = startServe(t, onlyNew)
	if after := jwksKids(t, inst.URL+"/.well-known/jwks.json"); !slices.Equal(before, after) {
		t.Fatalf("keys after reseal %v, before %v", after, before)
	}
	if status, _, body := httpGet(t, inst.URL+"/readyz"); status != 200 {
		t.Fatalf("readyz with only the new KEK: %d %s", status, body)
	}
}

// TestServe_JWKSOutlivesDatabaseOutage runs the real service through a
// proxy that cuts it off from PostgreSQL.
func TestServe_JWKSOutlivesDatabaseOutage(t *testing.T) {
	url := testDB.Fresh(t)
	proxy := pgtest.NewProxy(t, url)
	env := with(baseEnv(t, proxy.URL(url)), "PORTAL_KEYRING_REFRESH", "200ms", "PORTAL_ROTATION_CHECK_INTERVAL", "200ms")
	inst := startServe(t, env)
	_, h, before := httpGet(t, inst.URL+"/.well-known/jwks.json")

	proxy.Cut()
	// Let the follower and rotator fail a few times meanwhile.
	waitFor(t, "a failed keyring refresh to be logged", func() bool { return strings.Contains(inst.Logs.String(), "keyring refresh failed") })
	status, h2, body := httpGet(t, inst.URL+"/.well-known/jwks.json")
	if status != 200 || string(body) != string(before) || h2.Get("ETag") != h.Get("ETag") {
		t.Fatalf("JWKS during the outage: %d, same bytes %v", status, string(body) == string(before))
	}
	if status, _, _ := httpGet(t, inst.URL+"/readyz"); status != 503 {
		t.Fatalf("readyz during the outage: %d", status)
	}

	proxy.Restore()
	waitFor(t, "readyz to recover", func() bool { s, _, _ := httpGet(t, inst.URL+"/readyz"); return s == 200 })
	if status, _, body := httpGet(t, inst.URL+"/.well-known/jwks.json"); status != 200 || string(body) != string(before) {
		t.Fatalf("JWKS after the outage: %d", status)
	}
}

func TestMigrate_ConcurrentUpIsSafe(t *testing.T) {
	url := testDB.Empty(t)
	var wg sync.WaitGroup
	errs := make([]error, 4)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = runCommand(t, map[string]string{"DATABASE_URL": url}, "migrate", "up")
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("migrate up #%d: %v", i, err)
		}
	}
	out := mustRun(t, map[string]string{"DATABASE_URL": url}, "migrate", "version")
	if !strings.HasPrefix(out, "schema version ") || strings.Contains(out, "dirty") {
		t.Fatalf("migrate version: %s", out)
	}
	var version, latest int
	if _, err := fmt.Sscanf(out, "schema version %d; newest in this binary %d", &version, &latest); err != nil || version != latest || version == 0 {
		t.Fatalf("migrate version: %q (%v)", out, err)
	}
	// Down and up again: every migration is reversible.
	if _, err := runCommand(t, map[string]string{"DATABASE_URL": url}, "migrate", "down", "99"); err == nil || !strings.Contains(err.Error(), "only") {
		t.Fatalf("migrate down past the first migration: %v", err)
	}
	mustRun(t, map[string]string{"DATABASE_URL": url}, "migrate", "down", fmt.Sprint(embeddedMigrations(t)), "--yes")
	mustRun(t, map[string]string{"DATABASE_URL": url}, "migrate", "up")
}

func TestServe_ConcurrentStartsOnAnEmptyDatabase(t *testing.T) {
	env := baseEnv(t, testDB.Empty(t))
	var wg sync.WaitGroup
	insts := make([]*instance, 3)
	for i := range insts {
		wg.Add(1)
		go func() { defer wg.Done(); insts[i] = startServe(t, env) }()
	}
	wg.Wait()
	states := keyStates(t, env)
	if len(states) != 2 || kidIn(states, "active") == "" || kidIn(states, "next") == "" {
		t.Fatalf("three instances starting at once made keys %v, want one active and one next", states)
	}
	for _, inst := range insts {
		waitFor(t, "every instance to be ready", func() bool { s, _, _ := httpGet(t, inst.URL+"/readyz"); return s == 200 })
	}
}

func TestRun_ConfigErrorIsOneLineNamingTheVariable(t *testing.T) {
	env := with(baseEnv(t, testDB.Fresh(t)), "PORTAL_LAUNCH_TOKEN_TTL", "10m")
	_, err := startServeErr(t, env)
	if err == nil || !strings.HasPrefix(err.Error(), "PORTAL_LAUNCH_TOKEN_TTL: ") || strings.Contains(err.Error(), "\n") {
		t.Fatalf("error %q, want one line starting with the variable", err)
	}
	env = with(env, "PORTAL_LAUNCH_TOKEN_TTL", "", "PORTAL_KEK", "")
	_, err = startServeErr(t, env)
	if err == nil || !strings.HasPrefix(err.Error(), "PORTAL_KEK: ") {
		t.Fatalf("without a KEK: %v", err)
	}
}

// TestHelp_EveryCommandSaysWhatItDoesAndItsEnvironment walks the command
// tree and asks each command for --help.
func TestHelp_EveryCommandSaysWhatItDoesAndItsEnvironment(t *testing.T) {
	var walk func(cmd *command, path []string)
	walk = func(cmd *command, path []string) {
		out := mustRun(t, nil, append(path, "--help")...)
		if !strings.Contains(out, "Usage: ") || !strings.Contains(out, cmd.summary) {
			t.Errorf("portal %s --help lacks usage or summary:\n%s", strings.Join(path, " "), out)
		}
		if len(cmd.sub) == 0 && !strings.Contains(out, "Environment:") {
			t.Errorf("portal %s --help does not list the environment it reads", strings.Join(path, " "))
		}
		if len(cmd.sub) == 0 && cmd.env[0] != noEnv && !strings.Contains(out, "DATABASE_URL") {
			t.Errorf("portal %s --help does not mention DATABASE_URL", strings.Join(path, " "))
		}
		for _, s := range cmd.sub {
			walk(s, append(append([]string(nil), path...), s.name))
		}
	}
	root := commands()
	out := mustRun(t, nil, "--help")
	for _, s := range root.sub {
		if !strings.Contains(out, s.name) {
			t.Errorf("portal --help does not list %s", s.name)
		}
		walk(s, []string{s.name})
	}
	if _, err := runCommand(t, nil, "frobnicate"); err == nil {
		t.Error("an unknown command was accepted")
	}
}

func TestIssuers_AddListAndUpdate(t *testing.T) {
	env := baseEnv(t, testDB.Fresh(t))
	inst := startServe(t, env)
	out := mustRun(t, env, "issuers", "add", "--slug", "clinic-b", "--client-id", "portal-b", "--fhir-base-url", "https://fhir.example.org/fhir", "--alg", "ES384")
	if !strings.Contains(out, "issuer clinic-b added") {
		t.Fatalf("issuers add: %s", out)
	}
	waitFor(t, "the new issuer's JWKS to be served", func() bool {
		s, _, _ := httpGet(t, inst.URL+"/issuers/clinic-b/jwks.json")
		return s == 200 && len(jwksKids(t, inst.URL+"/issuers/clinic-b/jwks.json")) == 2
	})
	if _, err := runCommand(t, env, "issuers", "add", "--slug", "clinic-b", "--client-id", "portal-c", "--fhir-base-url", "https://fhir.example.org/fhir"); err == nil {
		t.Fatal("a duplicate slug was accepted")
	}
	if _, err := runCommand(t, env, "issuers", "add", "--slug", "clinic-c", "--client-id", "portal-c", "--fhir-base-url", "https://fhir.example.org/fhir", "--publish-lead", "10s"); err == nil || !strings.Contains(err.Error(), "--publish-lead") {
		t.Fatalf("a publish lead under the rule: %v", err)
	}
	if _, err := runCommand(t, env, "issuers", "update", "default", "--alg", "ES384"); err == nil {
		t.Fatal("the default issuer was updated from the command line")
	}
	mustRun(t, env, "issuers", "update", "clinic-b", "--alg", "PS256")
	var next string
	for kid, st := range keyStates(t, env, "--issuer", "clinic-b") {
		if st == "next" {
			next = kid
		}
	}
	out = mustRun(t, env, "keys", "list", "--issuer", "clinic-b")
	if !strings.Contains(out, next) || !strings.Contains(out, "PS256/2048") {
		t.Fatalf("after switching clinic-b to PS256 the next key should be PS256:\n%s", out)
	}
	list := mustRun(t, env, "issuers", "list")
	if !strings.Contains(list, "clinic-b") || !strings.Contains(list, "portal-test") {
		t.Fatalf("issuers list:\n%s", list)
	}
}

func decodeB64(t testing.TB, s string) []byte {
	t.Helper()
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// connectTest opens a pool on the test database, closed when the test ends.
func connectTest(t testing.TB, url string) *pgxpool.Pool {
	t.Helper()
	pool, err := postgres.Connect(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return pool
}

// TestIssuers_DeviceJoinsADomain adds a domain issuer with its Device,
// changes it, and refuses a Device on a plain HTI issuer, naming the flag.
func TestIssuers_DeviceJoinsADomain(t *testing.T) {
	env := baseEnv(t, testDB.Fresh(t))
	mustRun(t, env, "migrate", "up")
	mustRun(t, env, "issuers", "add", "--slug", "domain", "--client-id", "portal-domain", "--fhir-base-url", "https://fhir.example.org/fhir",
		"--profile", "koppeltaal", "--alg", "ES384", "--device", "Device/portal-1")
	if list := mustRun(t, env, "issuers", "list"); !strings.Contains(list, "Device/portal-1") {
		t.Fatalf("issuers list:\n%s", list)
	}
	mustRun(t, env, "issuers", "update", "domain", "--device", "Device/portal-2")
	if list := mustRun(t, env, "issuers", "list", "--json"); !strings.Contains(list, `"device": "Device/portal-2"`) {
		t.Fatalf("issuers list --json:\n%s", list)
	}
	_, err := runCommand(t, env, "issuers", "add", "--slug", "plain", "--client-id", "portal-plain", "--fhir-base-url", "https://fhir.example.org/fhir",
		"--profile", "hti", "--alg", "ES256", "--device", "Device/portal-3")
	if err == nil || !strings.Contains(err.Error(), "--device") {
		t.Fatalf("a Device on an hti issuer: %v", err)
	}
	if trail := mustRun(t, env, "admin-events", "list", "--target", "issuer:domain", "--json"); !strings.Contains(trail, `"device": "Device/portal-2"`) {
		t.Fatalf("the Device change is not in the trail:\n%s", trail)
	}
}
