package server

import (
	"bufio"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/ehealth-nl/portal/internal/keys"
	"github.com/ehealth-nl/portal/internal/metrics"
	"github.com/ehealth-nl/portal/internal/pgtest"
)

// logLines parses the stack's JSON log.
func logLines(t *testing.T, s *stack) []map[string]any {
	t.Helper()
	var out []map[string]any
	sc := bufio.NewScanner(strings.NewReader(s.logs.String()))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("a log line is not JSON: %q", sc.Text())
		}
		out = append(out, m)
	}
	return out
}

func TestRequestID_TakenEchoedAndOnEveryLine(t *testing.T) {
	s := newStack(t, testDB.Fresh(t), keys.ES256)
	s.registerTestModule(t)
	req, _ := http.NewRequest(http.MethodPost, s.http.URL+"/api/v1/launches", strings.NewReader(`{"module":"diary","task":"Task/1","user":"Patient/1"}`))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+s.launchKey)
	req.Header.Set("X-Request-Id", "trace-abc-123")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if got := resp.Header.Get("X-Request-Id"); got != "trace-abc-123" {
		t.Fatalf("X-Request-Id echoed as %q", got)
	}
	var lines int
	for _, l := range logLines(t, s) {
		if l["request_id"] == "trace-abc-123" {
			lines++
		}
	}
	if lines < 2 { // "launch created" and the request line
		t.Fatalf("%d log lines carry the request id, want the request line and the launch line", lines)
	}

	// A request without one gets a fresh id; a malicious one is replaced.
	for _, sent := range []string{"", `evil" level="ERROR`, strings.Repeat("x", 200)} {
		req, _ := http.NewRequest(http.MethodGet, s.http.URL+"/healthz", nil)
		if sent != "" {
			req.Header["X-Request-Id"] = []string{sent}
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if got := resp.Header.Get("X-Request-Id"); !regexp.MustCompile(`^[0-9a-f]{32}$`).MatchString(got) {
			t.Errorf("sent %q, got request id %q", sent, got)
		}
	}
}

// TestLogs_AFullLaunchLeaksNoSecret runs a launch link, a direct token, an
// admin call, a refused key and launches while the database is away (the
// paths that log errors), then searches the whole log for the token, the
// ticket, the API keys, the KEK and the private signing keys — and finds
// the ids an operator needs instead.
func TestLogs_AFullLaunchLeaksNoSecret(t *testing.T) {
	url := testDB.Fresh(t)
	proxy := pgtest.NewProxy(t, url)
	s := newStack(t, proxy.URL(url), keys.RS512)
	s.registerTestModule(t)
	link := s.createLaunch(t, map[string]string{"module": "diary", "task": "Task/1", "user": "Practitioner/2", "patient": "Patient/3"})
	ticket := link[strings.LastIndex(link, "/")+1:]
	_, page := redeem(t, link, nil)
	token := formFields(t, page)["launch"]
	redeem(t, link, nil) // used again: refused
	_, _, body := s.apiCall(t, http.MethodPost, "/api/v1/launch-tokens", s.launchKey, "application/json", `{"module":"diary","task":"Task/1","user":"Patient/3"}`)
	var issued struct{ Token, JTI string }
	if err := json.Unmarshal(body, &issued); err != nil || issued.Token == "" {
		t.Fatalf("launch-tokens: %s", body)
	}
	s.apiCall(t, http.MethodGet, "/api/v1/launches", s.adminKey, "", "")
	s.apiCall(t, http.MethodGet, "/api/v1/launches", "ptl_0123456789abcdef_"+strings.Repeat("B", 43), "", "")
	pending := s.createLaunch(t, map[string]string{"module": "diary", "task": "Task/1", "user": "Patient/3"})
	proxy.Cut()
	if status, _, _ := s.apiCall(t, http.MethodPost, "/api/v1/launches", s.launchKey, "application/json", `{"module":"diary","task":"Task/1","user":"Patient/3"}`); status != 503 {
		t.Fatalf("launch during the outage: %d", status)
	}
	if resp, _ := get(t, pending, nil); resp.StatusCode != 503 {
		t.Fatalf("redeem during the outage: %d", resp.StatusCode)
	}
	proxy.Restore()

	secrets := map[string]string{
		"launch token": token, "direct token": issued.Token, "ticket": ticket, "pending ticket": pending[strings.LastIndex(pending, "/")+1:],
		"launch API key": s.launchKey, "admin API key": s.adminKey, "presented unknown key": strings.Repeat("B", 43),
		"token signature": token[strings.LastIndex(token, ".")+1:], "token payload": strings.Split(token, ".")[1],
		"KEK (base64)": base64.StdEncoding.EncodeToString(s.kek), "KEK (hex)": hex.EncodeToString(s.kek),
	}
	rows, err := s.pool.Query(operatorContext(), `SELECT kid, issuer, alg, key_bits, public_jwk, seal_version, kek_id, sealed_private FROM signing_keys WHERE sealed_private IS NOT NULL`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var kid, issuer, alg, kek string
		var bits int
		var version int16
		var sealed, publicJWK []byte
		if err := rows.Scan(&kid, &issuer, &alg, &bits, &publicJWK, &version, &kek, &sealed); err != nil {
			t.Fatal(err)
		}
		der, err := s.sealer.Open(kek, keys.Binding{Issuer: issuer, Kid: kid, Alg: keys.Algorithm(alg), Bits: bits,
			PublicJWK: publicJWK, Version: keys.SealVersion(version)}, sealed)
		if err != nil {
			t.Fatal(err)
		}
		priv, err := x509.ParsePKCS8PrivateKey(der)
		if err != nil {
			t.Fatal(err)
		}
		d := priv.(*rsa.PrivateKey).D.Bytes()
		secrets["private key "+kid+" (base64url)"] = base64.RawURLEncoding.EncodeToString(d)[:32]
		secrets["private key "+kid+" (hex)"] = hex.EncodeToString(d)[:32]
		secrets["sealed key "+kid] = base64.StdEncoding.EncodeToString(sealed)[:32]
	}
	rows.Close()

	logs := s.logs.String()
	for what, secret := range secrets {
		if secret == "" || strings.Contains(logs, secret) {
			t.Errorf("the log contains the %s", what)
		}
	}
	claims := decodeSegment(t, token, 1)
	for _, want := range []string{claims["jti"].(string), issued.JTI, `"launch redeemed"`, `"launch link used again"`, `"kid"`, `"launch_id"`, `"request refused for now"`, `"launch link could not be followed now"`} {
		if !strings.Contains(logs, want) {
			t.Errorf("the log lacks %s", want)
		}
	}
}

