package smart

import (
	"context"
	"crypto/rand"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ehealth-nl/portal/internal/adminevents"
	"github.com/ehealth-nl/portal/internal/keys"
	"github.com/ehealth-nl/portal/internal/pgtest"
	"github.com/ehealth-nl/portal/internal/postgres"
	"github.com/ehealth-nl/portal/internal/testdomain"
)

var testDB *pgtest.Package

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m, "smart", &testDB)) }

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

// recorder counts the client's observations; shared also receives every
// OutcomeShared, so a test can wait for callers to join a fetch.
type recorder struct {
	mu     sync.Mutex
	counts map[Outcome]int
	shared chan struct{}
}

func (r *recorder) observe(e Event) {
	r.mu.Lock()
	r.counts[e.Outcome]++
	r.mu.Unlock()
	if e.Outcome == OutcomeShared {
		r.shared <- struct{}{}
	}
}

func (r *recorder) count(o Outcome) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.counts[o]
}

// revokingProxy forwards everything to the test domain's FHIR server
// unchanged, except that a revoked access token is replaced by one the
// server cannot verify, so that the real server answers 401 — as a domain
// does for a token it revoked before its expiry.
type revokingProxy struct {
	mu        sync.Mutex
	revoked   map[string]bool
	all       bool
	discovery atomic.Int32 // smart-configuration requests
	refused   atomic.Int32 // 401s the FHIR server answered
}

func (p *revokingProxy) revoke(token string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.revoked[token] = true
}

func (p *revokingProxy) revokeAll() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.all = true
}

func (p *revokingProxy) handler(target *url.URL) http.Handler {
	rp := &httputil.ReverseProxy{
		Rewrite: func(r *httputil.ProxyRequest) {
			r.SetURL(target)
			r.Out.Host = target.Host
			if strings.HasSuffix(r.In.URL.Path, "/.well-known/smart-configuration") {
				p.discovery.Add(1)
			}
			token := strings.TrimPrefix(r.In.Header.Get("Authorization"), "Bearer ")
			p.mu.Lock()
			defer p.mu.Unlock()
			if token != "" && (p.all || p.revoked[token]) {
				r.Out.Header.Set("Authorization", "Bearer revoked")
			}
		},
		ModifyResponse: func(resp *http.Response) error {
			if resp.StatusCode == http.StatusUnauthorized {
				p.refused.Add(1)
			}
			return nil
		},
	}
	return rp
}

// fixture is a portal keyring over a real database whose default issuer is
// registered with a real test domain (its JWKS served on loopback as the
// client's jwks_uri), and a Client over that keyring.
type fixture struct {
	domain      *testdomain.Domain
	keyring     *keys.Keyring
	rotator     *keys.Rotator
	portalClock *testClock // the keyring's and rotator's
	clock       *testClock // the client's
	fhirBase    string     // the issuer's FHIR base: the proxy in front of the domain
	proxy       *revokingProxy
	jwksFetches atomic.Int32
	events      *recorder
	client      *Client
}

// fixtureOptions change what newFixture builds.
type fixtureOptions struct {
	registeredID string                      // the client_id the domain knows; default the issuer's
	fhirBase     string                      // when set, the issuer's FHIR base, and no domain is started
	holdJWKS     func(w http.ResponseWriter) // when set, called before the first JWKS answer
	timeout      time.Duration
}

const (
	issuerSlug = "default"
	clientID   = "portal-smart-test"
)

func newFixture(t testing.TB, opt fixtureOptions) *fixture {
	t.Helper()
	ctx := adminevents.WithActor(context.Background(), "cli:test@localhost")
	f := &fixture{portalClock: &testClock{}, clock: &testClock{}, proxy: &revokingProxy{revoked: map[string]bool{}},
		events: &recorder{counts: map[Outcome]int{}, shared: make(chan struct{}, 100)}}

	// The client's jwks_uri: the keyring's JWKS of the issuer, as the
	// portal serves it.
	var ring atomic.Pointer[keys.Keyring]
	var held atomic.Bool
	jwks := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.jwksFetches.Add(1)
		if opt.holdJWKS != nil && held.CompareAndSwap(false, true) {
			opt.holdJWKS(w)
		}
		set, err := ring.Load().JWKS(issuerSlug)
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(set.Body)
	}))
	t.Cleanup(jwks.Close)

	f.fhirBase = opt.fhirBase
	if f.fhirBase == "" {
		registered := opt.registeredID
		if registered == "" {
			registered = clientID
		}
		f.domain = testdomain.Start(t, testdomain.Client{ID: registered, JWKSURL: jwks.URL + "/jwks.json"})
		target, err := url.Parse(f.domain.FHIRBase)
		if err != nil {
			t.Fatal(err)
		}
		target.Path = ""
		proxy := httptest.NewServer(f.proxy.handler(target))
		t.Cleanup(proxy.Close)
		f.fhirBase = proxy.URL + "/fhir"
	}

	pool, err := postgres.Connect(ctx, testDB.Fresh(t))
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
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	store := keys.NewStore(pool)
	is := keys.Issuer{Slug: issuerSlug, ClientID: clientID, FHIRBaseURL: f.fhirBase, Profile: keys.ProfileKoppeltaal, Alg: keys.ES384, RSABits: 2048,
		Policy: keys.Policy{RotationPeriod: 24 * time.Hour, PublishLead: time.Hour, RetireGrace: time.Hour}, IsDefault: true}
	if err := store.UpsertDefaultIssuer(ctx, is, f.portalClock.Now()); err != nil {
		t.Fatal(err)
	}
	f.rotator = keys.NewRotator(store, sealer, f.portalClock.Now, logger)
	if _, err := f.rotator.EnsureKeys(ctx, issuerSlug); err != nil {
		t.Fatal(err)
	}
	f.keyring = keys.NewKeyring(store, sealer, f.portalClock.Now, logger)
	if err := f.keyring.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	ring.Store(f.keyring)

	f.client, err = New(Config{Signers: f.keyring, Scope: "system/*.read", Timeout: opt.timeout, Clock: f.clock.Now, Observe: f.events.observe})
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// readTasks does GET <fhir>/Task?_count=1 through Do and returns the status.
func (f *fixture) readTasks(t testing.TB) int {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, f.fhirBase+"/Task?_count=1", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Accept", "application/fhir+json")
	resp, err := f.client.Do(context.Background(), issuerSlug, req)
	if err != nil {
		t.Fatalf("FHIR read: %v", err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode
}
