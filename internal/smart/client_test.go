package smart

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v2/jwk"
	"github.com/lestrrat-go/jwx/v2/jws"

	"github.com/ehealth-nl/portal/internal/adminevents"
)

// waitTimeout is how long a test waits for something that should happen at
// once before it fails; nothing waits for it to pass.
const waitTimeout = 30 * time.Second

// TestDiscovery: the token endpoint comes from the FHIR base's
// smart-configuration, is cached per base, and http is refused for a host
// that is not loopback.
func TestDiscovery(t *testing.T) {
	f := newFixture(t, fixtureOptions{})
	ctx := context.Background()
	for _, base := range []string{f.fhirBase, f.fhirBase + "/"} {
		got, err := f.client.TokenEndpoint(ctx, base)
		if err != nil || got != f.domain.TokenEndpoint {
			t.Fatalf("TokenEndpoint(%s) = %q, %v; want %q", base, got, err, f.domain.TokenEndpoint)
		}
	}
	if n := f.proxy.discovery.Load(); n != 1 {
		t.Errorf("smart-configuration fetched %d times, want 1 (cached per FHIR base)", n)
	}
	_, err := f.client.TokenEndpoint(ctx, "http://fhir.example.org/fhir")
	if err == nil || errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "https is required") {
		t.Errorf("http on a public host: %v", err)
	}
}

// TestReadWithToken: a token is fetched and used for a FHIR read, then
// reused from the cache; Do never sends it outside the issuer's FHIR base.
func TestReadWithToken(t *testing.T) {
	f := newFixture(t, fixtureOptions{})
	for range 2 {
		if status := f.readTasks(t); status != http.StatusOK {
			t.Fatalf("GET Task?_count=1: %d", status)
		}
	}
	if s, h := f.events.count(OutcomeSuccess), f.events.count(OutcomeCacheHit); s != 1 || h != 1 {
		t.Errorf("fetches %d, cache hits %d; want 1 and 1", s, h)
	}
	for _, target := range []string{f.domain.FHIRBase + "/Task", f.fhirBase + "x/Task", f.fhirBase + "/../oauth2/token"} {
		req, _ := http.NewRequest(http.MethodGet, target, nil)
		if resp, err := f.client.Do(context.Background(), issuerSlug, req); err == nil {
			resp.Body.Close()
			t.Errorf("Do sent the token to %s", target)
		}
	}
}

// TestBurst: 50 callers that need a token at the same moment cause exactly
// one fetch. The first fetch is held at the token endpoint's JWKS request
// until the 49 others have joined it.
func TestBurst(t *testing.T) {
	held, release := make(chan struct{}), make(chan struct{})
	f := newFixture(t, fixtureOptions{holdJWKS: func(http.ResponseWriter) { close(held); <-release }})
	const callers = 50
	tokens := make([]string, callers)
	errs := make([]error, callers)
	var wg sync.WaitGroup
	for i := range callers {
		wg.Go(func() { tokens[i], errs[i] = f.client.Token(context.Background(), issuerSlug) })
	}
	select {
	case <-held:
	case <-time.After(waitTimeout):
		t.Fatal("the token endpoint never fetched the JWKS")
	}
	for i := 0; i < callers-1; i++ {
		select {
		case <-f.events.shared:
		case <-time.After(waitTimeout):
			t.Fatalf("only %d callers joined the fetch in flight", i)
		}
	}
	close(release)
	wg.Wait()
	for i := range callers {
		if errs[i] != nil || tokens[i] != tokens[0] {
			t.Fatalf("caller %d: %v (same token: %v)", i, errs[i], tokens[i] == tokens[0])
		}
	}
	if n := f.events.count(OutcomeSuccess); n != 1 {
		t.Errorf("%d token fetches, want 1", n)
	}
}

// TestCacheUntilNearExpiry: the token (expires_in 300 s) is reused until
// 30 s before it expires, then replaced.
func TestCacheUntilNearExpiry(t *testing.T) {
	f := newFixture(t, fixtureOptions{})
	ctx := context.Background()
	first, err := f.client.Token(ctx, issuerSlug)
	if err != nil {
		t.Fatal(err)
	}
	f.clock.Advance(269 * time.Second)
	if again, err := f.client.Token(ctx, issuerSlug); err != nil || again != first {
		t.Fatalf("at 269 s: a new token or %v", err)
	}
	f.clock.Advance(2 * time.Second)
	second, err := f.client.Token(ctx, issuerSlug)
	if err != nil || second == first {
		t.Fatalf("at 271 s: the old token or %v", err)
	}
	if s, h := f.events.count(OutcomeSuccess), f.events.count(OutcomeCacheHit); s != 2 || h != 1 {
		t.Errorf("fetches %d, cache hits %d; want 2 and 1", s, h)
	}
	if status := f.readTasks(t); status != http.StatusOK {
		t.Errorf("the new token: %d", status)
	}
}

