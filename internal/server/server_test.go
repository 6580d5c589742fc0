package server

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/lestrrat-go/jwx/v2/jwa"
	"github.com/lestrrat-go/jwx/v2/jwk"
	"github.com/lestrrat-go/jwx/v2/jws"

	"github.com/ehealth-nl/portal/internal/adminevents"
	"github.com/ehealth-nl/portal/internal/apikeys"
	"github.com/ehealth-nl/portal/internal/auditoutbox"
	"github.com/ehealth-nl/portal/internal/keys"
	"github.com/ehealth-nl/portal/internal/launch"
	"github.com/ehealth-nl/portal/internal/metrics"
	"github.com/ehealth-nl/portal/internal/pgtest"
	"github.com/ehealth-nl/portal/internal/postgres"
	"github.com/ehealth-nl/portal/pkg/hti"
)

var testDB *pgtest.Package

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m, "server", &testDB)) }

// stack is the whole service — real keyring, launch service, registry and
// API keys over a real database — behind a real HTTP server on loopback.
type stack struct {
	pool      *pgxpool.Pool
	keyring   *keys.Keyring
	rotator   *keys.Rotator
	registry  *launch.Registry
	launches  *launch.Service
	apikeys   *apikeys.Store
	clock     *testClock
	http      *httptest.Server
	logs      *syncBuffer
	sealer    *keys.Sealer
	kek       []byte // the key-encryption key of the stack's sealer
	launchKey string // secret of an API key with scope launch
	adminKey  string // secret of an API key with scope admin
}

// testClock is the real time plus an offset a test may move forward.
type testClock struct {
	mu     sync.Mutex
	offset time.Duration
}

func (c *testClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return time.Now().Add(c.offset)
}

func (c *testClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.offset += d
}

// syncBuffer collects log output from concurrent handlers.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func defaultIssuer(alg keys.Algorithm) keys.Issuer {
	return keys.Issuer{Slug: "default", ClientID: "portal-test", FHIRBaseURL: "https://fhir.example.org/fhir", Profile: keys.ProfileHTI, Alg: alg, RSABits: 2048,
		Policy: keys.Policy{RotationPeriod: 24 * time.Hour, PublishLead: time.Hour, RetireGrace: time.Hour}, IsDefault: true}
}

// newStack builds the service on databaseURL with a default issuer signing
// with alg, and serves it on a loopback port.
func newStack(t testing.TB, databaseURL string, alg keys.Algorithm, options ...stackOption) *stack {
	t.Helper()
	ctx := operatorContext()
	pool, err := postgres.Connect(ctx, databaseURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	kek := make([]byte, keys.KEKSize)
	_, _ = rand.Read(kek)
	sealer, err := keys.NewSealer([]keys.KEK{{ID: "test", Key: kek}})
	if err != nil {
		t.Fatal(err)
	}
	clock := &testClock{}
	logs := &syncBuffer{}
	logger := slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelInfo})) // as in production
	store := keys.NewStore(pool)
	if err := store.UpsertDefaultIssuer(ctx, defaultIssuer(alg), clock.Now()); err != nil {
		t.Fatal(err)
	}
	s := &stack{pool: pool, clock: clock, logs: logs, sealer: sealer, kek: kek,
		keyring: keys.NewKeyring(store, sealer, clock.Now, logger), rotator: keys.NewRotator(store, sealer, clock.Now, logger)}
	if _, err := s.rotator.EnsureKeys(ctx, "default"); err != nil {
		t.Fatal(err)
	}
	if err := s.keyring.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	publicURL := "http://" + ln.Addr().String()
	s.registry = launch.NewRegistry(pool, false)
	s.launches = launch.NewService(pool, s.registry, s.keyring, launch.Config{PublicURL: publicURL, TokenLifetime: 300 * time.Second, TicketLifetime: 120 * time.Second, IATBackdate: 5 * time.Second}, clock.Now, logger)
	s.apikeys = apikeys.NewStore(pool)
	ctx = adminevents.WithActor(ctx, "cli:test@localhost") // the operator who set the stack up
	if _, s.launchKey, err = s.apikeys.Create(ctx, "backend", apikeys.ScopeLaunch, clock.Now()); err != nil {
		t.Fatal(err)
	}
	if _, s.adminKey, err = s.apikeys.Create(ctx, "operator", apikeys.ScopeAdmin, clock.Now()); err != nil {
		t.Fatal(err)
	}
	deps := Deps{
		Keyring: s.keyring, Database: pool, Launches: s.launches, Modules: s.registry, APIKeys: s.apikeys,
		LaunchKeys: apikeys.NewRecent(s.apikeys, time.Minute, time.Now),
		KeyAdmin:   testKeyAdmin{store, s.rotator}, AdminEvents: adminevents.NewStore(pool), AuditEvents: auditoutbox.NewStore(pool),
		DefaultIssuer: "default", Logger: logger, Clock: clock.Now,
		PublicURL: publicURL, JWKSMaxAge: 60 * time.Second, Metrics: metrics.New(s.keyring, pool, clock.Now),
	}
	s.keyring.OnEvent(deps.Metrics.KeyEventObserved)
	for _, o := range options {
		o(t, s, &deps)
	}
	s.http = startServer(t, deps, ln)
	return s
}

