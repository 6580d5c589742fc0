package hti

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v2/jwa"
	"github.com/lestrrat-go/jwx/v2/jwk"
)

// jwksFailure is one way the portal's JWKS endpoint can fail.
type jwksFailure struct {
	name    string
	apply   func(p *portalFixture, t *testing.T)
	client  *http.Client // for the verifier, when the failure needs one
	mention string       // the error must say this
}

// jwksFailures lists every way a fetch can fail; each must be an error
// wrapping ErrJWKS, never a panic and never a key set.
func jwksFailures() []jwksFailure {
	status := func(code int) func(*portalFixture, *testing.T) {
		return func(p *portalFixture, _ *testing.T) { p.respond(code, nil) }
	}
	body := func(b []byte) func(*portalFixture, *testing.T) {
		return func(p *portalFixture, _ *testing.T) { p.respond(0, b) }
	}
	// The fixture's JWKS followed by whitespace: cut at any length it still
	// parses, so only an explicit size check refuses it.
	oversized := func(p *portalFixture, _ *testing.T) {
		p.mu.Lock()
		jwks, _ := json.Marshal(p.set)
		p.mu.Unlock()
		p.respond(0, append(jwks, strings.Repeat(" ", maxJWKSBytes)...))
	}
	return []jwksFailure{
		{name: "500", apply: status(http.StatusInternalServerError), mention: "answered 500"},
		{name: "503", apply: status(http.StatusServiceUnavailable), mention: "answered 503"},
		{name: "404", apply: status(http.StatusNotFound), mention: "answered 404"},
		{name: "not JSON", apply: body([]byte("<html>maintenance</html>")), mention: "did not send a JWKS"},
		{name: "JSON but not a JWKS", apply: body([]byte(`{"keys":"none"}`)), mention: "did not send a JWKS"},
		{name: "oversized", apply: oversized, mention: "larger than 1048576 bytes"},
		{name: "timeout", apply: (*portalFixture).hang, client: &http.Client{Timeout: 500 * time.Millisecond}, mention: "Timeout"},
	}
}

// TestVerify_JWKSFetchFailuresOnFirstUse: with nothing cached, every failure
// of the fetch fails the verification with ErrJWKS.
func TestVerify_JWKSFetchFailuresOnFirstUse(t *testing.T) {
	cases := append(jwksFailures(), jwksFailure{
		// The portal (or a cache in front of it) answers 304 to a request
		// that had no If-None-Match: there is nothing to reuse.
		name: "304 with nothing cached", apply: func(p *portalFixture, _ *testing.T) { p.respond(http.StatusNotModified, nil) },
		mention: "304 Not Modified to a request without If-None-Match",
	})
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := newPortalFixture(t)
			tc.apply(p, t)
			v := p.verifier(t, func(c *VerifierConfig) { c.HTTPClient = tc.client })
			_, err := v.Verify(context.Background(), p.sign(t, p.claims(), "rsa-1", jwa.RS512))
			if !errors.Is(err, ErrJWKS) || !strings.Contains(err.Error(), tc.mention) {
				t.Fatalf("err %v, want ErrJWKS saying %q", err, tc.mention)
			}
			if tc.name == "timeout" {
				var netErr net.Error
				if !errors.As(err, &netErr) || !netErr.Timeout() {
					t.Fatalf("err %v does not wrap the timeout", err)
				}
			}
		})
	}
}

// TestVerify_StaleJWKSServesWhileThePortalFails: once the cached set is
// stale, a failed fetch leaves it in use, and the next fetch waits 5 s.
func TestVerify_StaleJWKSServesWhileThePortalFails(t *testing.T) {
	for _, tc := range jwksFailures() {
		t.Run(tc.name, func(t *testing.T) {
			p := newPortalFixture(t)
			v := p.verifier(t, func(c *VerifierConfig) { c.HTTPClient = tc.client })
			verify := func(when string, wantFetches int32) {
				t.Helper()
				if _, err := v.Verify(context.Background(), p.sign(t, p.claims(), "rsa-1", jwa.RS512)); err != nil {
					t.Fatalf("%s: %v", when, err)
				}
				if n := p.fetches.Load(); n != wantFetches {
					t.Fatalf("%s: %d fetches, want %d", when, n, wantFetches)
				}
			}
			verify("first use", 1)
			tc.apply(p, t)
			p.now = p.now.Add(61 * time.Second) // past max-age 60
			verify("stale, the fetch fails", 2)
			p.now = p.now.Add(4 * time.Second)
			verify("within 5 s of the failure", 2)
			p.now = p.now.Add(time.Second)
			verify("5 s after the failure", 3)
			p.respond(0, nil)
			p.now = p.now.Add(5 * time.Second)
			verify("the portal is back", 4)
			if n := p.notModified.Load(); n != 1 {
				t.Fatalf("the portal answered 304 %d times, want once (the set did not change)", n)
			}
		})
	}
}

