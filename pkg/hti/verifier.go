package hti

import (
	"context"
	"crypto/ecdsa"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/lestrrat-go/jwx/v2/jwa"
	"github.com/lestrrat-go/jwx/v2/jwk"
	"github.com/lestrrat-go/jwx/v2/jws"
)

// Errors a Verifier returns; test them with errors.Is. Claim rules broken
// are reported as *ClaimError.
var (
	ErrMalformed      = errors.New("malformed token")
	ErrAlgorithm      = errors.New("signature algorithm not allowed")
	ErrUnknownKey     = errors.New("no key with that kid in the JWKS")
	ErrWeakKey        = errors.New("key in the JWKS too weak")
	ErrSignature      = errors.New("signature does not verify")
	ErrIssuer         = errors.New("unexpected issuer")
	ErrAudience       = errors.New("unexpected audience")
	ErrExpired        = errors.New("token expired")
	ErrIssuedInFuture = errors.New("token issued in the future")
	ErrLifetime       = errors.New("token lifetime over the maximum")
	ErrVersion        = errors.New("unsupported hti-version")
	ErrReplay         = errors.New("token already used (jti seen before)")
	ErrJWKS           = errors.New("JWKS unavailable")
)

// DefaultMaxStaleness is the MaxStaleness of a VerifierConfig that sets
// none: 10 minutes, long enough to ride out a portal restart or a short
// outage, short enough that a revoked key stops verifying soon after.
const DefaultMaxStaleness = 10 * time.Minute

// DefaultAlgorithms are the asymmetric algorithms a Verifier accepts unless
// told otherwise. "none" and HMAC can never be allowed.
var DefaultAlgorithms = []string{"RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384"}

// signatureAlgorithms are the algorithms a configuration may allow: the
// asymmetric JWS signature algorithms of RFC 7518 §3.1. Not "none", not
// HMAC (a public key must never serve as a shared secret, RFC 8725 §2.1),
// not encryption algorithms.
var signatureAlgorithms = []string{"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512"}

// ReplayStore remembers the jti of every accepted token until it expires,
// so a token is accepted once. Implement it over a shared store (a database
// table, Redis) when several instances verify.
type ReplayStore interface {
	// Claim records jti until the given time and reports whether it was new.
	Claim(ctx context.Context, jti string, until time.Time) (bool, error)
}

// VerifierConfig says what a Verifier accepts.
type VerifierConfig struct {
	JWKSURL  string // where the portal publishes its keys: https, or http on a loopback host
	Issuer   string // expected iss: the portal's client_id
	Audience string // expected aud: this module's Device/<id>

	Algorithms []string      // allowed algorithms; DefaultAlgorithms when empty
	Leeway     time.Duration // clock skew allowed for iat and exp; Koppeltaal allows none (0)
	// MaxLifetime caps exp - iat; MaxLifetime (300 s) when zero.
	MaxLifetime time.Duration
	// Replay refuses a jti seen before; an in-memory store when nil.
	Replay ReplayStore
	// RefetchInterval is the least time between two fetches of the JWKS
	// caused by an unknown kid (30 s when zero), so forged kids cannot make
	// the verifier hammer the portal.
	RefetchInterval time.Duration
	// MaxStaleness is how long past its freshness (Cache-Control max-age)
	// a cached JWKS may still be used while the portal cannot be reached;
	// DefaultMaxStaleness when zero. After that, verification fails with
	// ErrJWKS until a fetch succeeds, rather than trusting old keys (a
	// revoked one among them) forever.
	MaxStaleness time.Duration
	// HTTPClient fetches the JWKS; an http.Client with a 10 s timeout when
	// nil. The Verifier uses a copy that also refuses redirects to another
	// origin; the client given here is not changed.
	HTTPClient *http.Client
	Now        func() time.Time // time.Now when nil
	// StrictClaims refuses a token with a claim that is not an HTI claim
	// (ParseClaimsStrict). By default such claims are ignored (ParseClaims),
	// as RFC 7519 §4 requires of claims not understood.
	StrictClaims bool
}