// startServer serves the portal built from deps on listener ln until the
// test ends.
func startServer(t testing.TB, deps Deps, ln net.Listener) *httptest.Server {
	t.Helper()
	handler, err := NewServer(deps)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(handler)
	_ = srv.Listener.Close()
	srv.Listener = ln
	srv.Start()
	t.Cleanup(srv.Close)
	return srv
}

// stackOption changes the server's dependencies before it starts.
type stackOption func(t testing.TB, s *stack, d *Deps)

// withDemo turns the demo portal and module on, as PORTAL_DEMO does.
func withDemo(t testing.TB, s *stack, d *Deps) {
	t.Helper()
	m := launch.Module{Slug: "demo", Issuer: "default", LaunchURL: d.PublicURL + "/demo/module/launch", Audience: "Device/demo-module",
		DefaultDefinition: "ActivityDefinition/demo-diary"}
	if _, _, err := s.registry.Put(adminevents.WithActor(operatorContext(), "serve:test"), m, time.Now()); err != nil {
		t.Fatal(err)
	}
	v, err := hti.NewVerifier(hti.VerifierConfig{JWKSURL: d.PublicURL + "/.well-known/jwks.json", Issuer: "portal-test", Audience: "Device/demo-module"})
	if err != nil {
		t.Fatal(err)
	}
	d.Demo = &Demo{Module: "demo", Verifier: v}
}

type testKeyAdmin struct {
	store   *keys.Store
	rotator *keys.Rotator
}

func (a testKeyAdmin) Keys(ctx context.Context, issuer string) ([]keys.Key, error) {
	return a.store.Keys(ctx, issuer)
}

func (a testKeyAdmin) Rotate(ctx context.Context, issuer string, ignoreLead bool) (keys.Change, error) {
	return a.rotator.Rotate(ctx, issuer, ignoreLead)
}

// get fetches url with the given headers.
func get(t testing.TB, url string, header map[string]string) (*http.Response, []byte) {
	t.Helper()
	return send(t, http.MethodGet, url, header)
}

// redeem posts to a launch link, as its page does.
func redeem(t testing.TB, link string, header map[string]string) (*http.Response, []byte) {
	t.Helper()
	return send(t, http.MethodPost, link, header)
}

func send(t testing.TB, method, url string, header map[string]string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, body
}

// TestJWKS_TokenVerifiesWithJWKSFetchedOverHTTP verifies a token signed by
// the keyring the way a strict module does: the JWKS fetched from the
// server, kid required, only the issuer's algorithm.
func TestJWKS_TokenVerifiesWithJWKSFetchedOverHTTP(t *testing.T) {
	for _, alg := range []keys.Algorithm{keys.RS512, keys.ES384} {
		t.Run(string(alg), func(t *testing.T) {
			s := newStack(t, testDB.Fresh(t), alg)
			signer, err := s.keyring.Signer("")
			if err != nil {
				t.Fatal(err)
			}
			token, err := signer.Sign([]byte(`{"iss":"portal-test","sub":"Patient/1"}`))
			if err != nil {
				t.Fatal(err)
			}
			set, err := jwk.Fetch(operatorContext(), s.http.URL+"/.well-known/jwks.json")
			if err != nil {
				t.Fatal(err)
			}
			key, ok := set.LookupKeyID(signer.Kid)
			if !ok {
				t.Fatalf("kid %s is not in the fetched JWKS", signer.Kid)
			}
			if _, err := jws.Verify(token, jws.WithKey(jwa.SignatureAlgorithm(alg), key)); err != nil {
				t.Fatalf("token does not verify with the fetched key: %v", err)
			}
			if _, err := jws.Verify(token, jws.WithKeySet(set, jws.WithRequireKid(true), jws.WithUseDefault(false), jws.WithInferAlgorithmFromKey(false))); err != nil {
				t.Fatalf("token does not verify with the fetched set: %v", err)
			}
			other := keys.RS384
			if alg == keys.RS384 {
				other = keys.RS512
			}
			if _, err := jws.Verify(token, jws.WithKey(jwa.SignatureAlgorithm(other), key)); err == nil {
				t.Fatalf("token verified under %s as well", other)
			}
		})
	}
}

