package hti

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v2/jwa"
	"github.com/lestrrat-go/jwx/v2/jwk"
	"github.com/lestrrat-go/jwx/v2/jws"
)

// portalFixture is a stand-in portal for the verifier: real keys, a real
// JWKS served over HTTP on loopback, and a signer for arbitrary tokens.
type portalFixture struct {
	rsaKey      *rsa.PrivateKey
	ecKey       *ecdsa.PrivateKey
	mu          sync.Mutex
	set         jwk.Set
	status      int           // answered (without a body) instead of the JWKS when not 0
	body        []byte        // served instead of the JWKS when not nil
	stall       chan struct{} // when not nil, requests hang until it is closed or they are cancelled
	fetches     atomic.Int32
	notModified atomic.Int32 // fetches answered 304
	srv         *httptest.Server
	now         time.Time
}

func newPortalFixture(t *testing.T) *portalFixture {
	t.Helper()
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	ecKey, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	p := &portalFixture{rsaKey: rsaKey, ecKey: ecKey, set: jwk.NewSet(), now: time.Unix(1_800_000_000, 0)}
	p.publish(t, "rsa-1", jwa.RS512, &rsaKey.PublicKey)
	p.publish(t, "ec-1", jwa.ES384, &ecKey.PublicKey)
	p.srv = httptest.NewServer(http.HandlerFunc(p.serveJWKS))
	t.Cleanup(p.srv.Close)
	return p
}

// serveJWKS serves the set as the portal does: max-age 60, an ETag, and 304
// to a matching If-None-Match. A status or body set by respond replaces it.
func (p *portalFixture) serveJWKS(w http.ResponseWriter, r *http.Request) {
	p.fetches.Add(1)
	p.mu.Lock()
	status, body, stall := p.status, p.body, p.stall
	if body == nil {
		body, _ = json.Marshal(p.set)
	}
	p.mu.Unlock()
	if stall != nil {
		select {
		case <-stall:
		case <-r.Context().Done():
		}
		return
	}
	if status != 0 {
		w.WriteHeader(status)
		return
	}
	sum := sha256.Sum256(body)
	etag := `"` + base64.RawURLEncoding.EncodeToString(sum[:12]) + `"`
	w.Header().Set("ETag", etag)
	w.Header().Set("Cache-Control", "public, max-age=60")
	if r.Header.Get("If-None-Match") == etag {
		p.notModified.Add(1)
		w.WriteHeader(http.StatusNotModified)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(body)
}

// respond makes the portal answer status (when not 0) or body (when not nil)
// instead of its JWKS; respond(0, nil) restores the JWKS.
func (p *portalFixture) respond(status int, body []byte) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.status, p.body, p.stall = status, body, nil
}

// hang makes the portal accept requests and never answer them (until the
// client gives up or the test ends).
func (p *portalFixture) hang(t *testing.T) {
	stall := make(chan struct{})
	t.Cleanup(func() { close(stall) }) // before the fixture's server closes
	p.mu.Lock()
	defer p.mu.Unlock()
	p.stall = stall
}

// publish adds a public key to the JWKS under kid, naming alg unless it is
// empty.
func (p *portalFixture) publish(t *testing.T, kid string, alg jwa.SignatureAlgorithm, pub any) {
	t.Helper()
	k, err := jwk.FromRaw(pub)
	if err != nil {
		t.Fatal(err)
	}
	_ = k.Set(jwk.KeyIDKey, kid)
	if alg != "" {
		_ = k.Set(jwk.AlgorithmKey, alg)
	}
	_ = k.Set(jwk.KeyUsageKey, "sig")
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.set.AddKey(k); err != nil {
		t.Fatal(err)
	}
}

