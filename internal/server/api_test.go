package server

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/ehealth-nl/portal/internal/keys"
)

// TestAPI_EveryAnswerIsNoStore calls the API's routes, answering and
// refusing: nothing it says may be kept by a cache.
func TestAPI_EveryAnswerIsNoStore(t *testing.T) {
	s := newStack(t, testDB.Fresh(t), keys.ES256)
	s.registerTestModule(t)
	launchBody := `{"module":"diary","task":"Task/1","user":"Patient/1"}`
	for _, c := range []struct{ method, path, key, body string }{
		{http.MethodPost, "/api/v1/launches", s.launchKey, launchBody},
		{http.MethodPost, "/api/v1/launch-tokens", s.launchKey, launchBody},
		{http.MethodPost, "/api/v1/launches", "", launchBody},
		{http.MethodGet, "/api/v1/launches", s.adminKey, ""},
		{http.MethodGet, "/api/v1/modules", s.adminKey, ""},
		{http.MethodGet, "/api/v1/modules/diary", s.adminKey, ""},
		{http.MethodGet, "/api/v1/modules/nope", s.adminKey, ""},
		{http.MethodPut, "/api/v1/modules/m2", s.adminKey, `{"launch_url":"https://m.example.org","audience":"Device/m2"}`},
		{http.MethodDelete, "/api/v1/modules/m2", s.adminKey, ""},
		{http.MethodGet, "/api/v1/keys", s.adminKey, ""},
		{http.MethodGet, "/api/v1/keys", s.launchKey, ""},
		{http.MethodPost, "/api/v1/keys/rotate", s.adminKey, `{"ignore_publish_lead":true}`},
		{http.MethodGet, "/api/v1/nothing-here", s.adminKey, ""},
	} {
		status, h, body := s.apiCall(t, c.method, c.path, c.key, "application/json", c.body)
		if h.Get("Cache-Control") != "no-store" {
			t.Errorf("%s %s answered %d with Cache-Control %q: %s", c.method, c.path, status, h.Get("Cache-Control"), body)
		}
	}
}

// TestAPI_BytesTheDatabaseRefusesAreA400 sends path and query parameters
// and body members that PostgreSQL would refuse (NUL, invalid UTF-8): each
// is a 400 naming the parameter, never a 500.
func TestAPI_BytesTheDatabaseRefusesAreA400(t *testing.T) {
	s := newStack(t, testDB.Fresh(t), keys.ES256)
	s.registerTestModule(t)
	for _, c := range []struct{ method, path, body, field string }{
		{http.MethodGet, "/api/v1/modules/%00", "", "slug"},
		{http.MethodGet, "/api/v1/modules/%ff", "", "slug"},
		{http.MethodDelete, "/api/v1/modules/a%00b", "", "slug"},
		{http.MethodPut, "/api/v1/modules/%ff", `{"launch_url":"https://m.example.org","audience":"Device/m"}`, "slug"},
		{http.MethodGet, "/api/v1/keys?issuer=%ff", "", "issuer"},
		{http.MethodGet, "/api/v1/keys?issuer=%00", "", "issuer"},
		{http.MethodGet, "/api/v1/keys?isuer=default", "", "isuer"},
		{http.MethodPost, "/api/v1/keys/rotate", `{"issuer":"\u0000"}`, "issuer"},
		{http.MethodPost, "/api/v1/keys/rotate", `{"issuer":"default","Issuer":"x"}`, "Issuer"},
		{http.MethodGet, "/api/v1/launches?module=%00", "", "module"},
		{http.MethodGet, "/api/v1/modules?cursor=%00", "", "cursor"},
		{http.MethodGet, "/api/v1/modules?limit=x", "", "limit"},
		{http.MethodGet, "/api/v1/admin-events?target=module:%ff", "", "target"},
		{http.MethodGet, "/api/v1/admin-events?actor=apikey:%ff", "", "actor"},
		{http.MethodGet, "/api/v1/admin-events?target=module:a%00", "", "target"},
	} {
		status, _, body := s.apiCall(t, c.method, c.path, s.adminKey, "application/json", c.body)
		var p Problem
		if err := json.Unmarshal(body, &p); err != nil || (status != 400 && status != 422) || len(p.Errors) == 0 || p.Errors[0].Field != c.field {
			t.Errorf("%s %s %s: %d %s, want a 400 naming %s", c.method, c.path, c.body, status, body, c.field)
		}
	}
}

