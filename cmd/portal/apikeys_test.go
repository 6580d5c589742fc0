package main

import (
	"strings"
	"testing"
)

// TestAPIKeysCreate_IssuerLimit: apikeys create NAME --issuer limits a
// launch key to existing issuers (repeatable or comma-separated), list
// shows the limit, a bad limit is one clear line and stores nothing, and
// the served API refuses the key another issuer's module.
func TestAPIKeysCreate_IssuerLimit(t *testing.T) {
	env := baseEnv(t, testDB.Fresh(t))
	inst := startServe(t, env) // creates the default issuer
	mustRun(t, env, "issuers", "add", "--slug", "clinic-a", "--client-id", "portal-a", "--fhir-base-url", "https://fhir.example.org/fhir")
	mustRun(t, env, "issuers", "add", "--slug", "clinic-b", "--client-id", "portal-b", "--fhir-base-url", "https://fhir.example.org/fhir")
	mustRun(t, env, "modules", "add", "diary-b", "--issuer", "clinic-b", "--launch-url", "https://diary.example.org/launch", "--audience", "Device/diary")

	keyA := strings.TrimSpace(mustRun(t, env, "apikeys", "create", "portal-a", "--scope", "launch", "--issuer", "clinic-a"))
	if !strings.HasPrefix(keyA, "ptl_") {
		t.Fatalf("apikeys create printed %q", keyA)
	}
	mustRun(t, env, "apikeys", "create", "portal-ab", "--scope", "launch", "--issuer", "clinic-b,clinic-a", "--issuer", "clinic-a")
	mustRun(t, env, "apikeys", "create", "--name", "single", "--scope", "launch")
	mustRun(t, env, "apikeys", "create", "ops", "--scope", "admin")

	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"nope-key", "--scope", "launch", "--issuer", "clinic-a,nope"}, `unknown issuer "nope"`},
		{[]string{"nope-key", "--scope", "launch", "--issuer", "Clinic-A"}, `"Clinic-A" is not an issuer slug`},
		{[]string{"nope-key", "--scope", "launch", "--issuer", "clinic-a,"}, "empty issuer slug"},
		{[]string{"nope-key", "--scope", "admin", "--issuer", "clinic-a"}, "an admin key does not launch"},
		{[]string{"nope-key", "other", "--scope", "launch"}, "want one NAME"},
	} {
		_, err := runCommand(t, env, append([]string{"apikeys", "create"}, tc.args...)...)
		if err == nil || !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("apikeys create %s: %v, want one line with %q", strings.Join(tc.args, " "), err, tc.want)
		}
	}

	list := mustRun(t, env, "apikeys", "list")
	if strings.Contains(list, "nope-key") {
		t.Fatalf("a refused key was stored:\n%s", list)
	}
	for name, want := range map[string]string{"portal-a": "launch issuers clinic-a ", "portal-ab": "launch issuers clinic-a,clinic-b ", "single": "launch any issuer ", "ops": "admin - "} {
		line := ""
		for _, l := range strings.Split(list, "\n") {
			if strings.HasPrefix(l, name+" ") {
				line = strings.Join(strings.Fields(l), " ")
			}
		}
		if !strings.Contains(line, want) {
			t.Errorf("apikeys list: %s shows %q, want %q:\n%s", name, line, want, list)
		}
	}

	status, body := post(t, inst.URL+"/api/v1/launches", keyA, `{"module":"diary-b","task":"Task/1","user":"Patient/1"}`)
	if status != 422 || !strings.Contains(string(body), `"field":"module"`) || !strings.Contains(string(body), `may launch only for issuers \"clinic-a\"`) {
		t.Fatalf("the clinic-a key for clinic-b's module: %d %s", status, body)
	}
}
