// Package fhirdomain reads a Koppeltaal 2.0 domain's FHIR R4 server as a
// launching application: Task → ActivityDefinition → Endpoint → Device, as
// the KT2 profiles and TOP-KT-007 (launch) lay the chain out. Resolve walks
// it and returns what a launch token needs (the module's Device as aud, the
// Endpoint's address as launch URL, the Task's patient, owner and intent).
//
// Every request carries a SMART backend-services access token from Tokens,
// Accept: application/fhir+json and the TOP-KT-011 trace headers taken from
// the context (WithTrace). ActivityDefinitions, Endpoints and Devices are
// kept a short while (Config.CacheTTL) and then revalidated with
// If-None-Match; Tasks are always read anew.
//
// Authorize then decides, from the Resolution and what the domain holds
// about the user (CareTeam, RelatedPerson), whether the user may start the
// Task (TOP-KT-013 and the KT2 RelatedPerson rules).
//
// Errors are either ErrUnavailable (the domain could not answer: 503), a
// *NotResolvableError with a Reason (the domain's data breaks a rule: 422
// or 403) or, from Authorize, a *RefusedError with a Refusal (this user
// may not launch this Task: 403); anything else is a bug or a
// configuration error.
package fhirdomain

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"
)

// Tokens gives access tokens for an issuer's FHIR server; internal/smart
// implements it with SMART backend services (client_credentials,
// private_key_jwt). Invalidate drops a token the server refused (401), so
// that the next Token gets a fresh one.
type Tokens interface {
	Token(ctx context.Context, issuer string) (string, error)
	Invalidate(issuer, token string)
}

// Trace holds the TOP-KT-011 trace headers a request to the domain
// carries: X-Request-Id, X-Correlation-Id and X-Trace-Id. Empty fields are
// not sent.
type Trace struct {
	RequestID     string
	CorrelationID string
	TraceID       string
}

type traceKey struct{}

// WithTrace returns a context whose FHIR requests carry tr's headers.
func WithTrace(ctx context.Context, tr Trace) context.Context {
	return context.WithValue(ctx, traceKey{}, tr)
}

// TraceFrom returns the Trace WithTrace put in ctx, or the zero Trace.
func TraceFrom(ctx context.Context) Trace {
	tr, _ := ctx.Value(traceKey{}).(Trace)
	return tr
}

// CacheOutcome says how the cache answered one read of an
// ActivityDefinition, Endpoint or Device.
type CacheOutcome string

// The cache outcomes Config.Observe is told about.
const (
	CacheHit         CacheOutcome = "hit"         // fresh entry, no request
	CacheMiss        CacheOutcome = "miss"        // nothing usable kept: a full read
	CacheRevalidated CacheOutcome = "revalidated" // expired entry the server confirmed (304, or the same ETag)
)

// Defaults for the zero values of Config.
const (
	DefaultTimeout      = 5 * time.Second
	DefaultMaxBodyBytes = 1 << 20
	DefaultCacheTTL     = 30 * time.Second
	DefaultCacheEntries = 4096
)

// Config is what New needs. BaseURL and Tokens are required.
type Config struct {
	// BaseURL gives an issuer's FHIR base URL (fhir_base_url, e.g.
	// https://domain.example/fhir), false for an unknown issuer.
	BaseURL func(issuer string) (string, bool)
	// Tokens gives the access tokens.
	Tokens Tokens
	// HTTPClient sends the requests; nil means a client of its own that
	// follows no redirects.
	HTTPClient *http.Client
	// Timeout bounds each request, a retry included (DefaultTimeout).
	Timeout time.Duration
	// MaxBodyBytes refuses bigger responses with ErrTooLarge
	// (DefaultMaxBodyBytes).
	MaxBodyBytes int64
	// Now is the clock for the cache (time.Now).
	Now func() time.Time
	// CacheTTL is how long an ActivityDefinition, Endpoint or Device is
	// used without asking the server (DefaultCacheTTL); negative turns the
	// cache off.
	CacheTTL time.Duration
	// CacheEntries bounds the cache (DefaultCacheEntries).
	CacheEntries int
	// Observe, if set, is told of every cache outcome, with the resource
	// type; for metrics. It must not block.
	Observe func(resourceType string, outcome CacheOutcome)
	// ObserveRequest, if set, is told of every request sent to the FHIR
	// server, with the resource type read and how it ended
	// (RequestOutcome); for metrics. It must not block.
	ObserveRequest func(resourceType string, outcome RequestOutcome)
	// ReadyTasksOnly makes Authorize refuse Tasks that are requested,
	// received or accepted (RefusedTaskStatus); by default those launch
	// like ready and in-progress ones. See Authorize.
	ReadyTasksOnly bool
}

