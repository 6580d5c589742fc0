package server

import (
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/ehealth-nl/portal/internal/apikeys"
	"github.com/ehealth-nl/portal/internal/keys"
	"github.com/ehealth-nl/portal/internal/pgtest"
)

// addIssuer creates a second issuer with its keys and loads them.
func (s *stack) addIssuer(t testing.TB, slug, clientID string) {
	t.Helper()
	ctx := operatorContext()
	is := defaultIssuer(keys.ES256)
	is.Slug, is.ClientID, is.IsDefault = slug, clientID, false
	if err := keys.NewStore(s.pool).CreateIssuer(ctx, is, time.Now()); err != nil {
		t.Fatal(err)
	}
	if _, err := s.rotator.EnsureKeys(ctx, slug); err != nil {
		t.Fatal(err)
	}
	if err := s.keyring.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestAPIKeys_LimitedKeyLaunchesOnlyForItsIssuers: a launch key limited to
// one issuer is refused, with a 422 naming the field module and nothing
// written, for a module of another issuer on both launch endpoints, and
// launches its own issuer's modules under that issuer's client_id. An
// unlimited key still launches for any issuer.
func TestAPIKeys_LimitedKeyLaunchesOnlyForItsIssuers(t *testing.T) {
	ctx := operatorContext()
	s := newStack(t, testDB.Fresh(t), keys.ES256)
	s.addIssuer(t, "second", "portal-second")
	s.registerTestModule(t) // "diary", issuer default
	s.putModule(t, "second-diary", map[string]string{"launch_url": testModuleURL, "audience": "Device/second", "issuer": "second"})
	key, limitedKey, err := s.apikeys.Create(ctx, "second-backend", apikeys.ScopeLaunch, time.Now(), "second")
	if err != nil {
		t.Fatal(err)
	}
	if len(key.Issuers) != 1 || key.Issuers[0] != "second" {
		t.Fatalf("created key's issuers %v", key.Issuers)
	}

	for _, path := range []string{"/api/v1/launches", "/api/v1/launch-tokens"} {
		before := countRows(t, s, "launches")
		status, h, body := s.apiCall(t, http.MethodPost, path, limitedKey, "application/json", `{"module":"diary","task":"Task/1","user":"Patient/1"}`)
		var p Problem
		if err := json.Unmarshal(body, &p); err != nil || status != http.StatusUnprocessableEntity || h.Get("Content-Type") != "application/problem+json" ||
			len(p.Errors) != 1 || p.Errors[0].Field != "module" || !strings.Contains(p.Errors[0].Reason, `may launch only for issuers "second"`) {
			t.Fatalf("%s: the limited key asked for another issuer's module: %d %s", path, status, body)
		}
		if after := countRows(t, s, "launches"); after != before {
			t.Fatalf("%s: a refused launch wrote %d row(s)", path, after-before)
		}
		// Naming its own issuer does not help: the module decides.
		if status, _, body := s.apiCall(t, http.MethodPost, path, limitedKey, "application/json", `{"module":"diary","task":"Task/1","user":"Patient/1","issuer":"second"}`); status != http.StatusUnprocessableEntity {
			t.Fatalf("%s: the limited key naming its issuer for another issuer's module: %d %s", path, status, body)
		}
		if status, _, body := s.apiCall(t, http.MethodPost, path, limitedKey, "application/json", `{"module":"second-diary","task":"Task/1","user":"Patient/1"}`); status != http.StatusCreated {
			t.Fatalf("%s: the limited key for its own issuer's module: %d %s", path, status, body)
		}
		for _, module := range []string{"diary", "second-diary"} {
			if status, _, body := s.apiCall(t, http.MethodPost, path, s.launchKey, "application/json", `{"module":"`+module+`","task":"Task/1","user":"Patient/1"}`); status != http.StatusCreated {
				t.Fatalf("%s: the unlimited key for %s: %d %s", path, module, status, body)
			}
		}
	}
	_, _, body := s.apiCall(t, http.MethodPost, "/api/v1/launch-tokens", limitedKey, "application/json", `{"module":"second-diary","task":"Task/1","user":"Patient/1"}`)
	var issued struct{ Token string }
	if err := json.Unmarshal(body, &issued); err != nil || decodeSegment(t, issued.Token, 1)["iss"] != "portal-second" {
		t.Fatalf("the limited key's token: %s", body)
	}
	var createdBy string
	if err := s.pool.QueryRow(ctx, `SELECT created_by FROM launches WHERE module = 'second-diary' ORDER BY created_at DESC LIMIT 1`).Scan(&createdBy); err != nil || createdBy != "second-backend" {
		t.Fatalf("audit created_by %q, %v", createdBy, err)
	}
}

// TestAPIKeys_IssuerLimitIsCheckedAtCreation: the limit must name existing
// issuers by slug, and only launch keys take one; nothing is stored
// otherwise. List and Authenticate return the limit.
func TestAPIKeys_IssuerLimitIsCheckedAtCreation(t *testing.T) {
	ctx := operatorContext()
	s := newStack(t, testDB.Fresh(t), keys.ES256)
	s.addIssuer(t, "second", "portal-second")
	before := countRows(t, s, "api_keys")
	for _, tc := range []struct {
		scope   apikeys.Scope
		issuers []string
		want    error
	}{
		{apikeys.ScopeLaunch, []string{"second", "nope"}, apikeys.ErrUnknownIssuer},
		{apikeys.ScopeLaunch, []string{"Second"}, apikeys.ErrInvalidIssuer},
		{apikeys.ScopeLaunch, []string{""}, apikeys.ErrInvalidIssuer},
		{apikeys.ScopeAdmin, []string{"second"}, apikeys.ErrInvalidIssuer},
	} {
		if _, _, err := s.apikeys.Create(ctx, "limited", tc.scope, time.Now(), tc.issuers...); !errors.Is(err, tc.want) {
			t.Errorf("%s key for %q: %v, want %v", tc.scope, tc.issuers, err, tc.want)
		}
	}
	if n := countRows(t, s, "api_keys"); n != before {
		t.Fatalf("refused creations stored %d key(s)", n-before)
	}
	_, secret, err := s.apikeys.Create(ctx, "limited", apikeys.ScopeLaunch, time.Now(), "second", "default", "second")
	if err != nil {
		t.Fatal(err)
	}
	k, err := s.apikeys.Authenticate(ctx, secret)
	if err != nil || strings.Join(k.Issuers, ",") != "default,second" {
		t.Fatalf("authenticated limit %v, %v", k.Issuers, err)
	}
	list, err := s.apikeys.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range list {
		want := map[string]string{"limited": "default,second", "backend": "", "operator": ""}[k.Name]
		if got := strings.Join(k.Issuers, ","); got != want || (want == "" && k.Issuers != nil) {
			t.Errorf("list: key %s has issuers %v, want %q", k.Name, k.Issuers, want)
		}
	}
}

// TestAPIKeys_DatabaseErrorsAre500UnlessTransient: an API key check that
// fails because of a bug (here: the api_keys table is gone) is a 500
// problem, logged with the request id; only a transient failure (the
// database cut off) is a 503 with Retry-After.
func TestAPIKeys_DatabaseErrorsAre500UnlessTransient(t *testing.T) {
	ctx := operatorContext()
	url := testDB.Fresh(t)
	proxy := pgtest.NewProxy(t, url)
	s := newStack(t, proxy.URL(url), keys.ES256)
	s.registerTestModule(t)
	launchBody := `{"module":"diary","task":"Task/1","user":"Patient/1"}`

	if _, err := s.pool.Exec(ctx, `ALTER TABLE api_keys RENAME TO x`); err != nil {
		t.Fatal(err)
	}
	s.pool.Reset() // statements prepared on open connections still find the renamed table
	status, h, body := s.apiCall(t, http.MethodPost, "/api/v1/launches", s.launchKey, "application/json", launchBody)
	var p Problem
	if err := json.Unmarshal(body, &p); err != nil || status != http.StatusInternalServerError || p.Type != "urn:portal:problem:internal" ||
		h.Get("Content-Type") != "application/problem+json" || h.Get("Retry-After") != "" {
		t.Fatalf("with api_keys missing: %d %v %s", status, h, body)
	}
	logs := s.logs.String()
	if !strings.Contains(logs, `"msg":"request failed"`) || !strings.Contains(logs, `"request_id"`) || !strings.Contains(logs, "authenticate API key") {
		t.Fatalf("the 500 was not logged with its request id and cause:\n%s", logs)
	}
	if strings.Contains(logs, s.launchKey) || strings.Contains(logs, s.launchKey[4:20]) {
		t.Fatal("the presented key reached the log")
	}
	if _, err := s.pool.Exec(ctx, `ALTER TABLE x RENAME TO api_keys`); err != nil {
		t.Fatal(err)
	}
	s.pool.Reset()
	if status, _, body := s.apiCall(t, http.MethodPost, "/api/v1/launches", s.launchKey, "application/json", launchBody); status != http.StatusCreated {
		t.Fatalf("with api_keys back: %d %s", status, body)
	}

	proxy.Cut()
	status, h, body = s.apiCall(t, http.MethodPost, "/api/v1/launches", s.launchKey, "application/json", launchBody)
	if err := json.Unmarshal(body, &p); err != nil || status != http.StatusServiceUnavailable || p.Type != "urn:portal:problem:unavailable" ||
		h.Get("Retry-After") == "" || h.Get("Content-Type") != "application/problem+json" {
		t.Fatalf("with the database cut off: %d %v %s", status, h, body)
	}
	proxy.Restore()
}
