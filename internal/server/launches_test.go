package server

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"html"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v2/jwk"
	"github.com/lestrrat-go/jwx/v2/jws"

	"github.com/ehealth-nl/portal/internal/keys"
	"github.com/ehealth-nl/portal/internal/launch"
	"github.com/ehealth-nl/portal/pkg/hti"
)

// apiCall sends a request to the stack's API and returns status, headers
// and body.
func (s *stack) apiCall(t testing.TB, method, path, key, contentType, body string) (int, http.Header, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, s.http.URL+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := noRedirects.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, resp.Header, b
}

var noRedirects = &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}

// putModule registers a module through the admin API.
func (s *stack) putModule(t testing.TB, slug string, body map[string]string) {
	t.Helper()
	b, _ := json.Marshal(body)
	status, _, resp := s.apiCall(t, http.MethodPut, "/api/v1/modules/"+slug, s.adminKey, "application/json", string(b))
	if status != http.StatusCreated && status != http.StatusOK {
		t.Fatalf("PUT module %s: %d %s", slug, status, resp)
	}
}

// createLaunch asks for a launch link and returns it.
func (s *stack) createLaunch(t testing.TB, req map[string]string) string {
	t.Helper()
	b, _ := json.Marshal(req)
	status, h, resp := s.apiCall(t, http.MethodPost, "/api/v1/launches", s.launchKey, "application/json", string(b))
	if status != http.StatusCreated {
		t.Fatalf("POST /api/v1/launches: %d %s", status, resp)
	}
	if h.Get("Cache-Control") != "no-store" {
		t.Errorf("launch answer is cacheable: %q", h.Get("Cache-Control"))
	}
	var created struct {
		ID        string    `json:"id"`
		LaunchURL string    `json:"launch_url"`
		ExpiresAt time.Time `json:"expires_at"`
	}
	if err := json.Unmarshal(resp, &created); err != nil || created.ID == "" || created.LaunchURL == "" || created.ExpiresAt.IsZero() {
		t.Fatalf("launch answer %s", resp)
	}
	return created.LaunchURL
}

var hiddenInput = regexp.MustCompile(`<input type="hidden" name="([^"]+)" value="([^"]*)">`)

// formFields reads the hidden fields of a launch page.
func formFields(t testing.TB, page []byte) map[string]string {
	t.Helper()
	fields := map[string]string{}
	for _, m := range hiddenInput.FindAllSubmatch(page, -1) {
		fields[string(m[1])] = html.UnescapeString(string(m[2]))
	}
	return fields
}

