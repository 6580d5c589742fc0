// Package server is the HTTP surface of the portal: an Echo application
// built by NewServer from its dependencies. Every route is listed in
// routes.go; handlers decode, call a domain package and encode, and every
// domain error becomes a status code and problem+json in problems.go (API)
// or an HTML page in pages.go (browser).
package server

import (
	"context"
	"fmt"
	"html/template"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/ehealth-nl/portal/internal/adminevents"
	"github.com/ehealth-nl/portal/internal/apikeys"
	"github.com/ehealth-nl/portal/internal/fhirdomain"
	"github.com/ehealth-nl/portal/internal/keys"
	"github.com/ehealth-nl/portal/internal/launch"
	"github.com/ehealth-nl/portal/internal/metrics"
	"github.com/ehealth-nl/portal/templates"
)

// Keyring is what the server needs of the in-memory keyring.
type Keyring interface {
	JWKS(issuer string) (keys.JWKS, error)
	Ready() error
	Refresh(ctx context.Context) error
}

// Pinger checks that the database answers.
type Pinger interface {
	Ping(ctx context.Context) error
}

// Launches is the launch flow.
type Launches interface {
	Create(ctx context.Context, req launch.Request, by launch.Caller) (launch.Created, error)
	IssueToken(ctx context.Context, req launch.Request, by launch.Caller) (launch.IssuedToken, error)
	Inspect(ctx context.Context, ticket string) (launchID string, err error)
	Redeem(ctx context.Context, ticket string, b launch.Browser) (launch.Form, error)
	List(ctx context.Context, f launch.Filter) (launch.Page, error)
}

// Modules is the module registry.
type Modules interface {
	Module(ctx context.Context, slug string) (launch.Module, error)
	ModulesPage(ctx context.Context, after string, limit int) ([]launch.Module, string, error)
	Put(ctx context.Context, m launch.Module, now time.Time) (launch.Module, bool, error)
	Delete(ctx context.Context, slug string, now time.Time) error
}

// Authenticator checks API keys.
type Authenticator interface {
	Authenticate(ctx context.Context, presented string) (apikeys.Key, error)
}

// KeyAdmin lists and rotates signing keys for operators.
type KeyAdmin interface {
	Keys(ctx context.Context, issuer string) ([]keys.Key, error)
	Rotate(ctx context.Context, issuer string, ignoreLead bool) (keys.Change, error)
}

// AdminEvents is the trail of changes made by people.
type AdminEvents interface {
	List(ctx context.Context, f adminevents.Filter) (adminevents.Page, error)
}

// DomainHealth tells how this instance last found each issuer's
// Koppeltaal domain; *fhirdomain.Client is one.
type DomainHealth interface {
	Health() map[string]fhirdomain.Health
}

// Demo configures the demo portal and module; nil turns them off.
type Demo struct {
	Module   string        // slug of the demo module
	Verifier TokenVerifier // checks tokens as the demo module, against this service's JWKS over HTTP
	// Tasks, when set, is the Task each demo role launches (by role key:
	// patient, practitioner, related-person) in the default issuer's
	// Koppeltaal domain; the module and patient then come from the domain.
	Tasks map[string]string
}

// Deps are the dependencies of the HTTP server.
type Deps struct {
	Keyring  Keyring       // signing keys and JWKS, in memory
	Database Pinger        // pinged by /readyz
	Launches Launches      // the launch flow
	Modules  Modules       // the module registry
	APIKeys  Authenticator // authenticates bearer keys
	// LaunchKeys, if set, authenticates the keys of the launch routes,
	// perhaps from memory (apikeys.Recent): every launch write checks the
	// key again (launch.Caller.KeyID). A Forget(keyID) method, if it has
	// one, is called when a write found the key revoked. APIKeys if nil.
	LaunchKeys    Authenticator
	KeyAdmin      KeyAdmin         // key listing and forced rotation
	AdminEvents   AdminEvents      // who changed issuers, keys, modules and API keys
	AuditEvents   AuditEvents      // the outbox of the launches' AuditEvents; nil answers 404
	Domain        DomainHealth     // reported by /readyz; nil when no issuer is in a domain
	DefaultIssuer string           // slug of the issuer of /.well-known/jwks.json
	Logger        *slog.Logger     // where request logs go
	Clock         func() time.Time // time.Now unless a test moves time

	PublicURL  string        // how browsers and modules reach this service
	JWKSMaxAge time.Duration // Cache-Control max-age of the JWKS
	// FrameAncestors is the CSP frame-ancestors source list of browser
	// pages; "'none'" when empty.
	FrameAncestors string
	// TrustedProxies are the networks whose X-Forwarded-For is believed
	// for the client address in the audit trail; none when empty.
	TrustedProxies []*net.IPNet
	Demo           *Demo // the demo portal and module; nil when off
	// Metrics receives what the server observes; a private set when nil.
	Metrics *metrics.Metrics
	// MetricsElsewhere leaves /metrics off this server (it is served on a
	// listener of its own).
	MetricsElsewhere bool
}

// server holds the dependencies the handlers use.
type server struct {
	Deps
	jwksCacheControl []string
	pages            *template.Template
}

// Handler is the portal's HTTP handler: Echo with every route installed
// (routes.go), and the JWKS answered before Echo when it can be
// (serveJWKSDirect).
type Handler struct {
	*echo.Echo
	s *server
}

// ServeHTTP answers one request.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if h.s.serveJWKSDirect(w, r) {
		return
	}
	h.Echo.ServeHTTP(w, r)
}

// NewServer returns the portal's HTTP handler with every route installed.
func NewServer(d Deps) (*Handler, error) {
	if d.Clock == nil {
		d.Clock = time.Now
	}
	if d.Metrics == nil {
		d.Metrics = metrics.New(nil, nil, d.Clock)
	}
	if d.FrameAncestors == "" {
		d.FrameAncestors = "'none'"
	}
	pages, err := template.ParseFS(templates.Files, "*.html")
	if err != nil {
		return nil, fmt.Errorf("parse page templates: %w", err)
	}
	s := &server{Deps: d, jwksCacheControl: jwksCacheControl(d.JWKSMaxAge), pages: pages}
	e := echo.New()
	e.HideBanner, e.HidePort = true, true
	e.HTTPErrorHandler = s.handleError
	e.IPExtractor = clientAddress(d.TrustedProxies)
	s.routes(e)
	return &Handler{Echo: e, s: s}, nil
}

// clientAddress decides where a request comes from: the peer address, or
// X-Forwarded-For when the peer is a trusted proxy. Without trusted proxies
// the header is ignored, so a client cannot forge its audited address.
func clientAddress(trusted []*net.IPNet) echo.IPExtractor {
	if len(trusted) == 0 {
		return echo.ExtractIPDirect()
	}
	opts := []echo.TrustOption{echo.TrustLoopback(false), echo.TrustLinkLocal(false), echo.TrustPrivateNet(false)}
	for _, n := range trusted {
		opts = append(opts, echo.TrustIPRange(n))
	}
	return echo.ExtractIPFromXFFHeader(opts...)
}