// RequestOutcome says how one request to the FHIR server ended.
type RequestOutcome string

// The request outcomes Config.ObserveRequest is told about.
const (
	RequestOK          RequestOutcome = "ok"           // 200
	RequestNotModified RequestOutcome = "not_modified" // 304 to If-None-Match
	RequestNotFound    RequestOutcome = "not_found"    // 404 or 410
	RequestUnavailable RequestOutcome = "unavailable"  // no answer, 5xx, 401 twice, a bad answer: ErrUnavailable
	RequestError       RequestOutcome = "error"        // any other status: a request the server did not expect
)

// Client reads Koppeltaal domains' FHIR servers. It is safe for concurrent
// use.
type Client struct {
	cfg    Config
	http   *http.Client
	cache  *cache
	health health
}

// New checks cfg, fills in its defaults and returns a Client.
func New(cfg Config) (*Client, error) {
	if cfg.BaseURL == nil || cfg.Tokens == nil {
		return nil, errors.New("fhirdomain: BaseURL and Tokens are required")
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.MaxBodyBytes <= 0 {
		cfg.MaxBodyBytes = DefaultMaxBodyBytes
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.CacheTTL == 0 {
		cfg.CacheTTL = DefaultCacheTTL
	}
	if cfg.CacheEntries <= 0 {
		cfg.CacheEntries = DefaultCacheEntries
	}
	hc := cfg.HTTPClient
	if hc == nil {
		// Redirects are not followed: the Bearer token must not go to a
		// host the issuer's FHIR base does not name. A 3xx is an answer
		// that is not FHIR (ErrUnavailable).
		hc = &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	}
	return &Client{cfg: cfg, http: hc, cache: newCache(cfg.CacheEntries)}, nil
}

// base returns the issuer's FHIR base URL without a trailing slash.
func (c *Client) base(issuer string) (string, error) {
	b, ok := c.cfg.BaseURL(issuer)
	if !ok || b == "" {
		return "", fmt.Errorf("fhirdomain: no FHIR base URL for issuer %q", issuer)
	}
	if _, err := url.Parse(b); err != nil {
		return "", fmt.Errorf("fhirdomain: issuer %q: FHIR base URL: %w", issuer, err)
	}
	return strings.TrimSuffix(b, "/"), nil
}

// flight deduplicates concurrent reads of one cache key, so that a burst of
// launches for one module reads its resources once.
type flight struct {
	mu    sync.Mutex
	calls map[string]*call
}

type call struct {
	done    chan struct{}
	res     response
	outcome CacheOutcome
	err     error
}

// do runs fn once for all callers that ask for key while it runs; shared
// reports that this caller waited for another's fn. fn must not depend on
// the first caller's cancellation: a caller that gives up stops waiting,
// the others do not.
func (f *flight) do(ctx context.Context, key string, fn func() (response, CacheOutcome, error)) (res response, outcome CacheOutcome, shared bool, err error) {
	f.mu.Lock()
	if f.calls == nil {
		f.calls = make(map[string]*call)
	}
	if c, ok := f.calls[key]; ok {
		f.mu.Unlock()
		select {
		case <-c.done:
			return c.res, c.outcome, true, c.err
		case <-ctx.Done():
			return response{}, "", true, ctx.Err()
		}
	}
	c := &call{done: make(chan struct{})}
	f.calls[key] = c
	f.mu.Unlock()
	c.res, c.outcome, c.err = fn()
	f.mu.Lock()
	delete(f.calls, key)
	f.mu.Unlock()
	close(c.done)
	return c.res, c.outcome, false, c.err
}