// Verifier checks HTI launch tokens: the key by kid from the portal's JWKS
// (cached as long as Cache-Control allows, used at most MaxStaleness longer
// while the portal fails, refetched once on an unknown kid),
// an allow-list of asymmetric algorithms, iss, aud as a single string, exp,
// iat not in the future, the lifetime, the required claims and their
// reference formats, and jti replay. It is safe for concurrent use.
type Verifier struct {
	cfg     VerifierConfig
	allowed map[string]bool
	rsaAlg  string // the one RSA algorithm allowed, if only one is

	mu          sync.Mutex // guards the fields below
	inflight    *fetchCall // the JWKS fetch running now, if any
	set         jwk.Set
	etag        string
	freshUntil  time.Time // until then the set is used without asking the portal
	usableUntil time.Time // from then on the set is not used at all
	retryAt     time.Time // after a failed fetch, no other before then
	lastRefetch time.Time
}

// NewVerifier checks the configuration and returns a Verifier.
func NewVerifier(cfg VerifierConfig) (*Verifier, error) {
	if cfg.JWKSURL == "" || cfg.Issuer == "" || cfg.Audience == "" {
		return nil, errors.New("hti: JWKS URL, issuer and audience are required")
	}
	jwksURL, err := parseJWKSURL(cfg.JWKSURL)
	if err != nil {
		return nil, err
	}
	if len(cfg.Algorithms) == 0 {
		cfg.Algorithms = DefaultAlgorithms
	}
	v := &Verifier{cfg: cfg, allowed: map[string]bool{}}
	for _, a := range cfg.Algorithms {
		if !slices.Contains(signatureAlgorithms, a) {
			return nil, fmt.Errorf("hti: algorithm %q is not an asymmetric JWS signature algorithm; allowed are %s",
				a, strings.Join(signatureAlgorithms, ", "))
		}
		v.allowed[a] = true
	}
	var rsaAlgs []string
	for a := range v.allowed {
		if isRSAAlgorithm(a) {
			rsaAlgs = append(rsaAlgs, a)
		}
	}
	if len(rsaAlgs) == 1 {
		v.rsaAlg = rsaAlgs[0]
	}
	if v.cfg.MaxLifetime == 0 {
		v.cfg.MaxLifetime = MaxLifetime
	}
	if v.cfg.Now == nil {
		v.cfg.Now = time.Now
	}
	if v.cfg.Replay == nil {
		store := NewMemoryReplayStore()
		store.now = v.cfg.Now
		v.cfg.Replay = store
	}
	switch {
	case v.cfg.MaxStaleness == 0:
		v.cfg.MaxStaleness = DefaultMaxStaleness
	case v.cfg.MaxStaleness < 0:
		return nil, fmt.Errorf("hti: MaxStaleness %s is negative", v.cfg.MaxStaleness)
	}
	if v.cfg.RefetchInterval == 0 {
		v.cfg.RefetchInterval = 30 * time.Second
	}
	client := http.Client{Timeout: 10 * time.Second}
	if v.cfg.HTTPClient != nil {
		client = *v.cfg.HTTPClient // a shallow copy: the caller's client stays as it is
	}
	client.CheckRedirect = sameOriginRedirects(jwksURL, client.CheckRedirect)
	v.cfg.HTTPClient = &client
	return v, nil
}