// TestBodyLimit_EveryRoute posts a body of a megabyte to routes that read
// one and routes that do not: each refuses it with 413.
func TestBodyLimit_EveryRoute(t *testing.T) {
	s := newStack(t, testDB.Fresh(t), keys.ES256, withDemo)
	s.registerTestModule(t)
	link := s.createLaunch(t, map[string]string{"module": "diary", "task": "Task/1", "user": "Patient/1"})
	big := bytes.Repeat([]byte("x"), 1<<20)
	for _, path := range []string{"/demo/module/launch", "/demo/launch", strings.TrimPrefix(link, s.http.URL), "/api/v1/modules/diary", "/healthz"} {
		method := http.MethodPost
		if path == "/api/v1/modules/diary" {
			method = http.MethodPut
		}
		req, _ := http.NewRequest(method, s.http.URL+path, bytes.NewReader(big))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusRequestEntityTooLarge && resp.StatusCode != http.StatusMethodNotAllowed {
			t.Errorf("%s %s with a 1 MB body: %d", method, path, resp.StatusCode)
		}
	}
	// The link was not spent by the refused post.
	if resp, page := redeem(t, link, nil); resp.StatusCode != 200 {
		t.Fatalf("redeem after the oversized post: %d\n%s", resp.StatusCode, page)
	}
}

// TestModulesAPI_LaunchURLRules refuses launch URLs that would hide where
// tokens go or clash with the form: a query naming a form field, numeric
// hosts in notations other than the dotted quad, a trailing dot, an
// overlong URL.
func TestModulesAPI_LaunchURLRules(t *testing.T) {
	s := newStack(t, testDB.Fresh(t), keys.ES256)
	for _, u := range []string{
		"https://m.example.org/launch?iss=https://evil.example", "https://m.example.org/launch?launch=x", "https://m.example.org/launch?Token=x",
		"https://2130706433/launch", "https://0x7f.1/launch", "https://017700000001/launch", "https://127.1/launch", "https://10.0.0.010/launch",
		"https://m.example.org./launch", "https://m.example.org/" + strings.Repeat("a", 2048),
	} {
		body, _ := json.Marshal(map[string]string{"launch_url": u, "audience": "Device/x"})
		status, _, resp := s.apiCall(t, http.MethodPut, "/api/v1/modules/rules", s.adminKey, "application/json", string(body))
		if status != 422 || !strings.Contains(string(resp), `"field":"launch_url"`) {
			t.Errorf("launch URL %q: %d %s", u, status, resp)
		}
	}
	for _, u := range []string{"https://192.0.2.10/launch", "https://m.example.org/launch?tenant=7", "http://127.0.0.1:8080/launch"} {
		body, _ := json.Marshal(map[string]string{"launch_url": u, "audience": "Device/x"})
		if status, _, resp := s.apiCall(t, http.MethodPut, "/api/v1/modules/rules", s.adminKey, "application/json", string(body)); status != 201 && status != 200 {
			t.Errorf("launch URL %q refused: %d %s", u, status, resp)
		}
	}
}

// TestModulesAPI_ListIsPaged lists modules a page at a time.
func TestModulesAPI_ListIsPaged(t *testing.T) {
	s := newStack(t, testDB.Fresh(t), keys.ES256)
	for i := range 5 {
		s.putModule(t, fmt.Sprintf("m%d", i), map[string]string{"launch_url": "https://m.example.org/launch", "audience": "Device/x"})
	}
	var slugs []string
	path := "/api/v1/modules?limit=2"
	for pages := 0; ; pages++ {
		if pages > 3 {
			t.Fatal("more pages than modules")
		}
		status, _, body := s.apiCall(t, http.MethodGet, path, s.adminKey, "", "")
		var page struct {
			Modules []struct{ Slug string } `json:"modules"`
			Next    string                  `json:"next"`
		}
		if err := json.Unmarshal(body, &page); err != nil || status != 200 || len(page.Modules) > 2 {
			t.Fatalf("%s: %d %s", path, status, body)
		}
		for _, m := range page.Modules {
			slugs = append(slugs, m.Slug)
		}
		if page.Next == "" {
			break
		}
		path = "/api/v1/modules?limit=2&cursor=" + page.Next
	}
	if strings.Join(slugs, ",") != "m0,m1,m2,m3,m4" {
		t.Fatalf("pages held %v", slugs)
	}
}