func (p *portalFixture) verifier(t *testing.T, mod func(*VerifierConfig)) *Verifier {
	t.Helper()
	cfg := VerifierConfig{JWKSURL: p.srv.URL, Issuer: "portal-client", Audience: "Device/module-1", Now: func() time.Time { return p.now }}
	if mod != nil {
		mod(&cfg)
	}
	v, err := NewVerifier(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// claims returns valid claims issued at the fixture's now.
func (p *portalFixture) claims() map[string]any {
	return map[string]any{
		"iss": "portal-client", "aud": "Device/module-1", "sub": "Practitioner/dr-1", "resource": "Task/42",
		"patient": "Patient/7", "definition": "ActivityDefinition/3", "intent": "plan", "hti-version": "2.0",
		"jti": randomJTI(), "iat": p.now.Unix(), "exp": p.now.Unix() + 300,
	}
}

func randomJTI() string {
	b := make([]byte, 18)
	_, _ = rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

// sign signs any payload with the RSA key (or the EC key for ES*) under any
// kid and alg.
func (p *portalFixture) sign(t *testing.T, payload any, kid string, alg jwa.SignatureAlgorithm) string {
	t.Helper()
	var key any = p.rsaKey
	if strings.HasPrefix(string(alg), "ES") {
		key = p.ecKey
	}
	return signWith(t, key, payload, kid, alg)
}

// signWith signs any payload with any private key under any kid and alg.
func signWith(t *testing.T, key any, payload any, kid string, alg jwa.SignatureAlgorithm) string {
	t.Helper()
	raw, err := json.Marshal(payload)
	if err != nil {
		t.Fatal(err)
	}
	hdr := jws.NewHeaders()
	_ = hdr.Set(jws.KeyIDKey, kid)
	_ = hdr.Set(jws.TypeKey, "JWT")
	tok, err := jws.Sign(raw, jws.WithKey(alg, key, jws.WithProtectedHeaders(hdr)))
	if err != nil {
		t.Fatal(err)
	}
	return string(tok)
}

func b64(v any) string {
	raw, _ := json.Marshal(v)
	return base64.RawURLEncoding.EncodeToString(raw)
}

func TestVerify_AcceptsAValidToken(t *testing.T) {
	p := newPortalFixture(t)
	for _, tc := range []struct {
		kid string
		alg jwa.SignatureAlgorithm
	}{{"rsa-1", jwa.RS512}, {"ec-1", jwa.ES384}} {
		c := p.claims()
		got, err := p.verifier(t, nil).Verify(context.Background(), p.sign(t, c, tc.kid, tc.alg))
		if err != nil {
			t.Fatalf("%s: %v", tc.alg, err)
		}
		if got.Subject != "Practitioner/dr-1" || got.Patient != "Patient/7" || got.JTI != c["jti"] {
			t.Fatalf("%s: claims %+v", tc.alg, got)
		}
	}
}

// TestVerify_Rejects is the list of tokens a careful module refuses.
func TestVerify_Rejects(t *testing.T) {
	p := newPortalFixture(t)
	pubDER, err := x509.MarshalPKIXPublicKey(&p.rsaKey.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	pubPEM := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER})
	hs256 := func(secret []byte) string {
		signingInput := b64(map[string]string{"alg": "HS256", "kid": "rsa-1", "typ": "JWT"}) + "." + b64(p.claims())
		mac := hmac.New(sha256.New, secret)
		mac.Write([]byte(signingInput))
		return signingInput + "." + base64.RawURLEncoding.EncodeToString(mac.Sum(nil))
	}
	with := func(kv ...any) map[string]any {
		c := p.claims()
		for i := 0; i+1 < len(kv); i += 2 {
			if kv[i+1] == nil {
				delete(c, kv[i].(string))
			} else {
				c[kv[i].(string)] = kv[i+1]
			}
		}
		return c
	}
	valid := p.sign(t, p.claims(), "rsa-1", jwa.RS512)
	parts := strings.Split(valid, ".")
	changed := parts[0] + "." + b64(with("sub", "Practitioner/someone-else")) + "." + parts[2]

	cases := []struct {
		name  string
		token string
		want  error  // errors.Is target, or nil when wantClaim is set
		claim string // a *ClaimError for this claim
	}{
		{"changed payload", changed, ErrSignature, ""},
		{"signature of another token", parts[0] + "." + parts[1] + "." + strings.Split(p.sign(t, p.claims(), "rsa-1", jwa.RS512), ".")[2], ErrSignature, ""},
		{"unknown kid", p.sign(t, p.claims(), "rsa-9", jwa.RS512), ErrUnknownKey, ""},
		{"alg none", b64(map[string]string{"alg": "none", "kid": "rsa-1"}) + "." + b64(p.claims()) + ".", ErrMalformed, ""},
		{"alg none with a signature", b64(map[string]string{"alg": "none", "kid": "rsa-1"}) + "." + b64(p.claims()) + ".AAAA", ErrAlgorithm, ""},
		{"HS256 with the public key (PEM) as secret", hs256(pubPEM), ErrAlgorithm, ""},
		{"HS256 with the public key (DER) as secret", hs256(pubDER), ErrAlgorithm, ""},
		{"alg not the key's alg", p.sign(t, p.claims(), "rsa-1", jwa.RS384), ErrAlgorithm, ""},
		{"alg outside the allow-list", p.sign(t, p.claims(), "rsa-1", jwa.RS256), ErrAlgorithm, ""},
		{"no kid", func() string {
			raw, _ := json.Marshal(p.claims())
			tok, _ := jws.Sign(raw, jws.WithKey(jwa.RS512, p.rsaKey))
			return string(tok)
		}(), ErrMalformed, ""},
		{"expired", p.sign(t, with("iat", p.now.Unix()-400, "exp", p.now.Unix()-100), "rsa-1", jwa.RS512), ErrExpired, ""},
		{"expiring this second", p.sign(t, with("iat", p.now.Unix()-300, "exp", p.now.Unix()), "rsa-1", jwa.RS512), ErrExpired, ""},
		{"iat in the future", p.sign(t, with("iat", p.now.Unix()+2, "exp", p.now.Unix()+302), "rsa-1", jwa.RS512), ErrIssuedInFuture, ""},
		{"lifetime over 300s", p.sign(t, with("exp", p.now.Unix()+301), "rsa-1", jwa.RS512), ErrLifetime, ""},
		{"exp before iat", p.sign(t, with("iat", p.now.Unix(), "exp", p.now.Unix()-1), "rsa-1", jwa.RS512), ErrExpired, ""},
		{"aud as an array", p.sign(t, with("aud", []string{"Device/module-1"}), "rsa-1", jwa.RS512), ErrMalformedClaims, ""},
		{"other aud", p.sign(t, with("aud", "Device/module-2"), "rsa-1", jwa.RS512), ErrAudience, ""},
		{"wrong iss", p.sign(t, with("iss", "another-portal"), "rsa-1", jwa.RS512), ErrIssuer, ""},
		{"missing resource", p.sign(t, with("resource", nil), "rsa-1", jwa.RS512), nil, "resource"},
		{"missing sub", p.sign(t, with("sub", nil), "rsa-1", jwa.RS512), nil, "sub"},
		{"missing jti", p.sign(t, with("jti", nil), "rsa-1", jwa.RS512), nil, "jti"},
		{"missing exp", p.sign(t, with("exp", nil), "rsa-1", jwa.RS512), nil, "exp"},
		{"short jti", p.sign(t, with("jti", "abc"), "rsa-1", jwa.RS512), nil, "jti"},
		{"resource not a Task", p.sign(t, with("resource", "Patient/7"), "rsa-1", jwa.RS512), nil, "resource"},
		{"absolute resource", p.sign(t, with("resource", "https://fhir.example.org/Task/42"), "rsa-1", jwa.RS512), nil, "resource"},
		{"sub of another type", p.sign(t, with("sub", "Device/1"), "rsa-1", jwa.RS512), nil, "sub"},
		{"practitioner without patient", p.sign(t, with("patient", nil), "rsa-1", jwa.RS512), nil, "patient"},
		{"patient beside a patient sub", p.sign(t, with("sub", "Patient/7"), "rsa-1", jwa.RS512), nil, "patient"},
		{"hti-version 1.0", p.sign(t, with("hti-version", "1.0"), "rsa-1", jwa.RS512), ErrVersion, ""},
		{"iat as a string", p.sign(t, with("iat", "1800000000"), "rsa-1", jwa.RS512), ErrMalformedClaims, ""},
		{"two parts", parts[0] + "." + parts[1], ErrMalformed, ""},
		{"garbage", "not-a-token", ErrMalformed, ""},
		{"header not base64", "!!." + parts[1] + "." + parts[2], ErrMalformed, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := p.verifier(t, nil).Verify(context.Background(), tc.token)
			if err == nil {
				t.Fatal("accepted")
			}
			if tc.claim != "" {
				var ce *ClaimError
				if !errors.As(err, &ce) || ce.Claim != tc.claim {
					t.Fatalf("err %v, want a ClaimError for %s", err, tc.claim)
				}
				return
			}
			if !errors.Is(err, tc.want) {
				t.Fatalf("err %v, want %v", err, tc.want)
			}
		})
	}
}

func TestVerify_KeyForEncryptionIsRefused(t *testing.T) {
	p := newPortalFixture(t)
	k, _ := jwk.FromRaw(&p.rsaKey.PublicKey)
	_ = k.Set(jwk.KeyIDKey, "rsa-enc")
	_ = k.Set(jwk.AlgorithmKey, jwa.RS512)
	_ = k.Set(jwk.KeyUsageKey, "enc")
	p.mu.Lock()
	_ = p.set.AddKey(k)
	p.mu.Unlock()
	if _, err := p.verifier(t, nil).Verify(context.Background(), p.sign(t, p.claims(), "rsa-enc", jwa.RS512)); !errors.Is(err, ErrAlgorithm) {
		t.Fatalf("a token under a key with use enc: err %v", err)
	}
}

func TestVerify_DuplicateClaimIsRefused(t *testing.T) {
	p := newPortalFixture(t)
	payload := `{"iss":"portal-client","aud":"Device/module-1","aud":"Device/other","sub":"Patient/7","resource":"Task/1","hti-version":"2.0","jti":"` + randomJTI() + `","iat":1800000000,"exp":1800000300}`
	hdr := jws.NewHeaders()
	_ = hdr.Set(jws.KeyIDKey, "rsa-1")
	tok, err := jws.Sign([]byte(payload), jws.WithKey(jwa.RS512, p.rsaKey, jws.WithProtectedHeaders(hdr)))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.verifier(t, nil).Verify(context.Background(), string(tok)); !errors.Is(err, ErrMalformedClaims) {
		t.Fatalf("err %v, want ErrMalformedClaims", err)
	}
}

func TestVerify_ReplayedJTIIsRefused(t *testing.T) {
	p := newPortalFixture(t)
	v := p.verifier(t, nil)
	tok := p.sign(t, p.claims(), "rsa-1", jwa.RS512)
	if _, err := v.Verify(context.Background(), tok); err != nil {
		t.Fatal(err)
	}
	if _, err := v.Verify(context.Background(), tok); !errors.Is(err, ErrReplay) {
		t.Fatalf("second use: err %v, want ErrReplay", err)
	}
	// A refused token does not use up its jti.
	c := p.claims()
	c["aud"] = "Device/other"
	bad := p.sign(t, c, "rsa-1", jwa.RS512)
	if _, err := v.Verify(context.Background(), bad); !errors.Is(err, ErrAudience) {
		t.Fatal(err)
	}
	c["aud"] = "Device/module-1"
	if _, err := v.Verify(context.Background(), p.sign(t, c, "rsa-1", jwa.RS512)); err != nil {
		t.Fatalf("a jti seen only on a refused token: %v", err)
	}
}

func TestVerify_LeewayIsConfigurable(t *testing.T) {
	p := newPortalFixture(t)
	c := p.claims()
	c["iat"], c["exp"] = p.now.Unix()+3, p.now.Unix()+303
	tok := p.sign(t, c, "rsa-1", jwa.RS512)
	if _, err := p.verifier(t, nil).Verify(context.Background(), tok); !errors.Is(err, ErrIssuedInFuture) {
		t.Fatalf("leeway 0: %v", err)
	}
	if _, err := p.verifier(t, func(c *VerifierConfig) { c.Leeway = 5 * time.Second }).Verify(context.Background(), tok); err != nil {
		t.Fatalf("leeway 5s: %v", err)
	}
}

// TestVerify_UnknownKidRefetchesOnceRateLimited publishes a new key after
// the verifier cached the JWKS: the first token with it triggers one
// refetch; a storm of unknown kids does not.
func TestVerify_UnknownKidRefetchesOnceRateLimited(t *testing.T) {
	p := newPortalFixture(t)
	v := p.verifier(t, nil)
	if _, err := v.Verify(context.Background(), p.sign(t, p.claims(), "rsa-1", jwa.RS512)); err != nil {
		t.Fatal(err)
	}
	if n := p.fetches.Load(); n != 1 {
		t.Fatalf("fetches after the first token: %d", n)
	}
	newKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	p.publish(t, "rsa-2", jwa.RS512, &newKey.PublicKey)
	p.rsaKey = newKey
	if _, err := v.Verify(context.Background(), p.sign(t, p.claims(), "rsa-2", jwa.RS512)); err != nil {
		t.Fatalf("token with a newly published kid: %v", err)
	}
	if n := p.fetches.Load(); n != 2 {
		t.Fatalf("fetches after the new kid: %d, want 2", n)
	}
	for i := 0; i < 20; i++ {
		if _, err := v.Verify(context.Background(), p.sign(t, p.claims(), "forged-"+randomJTI(), jwa.RS512)); !errors.Is(err, ErrUnknownKey) {
			t.Fatal(err)
		}
	}
	if n := p.fetches.Load(); n != 2 {
		t.Fatalf("20 forged kids caused %d more fetches, want 0 within the refetch interval", n-2)
	}
	p.now = p.now.Add(31 * time.Second) // past the refetch interval (30 s), the set still fresh
	for i := 0; i < 3; i++ {
		if _, err := v.Verify(context.Background(), p.sign(t, p.claims(), "forged-"+randomJTI(), jwa.RS512)); !errors.Is(err, ErrUnknownKey) {
			t.Fatal(err)
		}
	}
	if n := p.fetches.Load(); n != 3 {
		t.Fatalf("3 forged kids after the refetch interval: %d fetches, want 3 (one refetch)", n)
	}
	p.now = p.now.Add(61 * time.Second) // max-age 60 since the last refetch
	if _, err := v.Verify(context.Background(), p.sign(t, p.claims(), "rsa-2", jwa.RS512)); err != nil {
		t.Fatal(err)
	}
	if n := p.fetches.Load(); n != 4 {
		t.Fatalf("after max-age the JWKS should be fetched again: %d fetches", n)
	}
}

// TestNewVerifier_JWKSURLIsHTTPSOrLoopback: plain http only for this machine.
func TestNewVerifier_JWKSURLIsHTTPSOrLoopback(t *testing.T) {
	for _, u := range []string{
		"https://portal.example.org/.well-known/jwks.json", "https://10.0.0.1:8443/jwks.json",
		"http://localhost:8080/.well-known/jwks.json", "http://LOCALHOST/jwks.json", "http://portal.localhost/jwks.json",
		"http://127.0.0.1:9000/jwks.json", "http://127.1.2.3/jwks.json", "http://[::1]:9000/jwks.json",
	} {
		if _, err := NewVerifier(VerifierConfig{JWKSURL: u, Issuer: "i", Audience: "Device/1"}); err != nil {
			t.Errorf("%s: %v", u, err)
		}
	}
}

// TestNewVerifier_AlgorithmsAreAnExactList: exactly the nine asymmetric
// JWS signature algorithms may be allowed; nothing that merely starts alike.
func TestNewVerifier_AlgorithmsAreAnExactList(t *testing.T) {
	for _, alg := range []string{"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512"} {
		if _, err := NewVerifier(VerifierConfig{JWKSURL: "https://x", Issuer: "i", Audience: "Device/1", Algorithms: []string{alg}}); err != nil {
			t.Errorf("%s: %v", alg, err)
		}
	}
	for _, alg := range []string{"RSA-OAEP", "RSA-OAEP-256", "RSA1_5", "RS1", "RS", "ESfoo", "ES256K", "PS", "rs256", "HS256", "none", "EdDSA", ""} {
		_, err := NewVerifier(VerifierConfig{JWKSURL: "https://x", Issuer: "i", Audience: "Device/1", Algorithms: []string{"ES256", alg}})
		if err == nil || !strings.Contains(err.Error(), "not an asymmetric JWS signature algorithm; allowed are RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, ES512") {
			t.Errorf("%q: err %v", alg, err)
		}
	}
}

func TestParseReference(t *testing.T) {
	good := map[string][]string{"Task/1": {TypeTask}, "Patient/a.b-C": {TypePatient}, "Practitioner/" + strings.Repeat("x", 64): UserTypes,
		"Task/.x": {TypeTask}, "Task/..-": {TypeTask}, "Task/1.2": {TypeTask}}
	for ref, types := range good {
		if _, err := ParseReference(ref, types...); err != nil {
			t.Errorf("%s: %v", ref, err)
		}
	}
	bad := []string{"", "Task", "Task/", "/1", "Task/1/2", "Task/1/_history/1", "https://x/Task/1", "urn:uuid:1", "Task/ 1", "Task/a_b", "Task/" + strings.Repeat("x", 65), "task/1", "Patient/1",
		"Task/.", "Task/..", "Task/...", "Task/" + strings.Repeat(".", 64)}
	for _, ref := range bad {
		if _, err := ParseReference(ref, TypeTask); err == nil {
			t.Errorf("%q accepted", ref)
		}
	}
}

// TestVerify_ConcurrentFirstUseFetchesTheJWKSOnce starts many verifications
// before any JWKS is cached, against a slow JWKS endpoint: one fetch serves
// them all.
func TestVerify_ConcurrentFirstUseFetchesTheJWKSOnce(t *testing.T) {
	p := newPortalFixture(t)
	var fetches atomic.Int32
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fetches.Add(1)
		time.Sleep(200 * time.Millisecond) // a slow portal, so the callers overlap
		p.srv.Config.Handler.ServeHTTP(w, r)
	}))
	t.Cleanup(slow.Close)
	v := p.verifier(t, func(c *VerifierConfig) { c.JWKSURL = slow.URL })
	var wg sync.WaitGroup
	errs := make([]error, 10)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = v.Verify(context.Background(), p.sign(t, p.claims(), "rsa-1", jwa.RS512))
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if n := fetches.Load(); n != 1 {
		t.Fatalf("%d JWKS fetches for 10 concurrent first verifications, want 1", n)
	}
}

