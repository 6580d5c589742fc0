package main

import (
	"encoding/json"
	"strings"
	"testing"
)

// TestAdminEvents_EveryKeyAndIssuerChangeIsRecorded makes each kind of
// change an operator makes to issuers and keys from the command line, and
// the configuration a starting instance applies: each is in the admin
// trail with its actor; a start or an update with unchanged settings adds
// nothing; a new default issuer records both the new and the old default.
func TestAdminEvents_EveryKeyAndIssuerChangeIsRecorded(t *testing.T) {
	env := baseEnv(t, testDB.Fresh(t))
	if err := startServe(t, env).stop(); err != nil {
		t.Fatal(err)
	}
	if err := startServe(t, env).stop(); err != nil { // same settings again
		t.Fatal(err)
	}
	mustRun(t, env, "issuers", "add", "--slug", "clinic", "--client-id", "portal-clinic", "--fhir-base-url", "https://fhir.example.org/fhir")
	mustRun(t, env, "issuers", "update", "clinic", "--fhir-base-url", "https://fhir2.example.org/fhir")
	mustRun(t, env, "keys", "rotate", "--ignore-publish-lead")
	next := kidIn(keyStates(t, env), "next")
	mustRun(t, env, "keys", "revoke", next)
	mustRun(t, with(env, "PORTAL_KEKS", newKEKBase64(t)+","+env["PORTAL_KEK"], "PORTAL_KEK", ""), "keys", "reseal")
	mustRun(t, env, "issuers", "update", "clinic", "--fhir-base-url", "https://fhir2.example.org/fhir") // no change: no event
	// Another issuer becomes the default: both changes are recorded.
	if err := startServe(t, with(env, "PORTAL_DEFAULT_ISSUER", "other", "PORTAL_CLIENT_ID", "portal-other")).stop(); err != nil {
		t.Fatal(err)
	}

	var page struct {
		Events []struct {
			Actor, Action, Target string
			Before, After         map[string]any
		} `json:"events"`
	}
	if err := json.Unmarshal([]byte(mustRun(t, env, "admin-events", "list", "--json", "--limit", "500")), &page); err != nil {
		t.Fatal(err)
	}
	count := map[string]int{}
	for _, e := range page.Events {
		count[e.Action]++
		want := "cli:"
		if e.Action == "issuer.configure" {
			want = "serve:"
		}
		if !strings.HasPrefix(e.Actor, want) {
			t.Errorf("%s of %s by %q, want %s…", e.Action, e.Target, e.Actor, want)
		}
		if e.Action == "issuer.update" && (e.Before["fhir_base_url"] != "https://fhir.example.org/fhir" || e.After["fhir_base_url"] != "https://fhir2.example.org/fhir") {
			t.Errorf("issuer.update without before and after: %+v", e)
		}
		if e.Action == "key.revoke" && e.Target != "key:"+next {
			t.Errorf("key.revoke of %s, want key:%s", e.Target, next)
		}
	}
	for action, want := range map[string]int{"issuer.configure": 3, "issuer.add": 1, "issuer.update": 1, "key.rotate": 1, "key.revoke": 1} {
		if count[action] != want {
			t.Errorf("%d %s events, want %d (all: %v)", count[action], action, want, count)
		}
	}
	if count["key.reseal"] < 2 {
		t.Errorf("%d key.reseal events, want one per key moved to the new KEK (all: %v)", count["key.reseal"], count)
	}
}
