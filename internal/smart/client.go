// Package smart is the portal's SMART backend-services client: it gets the
// access tokens the portal needs to read a Koppeltaal domain's FHIR server,
// as Koppeltaal's backend flow requires (TOP-KT-013; SMART App Launch,
// "Backend Services", with client-confidential-asymmetric authentication).
//
// For an issuer the client discovers the token endpoint from the issuer's
// FHIR base (<fhir>/.well-known/smart-configuration), signs a
// private_key_jwt client assertion (RFC 7523 §3) with the issuer's active
// key through the keyring, and posts a client_credentials grant. Tokens are
// cached per issuer in memory until shortly before they expire, fetched
// once however many callers need one at the same moment, and dropped when
// the FHIR server answers 401 or the issuer's active key changes (a
// rotation or a revocation: the next token is asked for with the new
// key). Access tokens and assertions are never
// logged, stored outside memory, or put in an error.
//
// A FHIR reader that sends its own requests needs only Token and
// Invalidate (internal/fhirdomain's Tokens interface); Do sends a request
// with the token and retries once after a 401.
package smart

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/ehealth-nl/portal/internal/keys"
)

// Signers gives the signer of an issuer's active key; *keys.Keyring is one.
// An empty issuer means the default issuer.
type Signers interface {
	Signer(issuer string) (*keys.Signer, error)
}

var _ Signers = (*keys.Keyring)(nil)

// Outcome names what one Token call, or one token fetch, came to, for
// metrics.
type Outcome string

// The outcomes an observer sees.
const (
	// OutcomeSuccess: a token fetch got a token.
	OutcomeSuccess Outcome = "success"
	// OutcomeRefused: a token fetch was refused by the token endpoint (ErrRefused).
	OutcomeRefused Outcome = "refused"
	// OutcomeUnavailable: a token fetch could not reach the domain (ErrUnavailable).
	OutcomeUnavailable Outcome = "unavailable"
	// OutcomeError: a token fetch failed otherwise (a misconfigured domain,
	// an answer that is not a Bearer token).
	OutcomeError Outcome = "error"
	// OutcomeCacheHit: a caller was given the cached token.
	OutcomeCacheHit Outcome = "cache_hit"
	// OutcomeShared: a caller waited for a fetch already in flight instead
	// of starting one.
	OutcomeShared Outcome = "shared"
)

// Event is one observation: an issuer and an outcome.
type Event struct {
	Issuer  string  // the issuer's slug
	Outcome Outcome // what happened
}

// Config configures a Client.
type Config struct {
	// Signers signs the client assertions; required.
	Signers Signers
	// Scope is the scope asked for, e.g. "system/*.read"; empty asks for
	// none (the domain grants its default).
	Scope string
	// HTTPClient sends the requests; nil means one that does not follow
	// redirects.
	HTTPClient *http.Client
	// Timeout bounds each request (discovery, token, each FHIR attempt of
	// Do); zero means DefaultTimeout.
	Timeout time.Duration
	// Clock gives the time for assertions and expiry decisions; nil means
	// time.Now.
	Clock func() time.Time
	// Observe, when set, sees every token fetch by outcome and every cache
	// hit (for metrics); it must not block.
	Observe func(Event)
}

// DefaultTimeout bounds each request when Config.Timeout is zero.
const DefaultTimeout = 10 * time.Second

// assertionLifetime is exp - iat of every client assertion: SMART
// client-confidential-asymmetric allows at most five minutes; a short one
// limits what a leaked assertion is worth.
const assertionLifetime = 90 * time.Second

// maxTokenBody bounds the token endpoint's answer read.
const maxTokenBody = 64 << 10

// refreshMargin is how long before its expiry a cached token is replaced:
// 10 % of its life, at least 30 s (for clock skew and requests in flight),
// but at most half its life.
func refreshMargin(life time.Duration) time.Duration {
	return min(max(life/10, 30*time.Second), life/2)
}

// Client gets and caches access tokens per issuer. It is safe for
// concurrent use.
type Client struct {
	signers Signers
	scope   string
	http    *http.Client
	timeout time.Duration
	now     func() time.Time
	observe func(Event)

	mu        sync.Mutex
	tokens    map[string]cachedToken // by issuer slug
	inflight  map[string]*fetchCall  // by issuer slug
	discovery map[string]discovered  // by FHIR base
}