func TestJWKS_CacheHeadersETagAnd304(t *testing.T) {
	s := newStack(t, testDB.Fresh(t), keys.ES256)
	for _, path := range []string{"/.well-known/jwks.json", "/issuers/default/jwks.json"} {
		resp, body := get(t, s.http.URL+path, nil)
		if resp.StatusCode != 200 {
			t.Fatalf("%s: status %d", path, resp.StatusCode)
		}
		if cc := resp.Header.Get("Cache-Control"); cc != "public, max-age=60" {
			t.Errorf("%s: Cache-Control %q", path, cc)
		}
		if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
			t.Errorf("%s: Content-Type %q", path, ct)
		}
		etag := resp.Header.Get("ETag")
		if !strings.HasPrefix(etag, `"`) || strings.HasPrefix(etag, "W/") {
			t.Fatalf("%s: ETag %q is not a strong tag", path, etag)
		}
		var doc struct{ Keys []json.RawMessage }
		if err := json.Unmarshal(body, &doc); err != nil || len(doc.Keys) != 2 {
			t.Fatalf("%s: body %s", path, body)
		}
		for _, inm := range []string{etag, "W/" + etag, `"other", ` + etag, "*"} {
			resp, body := get(t, s.http.URL+path, map[string]string{"If-None-Match": inm})
			if resp.StatusCode != http.StatusNotModified || len(body) != 0 {
				t.Errorf("%s with If-None-Match %s: status %d, %d bytes", path, inm, resp.StatusCode, len(body))
			}
			if resp.Header.Get("ETag") != etag || resp.Header.Get("Cache-Control") == "" {
				t.Errorf("304 lacks ETag or Cache-Control")
			}
		}
		resp, _ = get(t, s.http.URL+path, map[string]string{"If-None-Match": `"stale"`})
		if resp.StatusCode != 200 {
			t.Errorf("%s with a stale tag: status %d", path, resp.StatusCode)
		}
	}
	// A rotation changes the body and the tag.
	resp, _ := get(t, s.http.URL+"/.well-known/jwks.json", nil)
	before := resp.Header.Get("ETag")
	if _, err := s.rotator.Rotate(operatorContext(), "default", true); err != nil {
		t.Fatal(err)
	}
	if err := s.keyring.Refresh(operatorContext()); err != nil {
		t.Fatal(err)
	}
	resp, _ = get(t, s.http.URL+"/.well-known/jwks.json", map[string]string{"If-None-Match": before})
	if resp.StatusCode != 200 || resp.Header.Get("ETag") == before {
		t.Fatalf("after rotation: status %d, ETag %s (before %s)", resp.StatusCode, resp.Header.Get("ETag"), before)
	}
}