// scrape reads one sample from /metrics.
func scrape(t *testing.T, s *stack, series string) float64 {
	t.Helper()
	_, body := get(t, s.http.URL+"/metrics", nil)
	for _, line := range strings.Split(string(body), "\n") {
		if strings.HasPrefix(line, series+" ") {
			v, err := strconv.ParseFloat(strings.TrimSpace(strings.TrimPrefix(line, series)), 64)
			if err != nil {
				t.Fatal(err)
			}
			return v
		}
	}
	return -1
}

func TestMetrics_CountWhatHappened(t *testing.T) {
	s := newStack(t, testDB.Fresh(t), keys.ES256)
	s.registerTestModule(t)
	link := s.createLaunch(t, map[string]string{"module": "diary", "task": "Task/1", "user": "Patient/1"})
	redeem(t, link, nil)
	redeem(t, link, nil)
	redeem(t, s.http.URL+"/launch/"+strings.Repeat("C", 43), nil)
	get(t, s.http.URL+"/launch/"+strings.Repeat("C", 43), nil) // following is not a refusal
	s.apiCall(t, http.MethodPost, "/api/v1/launches", s.launchKey, "application/json", `{"module":"nope","task":"Task/1","user":"Patient/1"}`)
	s.apiCall(t, http.MethodPost, "/api/v1/launches", "", "application/json", `{}`)
	s.apiCall(t, http.MethodPost, "/api/v1/launches", s.launchKey, "application/json", `{"module":"diary","task":"Task/1","user":"Patient/1","idp_hint":"`+strings.Repeat("x", 20000)+`"}`)
	for _, m := range []string{"FOO1", "FOO2", "BREW"} {
		req, _ := http.NewRequest(m, s.http.URL+"/healthz", nil)
		if resp, err := http.DefaultClient.Do(req); err == nil {
			resp.Body.Close()
		}
	}
	resp, _ := get(t, s.http.URL+"/.well-known/jwks.json", nil)
	get(t, s.http.URL+"/.well-known/jwks.json", map[string]string{"If-None-Match": resp.Header.Get("ETag")})
	s.apiCall(t, http.MethodPost, "/api/v1/keys/rotate", s.adminKey, "application/json", `{"ignore_publish_lead":true}`)
	if err := s.keyring.Refresh(operatorContext()); err != nil {
		t.Fatal(err)
	}

	for series, want := range map[string]float64{
		`portal_launches_created_total{kind="ticket"}`:                       1,
		`portal_launches_redeemed_total`:                                     1,
		`portal_launches_refused_total{reason="ticket_used"}`:                1,
		`portal_launches_refused_total{reason="ticket_unknown"}`:             1,
		`portal_launches_refused_total{reason="invalid"}`:                    1,
		`portal_launches_refused_total{reason="unauthenticated"}`:            1,
		`portal_jwks_requests_total{status="200"}`:                           1,
		`portal_jwks_requests_total{status="304"}`:                           1,
		`portal_key_changes_total{issuer="default",kind="rotation"}`:         1,
		`portal_key_events_observed_total{issuer="default",kind="rotation"}`: 1,
		`portal_launches_refused_total{reason="malformed"}`:                  1,
		`portal_published_keys{issuer="default"}`:                            3,
		`portal_next_key_published{issuer="default"}`:                        1,
	} {
		if got := scrape(t, s, series); got != want {
			t.Errorf("%s = %v, want %v", series, got, want)
		}
	}
	for _, series := range []string{
		`portal_http_request_duration_seconds_count{method="POST",route="/launch/:ticket",status_class="2xx"}`,
		`portal_http_request_duration_seconds_count{method="POST",route="/launch/:ticket",status_class="4xx"}`,
		`portal_http_request_duration_seconds_count{method="GET",route="/launch/:ticket",status_class="4xx"}`,
		`portal_active_key_age_seconds{issuer="default"}`,
		`portal_next_rotation_seconds{issuer="default"}`,
		`portal_db_pool_max_connections`,
		`portal_db_pool_acquires_total`,
		`go_goroutines`,
	} {
		if got := scrape(t, s, series); got < 0 {
			t.Errorf("%s missing from /metrics", series)
		}
	}
	_, metricsBody := get(t, s.http.URL+"/metrics", nil)
	if strings.Contains(string(metricsBody), "FOO1") || strings.Contains(string(metricsBody), "BREW") {
		t.Error("a client's made-up HTTP method became a metrics label")
	}
	if got := scrape(t, s, `portal_next_rotation_seconds{issuer="default"}`); got < 23*3600 {
		t.Errorf("next rotation in %vs right after a rotation, want about 24h", got)
	}
	_, body := get(t, s.http.URL+"/metrics", nil)
	if strings.Contains(string(body), "/launch/"+strings.Repeat("C", 43)) {
		t.Error("a raw launch path (a ticket) reached the metrics")
	}
}