// cachedToken is an issuer's access token and when to stop using it.
type cachedToken struct {
	value    string
	clientID string // the client_id and FHIR base it was issued for: a
	fhirBase string // changed issuer setting makes it unusable
	kid      string // the key whose assertion got it: a rotation or a
	// revocation makes the next call authenticate with the new key
	refreshAt time.Time
}

// fetchCall is one token fetch in flight; its callers wait on done.
type fetchCall struct {
	done  chan struct{}
	value string
	err   error
}

// New returns a Client.
func New(cfg Config) (*Client, error) {
	if cfg.Signers == nil {
		return nil, errors.New("smart: Config.Signers is required")
	}
	c := &Client{signers: cfg.Signers, scope: cfg.Scope, http: cfg.HTTPClient, timeout: cfg.Timeout, now: cfg.Clock,
		observe: cfg.Observe, tokens: map[string]cachedToken{}, inflight: map[string]*fetchCall{}, discovery: map[string]discovered{}}
	if c.http == nil {
		c.http = &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	}
	if c.timeout <= 0 {
		c.timeout = DefaultTimeout
	}
	if c.now == nil {
		c.now = time.Now
	}
	return c, nil
}

func (c *Client) emit(issuer string, o Outcome) {
	if c.observe != nil {
		c.observe(Event{Issuer: issuer, Outcome: o})
	}
}

// Token returns an access token for the issuer's FHIR server: the
// cached one while it is not close to expiry, else a new one. Callers that
// ask while a fetch is in flight wait for it; the fetch itself is not
// cancelled when they give up (it is bounded by the timeout). Errors wrap
// ErrUnavailable, ErrRefused (*RefusedError), a keys error (the issuer
// cannot sign: keys.ErrUnknownIssuer, keys.ErrNoActiveKey), or are plain
// (a misconfigured domain). An empty issuer means the default one.
func (c *Client) Token(ctx context.Context, issuer string) (string, error) {
	s, err := c.signers.Signer(issuer)
	if err != nil {
		return "", fmt.Errorf("access token for issuer %q: %w", issuer, err)
	}
	slug := s.Issuer.Slug
	c.mu.Lock()
	if t, ok := c.tokens[slug]; ok && t.clientID == s.Issuer.ClientID && t.fhirBase == s.Issuer.FHIRBaseURL && t.kid == s.Kid && c.now().Before(t.refreshAt) {
		c.mu.Unlock()
		c.emit(slug, OutcomeCacheHit)
		return t.value, nil
	}
	call, joined := c.inflight[slug]
	if !joined {
		call = &fetchCall{done: make(chan struct{})}
		c.inflight[slug] = call
		go c.fetch(context.WithoutCancel(ctx), s, call)
	}
	c.mu.Unlock()
	if joined {
		c.emit(slug, OutcomeShared)
	}
	select {
	case <-call.done:
		return call.value, call.err
	case <-ctx.Done():
		return "", fmt.Errorf("access token for issuer %q: %w", slug, ctx.Err())
	}
}

// fetch gets a token for the signer's issuer, caches it, and hands it (or
// the error) to the call's waiters.
func (c *Client) fetch(ctx context.Context, s *keys.Signer, call *fetchCall) {
	slug := s.Issuer.Slug
	tok, err := c.requestToken(ctx, s)
	if err != nil {
		err = fmt.Errorf("access token for issuer %q: %w", slug, err)
	}
	c.mu.Lock()
	delete(c.inflight, slug)
	if err == nil {
		c.tokens[slug] = tok
	}
	c.mu.Unlock()
	switch {
	case err == nil:
		c.emit(slug, OutcomeSuccess)
	case errors.Is(err, ErrRefused):
		c.emit(slug, OutcomeRefused)
	case errors.Is(err, ErrUnavailable):
		c.emit(slug, OutcomeUnavailable)
	default:
		c.emit(slug, OutcomeError)
	}
	call.value, call.err = tok.value, err
	close(call.done)
}