func TestJWKS_UnknownIssuerIs404Problem(t *testing.T) {
	s := newStack(t, testDB.Fresh(t), keys.ES256)
	resp, body := get(t, s.http.URL+"/issuers/nobody/jwks.json", nil)
	if resp.StatusCode != 404 || resp.Header.Get("Content-Type") != "application/problem+json" {
		t.Fatalf("status %d, type %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	var p Problem
	if err := json.Unmarshal(body, &p); err != nil || p.Type != "urn:portal:problem:unknown-issuer" || p.Status != 404 {
		t.Fatalf("problem %s", body)
	}
}

// TestJWKS_ServedWhileDatabaseIsAway cuts the service off from PostgreSQL
// through a proxy: the JWKS keeps answering from memory with the same
// bytes, /readyz says 503, and recovers when the database is back.
func TestJWKS_ServedWhileDatabaseIsAway(t *testing.T) {
	url := testDB.Fresh(t)
	proxy := pgtest.NewProxy(t, url)
	s := newStack(t, proxy.URL(url), keys.ES256)
	resp, before := get(t, s.http.URL+"/.well-known/jwks.json", nil)
	etag := resp.Header.Get("ETag")
	if resp, _ := get(t, s.http.URL+"/readyz", nil); resp.StatusCode != 200 {
		t.Fatalf("readyz before the outage: %d", resp.StatusCode)
	}

	proxy.Cut()
	for i := 0; i < 20; i++ {
		resp, body := get(t, s.http.URL+"/.well-known/jwks.json", nil)
		if resp.StatusCode != 200 || string(body) != string(before) || resp.Header.Get("ETag") != etag {
			t.Fatalf("JWKS during the outage: status %d, same bytes %v", resp.StatusCode, string(body) == string(before))
		}
	}
	resp, body := get(t, s.http.URL+"/readyz", nil)
	if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(string(body), "database") {
		t.Fatalf("readyz during the outage: %d %s", resp.StatusCode, body)
	}
	if resp, _ := get(t, s.http.URL+"/healthz", nil); resp.StatusCode != 200 {
		t.Fatalf("healthz during the outage: %d", resp.StatusCode)
	}

	proxy.Restore()
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, _ := get(t, s.http.URL+"/readyz", nil)
		if resp.StatusCode == 200 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("readyz still %d after the database came back", resp.StatusCode)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestReadyz_NamesIssuersWithoutActiveKey: a keyless non-default issuer is
// named but leaves the instance in service; a default issuer that cannot
// sign takes it out.
func TestReadyz_NamesIssuersWithoutActiveKey(t *testing.T) {
	ctx := operatorContext()
	s := newStack(t, testDB.Fresh(t), keys.ES256)
	store := keys.NewStore(s.pool)
	is := defaultIssuer(keys.ES256)
	is.Slug, is.ClientID, is.IsDefault = "second", "portal-second", false
	if err := store.CreateIssuer(ctx, is, time.Now()); err != nil {
		t.Fatal(err)
	}
	_ = s.keyring.Refresh(ctx) // reports issuer second's problem
	resp, body := get(t, s.http.URL+"/readyz", nil)
	if resp.StatusCode != 200 || !strings.Contains(string(body), `"second":["no active key"]`) {
		t.Fatalf("readyz with a keyless non-default issuer: %d %s", resp.StatusCode, body)
	}
	if _, err := s.pool.Exec(ctx, `UPDATE signing_keys SET sealed_private = sealed_private || '\x00'::bytea WHERE issuer = 'default' AND state = 'active'`); err != nil {
		t.Fatal(err)
	}
	_ = s.keyring.Refresh(ctx)
	resp, body = get(t, s.http.URL+"/readyz", nil)
	if resp.StatusCode != 503 || !strings.Contains(string(body), `"default"`) || !strings.Contains(string(body), "active key") {
		t.Fatalf("readyz with a default issuer that cannot sign: %d %s", resp.StatusCode, body)
	}
}

func TestUnknownPathIs404Problem(t *testing.T) {
	s := newStack(t, testDB.Fresh(t), keys.ES256)
	resp, _ := get(t, s.http.URL+"/nothing-here", nil)
	if resp.StatusCode != 404 || resp.Header.Get("Content-Type") != "application/problem+json" {
		t.Fatalf("status %d, type %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
}

// reusedWriter is a ResponseWriter that allocates nothing of its own, so
// that a benchmark's allocations are the handler's.
type reusedWriter struct {
	h      http.Header
	status int
	n      int
}

func (w *reusedWriter) Header() http.Header { return w.h }
func (w *reusedWriter) WriteHeader(status int) {
	w.status = status
}
func (w *reusedWriter) Write(p []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	w.n += len(p)
	return len(p), nil
}

// BenchmarkJWKSHandler measures the JWKS handler itself (no network):
// what an instance spends per JWKS request, and the same for a 304. The
// allocations reported are the handler's alone (the writer is reused).
func BenchmarkJWKSHandler(b *testing.B) {
	s := newStack(b, testDB.Fresh(b), keys.RS512)
	h := s.http.Config.Handler
	set, _ := s.keyring.JWKS("")
	for _, tc := range []struct {
		name string
		inm  string
		want int
	}{{"200", "", 200}, {"304", set.ETag, 304}} {
		b.Run(tc.name, func(b *testing.B) {
			req := httptest.NewRequest(http.MethodGet, "/.well-known/jwks.json", nil)
			if tc.inm != "" {
				req.Header.Set("If-None-Match", tc.inm)
			}
			w := &reusedWriter{h: http.Header{}}
			b.ReportAllocs()
			for b.Loop() {
				clear(w.h)
				w.status = 0
				h.ServeHTTP(w, req)
				if w.status != tc.want {
					b.Fatalf("status %d", w.status)
				}
			}
		})
	}
}

// operatorContext is the context of a change a test makes directly through
// a store, as an operator at the command line would.
func operatorContext() context.Context {
	return adminevents.WithActor(context.Background(), "cli:test@localhost")
}

// BenchmarkLaunch measures a registry launch over loopback HTTP: POST
// /api/v1/launches, then the POST of its link (as the launch page does),
// with the module and API key of registerTestModule. make bench measures
// the same against a separate process; this one is for profiling.
func BenchmarkLaunch(b *testing.B) {
	s := newStack(b, testDB.Fresh(b), keys.ES384)
	s.registerTestModule(b)
	body := `{"module":"diary","task":"Task/1","user":"Practitioner/dr-1","patient":"Patient/1"}`
	b.ReportAllocs()
	b.SetParallelism(8) // 8 clients per core, as make bench's 16 on two
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			status, _, resp := s.apiCall(b, http.MethodPost, "/api/v1/launches", s.launchKey, "application/json", body)
			if status != http.StatusCreated {
				b.Errorf("%d %s", status, resp)
				return
			}
			var created launch.Created
			_ = json.Unmarshal(resp, &created)
			if r, _ := redeem(b, created.LaunchURL, nil); r.StatusCode != http.StatusOK {
				b.Errorf("redeem: %d", r.StatusCode)
				return
			}
		}
	})
}

// TestJWKS_DirectAnswersAsEcho: the JWKS answered before Echo
// (serveJWKSDirect) is the answer Echo's route gives (which serves it when
// debug logging is on): status, headers and body, for 200, 304 and HEAD,
// on both routes; an unknown issuer still gets Echo's problem answer.
func TestJWKS_DirectAnswersAsEcho(t *testing.T) {
	var deps *Deps
	s := newStack(t, testDB.Fresh(t), keys.ES256, func(_ testing.TB, _ *stack, d *Deps) { deps = d })
	debug := *deps
	debug.Logger = slog.New(slog.NewJSONHandler(io.Discard, &slog.HandlerOptions{Level: slog.LevelDebug}))
	viaEcho, err := NewServer(debug)
	if err != nil {
		t.Fatal(err)
	}
	direct := s.http.Config.Handler
	set, _ := s.keyring.JWKS("")
	for _, tc := range []struct{ method, path, inm string }{
		{http.MethodGet, "/.well-known/jwks.json", ""},
		{http.MethodGet, "/.well-known/jwks.json", `W/"x", ` + set.ETag},
		{http.MethodHead, "/.well-known/jwks.json", ""},
		{http.MethodGet, "/issuers/default/jwks.json", ""},
		{http.MethodGet, "/issuers/default/jwks.json?x=1", set.ETag},
		{http.MethodGet, "/issuers/nobody/jwks.json", ""},
	} {
		answer := func(h http.Handler) (*http.Response, string) {
			req := httptest.NewRequest(tc.method, tc.path, nil)
			req.Header.Set("X-Request-Id", "same-id")
			if tc.inm != "" {
				req.Header.Set("If-None-Match", tc.inm)
			}
			w := httptest.NewRecorder()
			h.ServeHTTP(w, req)
			return w.Result(), w.Body.String()
		}
		got, gotBody := answer(direct)
		want, wantBody := answer(viaEcho)
		if got.StatusCode != want.StatusCode || gotBody != wantBody || fmt.Sprint(got.Header) != fmt.Sprint(want.Header) {
			t.Errorf("%s %s (If-None-Match %q):\ndirect %d %v %q\n  echo %d %v %q", tc.method, tc.path, tc.inm,
				got.StatusCode, got.Header, gotBody, want.StatusCode, want.Header, wantBody)
		}
	}
}