// verifier returns a strict module-side verifier against the stack's JWKS
// over HTTP.
func (s *stack) verifier(t testing.TB, audience string) *hti.Verifier {
	t.Helper()
	v, err := hti.NewVerifier(hti.VerifierConfig{JWKSURL: s.http.URL + "/.well-known/jwks.json", Issuer: "portal-test", Audience: audience})
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func decodeSegment(t testing.TB, token string, i int) map[string]any {
	t.Helper()
	raw, err := base64.RawURLEncoding.DecodeString(strings.Split(token, ".")[i])
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

func keysOf(m map[string]any) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

const testModuleURL = "https://module.example.org/launch"

func (s *stack) registerTestModule(t testing.TB) {
	s.putModule(t, "diary", map[string]string{"launch_url": testModuleURL, "audience": "Device/diary-1", "default_definition": "ActivityDefinition/diary"})
}

// TestLaunch_ClaimsAndHeaderForEachRole follows a launch link per role and
// checks the token against docs/ARCHITECTURE.md, "The launch token"
// exactly: these claims and no others, this header, patient present or
// absent as the role table says, and a signature that verifies with the
// JWKS fetched over HTTP.
func TestLaunch_ClaimsAndHeaderForEachRole(t *testing.T) {
	for _, alg := range []keys.Algorithm{keys.RS512, keys.ES384} {
		t.Run(string(alg), func(t *testing.T) {
			s := newStack(t, testDB.Fresh(t), alg)
			s.registerTestModule(t)
			cases := []struct {
				role        string
				user        string
				patient     string // in the request
				wantPatient string // in the token; "" = absent
			}{
				{"patient", "Patient/p1", "", ""},
				{"patient naming themself", "Patient/p1", "Patient/p1", ""},
				{"practitioner", "Practitioner/dr-7", "Patient/p1", "Patient/p1"},
				{"related person", "RelatedPerson/rel.3", "Patient/p1", "Patient/p1"},
			}
			set, err := jwk.Fetch(operatorContext(), s.http.URL+"/.well-known/jwks.json")
			if err != nil {
				t.Fatal(err)
			}
			v := s.verifier(t, "Device/diary-1")
			for _, tc := range cases {
				req := map[string]string{"module": "diary", "task": "Task/t-42", "user": tc.user, "idp_hint": "digid"}
				if tc.patient != "" {
					req["patient"] = tc.patient
				}
				before := time.Now().Unix()
				resp, page := redeem(t, s.createLaunch(t, req), nil)
				if resp.StatusCode != 200 {
					t.Fatalf("%s: launch page %d %s", tc.role, resp.StatusCode, page)
				}
				fields := formFields(t, page)
				if !slices.Equal(keysOf(map[string]any{"iss": 0, "launch": 0}), sortedKeys(fields)) {
					t.Fatalf("%s: form fields %v, want iss and launch", tc.role, sortedKeys(fields))
				}
				if fields["iss"] != "https://fhir.example.org/fhir" {
					t.Errorf("%s: form iss %q, want the FHIR base URL", tc.role, fields["iss"])
				}
				token := fields["launch"]

				claims, err := v.Verify(operatorContext(), token)
				if err != nil {
					t.Fatalf("%s: the module-side verifier refused the token: %v", tc.role, err)
				}
				if _, err := jws.Verify([]byte(token), jws.WithKeySet(set, jws.WithRequireKid(true), jws.WithUseDefault(false), jws.WithInferAlgorithmFromKey(false))); err != nil {
					t.Fatalf("%s: jwx with the fetched JWKS refused the token: %v", tc.role, err)
				}

				hdr := decodeSegment(t, token, 0)
				if got := keysOf(hdr); !slices.Equal(got, []string{"alg", "kid", "typ"}) || hdr["alg"] != string(alg) || hdr["typ"] != "JWT" {
					t.Errorf("%s: header %v, want exactly alg=%s, kid, typ=JWT", tc.role, hdr, alg)
				}
				payload := decodeSegment(t, token, 1)
				want := []string{"aud", "definition", "exp", "hti-version", "iat", "idp_hint", "intent", "iss", "jti", "resource", "sub"}
				if tc.wantPatient != "" {
					want = append(want, "patient")
					sort.Strings(want)
				}
				if got := keysOf(payload); !slices.Equal(got, want) {
					t.Errorf("%s: claims %v, want exactly %v", tc.role, got, want)
				}
				if _, isString := payload["aud"].(string); !isString {
					t.Errorf("%s: aud is %T, want a single string", tc.role, payload["aud"])
				}
				wantClaims := hti.Claims{Issuer: "portal-test", Audience: "Device/diary-1", Subject: tc.user, Resource: "Task/t-42",
					Definition: "ActivityDefinition/diary", Patient: tc.wantPatient, Intent: "plan", HTIVersion: "2.0", IDPHint: "digid",
					JTI: claims.JTI, IssuedAt: claims.IssuedAt, ExpiresAt: claims.IssuedAt + 300}
				if *claims != wantClaims {
					t.Errorf("%s: claims\n got %+v\nwant %+v", tc.role, *claims, wantClaims)
				}
				// iat is the moment of redemption, backdated by the stack's 5 s
				// for verifiers whose clock is a little behind.
				if claims.IssuedAt < before-5 || claims.IssuedAt > time.Now().Unix()-5 {
					t.Errorf("%s: iat %d is not the moment of redemption less 5 s", tc.role, claims.IssuedAt)
				}
				// TOP-KT-011: the jti becomes the AuditEvent trace-id, a FHIR id.
				if !regexp.MustCompile(`^[0-9a-f]{32}$`).MatchString(claims.JTI) {
					t.Errorf("%s: jti %q is not 128 bits of lowercase hex", tc.role, claims.JTI)
				}
			}
		})
	}
}

func sortedKeys(m map[string]string) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func TestLaunch_PageHeaders(t *testing.T) {
	s := newStack(t, testDB.Fresh(t), keys.ES256)
	s.registerTestModule(t)
	resp, page := redeem(t, s.createLaunch(t, map[string]string{"module": "diary", "task": "Task/1", "user": "Patient/1"}), nil)
	h := resp.Header
	for name, want := range map[string]string{"Cache-Control": "no-store", "Referrer-Policy": "no-referrer", "X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY"} {
		if h.Get(name) != want {
			t.Errorf("%s = %q, want %q", name, h.Get(name), want)
		}
	}
	csp := h.Get("Content-Security-Policy")
	nonce := regexp.MustCompile(`'nonce-([^']+)'`).FindStringSubmatch(csp)
	if nonce == nil || !strings.Contains(string(page), `nonce="`+nonce[1]+`"`) {
		t.Fatalf("CSP %q has no nonce matching the page", csp)
	}
	for _, want := range []string{"default-src 'none'", "form-action https://module.example.org https:;", "frame-ancestors 'none'", "base-uri 'none'"} {
		if !strings.Contains(csp, want) {
			t.Errorf("CSP %q lacks %q", csp, want)
		}
	}
	if strings.Contains(csp, "unsafe-inline") {
		t.Errorf("CSP allows unsafe-inline: %q", csp)
	}
	if !strings.Contains(string(page), "<noscript>") || !strings.Contains(string(page), `<button type="submit"`) {
		t.Error("the page has no continue button for browsers without JavaScript")
	}
	resp2, _ := get(t, s.http.URL+"/launch/"+strings.Repeat("A", 43), nil)
	if resp2.Header.Get("Cache-Control") != "no-store" {
		t.Error("the error page is cacheable")
	}
}

func TestLaunch_GetModuleRedirectsWithQuery(t *testing.T) {
	s := newStack(t, testDB.Fresh(t), keys.ES256)
	s.putModule(t, "redirecting", map[string]string{"launch_url": "https://module.example.org/start?tenant=7", "audience": "Device/r-1", "method": "get"})
	link := s.createLaunch(t, map[string]string{"module": "redirecting", "task": "Task/1", "user": "Practitioner/2", "patient": "Patient/3"})
	resp, err := noRedirects.Post(link, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Cache-Control") != "no-store" || resp.Header.Get("Referrer-Policy") != "no-referrer" {
		t.Fatalf("status %d, headers %v", resp.StatusCode, resp.Header)
	}
	u, err := url.Parse(resp.Header.Get("Location"))
	if err != nil || u.Host != "module.example.org" || u.Path != "/start" {
		t.Fatalf("Location %q", resp.Header.Get("Location"))
	}
	q := u.Query()
	if q.Get("tenant") != "7" || q.Get("iss") != "https://fhir.example.org/fhir" || q.Get("launch") == "" || q.Has("token") {
		t.Fatalf("query %v, want tenant, iss and launch", q)
	}
	if _, err := s.verifier(t, "Device/r-1").Verify(operatorContext(), q.Get("launch")); err != nil {
		t.Fatal(err)
	}
}

func TestLaunch_FieldSets(t *testing.T) {
	s := newStack(t, testDB.Fresh(t), keys.ES256)
	for _, tc := range []struct {
		fields string
		want   []string
	}{{"koppeltaal", []string{"iss", "launch"}}, {"hti", []string{"token"}}, {"all", []string{"iss", "launch", "token"}}} {
		s.putModule(t, "m-"+tc.fields, map[string]string{"launch_url": testModuleURL, "audience": "Device/x", "fields": tc.fields})
		_, page := redeem(t, s.createLaunch(t, map[string]string{"module": "m-" + tc.fields, "task": "Task/1", "user": "Patient/1"}), nil)
		if got := sortedKeys(formFields(t, page)); !slices.Equal(got, tc.want) {
			t.Errorf("fields %s: form has %v, want %v", tc.fields, got, tc.want)
		}
	}
}

func TestLaunchTokens_ReturnsTokenAndFormAndAudits(t *testing.T) {
	s := newStack(t, testDB.Fresh(t), keys.RS512)
	s.putModule(t, "all", map[string]string{"launch_url": testModuleURL, "audience": "Device/a", "fields": "all"})
	status, h, body := s.apiCall(t, http.MethodPost, "/api/v1/launch-tokens", s.launchKey, "application/json",
		`{"module":"all","task":"Task/9","user":"RelatedPerson/r","patient":"Patient/p"}`)
	if status != http.StatusCreated || h.Get("Cache-Control") != "no-store" {
		t.Fatalf("%d %s", status, body)
	}
	var got struct {
		ID, Token, JTI, URL, Method string
		ExpiresAt                   time.Time `json:"expires_at"`
		Fields                      map[string]string
	}
	if err := json.Unmarshal(body, &got); err != nil {
		t.Fatal(err)
	}
	if got.URL != testModuleURL || got.Method != "post" || got.Fields["launch"] != got.Token || got.Fields["token"] != got.Token || got.Fields["iss"] != "https://fhir.example.org/fhir" {
		t.Fatalf("answer %s", body)
	}
	claims, err := s.verifier(t, "Device/a").Verify(operatorContext(), got.Token)
	if err != nil || claims.JTI != got.JTI || claims.Patient != "Patient/p" {
		t.Fatalf("claims %+v, err %v", claims, err)
	}
	var kind, jti string
	if err := s.pool.QueryRow(operatorContext(), `SELECT kind, jti FROM launches WHERE id = $1`, got.ID).Scan(&kind, &jti); err != nil || kind != "token" || jti != got.JTI {
		t.Fatalf("audit row: kind %q jti %q err %v", kind, jti, err)
	}
}

func countRows(t testing.TB, s *stack, table string) int {
	t.Helper()
	var n int
	if err := s.pool.QueryRow(operatorContext(), "SELECT count(*) FROM "+table).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// TestLaunch_BadInputIsAClear4xxAndWritesNothing sends each bad request to
// both launch endpoints and checks the status, the problem type, the field
// named, and that no row was written.
func TestLaunch_BadInputIsAClear4xxAndWritesNothing(t *testing.T) {
	ctx := operatorContext()
	s := newStack(t, testDB.Fresh(t), keys.ES256)
	s.registerTestModule(t)
	_, revokedKey, err := s.apikeys.Create(ctx, "old-backend", "launch", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.apikeys.Revoke(ctx, "old-backend", time.Now()); err != nil {
		t.Fatal(err)
	}
	valid := func(kv ...string) string {
		m := map[string]string{"module": "diary", "task": "Task/1", "user": "Practitioner/2", "patient": "Patient/3"}
		for i := 0; i+1 < len(kv); i += 2 {
			if kv[i+1] == "-" {
				delete(m, kv[i])
			} else {
				m[kv[i]] = kv[i+1]
			}
		}
		b, _ := json.Marshal(m)
		return string(b)
	}
	long := strings.Repeat("a", 65)
	cases := []struct {
		name        string
		key         string // "" = launch key; "none", "unknown", "revoked", "admin", "basic"
		contentType string // "" = application/json
		body        string
		status      int
		problem     string
		field       string
	}{
		{"invalid JSON", "", "", `{"module": "diary",`, 400, "malformed-request", "body"},
		{"not an object", "", "", `["diary"]`, 400, "malformed-request", "body"},
		{"empty body", "", "", ``, 400, "malformed-request", "body"},
		{"data after the object", "", "", valid() + `{}`, 400, "malformed-request", "body"},
		{"unknown field", "", "", `{"module":"diary","task":"Task/1","user":"Patient/1","role":"admin"}`, 400, "malformed-request", "role"},
		{"number for task", "", "", `{"module":"diary","task":1,"user":"Patient/1"}`, 400, "malformed-request", "task"},
		{"body over the limit", "", "", `{"module":"diary","task":"Task/1","user":"Patient/1","idp_hint":"` + strings.Repeat("x", 20000) + `"}`, 413, "body-too-large", "body"},
		{"wrong content type", "", "text/plain", valid(), 415, "unsupported-media-type", "Content-Type"},
		{"form content type", "", "application/x-www-form-urlencoded", "module=diary", 415, "unsupported-media-type", "Content-Type"},
		{"missing module", "", "", valid("module", "-"), 422, "invalid-request", "module"},
		{"missing task", "", "", valid("task", "-"), 422, "invalid-request", "task"},
		{"missing user", "", "", valid("user", "-"), 422, "invalid-request", "user"},
		{"absolute task reference", "", "", valid("task", "https://fhir.example.org/fhir/Task/1"), 422, "invalid-request", "task"},
		{"task with _history", "", "", valid("task", "Task/1/_history/2"), 422, "invalid-request", "task"},
		{"task of another type", "", "", valid("task", "CarePlan/1"), 422, "invalid-request", "task"},
		{"task id over 64 characters", "", "", valid("task", "Task/"+long), 422, "invalid-request", "task"},
		{"task id with underscore", "", "", valid("task", "Task/a_b"), 422, "invalid-request", "task"},
		{"task with whitespace", "", "", valid("task", "Task/ 1"), 422, "invalid-request", "task"},
		{"task without id", "", "", valid("task", "Task/"), 422, "invalid-request", "task"},
		{"user of another type", "", "", valid("user", "Device/1"), 422, "invalid-request", "user"},
		{"user without id", "", "", valid("user", "Practitioner"), 422, "invalid-request", "user"},
		{"user id over 64 characters", "", "", valid("user", "Practitioner/"+long), 422, "invalid-request", "user"},
		{"practitioner without patient", "", "", valid("patient", "-"), 422, "invalid-request", "patient"},
		{"related person without patient", "", "", valid("user", "RelatedPerson/r", "patient", "-"), 422, "invalid-request", "patient"},
		{"patient launching for another patient", "", "", valid("user", "Patient/1", "patient", "Patient/2"), 422, "invalid-request", "patient"},
		{"patient of another type", "", "", valid("patient", "Practitioner/3"), 422, "invalid-request", "patient"},
		{"definition of another type", "", "", valid("definition", "Questionnaire/1"), 422, "invalid-request", "definition"},
		{"definition absolute", "", "", valid("definition", "https://x.example/ActivityDefinition/1"), 422, "invalid-request", "definition"},
		{"intent not a Task.intent code", "", "", valid("intent", "launch"), 422, "invalid-request", "intent"},
		{"idp_hint with a space", "", "", valid("idp_hint", "my idp"), 422, "invalid-request", "idp_hint"},
		{"unknown module", "", "", valid("module", "no-such-module"), 422, "invalid-request", "module"},
		{"module not a slug", "", "", valid("module", "Diary!"), 422, "invalid-request", "module"},
		{"unknown issuer", "", "", valid("issuer", "nobody"), 422, "invalid-request", "issuer"},
		{"missing API key", "none", "", valid(), 401, "unauthenticated", "Authorization"},
		{"unknown API key", "unknown", "", valid(), 401, "unauthenticated", "Authorization"},
		{"malformed API key", "garbage", "", valid(), 401, "unauthenticated", "Authorization"},
		{"revoked API key", "revoked", "", valid(), 401, "unauthenticated", "Authorization"},
		{"basic instead of bearer", "basic", "", valid(), 401, "unauthenticated", "Authorization"},
		{"admin key on a launch endpoint", "admin", "", valid(), 403, "forbidden", "Authorization"},
	}
	if len(cases) < 25 {
		t.Fatalf("only %d cases", len(cases))
	}
	for _, path := range []string{"/api/v1/launches", "/api/v1/launch-tokens"} {
		for _, tc := range cases {
			t.Run(path+"/"+tc.name, func(t *testing.T) {
				before := countRows(t, s, "launches")
				req, _ := http.NewRequest(http.MethodPost, s.http.URL+path, strings.NewReader(tc.body))
				ct := tc.contentType
				if ct == "" {
					ct = "application/json"
				}
				req.Header.Set("Content-Type", ct)
				switch tc.key {
				case "":
					req.Header.Set("Authorization", "Bearer "+s.launchKey)
				case "unknown":
					req.Header.Set("Authorization", "Bearer ptl_0123456789abcdef_"+strings.Repeat("A", 43))
				case "garbage":
					req.Header.Set("Authorization", "Bearer let-me-in")
				case "revoked":
					req.Header.Set("Authorization", "Bearer "+revokedKey)
				case "admin":
					req.Header.Set("Authorization", "Bearer "+s.adminKey)
				case "basic":
					req.Header.Set("Authorization", "Basic "+base64.StdEncoding.EncodeToString([]byte("backend:"+s.launchKey)))
				}
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != tc.status {
					t.Fatalf("status %d, want %d: %s", resp.StatusCode, tc.status, body)
				}
				if ct := resp.Header.Get("Content-Type"); ct != "application/problem+json" {
					t.Fatalf("Content-Type %q: %s", ct, body)
				}
				var p Problem
				if err := json.Unmarshal(body, &p); err != nil {
					t.Fatalf("not a problem: %s", body)
				}
				if p.Type != problemTypePrefix+tc.problem || p.Status != tc.status || p.Title == "" {
					t.Fatalf("problem %s, want type %s", body, tc.problem)
				}
				named := false
				for _, e := range p.Errors {
					named = named || (e.Field == tc.field && e.Reason != "")
				}
				if !named {
					t.Fatalf("problem %s does not name field %q", body, tc.field)
				}
				if tc.status == 401 && resp.Header.Get("WWW-Authenticate") == "" {
					t.Error("401 without WWW-Authenticate")
				}
				if after := countRows(t, s, "launches"); after != before {
					t.Fatalf("a refused request wrote %d launch rows", after-before)
				}
			})
		}
	}

	// A module whose launch URL is plain http on a public host is refused
	// at registration, so no launch can ever send a token over it.
	modulesBefore := countRows(t, s, "modules")
	status, _, body := s.apiCall(t, http.MethodPut, "/api/v1/modules/plain", s.adminKey, "application/json",
		`{"launch_url":"http://module.example.org/launch","audience":"Device/p"}`)
	var p Problem
	_ = json.Unmarshal(body, &p)
	if status != 422 || len(p.Errors) != 1 || p.Errors[0].Field != "launch_url" {
		t.Fatalf("plain-http module: %d %s", status, body)
	}
	if countRows(t, s, "modules") != modulesBefore {
		t.Fatal("the refused module was stored")
	}
}

// TestTicket_SecondRedeemIsGone follows a link twice.
func TestTicket_SecondRedeemIsGone(t *testing.T) {
	s := newStack(t, testDB.Fresh(t), keys.ES256)
	s.registerTestModule(t)
	link := s.createLaunch(t, map[string]string{"module": "diary", "task": "Task/1", "user": "Patient/1"})
	if resp, _ := redeem(t, link, nil); resp.StatusCode != 200 {
		t.Fatalf("first redeem: %d", resp.StatusCode)
	}
	resp, page := redeem(t, link, nil)
	if resp.StatusCode != http.StatusGone || !strings.Contains(string(page), "already used") || strings.Contains(string(page), `name="launch"`) {
		t.Fatalf("second redeem: %d\n%s", resp.StatusCode, page)
	}
}

func TestTicket_ExpiredIsGoneAndUnknownIsNotFound(t *testing.T) {
	s := newStack(t, testDB.Fresh(t), keys.ES256)
	s.registerTestModule(t)
	link := s.createLaunch(t, map[string]string{"module": "diary", "task": "Task/1", "user": "Patient/1"})
	s.clock.Advance(121 * time.Second)
	resp, page := redeem(t, link, nil)
	if resp.StatusCode != http.StatusGone || !strings.Contains(string(page), "expired") {
		t.Fatalf("expired link: %d\n%s", resp.StatusCode, page)
	}
	for _, ticket := range []string{strings.Repeat("A", 43), "short", strings.Repeat("%", 43)} {
		resp, _ := get(t, s.http.URL+"/launch/"+url.PathEscape(ticket), nil)
		if resp.StatusCode != http.StatusNotFound {
			t.Errorf("unknown ticket %q: %d", ticket, resp.StatusCode)
		}
	}
}

// TestTicket_ConcurrentRedeemsSucceedOnce follows one link 50 times at once.
func TestTicket_ConcurrentRedeemsSucceedOnce(t *testing.T) {
	s := newStack(t, testDB.Fresh(t), keys.ES256)
	s.registerTestModule(t)
	link := s.createLaunch(t, map[string]string{"module": "diary", "task": "Task/1", "user": "Patient/1"})
	const n = 50
	statuses := make([]int, n)
	tokens := make([]string, n)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			resp, err := http.Post(link, "", nil)
			if err != nil {
				return
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			statuses[i] = resp.StatusCode
			tokens[i] = formFields(t, body)["launch"]
		}()
	}
	close(start)
	wg.Wait()
	count := map[int]int{}
	for i, st := range statuses {
		count[st]++
		if st != 200 && tokens[i] != "" {
			t.Errorf("a refused redeem (%d) carried a token", st)
		}
	}
	if count[200] != 1 || count[410] != n-1 {
		t.Fatalf("statuses %v, want one 200 and %d × 410", count, n-1)
	}
	var redeemed int
	if err := s.pool.QueryRow(operatorContext(), `SELECT count(*) FROM launches WHERE redeemed_at IS NOT NULL AND jti IS NOT NULL`).Scan(&redeemed); err != nil || redeemed != 1 {
		t.Fatalf("redeemed rows %d (%v)", redeemed, err)
	}
}

func TestLaunch_AuditRecordAndListing(t *testing.T) {
	s := newStack(t, testDB.Fresh(t), keys.ES256)
	s.registerTestModule(t)
	for i := 0; i < 5; i++ {
		link := s.createLaunch(t, map[string]string{"module": "diary", "task": fmt.Sprintf("Task/%d", i%2), "user": "Practitioner/dr", "patient": fmt.Sprintf("Patient/%d", i)})
		if i < 3 {
			req, _ := http.NewRequest(http.MethodPost, link, nil)
			req.Header.Set("User-Agent", "audit-test-browser")
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
		}
	}
	status, _, body := s.apiCall(t, http.MethodGet, "/api/v1/launches?task=Task/0&limit=2", s.adminKey, "", "")
	if status != 200 {
		t.Fatalf("%d %s", status, body)
	}
	var page struct {
		Records []map[string]any `json:"records"`
		Next    string           `json:"next"`
	}
	if err := json.Unmarshal(body, &page); err != nil {
		t.Fatal(err)
	}
	if len(page.Records) != 2 || page.Next == "" {
		t.Fatalf("first page: %s", body)
	}
	status, _, body = s.apiCall(t, http.MethodGet, "/api/v1/launches?task=Task/0&limit=2&cursor="+page.Next, s.adminKey, "", "")
	var page2 struct {
		Records []map[string]any `json:"records"`
		Next    string           `json:"next"`
	}
	if err := json.Unmarshal(body, &page2); err != nil || status != 200 || len(page2.Records) != 1 || page2.Next != "" {
		t.Fatalf("second page %d: %s", status, body)
	}
	all := append(page.Records, page2.Records...)
	redeemed := 0
	for _, r := range all {
		if r["task"] != "Task/0" || r["created_by"] != "backend" || r["module"] != "diary" || r["audience"] != "Device/diary-1" {
			t.Errorf("record %v", r)
		}
		if r["status"] == "redeemed" {
			redeemed++
			if r["jti"] == "" || r["kid"] == "" || r["client_addr"] != "127.0.0.1" || r["user_agent"] != "audit-test-browser" || r["redeemed_at"] == nil {
				t.Errorf("redeemed record lacks who/where/when: %v", r)
			}
		}
		for _, forbidden := range []string{"token", "ticket", "ticket_hash", "launch"} {
			if _, ok := r[forbidden]; ok {
				t.Errorf("record exposes %q", forbidden)
			}
		}
	}
	if redeemed != 2 {
		t.Errorf("redeemed records for Task/0: %d, want 2 (launches 0 and 2)", redeemed)
	}
	status, _, body = s.apiCall(t, http.MethodGet, "/api/v1/launches?patient=Patient/4", s.adminKey, "", "")
	if status != 200 || !strings.Contains(string(body), `"status":"pending"`) || strings.Count(string(body), `"id"`) != 1 {
		t.Fatalf("patient filter: %d %s", status, body)
	}
	for _, bad := range []string{"?task=Patient/1", "?from=yesterday", "?limit=0", "?cursor=xyz", "?colour=red"} {
		status, _, body := s.apiCall(t, http.MethodGet, "/api/v1/launches"+bad, s.adminKey, "", "")
		if status != 400 && status != 422 {
			t.Errorf("%s: %d %s", bad, status, body)
		}
	}
	if status, _, _ := s.apiCall(t, http.MethodGet, "/api/v1/launches", s.launchKey, "", ""); status != 403 {
		t.Errorf("audit trail with a launch key: %d, want 403", status)
	}
}

func TestModulesAPI_Lifecycle(t *testing.T) {
	s := newStack(t, testDB.Fresh(t), keys.ES256)
	body := `{"launch_url":"https://m.example.org/launch","audience":"Device/m1"}`
	if status, _, b := s.apiCall(t, http.MethodPut, "/api/v1/modules/m1", s.adminKey, "application/json", body); status != 201 {
		t.Fatalf("create: %d %s", status, b)
	}
	if status, _, b := s.apiCall(t, http.MethodPut, "/api/v1/modules/m1", s.adminKey, "application/json", `{"launch_url":"https://m.example.org/v2","audience":"Device/m1","method":"get"}`); status != 200 || !strings.Contains(string(b), `"method":"get"`) {
		t.Fatalf("replace: %d %s", status, b)
	}
	if status, _, b := s.apiCall(t, http.MethodGet, "/api/v1/modules/m1", s.adminKey, "", ""); status != 200 || !strings.Contains(string(b), "/v2") {
		t.Fatalf("get: %d %s", status, b)
	}
	if status, _, b := s.apiCall(t, http.MethodGet, "/api/v1/modules", s.adminKey, "", ""); status != 200 || !strings.Contains(string(b), `"slug":"m1"`) {
		t.Fatalf("list: %d %s", status, b)
	}
	if status, _, b := s.apiCall(t, http.MethodPut, "/api/v1/modules/m2", s.adminKey, "application/json", `{"launch_url":"https://m.example.org","audience":"Device/m2","issuer":"nobody"}`); status != 422 || !strings.Contains(string(b), `"field":"issuer"`) {
		t.Fatalf("unknown issuer: %d %s", status, b)
	}
	if status, _, b := s.apiCall(t, http.MethodPut, "/api/v1/modules/m2", s.adminKey, "application/json", `{"launch_url":"https://m.example.org","audience":"Device/m2","colour":"red"}`); status != 400 || !strings.Contains(string(b), `"field":"colour"`) {
		t.Fatalf("unknown field: %d %s", status, b)
	}
	if status, _, _ := s.apiCall(t, http.MethodPut, "/api/v1/modules/m2", s.launchKey, "application/json", body); status != 403 {
		t.Fatalf("launch key on modules: %d", status)
	}
	if status, _, _ := s.apiCall(t, http.MethodDelete, "/api/v1/modules/m1", s.adminKey, "", ""); status != 204 {
		t.Fatalf("delete: %d", status)
	}
	if status, _, b := s.apiCall(t, http.MethodGet, "/api/v1/modules/m1", s.adminKey, "", ""); status != 404 || !strings.Contains(string(b), "unknown-module") {
		t.Fatalf("get after delete: %d %s", status, b)
	}
}

func TestKeysAPI_ListAndRotate(t *testing.T) {
	s := newStack(t, testDB.Fresh(t), keys.ES256)
	status, _, body := s.apiCall(t, http.MethodGet, "/api/v1/keys", s.adminKey, "", "")
	if status != 200 || strings.Count(string(body), `"kid"`) != 2 || strings.Contains(string(body), "sealed") {
		t.Fatalf("list: %d %s", status, body)
	}
	if status, _, body := s.apiCall(t, http.MethodPost, "/api/v1/keys/rotate", s.adminKey, "", ""); status != 409 || !strings.Contains(string(body), "rotation-refused") {
		t.Fatalf("rotate with a fresh next key: %d %s", status, body)
	}
	before, _ := s.keyring.Signer("")
	status, _, body = s.apiCall(t, http.MethodPost, "/api/v1/keys/rotate", s.adminKey, "application/json", `{"ignore_publish_lead":true}`)
	if status != 200 {
		t.Fatalf("forced rotation: %d %s", status, body)
	}
	after, _ := s.keyring.Signer("")
	if after.Kid == before.Kid || !strings.Contains(string(body), after.Kid) {
		t.Fatalf("signer %s → %s after %s", before.Kid, after.Kid, body)
	}
}

func TestLaunch_AnyUserAgentIsRecorded(t *testing.T) {
	s := newStack(t, testDB.Fresh(t), keys.ES256)
	s.registerTestModule(t)
	for _, ua := range []string{"bad \xff\xfe bytes", strings.Repeat("a", 511) + "é and more", strings.Repeat("ü", 600)} {
		link := s.createLaunch(t, map[string]string{"module": "diary", "task": "Task/1", "user": "Patient/1"})
		resp, _ := redeem(t, link, map[string]string{"User-Agent": ua})
		if resp.StatusCode != 200 {
			t.Errorf("user agent %q: status %d", ua[:10], resp.StatusCode)
		}
	}
}

func TestLaunch_OnlyTheModulesIssuer(t *testing.T) {
	ctx := operatorContext()
	s := newStack(t, testDB.Fresh(t), keys.ES256)
	s.registerTestModule(t)
	other := defaultIssuer(keys.ES256)
	other.Slug, other.ClientID, other.IsDefault = "other", "portal-other", false
	store := keys.NewStore(s.pool)
	if err := store.CreateIssuer(ctx, other, time.Now()); err != nil {
		t.Fatal(err)
	}
	if _, err := s.rotator.EnsureKeys(ctx, "other"); err != nil {
		t.Fatal(err)
	}
	if err := s.keyring.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	status, _, body := s.apiCall(t, http.MethodPost, "/api/v1/launch-tokens", s.launchKey, "application/json", `{"module":"diary","task":"Task/1","user":"Patient/1","issuer":"other"}`)
	if status != 422 || !strings.Contains(string(body), `"field":"issuer"`) {
		t.Fatalf("a token for the module under another issuer's client_id: %d %s", status, body)
	}
	if status, _, body := s.apiCall(t, http.MethodPost, "/api/v1/launch-tokens", s.launchKey, "application/json", `{"module":"diary","task":"Task/1","user":"Patient/1","issuer":"default"}`); status != 201 {
		t.Fatalf("naming the module's own issuer: %d %s", status, body)
	}
}

func TestModulesAPI_LaunchURLsThatCouldBreakTheCSP(t *testing.T) {
	s := newStack(t, testDB.Fresh(t), keys.ES256)
	for _, u := range []string{
		"https://a.example;frame-ancestors/x", "https://a.example,b.example/x", "https://a.example'/x",
		"https://a.example:99999/x", "https://a.example:port/x", "javascript:alert(1)", "https:///x",
	} {
		body, _ := json.Marshal(map[string]string{"launch_url": u, "audience": "Device/x"})
		status, _, resp := s.apiCall(t, http.MethodPut, "/api/v1/modules/csp", s.adminKey, "application/json", string(body))
		if status != 422 && status != 400 {
			t.Errorf("launch URL %q: %d %s", u, status, resp)
		}
	}
	status, _, resp := s.apiCall(t, http.MethodPut, "/api/v1/modules/upper", s.adminKey, "application/json", `{"launch_url":"HTTPS://Module.Example.ORG/Launch","audience":"Device/x"}`)
	if status != 201 || !strings.Contains(string(resp), `"launch_url":"https://module.example.org/Launch"`) {
		t.Fatalf("upper-case scheme and host: %d %s", status, resp)
	}
	status, _, resp = s.apiCall(t, http.MethodPut, "/api/v1/modules/trailing", s.adminKey, "application/json", `{"launch_url":"https://m.example.org","audience":"Device/x"} trailing`)
	if status != 400 {
		t.Fatalf("trailing data after the module: %d %s", status, resp)
	}
}

func TestAPI_EdgeCasesAreClear4xx(t *testing.T) {
	s := newStack(t, testDB.Fresh(t), keys.ES256)
	s.registerTestModule(t)
	for _, c := range []string{"?cursor=" + base64.RawURLEncoding.EncodeToString([]byte("123|not-a-uuid-but-36-characters-long")), "?cursor=%ff"} {
		if status, _, body := s.apiCall(t, http.MethodGet, "/api/v1/launches"+c, s.adminKey, "", ""); status != 422 && status != 400 {
			t.Errorf("cursor %s: %d %s", c, status, body)
		}
	}
	// A body over the limit sent without Content-Length (chunked).
	pr, pw := io.Pipe()
	go func() {
		_, _ = pw.Write([]byte(`{"module":"diary","task":"Task/1","user":"Patient/1","idp_hint":"`))
		_, _ = pw.Write([]byte(strings.Repeat("x", 40000)))
		_ = pw.CloseWithError(io.EOF)
	}()
	req, _ := http.NewRequest(http.MethodPost, s.http.URL+"/api/v1/launches", pr)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+s.launchKey)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 413 || !strings.Contains(string(body), "body-too-large") {
		t.Fatalf("chunked body over the limit: %d %s", resp.StatusCode, body)
	}
	if resp, _ := get(t, s.http.URL+"/issuers//jwks.json", nil); resp.StatusCode != 404 {
		t.Fatalf("/issuers//jwks.json: %d", resp.StatusCode)
	}
}

// TestLaunchLink_FollowingChangesNothing fetches a link the way previewers,
// prefetchers and scanners do — GET and HEAD, many times — and then
// redeems it: the first POST still gets the token, and following the link
// afterwards shows that it was used.
func TestLaunchLink_FollowingChangesNothing(t *testing.T) {
	s := newStack(t, testDB.Fresh(t), keys.ES256)
	s.registerTestModule(t)
	link := s.createLaunch(t, map[string]string{"module": "diary", "task": "Task/1", "user": "Patient/1"})
	for range 3 {
		resp, page := get(t, link, nil)
		if resp.StatusCode != 200 || !strings.Contains(string(page), `method="post" action="`+link+`"`) {
			t.Fatalf("following the link: %d\n%s", resp.StatusCode, page)
		}
		if strings.Contains(string(page), `name="launch"`) {
			t.Fatal("following the link (GET) handed out a token")
		}
		csp := resp.Header.Get("Content-Security-Policy")
		if resp.Header.Get("Cache-Control") != "no-store" || resp.Header.Get("Referrer-Policy") != "no-referrer" ||
			!strings.Contains(csp, "form-action 'self'") || !strings.Contains(csp, "script-src 'nonce-") {
			t.Fatalf("page headers %v", resp.Header)
		}
		if !strings.Contains(string(page), "<noscript>") || !strings.Contains(string(page), `id="proceed"`) {
			t.Fatal("the page has no button for browsers without JavaScript")
		}
		if head, _ := send(t, http.MethodHead, link, nil); head.StatusCode != 200 {
			t.Fatalf("HEAD: %d", head.StatusCode)
		}
	}
	var redeemed int
	if err := s.pool.QueryRow(operatorContext(), `SELECT count(*) FROM launches WHERE redeemed_at IS NOT NULL`).Scan(&redeemed); err != nil || redeemed != 0 {
		t.Fatalf("GET and HEAD redeemed %d launches (%v)", redeemed, err)
	}
	resp, page := redeem(t, link, nil)
	if resp.StatusCode != 200 || formFields(t, page)["launch"] == "" {
		t.Fatalf("the POST after the GETs: %d\n%s", resp.StatusCode, page)
	}
	resp, page = get(t, link, nil)
	if resp.StatusCode != http.StatusGone || !strings.Contains(string(page), "already used") {
		t.Fatalf("following a used link: %d\n%s", resp.StatusCode, page)
	}
}

// TestLaunchLink_CrossSitePostIsRefusedAndSpendsNothing posts to a link as
// another site's page would make a browser do it.
func TestLaunchLink_CrossSitePostIsRefusedAndSpendsNothing(t *testing.T) {
	s := newStack(t, testDB.Fresh(t), keys.ES256)
	s.registerTestModule(t)
	link := s.createLaunch(t, map[string]string{"module": "diary", "task": "Task/1", "user": "Patient/1"})
	for _, h := range []map[string]string{
		{"Sec-Fetch-Site": "cross-site"},
		{"Sec-Fetch-Site": "same-site"},
		{"Origin": "https://evil.example"},
	} {
		resp, page := redeem(t, link, h)
		if resp.StatusCode != http.StatusForbidden || strings.Contains(string(page), `name="launch"`) {
			t.Fatalf("%v: %d\n%s", h, resp.StatusCode, page)
		}
	}
	resp, page := redeem(t, link, map[string]string{"Sec-Fetch-Site": "same-origin", "Origin": "null"})
	if resp.StatusCode != 200 || formFields(t, page)["launch"] == "" {
		t.Fatalf("the same-origin post after the refused ones: %d\n%s", resp.StatusCode, page)
	}
}

// TestRedeem_RevokedKeyNeverSignsWithoutNotification revokes the active
// key in the database while the server's keyring still holds it (as when
// the notification is lost): redemption and launch-tokens notice it in
// their own statement, reload the keys and sign with the new key.
func TestRedeem_RevokedKeyNeverSignsWithoutNotification(t *testing.T) {
	s := newStack(t, testDB.Fresh(t), keys.ES256)
	s.registerTestModule(t)
	ctx := operatorContext()
	link := s.createLaunch(t, map[string]string{"module": "diary", "task": "Task/1", "user": "Patient/1"})
	old, err := s.keyring.Signer("default")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.rotator.Revoke(ctx, "default", old.Kid); err != nil {
		t.Fatal(err)
	}
	resp, page := redeem(t, link, nil)
	if resp.StatusCode != 200 {
		t.Fatalf("redeem after a revocation the keyring missed: %d\n%s", resp.StatusCode, page)
	}
	if kid := decodeSegment(t, formFields(t, page)["launch"], 0)["kid"]; kid == old.Kid {
		t.Fatal("redemption signed with the revoked key")
	}
	if _, err := s.rotator.Revoke(ctx, "default", mustSigner(t, s.keyring).Kid); err != nil {
		t.Fatal(err)
	}
	status, _, body := s.apiCall(t, http.MethodPost, "/api/v1/launch-tokens", s.launchKey, "application/json", `{"module":"diary","task":"Task/1","user":"Patient/1"}`)
	var issued struct{ Token string }
	if err := json.Unmarshal(body, &issued); status != 201 || err != nil {
		t.Fatalf("launch-tokens after a revocation the keyring missed: %d %s", status, body)
	}
	var withRevoked int
	if err := s.pool.QueryRow(ctx, `SELECT count(*) FROM launches l JOIN signing_keys k ON k.kid = l.kid WHERE k.state = 'revoked' AND l.redeemed_at >= k.revoked_at`).Scan(&withRevoked); err != nil || withRevoked != 0 {
		t.Fatalf("%d launches signed after their key was revoked (%v)", withRevoked, err)
	}
}

// staleSigners is a keyring that cannot reload: it keeps handing out the
// signer it had.
type staleSigners struct{ *keys.Keyring }

func (staleSigners) Refresh(context.Context) error { return errors.New("the database cannot be read") }

// TestRedeem_RevokedKeyRefusedWhenKeysCannotReload is the same revocation
// on an instance that cannot reload its keys: nothing is signed with the
// revoked key, and the link stays usable.
func TestRedeem_RevokedKeyRefusedWhenKeysCannotReload(t *testing.T) {
	s := newStack(t, testDB.Fresh(t), keys.ES256)
	s.registerTestModule(t)
	ctx := operatorContext()
	link := s.createLaunch(t, map[string]string{"module": "diary", "task": "Task/1", "user": "Patient/1"})
	if _, err := s.rotator.Revoke(ctx, "default", mustSigner(t, s.keyring).Kid); err != nil {
		t.Fatal(err)
	}
	stale := launch.NewService(s.pool, s.registry, staleSigners{s.keyring}, launch.Config{PublicURL: s.http.URL, TokenLifetime: 300 * time.Second, TicketLifetime: 120 * time.Second}, s.clock.Now, slog.New(slog.DiscardHandler))
	ticket := link[strings.LastIndex(link, "/")+1:]
	if _, err := stale.Redeem(ctx, ticket, launch.Browser{}); !errors.Is(err, keys.ErrNoActiveKey) {
		t.Fatalf("redeem with a revoked key: %v, want ErrNoActiveKey", err)
	}
	if _, err := stale.IssueToken(ctx, launch.Request{Module: "diary", Task: "Task/1", User: "Patient/1"}, launch.Caller{Name: "t"}); !errors.Is(err, keys.ErrNoActiveKey) {
		t.Fatalf("issue a token with a revoked key: %v, want ErrNoActiveKey", err)
	}
	if _, err := stale.Inspect(ctx, ticket); err != nil {
		t.Fatalf("the link is no longer usable after the refused redemption: %v", err)
	}
}

func mustSigner(t testing.TB, k *keys.Keyring) *keys.Signer {
	t.Helper()
	sg, err := k.Signer("default")
	if err != nil {
		t.Fatal(err)
	}
	return sg
}

// TestRedeem_ModuleRepointedOrRemovedSinceTheLinkWasMade re-points a
// module (where tokens are posted) and removes another while links for
// them are pending: neither link redeems, and each says why.
func TestRedeem_ModuleRepointedOrRemovedSinceTheLinkWasMade(t *testing.T) {
	s := newStack(t, testDB.Fresh(t), keys.ES256)
	s.registerTestModule(t)
	s.putModule(t, "other", map[string]string{"launch_url": "https://other.example.org/launch", "audience": "Device/o"})
	repointed := s.createLaunch(t, map[string]string{"module": "diary", "task": "Task/1", "user": "Patient/1"})
	removed := s.createLaunch(t, map[string]string{"module": "other", "task": "Task/1", "user": "Patient/1"})
	s.putModule(t, "diary", map[string]string{"launch_url": "https://elsewhere.example.org/launch", "audience": "Device/diary-1", "default_definition": "ActivityDefinition/diary"})
	if status, _, b := s.apiCall(t, http.MethodDelete, "/api/v1/modules/other", s.adminKey, "", ""); status != 204 {
		t.Fatalf("delete: %d %s", status, b)
	}
	for _, link := range []string{repointed, removed} {
		for _, call := range []func(testing.TB, string, map[string]string) (*http.Response, []byte){get, redeem} {
			resp, page := call(t, link, nil)
			if resp.StatusCode != http.StatusGone || !strings.Contains(string(page), "module changed") || strings.Contains(string(page), `name="launch"`) {
				t.Fatalf("%s: %d\n%s", link, resp.StatusCode, page)
			}
		}
	}
}

// TestRedeem_ReloadsKeysEvenWhenAnotherIssuerIsBroken misses a revocation
// of the default issuer's key while another issuer has a key that does not
// open: the reload that follows reports that issuer's problem, and the
// redemption still goes on with the default issuer's new key.
func TestRedeem_ReloadsKeysEvenWhenAnotherIssuerIsBroken(t *testing.T) {
	s := newStack(t, testDB.Fresh(t), keys.ES256)
	s.registerTestModule(t)
	ctx := operatorContext()
	s.addIssuer(t, "broken", "portal-broken")
	if _, err := s.pool.Exec(ctx, `UPDATE signing_keys SET sealed_private = sealed_private || '\x00'::bytea WHERE issuer = 'broken'`); err != nil {
		t.Fatal(err)
	}
	_ = s.keyring.Refresh(ctx) // reports the broken issuer
	link := s.createLaunch(t, map[string]string{"module": "diary", "task": "Task/1", "user": "Patient/1"})
	old := mustSigner(t, s.keyring)
	if _, err := s.rotator.Revoke(ctx, "default", old.Kid); err != nil {
		t.Fatal(err)
	}
	resp, page := redeem(t, link, nil)
	if resp.StatusCode != 200 {
		t.Fatalf("redeem after a missed revocation, another issuer broken: %d\n%s", resp.StatusCode, page)
	}
	if kid := decodeSegment(t, formFields(t, page)["launch"], 0)["kid"]; kid == old.Kid {
		t.Fatal("signed with the revoked key")
	}
}
