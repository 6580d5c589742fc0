package server

import (
	"encoding/json"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/ehealth-nl/portal/internal/apikeys"
	"github.com/ehealth-nl/portal/internal/keys"
	"github.com/ehealth-nl/portal/internal/launch"
)

// anotherInstance starts a second server over the same database as s, with
// the dependencies d that s was started with, but its own launch service
// (and so its own memory of modules) and its own memory of API keys: a
// second instance of the portal. Its helpers are s's, aimed at it.
func (s *stack) anotherInstance(t testing.TB, d Deps) *stack {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	other := *s
	d.PublicURL = "http://" + ln.Addr().String()
	other.launches = launch.NewService(s.pool, s.registry, s.keyring, launch.Config{PublicURL: d.PublicURL, TokenLifetime: 300 * time.Second,
		TicketLifetime: 120 * time.Second, IATBackdate: 5 * time.Second}, s.clock.Now, d.Logger)
	d.Launches, d.LaunchKeys = other.launches, apikeys.NewRecent(s.apikeys, time.Hour, time.Now)
	other.http = startServer(t, d, ln)
	return &other
}

// countLaunches is how many launch rows the database holds.
func (s *stack) countLaunches(t testing.TB) int {
	t.Helper()
	var n int
	if err := s.pool.QueryRow(operatorContext(), `SELECT count(*) FROM launches`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// TestAPIKeys_RevocationTakesEffectOnTheNextRequestOfEveryInstance: the
// launch routes authenticate from a memory of keys found valid
// (apikeys.Recent, an hour here), yet once a key is revoked in the
// database — as `portal apikeys revoke` does, with no notification to
// anyone — the very next launch request with it is refused 401 by every
// instance, for links and for tokens, and writes nothing: the statement
// that writes the launch checks the key.
func TestAPIKeys_RevocationTakesEffectOnTheNextRequestOfEveryInstance(t *testing.T) {
	var deps *Deps
	a := newStack(t, testDB.Fresh(t), keys.ES256, func(_ testing.TB, _ *stack, d *Deps) { deps = d })
	a.registerTestModule(t)
	b := a.anotherInstance(t, *deps)
	body := `{"module":"diary","task":"Task/1","user":"Practitioner/dr-1","patient":"Patient/1"}`
	for _, inst := range []*stack{a, b} {
		for _, path := range []string{"/api/v1/launches", "/api/v1/launch-tokens"} {
			if status, _, resp := inst.apiCall(t, http.MethodPost, path, inst.launchKey, "application/json", body); status != http.StatusCreated {
				t.Fatalf("before the revocation, %s at %s: %d %s", path, inst.http.URL, status, resp)
			}
		}
	}
	before := a.countLaunches(t)
	if _, err := a.apikeys.Revoke(operatorContext(), "backend", time.Now()); err != nil {
		t.Fatal(err)
	}
	for _, inst := range []*stack{b, a} {
		for _, path := range []string{"/api/v1/launch-tokens", "/api/v1/launches", "/api/v1/launches"} {
			status, _, resp := inst.apiCall(t, http.MethodPost, path, inst.launchKey, "application/json", body)
			var p Problem
			_ = json.Unmarshal(resp, &p)
			if status != http.StatusUnauthorized || len(p.Errors) != 1 || p.Errors[0].Field != "Authorization" {
				t.Errorf("after the revocation, %s at %s: %d %s, want 401 naming Authorization", path, inst.http.URL, status, resp)
			}
		}
	}
	if after := a.countLaunches(t); after != before {
		t.Errorf("requests with the revoked key wrote %d launch rows", after-before)
	}
}

// TestModules_ChangeOnOneInstanceTakesEffectOnTheNextLaunchOfAnother: an
// instance that launched a module remembers it; when the module is
// re-pointed through another instance, the next launch of the first uses
// the new launch URL and audience, and when it is removed, the next launch
// is refused as for an unknown module and writes nothing.
func TestModules_ChangeOnOneInstanceTakesEffectOnTheNextLaunchOfAnother(t *testing.T) {
	var deps *Deps
	a := newStack(t, testDB.Fresh(t), keys.ES256, func(_ testing.TB, _ *stack, d *Deps) { deps = d })
	a.registerTestModule(t)
	b := a.anotherInstance(t, *deps)
	body := `{"module":"diary","task":"Task/1","user":"Practitioner/dr-1","patient":"Patient/1"}`
	issue := func() (int, issuedTokenBody, string) {
		status, _, resp := b.apiCall(t, http.MethodPost, "/api/v1/launch-tokens", b.launchKey, "application/json", body)
		var got issuedTokenBody
		_ = json.Unmarshal(resp, &got)
		return status, got, string(resp)
	}
	if status, got, resp := issue(); status != http.StatusCreated || got.URL != testModuleURL {
		t.Fatalf("first launch: %d %s", status, resp)
	}
	moved := "https://moved.example.org/launch"
	a.putModule(t, "diary", map[string]string{"launch_url": moved, "audience": "Device/diary-2", "default_definition": "ActivityDefinition/diary"})
	if status, got, resp := issue(); status != http.StatusCreated || got.URL != moved {
		t.Errorf("launch after the module moved: %d %s, want the new launch URL %s", status, resp, moved)
	}
	link := b.createLaunch(t, map[string]string{"module": "diary", "task": "Task/1", "user": "Practitioner/dr-1", "patient": "Patient/1"})
	if _, page := redeem(t, link, nil); !strings.Contains(string(page), moved) {
		t.Errorf("the link made after the move does not lead to %s", moved)
	}
	if status, _, resp := a.apiCall(t, http.MethodDelete, "/api/v1/modules/diary", a.adminKey, "", ""); status != http.StatusNoContent {
		t.Fatalf("DELETE module: %d %s", status, resp)
	}
	before := a.countLaunches(t)
	for _, path := range []string{"/api/v1/launches", "/api/v1/launch-tokens"} {
		status, _, resp := b.apiCall(t, http.MethodPost, path, b.launchKey, "application/json", body)
		var p Problem
		_ = json.Unmarshal(resp, &p)
		if status != http.StatusUnprocessableEntity || len(p.Errors) != 1 || p.Errors[0].Field != "module" {
			t.Errorf("%s after the module was removed: %d %s, want 422 naming module", path, status, resp)
		}
	}
	if after := a.countLaunches(t); after != before {
		t.Errorf("launches of the removed module wrote %d rows", after-before)
	}
}