// parseJWKSURL accepts an absolute https URL, or http for a loopback host:
// the keys that decide which tokens are genuine must not travel where
// anyone on the path can replace them (RFC 7515 §4.1.2 requires TLS for
// fetching a JWK Set for the same reason).
func parseJWKSURL(s string) (*url.URL, error) {
	u, err := url.Parse(s)
	if err != nil || u.Host == "" || u.Opaque != "" {
		return nil, fmt.Errorf("hti: JWKS URL %q is not an absolute URL", s)
	}
	switch {
	case u.Scheme == "https":
	case u.Scheme == "http" && isLoopbackHost(u.Hostname()):
	default:
		return nil, fmt.Errorf("hti: JWKS URL %q must use https (http only for localhost, *.localhost, 127.0.0.0/8 and ::1)", s)
	}
	return u, nil
}

// sameOriginRedirects is a CheckRedirect that follows a redirect only within
// the origin (scheme, host and port, RFC 6454 §4) of the JWKS URL, so the
// portal's keys cannot be made to come from somewhere else, then asks next
// (the configured client's own policy; at most 10 redirects when nil).
func sameOriginRedirects(jwksURL *url.URL, next func(*http.Request, []*http.Request) error) func(*http.Request, []*http.Request) error {
	want := origin(jwksURL)
	return func(req *http.Request, via []*http.Request) error {
		if got := origin(req.URL); got != want {
			return fmt.Errorf("refused a redirect from %s to another origin, %s", want, got)
		}
		if next != nil {
			return next(req, via)
		}
		if len(via) >= 10 {
			return errors.New("stopped after 10 redirects")
		}
		return nil
	}
}

// origin is the scheme, host and port of u, with the port the scheme
// implies when u names none.
func origin(u *url.URL) string {
	scheme, port := strings.ToLower(u.Scheme), u.Port()
	switch {
	case port != "":
	case scheme == "https":
		port = "443"
	case scheme == "http":
		port = "80"
	}
	return scheme + "://" + net.JoinHostPort(strings.ToLower(u.Hostname()), port)
}