// TestUnauthorizedRefetch: a 401 from the FHIR server makes Do fetch one
// new token and retry once; a second 401 is returned, not retried again.
func TestUnauthorizedRefetch(t *testing.T) {
	f := newFixture(t, fixtureOptions{})
	first, err := f.client.Token(context.Background(), issuerSlug)
	if err != nil {
		t.Fatal(err)
	}
	f.proxy.revoke(first)
	if status := f.readTasks(t); status != http.StatusOK {
		t.Fatalf("after a 401 and a new token: %d", status)
	}
	if s, r := f.events.count(OutcomeSuccess), f.proxy.refused.Load(); s != 2 || r != 1 {
		t.Errorf("fetches %d, 401s %d; want 2 and 1", s, r)
	}
	f.proxy.revokeAll()
	if status := f.readTasks(t); status != http.StatusUnauthorized {
		t.Fatalf("every token revoked: %d, want 401", status)
	}
	if s, r := f.events.count(OutcomeSuccess), f.proxy.refused.Load(); s != 3 || r != 3 {
		t.Errorf("fetches %d, 401s %d; want 3 and 3 (one refetch, one retry)", s, r)
	}
}

// TestRefused: the token endpoint refusing the assertion (the domain knows
// another client_id) is ErrRefused with the OAuth error, and no token or
// assertion is in the message.
func TestRefused(t *testing.T) {
	f := newFixture(t, fixtureOptions{registeredID: "someone-else"})
	_, err := f.client.Token(context.Background(), issuerSlug)
	var re *RefusedError
	if !errors.Is(err, ErrRefused) || errors.Is(err, ErrUnavailable) || !errors.As(err, &re) ||
		re.Code != "invalid_client" || re.Status != http.StatusUnauthorized {
		t.Fatalf("unregistered client: %v", err)
	}
	if strings.Contains(err.Error(), "eyJ") {
		t.Errorf("the error quotes a JWT: %v", err)
	}
	if n := f.events.count(OutcomeRefused); n != 1 {
		t.Errorf("%d refused fetches observed, want 1", n)
	}
}

// TestUnavailable: a closed port, a server that does not answer, and a
// domain that stopped after it was discovered are all ErrUnavailable; the
// discovery is looked up again after the failure.
func TestUnavailable(t *testing.T) {
	ctx := context.Background()
	t.Run("closed port", func(t *testing.T) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		base := "http://" + ln.Addr().String() + "/fhir"
		_ = ln.Close()
		f := newFixture(t, fixtureOptions{fhirBase: base})
		if _, err := f.client.Token(ctx, issuerSlug); !errors.Is(err, ErrUnavailable) || errors.Is(err, ErrRefused) {
			t.Fatalf("closed port: %v", err)
		}
		if n := f.events.count(OutcomeUnavailable); n != 1 {
			t.Errorf("%d unavailable fetches observed, want 1", n)
		}
	})
	t.Run("no answer", func(t *testing.T) {
		ln, err := net.Listen("tcp", "127.0.0.1:0") // accepts (the kernel's backlog), never answers
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = ln.Close() })
		f := newFixture(t, fixtureOptions{fhirBase: "http://" + ln.Addr().String() + "/fhir", timeout: 200 * time.Millisecond})
		if _, err := f.client.Token(ctx, issuerSlug); !errors.Is(err, ErrUnavailable) || !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("no answer: %v", err)
		}
	})
	t.Run("stopped", func(t *testing.T) {
		var f *fixture
		if !t.Run("up", func(t *testing.T) {
			f = newFixture(t, fixtureOptions{})
			if _, err := f.client.Token(ctx, issuerSlug); err != nil {
				t.Fatal(err)
			}
		}) {
			t.FailNow()
		}
		// The subtest's cleanup stopped the domain, the proxy and the
		// database; the keyring still signs from memory.
		f.clock.Advance(300 * time.Second)
		// First the cached token endpoint is tried, then (the failure
		// dropped it) the smart-configuration is looked up again.
		for _, step := range []string{"token request to ", "discover token endpoint at "} {
			if _, err := f.client.Token(ctx, issuerSlug); !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), step) {
				t.Fatalf("after the domain stopped, want %q: %v", step, err)
			}
		}
		if n := f.events.count(OutcomeUnavailable); n != 2 {
			t.Errorf("%d unavailable fetches observed, want 2", n)
		}
	})
}