// TestAdminEvents_ModuleChangesAreRecordedWithTheirActor re-points a
// module and removes it through the admin API: each change is an admin
// event naming the API key, with the module before and after, and the
// request log lines name the key.
func TestAdminEvents_ModuleChangesAreRecordedWithTheirActor(t *testing.T) {
	s := newStack(t, testDB.Fresh(t), keys.ES256)
	s.putModule(t, "audited", map[string]string{"launch_url": "https://m.example.org/launch", "audience": "Device/a"})
	s.putModule(t, "audited", map[string]string{"launch_url": "https://elsewhere.example.org/launch", "audience": "Device/a"})
	if status, _, b := s.apiCall(t, http.MethodDelete, "/api/v1/modules/audited", s.adminKey, "", ""); status != 204 {
		t.Fatalf("delete: %d %s", status, b)
	}
	status, _, body := s.apiCall(t, http.MethodGet, "/api/v1/admin-events?target=module:audited", s.adminKey, "", "")
	var page struct {
		Events []struct {
			Actor, Action, Target string
			Before, After         map[string]any
		} `json:"events"`
	}
	if err := json.Unmarshal(body, &page); err != nil || status != 200 || len(page.Events) != 3 {
		t.Fatalf("admin events: %d %s", status, body)
	}
	deleted, repointed, created := page.Events[0], page.Events[1], page.Events[2] // newest first
	for _, e := range page.Events {
		if e.Actor != "apikey:operator" || e.Target != "module:audited" {
			t.Errorf("event %+v", e)
		}
	}
	if created.Action != "module.put" || created.Before != nil || created.After["launch_url"] != "https://m.example.org/launch" {
		t.Errorf("creation %+v", created)
	}
	if repointed.Action != "module.put" || repointed.Before["launch_url"] != "https://m.example.org/launch" || repointed.After["launch_url"] != "https://elsewhere.example.org/launch" {
		t.Errorf("re-pointing %+v", repointed)
	}
	if deleted.Action != "module.delete" || deleted.Before["launch_url"] != "https://elsewhere.example.org/launch" || deleted.After != nil {
		t.Errorf("removal %+v", deleted)
	}
	if !strings.Contains(s.logs.String(), `"api_key":"operator"`) {
		t.Error("request log lines do not name the API key")
	}
	if status, _, body := s.apiCall(t, http.MethodGet, "/api/v1/admin-events?target=module%00", s.adminKey, "", ""); status != 422 {
		t.Errorf("bad target filter: %d %s", status, body)
	}
	if status, _, _ := s.apiCall(t, http.MethodGet, "/api/v1/admin-events", s.launchKey, "", ""); status != 403 {
		t.Errorf("a launch key read the admin events: %d", status)
	}
}

// TestAdminEvents_NoChangeWithoutItsEvent makes the event's insert fail:
// the module change it belongs to is not made either.
func TestAdminEvents_NoChangeWithoutItsEvent(t *testing.T) {
	s := newStack(t, testDB.Fresh(t), keys.ES256)
	if _, err := s.pool.Exec(operatorContext(), `ALTER TABLE admin_events ADD CONSTRAINT refuse_all CHECK (false) NOT VALID`); err != nil {
		t.Fatal(err)
	}
	status, _, body := s.apiCall(t, http.MethodPut, "/api/v1/modules/unrecorded", s.adminKey, "application/json", `{"launch_url":"https://m.example.org","audience":"Device/u"}`)
	if status < 500 {
		t.Fatalf("a change whose event could not be written: %d %s", status, body)
	}
	var n int
	if err := s.pool.QueryRow(operatorContext(), `SELECT count(*) FROM modules WHERE slug = 'unrecorded'`).Scan(&n); err != nil || n != 0 {
		t.Fatalf("the module was stored without its event (%d, %v)", n, err)
	}
}