// isLoopbackHost reports whether host names this machine: localhost, a name
// under .localhost (RFC 6761 §6.3) or a loopback address (127.0.0.0/8, ::1).
func isLoopbackHost(host string) bool {
	host = strings.ToLower(host)
	if host == "localhost" || strings.HasSuffix(host, ".localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// header is the part of the JOSE header a verifier looks at.
type header struct {
	Alg, Kid, Typ string
	Crit          bool // the header has a crit member
}

// partNames name the parts of a compact JWS in errors.
var partNames = [3]string{"header", "payload", "signature"}

// canonicalBase64URL decodes base64url without padding and refuses
// non-zero trailing bits, so each byte string has one encoding only.
var canonicalBase64URL = base64.RawURLEncoding.Strict()

// decodePart decodes one part of a compact JWS, accepting only its
// canonical form: base64url without padding (RFC 7515 §2), so nothing but
// [A-Za-z0-9_-] — no "=", "+", "/", whitespace or line breaks (which Go's
// decoder would skip) — and no non-zero trailing bits.
func decodePart(s string) ([]byte, error) {
	if s == "" {
		return nil, errors.New("is empty")
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !('A' <= c && c <= 'Z' || 'a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-' || c == '_') {
			return nil, fmt.Errorf("has %q at offset %d; want base64url without padding", c, i)
		}
	}
	b, err := canonicalBase64URL.DecodeString(s)
	if err != nil {
		return nil, fmt.Errorf("is not canonical base64url: %w", err)
	}
	return b, nil
}

// parseHeader reads the JOSE header: a JSON object without duplicate
// members (RFC 7515 §4), whose alg, kid and typ, if present, are strings.
// Member names are matched exactly, unlike encoding/json's struct fields.
func parseHeader(raw []byte) (header, error) {
	var members map[string]json.RawMessage
	if err := json.Unmarshal(raw, &members); err != nil || members == nil {
		return header{}, errors.New("header is not a JSON object")
	}
	if name, dup := duplicateMember(raw); dup {
		return header{}, fmt.Errorf("header parameter %q appears twice", name)
	}
	var h header
	for name, field := range map[string]*string{"alg": &h.Alg, "kid": &h.Kid, "typ": &h.Typ} {
		if value, ok := members[name]; ok {
			if err := json.Unmarshal(value, field); err != nil {
				return header{}, fmt.Errorf("header parameter %q is not a string", name)
			}
		}
	}
	_, h.Crit = members["crit"]
	return h, nil
}

// Verify checks a token in JWS compact serialization and returns its
// claims. Only the canonical serialization is accepted (RFC 7515 §7.1),
// and the signature is checked over exactly the bytes received.
func (v *Verifier) Verify(ctx context.Context, token string) (*Claims, error) {
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return nil, fmt.Errorf("%w: want three dot-separated parts (a JWS in compact serialization)", ErrMalformed)
	}
	var decoded [3][]byte
	for i, part := range parts {
		b, err := decodePart(part)
		if err != nil {
			return nil, fmt.Errorf("%w: the %s %v", ErrMalformed, partNames[i], err)
		}
		decoded[i] = b
	}
	h, err := parseHeader(decoded[0])
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	if !v.allowed[h.Alg] {
		return nil, fmt.Errorf("%w: %q", ErrAlgorithm, h.Alg)
	}
	if h.Kid == "" {
		return nil, fmt.Errorf("%w: the header has no kid", ErrMalformed)
	}
	if h.Typ != "" && !strings.EqualFold(h.Typ, "JWT") {
		return nil, fmt.Errorf("%w: typ %q", ErrMalformed, h.Typ)
	}
	if h.Crit {
		return nil, fmt.Errorf("%w: critical header extensions are not supported", ErrMalformed)
	}
	key, err := v.key(ctx, h.Kid)
	if err != nil {
		return nil, err
	}
	pub, err := v.publicKey(key, h.Kid, h.Alg)
	if err != nil {
		return nil, err
	}
	sigVerifier, err := jws.NewVerifier(jwa.SignatureAlgorithm(h.Alg))
	if err != nil {
		return nil, fmt.Errorf("%w: %q: %v", ErrAlgorithm, h.Alg, err)
	}
	signingInput := token[:len(parts[0])+1+len(parts[1])] // RFC 7515 §5.2: the received bytes
	if err := sigVerifier.Verify([]byte(signingInput), decoded[2], pub); err != nil {
		return nil, fmt.Errorf("%w (kid %s)", ErrSignature, h.Kid)
	}
	payload := decoded[1]
	parse := ParseClaims
	if v.cfg.StrictClaims {
		parse = ParseClaimsStrict
	}
	c, err := parse(payload)
	if err != nil {
		return nil, err
	}
	if err := v.checkClaims(c); err != nil {
		return nil, err
	}
	first, err := v.cfg.Replay.Claim(ctx, c.JTI, time.Unix(c.ExpiresAt, 0).Add(v.cfg.Leeway))
	if err != nil {
		return nil, fmt.Errorf("hti: replay store: %w", err)
	}
	if !first {
		return nil, fmt.Errorf("%w: %s", ErrReplay, c.JTI)
	}
	return c, nil
}

func (v *Verifier) checkClaims(c *Claims) error {
	if c.Issuer != v.cfg.Issuer {
		return fmt.Errorf("%w: %q, want %q", ErrIssuer, c.Issuer, v.cfg.Issuer)
	}
	if c.Audience != v.cfg.Audience {
		return fmt.Errorf("%w: %q, want %q", ErrAudience, c.Audience, v.cfg.Audience)
	}
	now := v.cfg.Now()
	iat, exp := time.Unix(c.IssuedAt, 0), time.Unix(c.ExpiresAt, 0)
	if !now.Before(exp.Add(v.cfg.Leeway)) {
		return fmt.Errorf("%w at %s", ErrExpired, exp.UTC().Format(time.RFC3339))
	}
	if iat.After(now.Add(v.cfg.Leeway)) {
		return fmt.Errorf("%w: iat %s", ErrIssuedInFuture, iat.UTC().Format(time.RFC3339))
	}
	if life := exp.Sub(iat); life <= 0 || life > v.cfg.MaxLifetime {
		return fmt.Errorf("%w: exp - iat = %s, at most %s", ErrLifetime, life, v.cfg.MaxLifetime)
	}
	if c.HTIVersion != Version {
		return fmt.Errorf("%w: %q", ErrVersion, c.HTIVersion)
	}
	if bits, what := jtiCapacity(c.JTI); bits < minJTIBits {
		return &ClaimError{"jti", fmt.Sprintf("carries at most %d bits (%s); at least %d random bits are required", bits, what, minJTIBits)}
	}
	return c.CheckReferences()
}

// key returns the JWK with the given kid, fetching the JWKS when the cached
// copy is stale and once more (rate-limited) when the kid is unknown. One
// fetch runs at a time and every caller that needs it waits for that one
// (or for its own context); while the stale copy can still answer, callers
// use it instead of waiting.
func (v *Verifier) key(ctx context.Context, kid string) (jwk.Key, error) {
	now := v.cfg.Now()
	set, err := v.keySet(ctx, now)
	if err != nil {
		return nil, err
	}
	if k, ok := set.LookupKeyID(kid); ok {
		return k, nil
	}
	if v.claimRefetch(now) {
		if err := v.refresh(ctx, now, true); err != nil {
			return nil, err
		}
		if set, _ = v.cached(now); set == nil {
			return nil, fmt.Errorf("%w: no usable key set from %s", ErrJWKS, v.cfg.JWKSURL)
		}
		if k, ok := set.LookupKeyID(kid); ok {
			return k, nil
		}
	}
	return nil, fmt.Errorf("%w: %s", ErrUnknownKey, kid)
}

// keySet returns the key set to use now: the cached one while fresh; a
// stale one after trying (or while another caller tries) to refresh it;
// else, when none is cached or the cached one is past MaxStaleness, the
// one a fetch returns, waiting for it.
func (v *Verifier) keySet(ctx context.Context, now time.Time) (jwk.Set, error) {
	set, fresh := v.cached(now)
	if fresh {
		return set, nil
	}
	err := v.refresh(ctx, now, set == nil) // on failure a stale copy serves a little longer
	if set, _ = v.cached(now); set != nil {
		return set, nil
	}
	if err == nil {
		err = fmt.Errorf("%w: no usable key set from %s", ErrJWKS, v.cfg.JWKSURL)
	}
	return nil, err
}

// minRSABits is the least RSA modulus a key may have (RFC 7518 §3.3).
const minRSABits = 2048

// curveAlgorithms is the one algorithm of each curve a Verifier supports
// (RFC 7518 §3.4).
var curveAlgorithms = map[jwa.EllipticCurveAlgorithm]string{jwa.P256: "ES256", jwa.P384: "ES384", jwa.P521: "ES512"}

// publicKey returns the public key of k for verifying a token that says alg,
// after checking that k may verify it: a signature key, RSA of at least 2048
// bits or EC on a supported curve, and for exactly one algorithm, alg
// (RFC 8725 §3.1). A key's algorithm is its alg member; without one, an EC
// key's follows from its curve, and an RSA key's is the one RSA algorithm
// the configuration allows (refused when it allows several: RS and PS would
// both verify with the same key).
func (v *Verifier) publicKey(k jwk.Key, kid, alg string) (any, error) {
	if use := k.KeyUsage(); use != "" && use != "sig" {
		return nil, fmt.Errorf("%w: key %s is for %q, not signatures", ErrAlgorithm, kid, use)
	}
	keyAlg := k.Algorithm().String()
	var pub any
	switch k := k.(type) {
	case jwk.RSAPublicKey:
		var raw rsa.PublicKey
		if err := k.Raw(&raw); err != nil {
			return nil, fmt.Errorf("%w: key %s: %w", ErrJWKS, kid, err)
		}
		if bits := raw.N.BitLen(); bits < minRSABits {
			return nil, fmt.Errorf("%w: key %s is RSA of %d bits, at least %d required", ErrWeakKey, kid, bits, minRSABits)
		}
		switch {
		case keyAlg == "" && v.rsaAlg == "":
			return nil, fmt.Errorf("%w: RSA key %s names no alg, and more than one RSA algorithm is allowed", ErrAlgorithm, kid)
		case keyAlg == "":
			keyAlg = v.rsaAlg
		case !isRSAAlgorithm(keyAlg):
			return nil, fmt.Errorf("%w: RSA key %s names alg %s", ErrAlgorithm, kid, keyAlg)
		}
		pub = &raw
	case jwk.ECDSAPublicKey:
		curveAlg, ok := curveAlgorithms[k.Crv()]
		switch {
		case !ok:
			return nil, fmt.Errorf("%w: EC key %s is on curve %s, not P-256, P-384 or P-521", ErrAlgorithm, kid, k.Crv())
		case keyAlg == "":
			keyAlg = curveAlg
		case keyAlg != curveAlg:
			return nil, fmt.Errorf("%w: EC key %s on %s names alg %s; that curve is for %s", ErrAlgorithm, kid, k.Crv(), keyAlg, curveAlg)
		}
		var raw ecdsa.PublicKey
		if err := k.Raw(&raw); err != nil {
			return nil, fmt.Errorf("%w: key %s: %w", ErrJWKS, kid, err)
		}
		pub = &raw
	default:
		return nil, fmt.Errorf("%w: key %s is of type %s, not RSA or EC", ErrAlgorithm, kid, k.KeyType())
	}
	if keyAlg != alg {
		return nil, fmt.Errorf("%w: token says %s, key %s is for %s", ErrAlgorithm, alg, kid, keyAlg)
	}
	return pub, nil
}

// isRSAAlgorithm reports whether alg is one of the RSA signature algorithms.
func isRSAAlgorithm(alg string) bool {
	switch alg {
	case "RS256", "RS384", "RS512", "PS256", "PS384", "PS512":
		return true
	}
	return false
}

// fetchCall is one JWKS fetch that several callers may wait for.
type fetchCall struct {
	done chan struct{}
	err  error
}

// refresh fetches the JWKS, or joins the fetch already running. With wait
// false it does not wait for someone else's fetch.
func (v *Verifier) refresh(ctx context.Context, now time.Time, wait bool) error {
	v.mu.Lock()
	if call := v.inflight; call != nil {
		v.mu.Unlock()
		if !wait {
			return nil
		}
		select {
		case <-call.done:
			return call.err
		case <-ctx.Done():
			return fmt.Errorf("%w: %v", ErrJWKS, ctx.Err())
		}
	}
	call := &fetchCall{done: make(chan struct{})}
	v.inflight = call
	v.mu.Unlock()

	call.err = v.fetch(context.WithoutCancel(ctx), now) // a caller leaving must not fail the others
	v.mu.Lock()
	v.inflight = nil
	v.mu.Unlock()
	close(call.done)
	return call.err
}

// cached returns the cached set, nil when there is none or it is past
// MaxStaleness, and whether it may be used without asking the portal: fresh,
// or stale within a few seconds of a failed fetch.
func (v *Verifier) cached(now time.Time) (jwk.Set, bool) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.set == nil || !now.Before(v.usableUntil) {
		return nil, false
	}
	return v.set, now.Before(v.freshUntil) || now.Before(v.retryAt)
}