// TestVerify_JWKSRevalidatesWith304: a stale set is revalidated with
// If-None-Match; the 304 makes it fresh for another max-age.
func TestVerify_JWKSRevalidatesWith304(t *testing.T) {
	p := newPortalFixture(t)
	v := p.verifier(t, nil)
	steps := []struct {
		after                time.Duration
		fetches, notModified int32
	}{
		{0, 1, 0},
		{59 * time.Second, 1, 0}, // fresh
		{2 * time.Second, 2, 1},  // stale: revalidated
		{59 * time.Second, 2, 1}, // fresh again after the 304
		{time.Second, 3, 2},
	}
	for i, s := range steps {
		p.now = p.now.Add(s.after)
		if _, err := v.Verify(context.Background(), p.sign(t, p.claims(), "rsa-1", jwa.RS512)); err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
		if f, nm := p.fetches.Load(), p.notModified.Load(); f != s.fetches || nm != s.notModified {
			t.Fatalf("step %d: %d fetches, %d answered 304; want %d, %d", i, f, nm, s.fetches, s.notModified)
		}
	}
}

// TestVerify_JWKSPastMaxStalenessIsNotUsed: while the portal fails, a stale
// set serves until MaxStaleness past its freshness, then verification fails
// with ErrJWKS until the portal answers again.
func TestVerify_JWKSPastMaxStalenessIsNotUsed(t *testing.T) {
	for _, tc := range []struct {
		name         string
		maxStaleness time.Duration // in the configuration
		want         time.Duration // in effect
	}{
		{"default", 0, DefaultMaxStaleness},
		{"configured", 90 * time.Second, 90 * time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := newPortalFixture(t)
			v := p.verifier(t, func(c *VerifierConfig) { c.MaxStaleness = tc.maxStaleness })
			verify := func() error {
				_, err := v.Verify(context.Background(), p.sign(t, p.claims(), "rsa-1", jwa.RS512))
				return err
			}
			start := p.now
			if err := verify(); err != nil {
				t.Fatal(err)
			}
			p.respond(http.StatusServiceUnavailable, nil)
			p.now = start.Add(60*time.Second + tc.want - time.Second) // max-age 60, then stale
			if err := verify(); err != nil {
				t.Fatalf("a second before the set is too stale: %v", err)
			}
			p.now = p.now.Add(time.Second)
			if err := verify(); !errors.Is(err, ErrJWKS) {
				t.Fatalf("past max staleness: err %v, want ErrJWKS", err)
			}
			p.now = p.now.Add(time.Second) // within 5 s of the failure: fetches again anyway
			if err := verify(); !errors.Is(err, ErrJWKS) {
				t.Fatalf("past max staleness, again: err %v, want ErrJWKS", err)
			}
			p.respond(0, nil)
			if err := verify(); err != nil {
				t.Fatalf("the portal is back (answering 304): %v", err)
			}
		})
	}
}