// TestNewVerifier_RefusesConfigurations lists configurations NewVerifier
// refuses, each with what its error must say.
func TestNewVerifier_RefusesConfigurations(t *testing.T) {
	valid := VerifierConfig{JWKSURL: "https://portal.example.org/.well-known/jwks.json", Issuer: "portal-client", Audience: "Device/1"}
	if _, err := NewVerifier(valid); err != nil {
		t.Fatalf("the valid configuration: %v", err)
	}
	for _, tc := range []struct {
		name    string
		mod     func(*VerifierConfig)
		mention string
	}{
		{"no JWKS URL", func(c *VerifierConfig) { c.JWKSURL = "" }, "required"},
		{"no issuer", func(c *VerifierConfig) { c.Issuer = "" }, "required"},
		{"no audience", func(c *VerifierConfig) { c.Audience = "" }, "required"},
		{"negative MaxStaleness", func(c *VerifierConfig) { c.MaxStaleness = -time.Second }, "MaxStaleness -1s is negative"},
		{"http to another host", func(c *VerifierConfig) { c.JWKSURL = "http://portal.example.org/.well-known/jwks.json" }, "must use https"},
		{"http to a private address", func(c *VerifierConfig) { c.JWKSURL = "http://10.0.0.1/jwks.json" }, "must use https"},
		{"http to a name that only starts like localhost", func(c *VerifierConfig) { c.JWKSURL = "http://localhost.example.org/jwks.json" }, "must use https"},
		{"http to a name containing 127.0.0.1", func(c *VerifierConfig) { c.JWKSURL = "http://127.0.0.1.example.org/jwks.json" }, "must use https"},
		{"http to the unspecified address", func(c *VerifierConfig) { c.JWKSURL = "http://0.0.0.0:8080/jwks.json" }, "must use https"},
		{"ftp", func(c *VerifierConfig) { c.JWKSURL = "ftp://portal.example.org/jwks.json" }, "must use https"},
		{"file", func(c *VerifierConfig) { c.JWKSURL = "file:///etc/jwks.json" }, "not an absolute URL"},
		{"relative", func(c *VerifierConfig) { c.JWKSURL = "/.well-known/jwks.json" }, "not an absolute URL"},
		{"no scheme", func(c *VerifierConfig) { c.JWKSURL = "portal.example.org/jwks.json" }, "not an absolute URL"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := valid
			tc.mod(&cfg)
			if _, err := NewVerifier(cfg); err == nil || !strings.Contains(err.Error(), tc.mention) {
				t.Fatalf("err %v, want one saying %q", err, tc.mention)
			}
		})
	}
}

func TestValidateIDPHint(t *testing.T) {
	for _, s := range []string{"digid", "DigiD", "eherkenning-3", "urn:oid:2.16.528.1", "https://idp.example.org/realms/x", "a_b.c", "x", strings.Repeat("x", 255)} {
		if err := ValidateIDPHint(s); err != nil {
			t.Errorf("%q: %v", s, err)
		}
	}
	for _, s := range []string{"", strings.Repeat("x", 256), "my idp", "digid?", "a~b", "a+b", "a=b", "a%20b", "a#b", "a&b", "é", "a\tb", "a\x00b", "a\"b", "a<b"} {
		err := ValidateIDPHint(s)
		if err == nil || !strings.Contains(err.Error(), "1-255 ASCII letters, digits, '.', '-', '_', ':' or '/'") {
			t.Errorf("%q: err %v, want one naming the allowed characters", s, err)
		}
	}
}