// claimRefetch reports whether an unknown kid may cause a fetch now.
func (v *Verifier) claimRefetch(now time.Time) bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	if now.Sub(v.lastRefetch) < v.cfg.RefetchInterval {
		return false
	}
	v.lastRefetch = now
	return true
}

// maxJWKSBytes is the largest JWKS a Verifier reads. A portal publishes a
// few public keys, a few kilobytes; anything near this size is not a JWKS.
const maxJWKSBytes = 1 << 20

// fetch GETs the JWKS (conditionally when an ETag is known) and caches it
// for the max-age the portal announces. Only refresh calls it, one at a time.
// Every failure is an error wrapping ErrJWKS and leaves the cache as it was.
func (v *Verifier) fetch(ctx context.Context, now time.Time) error {
	v.mu.Lock()
	etag, have := v.etag, v.set != nil
	v.mu.Unlock()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, v.cfg.JWKSURL, nil)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrJWKS, err)
	}
	req.Header.Set("Accept", "application/json")
	conditional := etag != "" && have
	if conditional {
		req.Header.Set("If-None-Match", etag)
	}
	resp, err := v.cfg.HTTPClient.Do(req)
	if err != nil {
		v.retryAfter(now)
		return fmt.Errorf("%w: %w", ErrJWKS, err)
	}
	defer resp.Body.Close()
	var set jwk.Set
	switch resp.StatusCode {
	case http.StatusNotModified:
		if !conditional {
			// Nothing cached that the 304 could refer to (RFC 9110 §15.4.5).
			v.retryAfter(now)
			return fmt.Errorf("%w: %s answered 304 Not Modified to a request without If-None-Match", ErrJWKS, v.cfg.JWKSURL)
		}
	case http.StatusOK:
		body, err := io.ReadAll(io.LimitReader(resp.Body, maxJWKSBytes+1))
		if err != nil {
			v.retryAfter(now)
			return fmt.Errorf("%w: reading %s: %w", ErrJWKS, v.cfg.JWKSURL, err)
		}
		if len(body) > maxJWKSBytes {
			v.retryAfter(now)
			return fmt.Errorf("%w: %s sent a JWKS larger than %d bytes", ErrJWKS, v.cfg.JWKSURL, maxJWKSBytes)
		}
		keys, err := jwksMembers(body)
		if err != nil {
			v.retryAfter(now)
			return fmt.Errorf("%w: %s did not send a JWKS: %w", ErrJWKS, v.cfg.JWKSURL, err)
		}
		if err := publicOnly(keys); err != nil {
			// A portal that publishes private key material is compromised:
			// none of its keys, cached or new, can tell forged tokens apart.
			v.mu.Lock()
			v.set, v.etag = nil, ""
			v.mu.Unlock()
			v.retryAfter(now)
			return fmt.Errorf("%w: the key set of %s is refused: %w", ErrJWKS, v.cfg.JWKSURL, err)
		}
		if set, err = jwk.Parse(body); err != nil {
			v.retryAfter(now)
			return fmt.Errorf("%w: %s did not send a JWKS: %w", ErrJWKS, v.cfg.JWKSURL, err)
		}
	default:
		v.retryAfter(now)
		return fmt.Errorf("%w: %s answered %d", ErrJWKS, v.cfg.JWKSURL, resp.StatusCode)
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if set != nil {
		v.set, v.etag = set, resp.Header.Get("ETag")
	} else if e := resp.Header.Get("ETag"); e != "" {
		v.etag = e
	}
	v.freshUntil = now.Add(maxAge(resp.Header.Get("Cache-Control")))
	v.usableUntil = v.freshUntil.Add(v.cfg.MaxStaleness)
	v.retryAt = time.Time{}
	return nil
}