// TestVerify_JWKSRedirectsStayWithinTheOrigin: a redirect within the JWKS
// URL's origin is followed; one to another scheme, host or port is not,
// whatever the caller's client would do.
func TestVerify_JWKSRedirectsStayWithinTheOrigin(t *testing.T) {
	p := newPortalFixture(t)
	var target atomic.Value // string: where /old redirects to
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/old" {
			http.Redirect(w, r, target.Load().(string), http.StatusFound)
			return
		}
		p.serveJWKS(w, r)
	}))
	t.Cleanup(srv.Close)
	_, port, _ := net.SplitHostPort(srv.Listener.Addr().String())
	for _, tc := range []struct {
		name, target string
		follow       bool
	}{
		{"same origin, relative", "/jwks.json", true},
		{"same origin, absolute", srv.URL + "/jwks.json", true},
		{"another port", p.srv.URL + "/jwks.json", false},
		{"another host name for the same address", "http://localhost:" + port + "/jwks.json", false},
		{"another scheme", "https://127.0.0.1:" + port + "/jwks.json", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			target.Store(tc.target)
			callers := &http.Client{Timeout: 5 * time.Second}
			before := p.fetches.Load()
			v := p.verifier(t, func(c *VerifierConfig) { c.JWKSURL = srv.URL + "/old"; c.HTTPClient = callers })
			_, err := v.Verify(context.Background(), p.sign(t, p.claims(), "rsa-1", jwa.RS512))
			switch {
			case tc.follow && err != nil:
				t.Fatalf("same-origin redirect: %v", err)
			case !tc.follow && (!errors.Is(err, ErrJWKS) || !strings.Contains(err.Error(), "redirect")):
				t.Fatalf("err %v, want ErrJWKS for the refused redirect", err)
			case !tc.follow && p.fetches.Load() != before:
				t.Fatal("the redirect was followed")
			}
			if callers.CheckRedirect != nil {
				t.Fatal("the caller's client was changed")
			}
		})
	}
}

// TestVerify_JWKSRedirectsKeepTheCallersPolicy: the caller's CheckRedirect
// still applies within the origin.
func TestVerify_JWKSRedirectsKeepTheCallersPolicy(t *testing.T) {
	p := newPortalFixture(t)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/old" {
			http.Redirect(w, r, "/jwks.json", http.StatusFound)
			return
		}
		p.serveJWKS(w, r)
	}))
	t.Cleanup(srv.Close)
	noRedirects := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return errors.New("caller says no") }}
	v := p.verifier(t, func(c *VerifierConfig) { c.JWKSURL = srv.URL + "/old"; c.HTTPClient = noRedirects })
	if _, err := v.Verify(context.Background(), p.sign(t, p.claims(), "rsa-1", jwa.RS512)); !errors.Is(err, ErrJWKS) || !strings.Contains(err.Error(), "caller says no") {
		t.Fatalf("err %v, want the caller's refusal", err)
	}
}

func TestOrigin(t *testing.T) {
	for _, tc := range []struct {
		a, b string
		same bool
	}{
		{"https://portal.example.org/jwks.json", "https://portal.example.org:443/other", true},
		{"https://Portal.Example.org/jwks.json", "HTTPS://portal.example.org/", true},
		{"http://localhost/jwks.json", "http://localhost:80/", true},
		{"http://[::1]:8080/jwks.json", "http://[::1]:8080/x", true},
		{"https://portal.example.org/jwks.json", "http://portal.example.org/jwks.json", false},
		{"https://portal.example.org/jwks.json", "https://portal.example.org:8443/jwks.json", false},
		{"https://portal.example.org/jwks.json", "https://keys.example.org/jwks.json", false},
		{"http://localhost:80/", "https://localhost:80/", false},
	} {
		a, _ := url.Parse(tc.a)
		b, _ := url.Parse(tc.b)
		if same := origin(a) == origin(b); same != tc.same {
			t.Errorf("%s and %s: same origin %v, want %v (%s, %s)", tc.a, tc.b, same, tc.same, origin(a), origin(b))
		}
	}
}

// publishedWith returns the fixture's JWKS with extra keys appended and, when
// member is not empty, that member added to the JWK of rsa-1.
func publishedWith(t *testing.T, p *portalFixture, member string, value any, extra ...any) []byte {
	t.Helper()
	p.mu.Lock()
	raw, err := json.Marshal(p.set)
	p.mu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Keys []map[string]any `json:"keys"`
	}
	if err := json.Unmarshal(raw, &doc); err != nil {
		t.Fatal(err)
	}
	keys := make([]any, 0, len(doc.Keys)+len(extra))
	for _, k := range doc.Keys {
		if member != "" && k["kid"] == "rsa-1" {
			k[member] = value
		}
		keys = append(keys, k)
	}
	raw, err = json.Marshal(map[string]any{"keys": append(keys, extra...)})
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