// Invalidate drops the issuer's cached token if it is still accessToken,
// so that the next Token fetches a new one (an empty issuer, the default
// one, drops accessToken whichever issuer holds it). Call it when the FHIR
// server answers 401 to that token; concurrent callers that saw the same
// 401 drop it once, and share one new fetch.
func (c *Client) Invalidate(issuer, accessToken string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for slug, t := range c.tokens {
		if (issuer == "" || slug == issuer) && t.value == accessToken {
			delete(c.tokens, slug)
		}
	}
}

// requestToken discovers the token endpoint and posts a client_credentials
// grant authenticated with a fresh client assertion (SMART Backend
// Services; RFC 7523 §2.2).
func (c *Client) requestToken(ctx context.Context, s *keys.Signer) (cachedToken, error) {
	start := c.now()
	fhirBase := s.Issuer.FHIRBaseURL
	endpoint, err := c.TokenEndpoint(ctx, fhirBase)
	if err != nil {
		return cachedToken{}, err
	}
	tok, err := c.postToken(ctx, s, endpoint, start)
	if err != nil {
		// The domain may have moved its token endpoint: look it up again.
		c.forgetDiscovery(fhirBase)
		return cachedToken{}, err
	}
	tok.clientID, tok.fhirBase, tok.kid = s.Issuer.ClientID, fhirBase, s.Kid
	return tok, nil
}

// postToken sends the token request and reads its answer.
func (c *Client) postToken(ctx context.Context, s *keys.Signer, endpoint string, now time.Time) (cachedToken, error) {
	signed, err := assertion(s, endpoint, now, assertionLifetime)
	if err != nil {
		return cachedToken{}, err
	}
	form := url.Values{
		"grant_type":            {"client_credentials"},
		"client_assertion_type": {"urn:ietf:params:oauth:client-assertion-type:jwt-bearer"},
		"client_assertion":      {string(signed)},
	}
	if c.scope != "" {
		form.Set("scope", c.scope)
	}
	op := "token request to " + endpoint
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, endpoint, strings.NewReader(form.Encode()))
	if err != nil {
		return cachedToken{}, fmt.Errorf("%s: %w", op, err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Accept", "application/json")
	resp, err := c.http.Do(req)
	if err != nil {
		return cachedToken{}, transportError(op, err)
	}
	defer resp.Body.Close()
	body, err := readBounded(resp.Body, maxTokenBody)
	if err != nil {
		if errors.Is(err, errTooLarge) {
			return cachedToken{}, fmt.Errorf("%s: %w", op, err)
		}
		return cachedToken{}, transportError(op, err)
	}
	switch {
	case transientStatus(resp.StatusCode):
		return cachedToken{}, unavailable(op, fmt.Errorf("status %d", resp.StatusCode))
	case resp.StatusCode >= 400:
		return cachedToken{}, refusal(s.Issuer.Slug, resp.StatusCode, body)
	case resp.StatusCode != http.StatusOK:
		return cachedToken{}, fmt.Errorf("%s: status %d", op, resp.StatusCode)
	}
	// RFC 6749 §5.1; the body is never quoted in an error: it holds the token.
	var tr struct {
		AccessToken string `json:"access_token"`
		TokenType   string `json:"token_type"`
		ExpiresIn   int64  `json:"expires_in"`
	}
	if err := json.Unmarshal(body, &tr); err != nil {
		return cachedToken{}, fmt.Errorf("%s: the answer is not a JSON token response", op)
	}
	switch {
	case !strings.EqualFold(tr.TokenType, "Bearer"):
		return cachedToken{}, fmt.Errorf("%s: token_type %q, not Bearer", op, tr.TokenType)
	case !isB64Token(tr.AccessToken):
		return cachedToken{}, fmt.Errorf("%s: access_token missing or not a Bearer token value (RFC 6750 §2.1)", op)
	case tr.ExpiresIn <= 0:
		return cachedToken{}, fmt.Errorf("%s: expires_in missing or not positive", op)
	}
	life := time.Duration(tr.ExpiresIn) * time.Second
	return cachedToken{value: tr.AccessToken, refreshAt: now.Add(life - refreshMargin(life))}, nil
}

// refusal makes the *RefusedError of a 4xx answer (RFC 6749 §5.2).
func refusal(issuer string, status int, body []byte) error {
	var oe struct {
		Error       string `json:"error"`
		Description string `json:"error_description"`
	}
	_ = json.Unmarshal(body, &oe)
	return &RefusedError{Issuer: issuer, Status: status, Code: printable(oe.Error, 64), Description: printable(oe.Description, maxDescription)}
}

// printable keeps at most n bytes of s, printable ASCII only, so that a
// server's text cannot forge log lines.
func printable(s string, n int) string {
	var b strings.Builder
	for i := 0; i < len(s) && b.Len() < n; i++ {
		if s[i] >= 0x20 && s[i] < 0x7f {
			b.WriteByte(s[i])
		}
	}
	return b.String()
}

// isB64Token reports whether s is a non-empty b64token (RFC 6750 §2.1), so
// that it can go into an Authorization header as it is.
func isB64Token(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		ch := s[i]
		if !('a' <= ch && ch <= 'z' || 'A' <= ch && ch <= 'Z' || '0' <= ch && ch <= '9' || strings.IndexByte("-._~+/=", ch) >= 0) {
			return false
		}
	}
	return true
}

