package fhirdomain

import (
	"context"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ehealth-nl/portal/internal/testdomain"
)

// smartTokens is a real SMART backend-services client for the tests
// (testdomain's BackendClient: an ES384 key published on a loopback JWKS
// server, client_credentials at the domain's token endpoint). It keeps one
// token per issuer until Invalidate. poison, when set, is handed out once
// before the first real token (to draw a 401).
type smartTokens struct {
	client *testdomain.BackendClient
	domain *testdomain.Domain

	mu          sync.Mutex
	token       string
	poison      string
	always      string // when set, every Token answers this
	calls       int
	invalidated []string
}

func newSmartTokens(t *testing.T, clientID string) (*smartTokens, testdomain.Client) {
	t.Helper()
	c := testdomain.NewBackendClient(t, clientID)
	return &smartTokens{client: c}, c.Client
}

func (s *smartTokens) Token(ctx context.Context, _ string) (string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls++
	if s.always != "" {
		return s.always, nil
	}
	if s.poison != "" {
		p := s.poison
		s.poison = ""
		return p, nil
	}
	if s.token != "" {
		return s.token, nil
	}
	tok, err := s.fetch(ctx)
	if err != nil {
		return "", err
	}
	s.token = tok
	return tok, nil
}

func (s *smartTokens) Invalidate(_, token string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.invalidated = append(s.invalidated, token)
	if s.token == token {
		s.token = ""
	}
}

func (s *smartTokens) counts() (int, []string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls, append([]string(nil), s.invalidated...)
}

// fetch gets a token with a fresh client assertion.
func (s *smartTokens) fetch(ctx context.Context) (string, error) {
	return s.client.Token(ctx, s.domain, "system/*.read")
}

// recorded is one request that passed the recording proxy.
type recorded struct {
	Path   string // path and query below the FHIR base, e.g. Task/t-1
	Header http.Header
	Status int
}

// recorder is a real reverse proxy in front of the domain's FHIR server
// that records every request and the status answered, because the server
// cannot echo headers back.
type recorder struct {
	URL  string // the FHIR base URL through the proxy
	mu   sync.Mutex
	reqs []recorded
}

func newRecorder(t *testing.T, fhirBase string) *recorder {
	t.Helper()
	target, err := url.Parse(fhirBase)
	if err != nil {
		t.Fatal(err)
	}
	rec := &recorder{}
	proxy := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(&url.URL{Scheme: target.Scheme, Host: target.Host})
		},
		ModifyResponse: func(resp *http.Response) error {
			r := resp.Request
			rec.mu.Lock()
			rec.reqs = append(rec.reqs, recorded{
				Path:   strings.TrimPrefix(strings.TrimPrefix(r.URL.RequestURI(), target.Path), "/"),
				Header: r.Header.Clone(), Status: resp.StatusCode,
			})
			rec.mu.Unlock()
			return nil
		},
	}
	srv := httptest.NewServer(proxy)
	t.Cleanup(srv.Close)
	rec.URL = srv.URL + target.Path
	return rec
}

// with returns the recorded requests whose X-Request-Id is id.
func (r *recorder) with(id string) []recorded {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []recorded
	for _, q := range r.reqs {
		if q.Header.Get("X-Request-Id") == id {
			out = append(out, q)
		}
	}
	return out
}

// paths counts recorded requests by path.
func paths(reqs []recorded) map[string]int {
	m := map[string]int{}
	for _, q := range reqs {
		m[q.Path]++
	}
	return m
}

// clock is a settable clock for the cache TTL.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// outcomes counts what Observe is told, by "Type outcome".
type outcomes struct {
	mu sync.Mutex
	m  map[string]int
}

func (o *outcomes) observe(typ string, out CacheOutcome) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.m == nil {
		o.m = map[string]int{}
	}
	o.m[typ+" "+string(out)]++
}

func (o *outcomes) take() map[string]int {
	o.mu.Lock()
	defer o.mu.Unlock()
	m := o.m
	o.m = nil
	return m
}