// TestPanics_AreLoggedTimedAndAnswered500 runs a handler that panics
// behind the same middleware as every route.
func TestPanics_AreLoggedTimedAndAnswered500(t *testing.T) {
	s := newStack(t, testDB.Fresh(t), keys.ES256)
	srv := &server{Deps: Deps{Logger: slog.New(slog.NewJSONHandler(s.logs, nil)), Metrics: metrics.New(nil, nil, time.Now)}}
	e := echo.New()
	e.HTTPErrorHandler = srv.handleError
	e.Use(srv.observe, srv.recoverPanics)
	e.GET("/boom", func(echo.Context) error { panic("boom") })
	req := httptest.NewRequest(http.MethodGet, "/boom", nil)
	req.Header.Set("X-Request-Id", "panic-1")
	rec := httptest.NewRecorder()
	e.ServeHTTP(rec, req)
	if rec.Code != 500 || !strings.Contains(rec.Body.String(), "urn:portal:problem:internal") || strings.Contains(rec.Body.String(), "boom") {
		t.Fatalf("panic answered %d %s", rec.Code, rec.Body)
	}
	var panicked, logged bool
	for _, l := range logLines(t, s) {
		panicked = panicked || (l["msg"] == "handler panicked" && l["request_id"] == "panic-1" && l["stack"] != nil)
		logged = logged || (l["msg"] == "request" && l["request_id"] == "panic-1" && l["status"] == float64(500))
	}
	if !panicked || !logged {
		t.Fatalf("panic line %v, request line %v", panicked, logged)
	}
}