// Do sends req to the issuer's FHIR server with its access token as
// Authorization: Bearer, and returns the response as it is (the caller
// reads the FHIR status). When the server answers 401 it drops the token
// and tries once more with a new one, provided the body can be sent again
// (no body, or req.GetBody set); a second 401 is returned. req must be
// under the issuer's FHIR base URL: the token is never sent elsewhere.
// ctx bounds the FHIR request and the reading of its body (the timeout
// bounds only the token fetch). A request that cannot be sent is
// ErrUnavailable; token errors are Token's.
func (c *Client) Do(ctx context.Context, issuer string, req *http.Request) (*http.Response, error) {
	s, err := c.signers.Signer(issuer)
	if err != nil {
		return nil, fmt.Errorf("FHIR request for issuer %q: %w", issuer, err)
	}
	op := fmt.Sprintf("FHIR %s %s", req.Method, withoutQuery(req.URL))
	if !under(req.URL, s.Issuer.FHIRBaseURL) {
		return nil, fmt.Errorf("%s: not under the FHIR base %s of issuer %q", op, s.Issuer.FHIRBaseURL, s.Issuer.Slug)
	}
	replayable := req.Body == nil || req.Body == http.NoBody || req.GetBody != nil
	for attempt := 0; ; attempt++ {
		token, err := c.Token(ctx, issuer)
		if err != nil {
			return nil, err
		}
		r := req.Clone(ctx)
		if attempt > 0 && req.GetBody != nil {
			if r.Body, err = req.GetBody(); err != nil {
				return nil, fmt.Errorf("%s: body for the retry: %w", op, err)
			}
		}
		r.Header.Set("Authorization", "Bearer "+token)
		resp, err := c.http.Do(r)
		if err != nil {
			// *url.Error names the URL with its query (which may identify a
			// patient); keep only its cause.
			var ue *url.Error
			if errors.As(err, &ue) {
				err = ue.Err
			}
			return nil, transportError(op, err)
		}
		if resp.StatusCode != http.StatusUnauthorized || attempt > 0 || !replayable {
			return resp, nil
		}
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxTokenBody))
		resp.Body.Close()
		c.Invalidate(s.Issuer.Slug, token)
	}
}

// under reports whether u is the FHIR base or below it (same scheme and
// host, path under the base's path).
func under(u *url.URL, base string) bool {
	b, err := url.Parse(strings.TrimSuffix(base, "/"))
	if err != nil {
		return false
	}
	if strings.Contains("/"+u.Path+"/", "/../") {
		return false
	}
	return u.Scheme == b.Scheme && strings.EqualFold(u.Host, b.Host) && u.User == nil &&
		(u.Path == b.Path || strings.HasPrefix(u.Path, b.Path+"/"))
}

// withoutQuery is u without query, fragment or user info, for errors.
func withoutQuery(u *url.URL) string {
	v := url.URL{Scheme: u.Scheme, Host: u.Host, Path: u.Path}
	return v.String()
}