// TestRotation: a key rotation between two fetches still verifies at the
// auth server. oidc-provider keeps a client's JWKS at least 60 s
// (internal/testdomain TestJWKSCache), so a key it has not fetched would
// be refused. The portal publishes each next key for the issuer's publish
// lead before it signs (docs/ARCHITECTURE.md, "Key lifecycle"): the JWKS
// the auth server fetched for the first assertion already held the key
// that signs the second, and it is not fetched again.
func TestRotation(t *testing.T) {
	f := newFixture(t, fixtureOptions{})
	ctx := adminevents.WithActor(context.Background(), "cli:test@localhost")
	first, err := f.client.Token(ctx, issuerSlug)
	if err != nil {
		t.Fatal(err)
	}
	before, err := f.keyring.Signer(issuerSlug)
	if err != nil {
		t.Fatal(err)
	}
	f.portalClock.Advance(time.Hour + time.Second) // the next key's publish lead has passed
	if _, err := f.rotator.Rotate(ctx, issuerSlug, false); err != nil {
		t.Fatal(err)
	}
	if err := f.keyring.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	after, err := f.keyring.Signer(issuerSlug)
	if err != nil || after.Kid == before.Kid {
		t.Fatalf("no rotation: %v", err)
	}
	f.client.Invalidate(issuerSlug, first)
	if _, err := f.client.Token(ctx, issuerSlug); err != nil {
		t.Fatalf("token with the rotated key %s: %v", after.Kid, err)
	}
	if n := f.jwksFetches.Load(); n != 1 {
		t.Errorf("the JWKS was fetched %d times, want 1 (the new key verified from the cached JWKS)", n)
	}
	if status := f.readTasks(t); status != http.StatusOK {
		t.Errorf("read with the new token: %d", status)
	}
}

// TestAssertion: the client assertion has the header alg, kid, typ JWT
// only and the claims iss, sub, aud (a string), jti, iat, exp only (RFC
// 7523 §3; SMART client-confidential-asymmetric), verifies with the
// issuer's published JWKS, and the domain's token endpoint accepts it.
func TestAssertion(t *testing.T) {
	f := newFixture(t, fixtureOptions{})
	s, err := f.keyring.Signer(issuerSlug)
	if err != nil {
		t.Fatal(err)
	}
	endpoint := f.domain.TokenEndpoint
	now := time.Now()
	raw, err := assertion(s, endpoint, now, assertionLifetime)
	if err != nil {
		t.Fatal(err)
	}
	msg, err := jws.Parse(raw)
	if err != nil || len(msg.Signatures()) != 1 {
		t.Fatalf("parse: %v", err)
	}
	var header map[string]any
	if err := json.Unmarshal(decodeSegment(t, strings.Split(string(raw), ".")[0]), &header); err != nil {
		t.Fatal(err)
	}
	if len(header) != 3 || header["alg"] != "ES384" || header["kid"] != s.Kid || header["typ"] != "JWT" {
		t.Errorf("header %v", header)
	}
	var claims map[string]any
	if err := json.Unmarshal(msg.Payload(), &claims); err != nil {
		t.Fatal(err)
	}
	names := make([]string, 0, len(claims))
	for k := range claims {
		names = append(names, k)
	}
	slices.Sort(names)
	iat, _ := claims["iat"].(float64)
	exp, _ := claims["exp"].(float64)
	jti, _ := claims["jti"].(string)
	if strings.Join(names, " ") != "aud exp iat iss jti sub" || claims["iss"] != clientID || claims["sub"] != clientID ||
		claims["aud"] != endpoint || int64(iat) != now.Unix() || exp-iat < 60 || exp-iat > 120 ||
		!regexp.MustCompile(`^[0-9a-f]{32}$`).MatchString(jti) {
		t.Errorf("claims %s", msg.Payload())
	}
	published, err := f.keyring.JWKS(issuerSlug)
	if err != nil {
		t.Fatal(err)
	}
	set, err := jwk.Parse(published.Body)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := jws.Verify(raw, jws.WithKeySet(set)); err != nil {
		t.Errorf("verify with the published JWKS: %v", err)
	}
	resp, err := http.PostForm(endpoint, url.Values{"grant_type": {"client_credentials"},
		"client_assertion_type": {"urn:ietf:params:oauth:client-assertion-type:jwt-bearer"}, "client_assertion": {string(raw)}})
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("the token endpoint answered %d to this assertion", resp.StatusCode)
	}
}

func decodeSegment(t testing.TB, seg string) []byte {
	t.Helper()
	b, err := base64.RawURLEncoding.DecodeString(seg)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