// TestAdminEvents_APIKeyChangesAreRecordedWithoutTheSecret creates and
// revokes an API key: both are in the trail, with the key's name, scope
// and limit, and never its secret or the secret's hash.
func TestAdminEvents_APIKeyChangesAreRecordedWithoutTheSecret(t *testing.T) {
	s := newStack(t, testDB.Fresh(t), keys.ES256)
	ctx := operatorContext()
	_, secret, err := s.apikeys.Create(ctx, "audited-backend", "launch", s.clock.Now(), "default")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.apikeys.Revoke(ctx, "audited-backend", s.clock.Now()); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.apikeys.Create(context.Background(), "no-actor", "launch", s.clock.Now()); err == nil {
		t.Fatal("an API key was created without an actor to record")
	}
	status, _, body := s.apiCall(t, http.MethodGet, "/api/v1/admin-events?target=apikey:audited-backend", s.adminKey, "", "")
	if status != 200 || !strings.Contains(string(body), `"action":"apikey.revoke"`) || !strings.Contains(string(body), `"action":"apikey.create"`) ||
		!strings.Contains(string(body), `"actor":"cli:test@localhost"`) || !strings.Contains(string(body), `"issuers":["default"]`) {
		t.Fatalf("admin events: %d %s", status, body)
	}
	secretPart := secret[len("ptl_")+16+1:] // ptl_<key id>_<secret>
	if strings.Contains(string(body), secretPart) || strings.Contains(string(body), "hash") {
		t.Fatalf("the trail holds the secret or its hash: %s", body)
	}
	var n int
	if err := s.pool.QueryRow(operatorContext(), `SELECT count(*) FROM api_keys WHERE name = 'no-actor'`).Scan(&n); err != nil || n != 0 {
		t.Fatalf("key without an actor stored (%d, %v)", n, err)
	}
}

// TestKeysAPI_ForcedRotationsCannotGrowTheJWKS forces rotations one after
// the other: the second is refused (409) while the key the first retired
// is still published, so the JWKS keeps at most active, next and one
// retired key from forced rotations.
func TestKeysAPI_ForcedRotationsCannotGrowTheJWKS(t *testing.T) {
	s := newStack(t, testDB.Fresh(t), keys.ES256)
	body := `{"ignore_publish_lead":true}`
	if status, _, b := s.apiCall(t, http.MethodPost, "/api/v1/keys/rotate", s.adminKey, "application/json", body); status != 200 {
		t.Fatalf("first forced rotation: %d %s", status, b)
	}
	for range 3 {
		status, _, b := s.apiCall(t, http.MethodPost, "/api/v1/keys/rotate", s.adminKey, "application/json", body)
		if status != 409 || !strings.Contains(string(b), "rotation-refused") {
			t.Fatalf("forced rotation inside the previous one's grace: %d %s", status, b)
		}
	}
	_, _, jwks := s.apiCall(t, http.MethodGet, "/.well-known/jwks.json", "", "", "")
	var set struct{ Keys []map[string]any }
	if err := json.Unmarshal(jwks, &set); err != nil || len(set.Keys) > 3 {
		t.Fatalf("JWKS after forced rotations: %s", jwks)
	}
}

// TestReadyz_ActiveKeyOutsideTheIssuersNewProfile moves the default issuer
// to the koppeltaal profile while its active key signs ES256: /readyz says
// that key must be rotated.
func TestReadyz_ActiveKeyOutsideTheIssuersNewProfile(t *testing.T) {
	s := newStack(t, testDB.Fresh(t), keys.ES256)
	is := defaultIssuer(keys.ES384)
	is.Profile = keys.ProfileKoppeltaal
	if err := keys.NewStore(s.pool).UpdateIssuer(operatorContext(), is, s.clock.Now()); err != nil {
		t.Fatal(err)
	}
	_ = s.keyring.Refresh(operatorContext())
	_, _, body := s.apiCall(t, http.MethodGet, "/readyz", "", "", "")
	if !strings.Contains(string(body), "profile koppeltaal does not allow") || !strings.Contains(string(body), "keys rotate") {
		t.Fatalf("readyz: %s", body)
	}
}