// TestVerify_JWKSWithPrivateKeyMaterialIsRefused: a key set in which any key
// carries a private member, or is symmetric, is refused as a whole — also
// when it replaces a set already cached.
func TestVerify_JWKSWithPrivateKeyMaterialIsRefused(t *testing.T) {
	type privateCase struct {
		name    string
		jwks    func(t *testing.T, p *portalFixture) []byte
		mention string
	}
	privateJWK := func(t *testing.T, key any, kid string) jwk.Key {
		k, err := jwk.FromRaw(key)
		if err != nil {
			t.Fatal(err)
		}
		_ = k.Set(jwk.KeyIDKey, kid)
		return k
	}
	cases := []privateCase{
		{"the whole private RSA key", func(t *testing.T, p *portalFixture) []byte {
			return publishedWith(t, p, "", nil, privateJWK(t, p.rsaKey, "rsa-private"))
		}, `key rsa-private carries the private key member "d"`},
		{"the whole private EC key", func(t *testing.T, p *portalFixture) []byte {
			return publishedWith(t, p, "", nil, privateJWK(t, p.ecKey, "ec-private"))
		}, `key ec-private carries the private key member "d"`},
		{"a symmetric key", func(t *testing.T, p *portalFixture) []byte {
			return publishedWith(t, p, "", nil, privateJWK(t, []byte("secret-secret-secret-secret-secret"), "hmac-1"))
		}, `key hmac-1 carries the private key member "k"`},
		{"a symmetric key without its secret", func(t *testing.T, p *portalFixture) []byte {
			return publishedWith(t, p, "", nil, map[string]string{"kty": "oct"})
		}, "key 2 is a symmetric (oct) key"},
		{"member oth", func(t *testing.T, p *portalFixture) []byte {
			return publishedWith(t, p, "oth", []map[string]string{{"r": "AQAB", "d": "AQAB", "t": "AQAB"}})
		}, `key rsa-1 carries the private key member "oth"`},
	}
	cases = append(cases, privateCase{"a second keys member with the private key", func(t *testing.T, p *portalFixture) []byte {
		private, _ := json.Marshal(privateJWK(t, p.rsaKey, "rsa-1"))
		public := publishedWith(t, p, "", nil)
		// {"keys":[<private>],"keys":[...public...]}: encoding/json keeps the
		// last member, jwx adds the keys of both.
		return append([]byte(`{"keys":[`+string(private)+`],`), public[1:]...)
	}, `member "keys" appears twice`})
	cases = append(cases, privateCase{"a key with a member twice", func(t *testing.T, p *portalFixture) []byte {
		public := publishedWith(t, p, "", nil)
		return []byte(strings.Replace(string(public), `"kty":`, `"d":"AQAB","d":"AQAB","kty":`, 1))
	}, `member "d" appears twice`})
	for _, m := range []string{"d", "p", "q", "dp", "dq", "qi", "k"} {
		cases = append(cases, privateCase{"member " + m, func(t *testing.T, p *portalFixture) []byte {
			return publishedWith(t, p, m, "AQAB")
		}, `key rsa-1 carries the private key member "` + m + `"`})
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := newPortalFixture(t)
			p.respond(0, tc.jwks(t, p))
			// The whole set is refused, not only the key at fault.
			for _, k := range []struct {
				kid string
				alg jwa.SignatureAlgorithm
			}{{"rsa-1", jwa.RS512}, {"ec-1", jwa.ES384}} {
				_, err := p.verifier(t, nil).Verify(context.Background(), p.sign(t, p.claims(), k.kid, k.alg))
				if !errors.Is(err, ErrJWKS) || !strings.Contains(err.Error(), tc.mention) {
					t.Fatalf("%s: err %v, want ErrJWKS saying %s", k.kid, err, tc.mention)
				}
			}
		})
	}

	t.Run("replacing a cached set", func(t *testing.T) {
		p := newPortalFixture(t)
		v := p.verifier(t, nil)
		if _, err := v.Verify(context.Background(), p.sign(t, p.claims(), "ec-1", jwa.ES384)); err != nil {
			t.Fatal(err)
		}
		p.respond(0, publishedWith(t, p, "d", "AQAB"))
		p.now = p.now.Add(61 * time.Second) // stale: refetched
		for i := 0; i < 2; i++ {            // the cached set is dropped, not served while stale
			if _, err := v.Verify(context.Background(), p.sign(t, p.claims(), "ec-1", jwa.ES384)); !errors.Is(err, ErrJWKS) {
				t.Fatalf("verification %d after the portal published a private key: err %v, want ErrJWKS", i+1, err)
			}
		}
	})
}