// jwksMembers returns the members of each key of a JWK Set (RFC 7517 §5):
// a JSON object whose "keys" is an array of objects.
// A member that appears twice is refused, in the set and in each key:
// parsers disagree on which of two equal members counts (jwx adds the keys
// of every "keys" member, encoding/json keeps the last), so a set could
// otherwise pass this check with one array and be used with another.
func jwksMembers(body []byte) ([]map[string]json.RawMessage, error) {
	var doc map[string]json.RawMessage
	if err := json.Unmarshal(body, &doc); err != nil {
		return nil, fmt.Errorf("not a JSON object: %w", err)
	}
	if name, dup := duplicateMember(body); dup {
		return nil, fmt.Errorf("member %q appears twice", name)
	}
	var raw []json.RawMessage
	if err := json.Unmarshal(doc["keys"], &raw); err != nil {
		return nil, fmt.Errorf(`"keys" is not an array of JWKs: %w`, err)
	}
	keys := make([]map[string]json.RawMessage, 0, len(raw))
	for i, r := range raw {
		var k map[string]json.RawMessage
		if err := json.Unmarshal(r, &k); err != nil {
			return nil, fmt.Errorf(`"keys" is not an array of JWKs: key %d: %w`, i, err)
		}
		if name, dup := duplicateMember(r); dup {
			return nil, fmt.Errorf("key %d: member %q appears twice", i, name)
		}
		keys = append(keys, k)
	}
	return keys, nil
}

// privateMembers are the JWK members that hold private or secret key
// material: the EC and RSA private parts and the symmetric key (RFC 7518
// §6.2.2, §6.3.2, §6.4.1).
var privateMembers = []string{"d", "p", "q", "dp", "dq", "qi", "oth", "k"}

// publicOnly refuses a key set in which any key holds private or secret key
// material, or is a symmetric key (kty "oct") — which a JWKS published for
// verifiers must never contain (RFC 7517 §9.2).
func publicOnly(keys []map[string]json.RawMessage) error {
	for i, k := range keys {
		name := fmt.Sprintf("key %d", i)
		var kid, kty string
		if json.Unmarshal(k["kid"], &kid) == nil && kid != "" {
			name = "key " + kid
		}
		for _, m := range privateMembers {
			if _, ok := k[m]; ok {
				return fmt.Errorf("%s carries the private key member %q", name, m)
			}
		}
		if json.Unmarshal(k["kty"], &kty) == nil && kty == "oct" {
			return fmt.Errorf("%s is a symmetric (oct) key", name)
		}
	}
	return nil
}

// retryAfter keeps a stale set in use without another fetch for a few
// seconds after a failed one (never past MaxStaleness).
func (v *Verifier) retryAfter(now time.Time) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.retryAt = now.Add(5 * time.Second)
}

// maxAge reads max-age from Cache-Control (0 for no-cache or no-store,
// 60 s when absent), capped at a day.
func maxAge(cacheControl string) time.Duration {
	for _, d := range strings.Split(cacheControl, ",") {
		d = strings.TrimSpace(strings.ToLower(d))
		if d == "no-cache" || d == "no-store" {
			return 0
		}
		if v, ok := strings.CutPrefix(d, "max-age="); ok {
			if n, err := strconv.Atoi(v); err == nil && n >= 0 {
				return min(time.Duration(n)*time.Second, 24*time.Hour)
			}
		}
	}
	return 60 * time.Second
}

// MemoryReplayStore is a ReplayStore for one process.
type MemoryReplayStore struct {
	mu    sync.Mutex
	seen  map[string]time.Time
	sweep time.Time
	now   func() time.Time
}

// NewMemoryReplayStore returns an empty in-memory replay store.
func NewMemoryReplayStore() *MemoryReplayStore {
	return &MemoryReplayStore{seen: map[string]time.Time{}, now: time.Now}
}

// Claim records jti until the given time; it reports false if the jti is
// already recorded and not yet expired.
func (s *MemoryReplayStore) Claim(_ context.Context, jti string, until time.Time) (bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	if now.After(s.sweep) {
		for k, exp := range s.seen {
			if now.After(exp) {
				delete(s.seen, k)
			}
		}
		s.sweep = now.Add(time.Minute)
	}
	if exp, ok := s.seen[jti]; ok && !now.After(exp) {
		return false, nil
	}
	s.seen[jti] = until
	return true, nil
}
