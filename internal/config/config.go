// Package config turns the environment into a validated Config. It is the one
// place that knows the variable names, their defaults and the safety rules
// between them (docs/ARCHITECTURE.md, "Key lifecycle" and "Decisions"); a bad value is reported as one line naming
// the variable and the rule.
package config

import (
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/ehealth-nl/portal/internal/keys"
	"github.com/ehealth-nl/portal/internal/weburl"
)

// Config is the validated configuration of the service and its commands.
type Config struct {
	// Dev relaxes rules meant for production (plain-http public URL, a
	// generated development KEK) and fills in demo defaults.
	Dev bool
	// Demo serves the demo portal page and demo module (never by default).
	Demo bool

	DatabaseURL string // PostgreSQL connection string
	ListenAddr  string // address of the HTTP listener
	// PublicURL is how browsers and modules reach this service, without a
	// trailing slash.
	PublicURL string

	// DefaultIssuer is created or updated from these values at start-up.
	DefaultIssuer keys.Issuer

	// KEKs is the key-encryption key ring, the sealing KEK first. Empty only
	// in development mode, where the caller supplies a development KEK.
	KEKs       []keys.KEK
	DevKEKFile string // where development mode keeps its generated KEK

	RotationCheckInterval time.Duration // how often each instance checks for due rotations
	JWKSMaxAge            time.Duration // Cache-Control max-age of the JWKS
	KeyringRefresh        time.Duration // poll interval of the keyring, beside NOTIFY
	// KeyringMaxStaleness is how long a keyring may go without a successful
	// refresh before it stops signing; the timing rules use it.
	KeyringMaxStaleness time.Duration
	TokenLifetime       time.Duration // exp - iat of launch tokens, at most 300 s
	// IATBackdate is how far before the signing moment a launch token's iat
	// is set, for verifiers whose clocks run a little behind: 0 to 30 s,
	// whole seconds, less than half the token lifetime.
	IATBackdate     time.Duration
	TicketLifetime  time.Duration // how long a launch link may be followed
	ShutdownTimeout time.Duration // how long in-flight requests may finish at shutdown
	LogLevel        slog.Level    // the lowest level logged

	// AllowHTTPModules permits plain-http module launch URLs on public
	// hosts (loopback hosts are always allowed); development only.
	AllowHTTPModules bool
	// FrameAncestors is the CSP frame-ancestors source list of the
	// launch page.
	FrameAncestors string
	// TrustedProxies are the networks whose X-Forwarded-For is believed.
	TrustedProxies []*net.IPNet
	// MetricsAddr is the address of the listener that serves /metrics (and
	// nothing else); empty means /metrics is served on ListenAddr
	// (PORTAL_METRICS_ADDR=public).
	MetricsAddr string

	// Domain is how the portal reads the Koppeltaal domains of issuers
	// with a Device (docs/ARCHITECTURE.md, "Launching from a Task").
	Domain DomainConfig
	// Audit is how launches are reported to the domains as AuditEvents
	// (docs/ARCHITECTURE.md, "Reporting launches").
	Audit AuditConfig
	// LinkRetention is how long after a launch link expired its ticket
	// hash and the browser details of its redemption are kept;
	// LaunchRetention how long launch records are kept (0: for good).
	// docs/ARCHITECTURE.md, "Retention".
	LinkRetention, LaunchRetention time.Duration
}

// AuditConfig holds the settings of the AuditEvent outbox and its
// delivery worker.
type AuditConfig struct {
	Site      string        // AuditEvent.source.site: the portal's domain name
	Retention time.Duration // how long delivered events stay in the outbox
	RetryMax  time.Duration // the longest wait between two attempts of one event
	Poll      time.Duration // how often each instance looks for due events unwoken
}

// DomainConfig holds the settings of the SMART backend client and the FHIR
// reads of Koppeltaal domains.
type DomainConfig struct {
	Timeout        time.Duration // bounds each request to a domain (token, each FHIR read)
	CacheTTL       time.Duration // how long ActivityDefinitions, Endpoints and Devices are used unasked; 0 turns the cache off
	Scope          string        // scope asked for with each access token; empty: the domain's default for the client
	ReadyTasksOnly bool          // launch only ready and in-progress Tasks (not requested, received, accepted)
}

// Limits are the service-wide durations every issuer's policy must respect.
func (c Config) Limits() keys.TimingLimits {
	return keys.TimingLimits{JWKSMaxAge: c.JWKSMaxAge, MaxStaleness: c.KeyringMaxStaleness, TokenLifetime: c.TokenLifetime}
}

// Error names the variable whose value breaks a rule.
type Error struct {
	Var    string // the environment variable
	Reason string // the rule its value breaks
}

// Error is the one line printed when the configuration is refused.
func (e *Error) Error() string { return e.Var + ": " + e.Reason }

// Variable documents one environment variable, for --help and the README.
type Variable struct {
	Name    string // the environment variable
	Default string // its default, or what happens without it
	Doc     string // what it sets
}

// Variables lists every environment variable the service reads.
func Variables() []Variable {
	return []Variable{
		{"DATABASE_URL", "(required)", "PostgreSQL connection string, e.g. postgres://portal@db:5432/portal?sslmode=verify-full"},
		{"PORTAL_DEV", "false", "development mode: allows a plain-http public URL and a generated development KEK; never in production"},
		{"PORTAL_LISTEN_ADDR", ":8080", "address the HTTP server listens on"},
		{"PORTAL_PUBLIC_URL", "(required; dev: http://localhost:<port>)", "how browsers and modules reach this service; https unless the host is loopback"},
		{"PORTAL_DEFAULT_ISSUER", "default", "slug of the default issuer, whose JWKS is /.well-known/jwks.json"},
		{"PORTAL_CLIENT_ID", "(required; dev: portal-dev)", "Koppeltaal client_id of the default issuer: the JWT iss claim"},
		{"PORTAL_FHIR_BASE_URL", "(required; dev: https://fhir.koppeltaal.example/fhir)", "FHIR base URL of the Koppeltaal domain: the form field iss; https (http only on loopback), no user info, query or fragment"},
		{"PORTAL_DEVICE", "", "the portal's own Device/<id> in the default issuer's Koppeltaal domain (koppeltaal profile only); unset: the issuer is not in a domain"},
		{"PORTAL_ISSUER_PROFILE", "koppeltaal", "default issuer's profile: koppeltaal (RS512, RS384 or ES384: what the Koppeltaal auth server accepts) or hti (plain HTI modules verifying tokens themselves: any algorithm)"},
		{"PORTAL_KEK", "(required outside dev)", "key-encryption key: base64 of 32 random bytes (openssl rand -base64 32)"},
		{"PORTAL_KEKS", "", "KEK ring instead of PORTAL_KEK: base64,base64 — the first seals, all open; ids are derived from the keys"},
		{"PORTAL_DEV_KEK_FILE", ".dev/kek", "dev only: file holding the generated development KEK"},
		{"PORTAL_SIGNING_ALG", "RS512", "default issuer's algorithm: RS512, RS384 or ES384; with PORTAL_ISSUER_PROFILE=hti also PS256, PS384, PS512 or ES256"},
		{"PORTAL_RSA_KEY_BITS", "2048", "default issuer's RSA key size: 2048, 3072 or 4096"},
		{"PORTAL_ROTATION_PERIOD", "24h", "how long a key signs before the next one takes over; at least the publish lead"},
		{"PORTAL_PUBLISH_LEAD", "1h", "how long a next key is published before it signs; at least JWKS max-age + keyring max staleness"},
		{"PORTAL_RETIRE_GRACE", "1h", "how long a retired key stays published; at least token lifetime + JWKS max-age + keyring max staleness"},
		{"PORTAL_ROTATION_CHECK_INTERVAL", "1m", "how often each instance checks whether a rotation is due"},
		{"PORTAL_JWKS_MAX_AGE", "60s", "Cache-Control max-age of the JWKS (whole seconds, 1s to 1h)"},
		{"PORTAL_KEYRING_REFRESH", "30s", "how often each instance reloads keys even without a notification"},
		{"PORTAL_KEYRING_MAX_STALENESS", "90s", "how long an instance signs without reloading its keys; then /readyz answers 503 and it stops signing; more than PORTAL_KEYRING_REFRESH"},
		{"PORTAL_LAUNCH_TOKEN_TTL", "300s", "lifetime of a launch token (exp - iat), at most 300s"},
		{"PORTAL_TOKEN_IAT_BACKDATE", "5s", "how far before signing a launch token's iat is set, for verifiers with slow clocks: 0s to 30s, whole seconds, less than half PORTAL_LAUNCH_TOKEN_TTL"},
		{"PORTAL_TICKET_TTL", "120s", "lifetime of a one-time launch link, at most 10m"},
		{"PORTAL_SHUTDOWN_TIMEOUT", "15s", "how long a stopping instance lets in-flight requests finish"},
		{"PORTAL_LOG_LEVEL", "info", "debug, info, warn or error"},
		{"PORTAL_DEMO", "false", "serve the demo portal at / and a demo module at /demo/module/ (make run sets it); only with PORTAL_DEV=true"},
		{"PORTAL_ALLOW_HTTP_MODULES", "false", "allow plain-http module launch URLs on public hosts (development only; loopback is always allowed)"},
		{"PORTAL_FRAME_ANCESTORS", "'none'", "CSP frame-ancestors of the launch page: 'none', 'self' or https origins, space-separated"},
		{"PORTAL_TRUSTED_PROXIES", "", "comma-separated CIDRs of reverse proxies whose X-Forwarded-For gives the client address"},
		{"PORTAL_METRICS_ADDR", ":9464", "address of the listener serving /metrics only; public serves /metrics on PORTAL_LISTEN_ADDR instead"},
		{"PORTAL_DOMAIN_TIMEOUT", "5s", "bound of each request to a Koppeltaal domain (token endpoint, each FHIR read): 100ms to 60s"},
		{"PORTAL_DOMAIN_CACHE_TTL", "30s", "how long ActivityDefinitions, Endpoints and Devices are used before the FHIR server is asked again (0s: every launch reads them): at most 10m"},
		{"PORTAL_DOMAIN_SCOPE", "", "scope asked for with the domain's access tokens, e.g. system/*.read system/AuditEvent.cu (the AuditEvents need create and update); empty: the domain grants the client's role"},
		{"PORTAL_DOMAIN_READY_TASKS_ONLY", "false", "launch only ready and in-progress Tasks; by default requested, received and accepted ones launch too"},
		{"PORTAL_AUDIT_SITE", "(the host of PORTAL_PUBLIC_URL)", "source.site of the AuditEvents that report launches to a Koppeltaal domain: the portal's domain name"},
		{"PORTAL_AUDIT_RETENTION", "720h", "how long delivered AuditEvents stay in the outbox (pending and failed ones stay until delivered or retried): 1h to 8760h"},
		{"PORTAL_AUDIT_RETRY_MAX", "5m", "longest wait between two delivery attempts of one AuditEvent (the backoff doubles from 1s up to it, with jitter): 1s to 1h"},
		{"PORTAL_AUDIT_POLL", "2s", "how often each instance looks for AuditEvents due for delivery when no launch woke it: 100ms to 1m"},
		{"PORTAL_LINK_RETENTION", "24h", "how long after a launch link expired its ticket hash and the browser's address and User-Agent of its redemption are kept: 0s to 8760h"},
		{"PORTAL_LAUNCH_RETENTION", "0s (keep)", "how long launch records (the audit trail) are kept; older ones are deleted, except while their AuditEvent is undelivered: 0s (for good) or 24h to 876000h"},
	}
}

// Load reads and validates the configuration from getenv. It returns the
// first broken rule as an *Error.
func Load(getenv func(string) string) (Config, error) {
	return load(getenv, true)
}

// DatabaseConfig is the configuration of the commands that never open a
// private key (apikeys, modules, launches, admin-events, issuers list):
// they need DATABASE_URL and nothing of the service's identity or keys.
type DatabaseConfig struct {
	DatabaseURL      string     // PostgreSQL connection string
	LogLevel         slog.Level // the lowest level logged
	AllowHTTPModules bool       // as PORTAL_ALLOW_HTTP_MODULES in Config
}

// DatabaseVariables are the variables LoadDatabase reads.
var DatabaseVariables = []string{"DATABASE_URL", "PORTAL_LOG_LEVEL", "PORTAL_ALLOW_HTTP_MODULES"}

// LoadDatabase reads and validates the DatabaseVariables from getenv.
func LoadDatabase(getenv func(string) string) (DatabaseConfig, error) {
	p := parser{getenv: getenv}
	c := DatabaseConfig{DatabaseURL: p.str("DATABASE_URL", ""), AllowHTTPModules: p.bool("PORTAL_ALLOW_HTTP_MODULES", false)}
	if p.err != nil {
		return DatabaseConfig{}, p.err
	}
	if c.DatabaseURL == "" {
		return DatabaseConfig{}, &Error{"DATABASE_URL", "required: a PostgreSQL connection string such as postgres://portal@localhost:5432/portal"}
	}
	if _, err := pgxpool.ParseConfig(c.DatabaseURL); err != nil {
		return DatabaseConfig{}, &Error{"DATABASE_URL", "not a valid PostgreSQL connection string (postgres://user:password@host:5432/db?sslmode=...)"}
	}
	if err := c.LogLevel.UnmarshalText([]byte(p.str("PORTAL_LOG_LEVEL", "info"))); err != nil {
		return DatabaseConfig{}, &Error{"PORTAL_LOG_LEVEL", fmt.Sprintf("%q must be debug, info, warn or error", getenv("PORTAL_LOG_LEVEL"))}
	}
	return c, nil
}

func load(getenv func(string) string, needKEK bool) (Config, error) {
	p := parser{getenv: getenv}
	var c Config
	c.Dev = p.bool("PORTAL_DEV", false)
	c.Demo = p.bool("PORTAL_DEMO", false)
	c.DatabaseURL = p.str("DATABASE_URL", "")
	c.ListenAddr = p.str("PORTAL_LISTEN_ADDR", ":8080")
	c.DevKEKFile = p.str("PORTAL_DEV_KEK_FILE", ".dev/kek")
	c.RotationCheckInterval = p.duration("PORTAL_ROTATION_CHECK_INTERVAL", time.Minute)
	c.JWKSMaxAge = p.duration("PORTAL_JWKS_MAX_AGE", 60*time.Second)
	c.KeyringRefresh = p.duration("PORTAL_KEYRING_REFRESH", 30*time.Second)
	c.KeyringMaxStaleness = p.duration("PORTAL_KEYRING_MAX_STALENESS", 90*time.Second)
	c.TokenLifetime = p.duration("PORTAL_LAUNCH_TOKEN_TTL", 300*time.Second)
	c.TicketLifetime = p.duration("PORTAL_TICKET_TTL", 120*time.Second)
	c.ShutdownTimeout = p.duration("PORTAL_SHUTDOWN_TIMEOUT", 15*time.Second)
	c.AllowHTTPModules = p.bool("PORTAL_ALLOW_HTTP_MODULES", false)
	c.FrameAncestors = p.str("PORTAL_FRAME_ANCESTORS", "'none'")
	c.MetricsAddr = p.str("PORTAL_METRICS_ADDR", ":9464")
	if c.MetricsAddr == "public" {
		c.MetricsAddr = ""
	}
	c.IATBackdate = p.duration("PORTAL_TOKEN_IAT_BACKDATE", 5*time.Second)
	c.Domain = DomainConfig{
		Timeout:        p.duration("PORTAL_DOMAIN_TIMEOUT", 5*time.Second),
		CacheTTL:       p.duration("PORTAL_DOMAIN_CACHE_TTL", 30*time.Second),
		Scope:          p.str("PORTAL_DOMAIN_SCOPE", ""),
		ReadyTasksOnly: p.bool("PORTAL_DOMAIN_READY_TASKS_ONLY", false),
	}
	if p.err != nil {
		return Config{}, p.err
	}
	if c.Domain.Timeout < 100*time.Millisecond || c.Domain.Timeout > time.Minute {
		return Config{}, &Error{"PORTAL_DOMAIN_TIMEOUT", fmt.Sprintf("%s must be from 100ms to 60s", c.Domain.Timeout)}
	}
	if c.Domain.CacheTTL < 0 || c.Domain.CacheTTL > 10*time.Minute {
		return Config{}, &Error{"PORTAL_DOMAIN_CACHE_TTL", fmt.Sprintf("%s must be from 0s to 10m", c.Domain.CacheTTL)}
	}
	if c.Domain.Scope != "" && !validScope(c.Domain.Scope) {
		return Config{}, &Error{"PORTAL_DOMAIN_SCOPE", "must be space-separated scope tokens of printable ASCII without quotes or backslashes (RFC 6749 §3.3)"}
	}

	c.Audit = AuditConfig{
		Retention: p.duration("PORTAL_AUDIT_RETENTION", 720*time.Hour),
		RetryMax:  p.duration("PORTAL_AUDIT_RETRY_MAX", 5*time.Minute),
		Poll:      p.duration("PORTAL_AUDIT_POLL", 2*time.Second),
	}
	c.LinkRetention = p.duration("PORTAL_LINK_RETENTION", 24*time.Hour)
	c.LaunchRetention = p.duration("PORTAL_LAUNCH_RETENTION", 0)
	if p.err != nil {
		return Config{}, p.err
	}
	for _, r := range []struct {
		name     string
		v        time.Duration
		min, max time.Duration
		text     string
	}{
		{"PORTAL_AUDIT_RETENTION", c.Audit.Retention, time.Hour, 8760 * time.Hour, "1h to 8760h"},
		{"PORTAL_AUDIT_RETRY_MAX", c.Audit.RetryMax, time.Second, time.Hour, "1s to 1h"},
		{"PORTAL_AUDIT_POLL", c.Audit.Poll, 100 * time.Millisecond, time.Minute, "100ms to 1m"},
		{"PORTAL_LINK_RETENTION", c.LinkRetention, 0, 8760 * time.Hour, "0s to 8760h"},
	} {
		if r.v < r.min || r.v > r.max {
			return Config{}, &Error{r.name, fmt.Sprintf("%s must be from %s", r.v, r.text)}
		}
	}

	if c.LaunchRetention != 0 && (c.LaunchRetention < 24*time.Hour || c.LaunchRetention > 876000*time.Hour) {
		return Config{}, &Error{"PORTAL_LAUNCH_RETENTION", fmt.Sprintf("%s must be 0s (keep for good) or from 24h to 876000h", c.LaunchRetention)}
	}
	if c.Demo && !c.Dev {
		return Config{}, &Error{"PORTAL_DEMO", "needs PORTAL_DEV=true: the demo's launch route is unauthenticated and would sign with production keys"}
	}
	if c.DatabaseURL == "" {
		return Config{}, &Error{"DATABASE_URL", "required: a PostgreSQL connection string such as postgres://portal@localhost:5432/portal"}
	}
	if _, err := pgxpool.ParseConfig(c.DatabaseURL); err != nil {
		return Config{}, &Error{"DATABASE_URL", "not a valid PostgreSQL connection string (postgres://user:password@host:5432/db?sslmode=...)"}
	}
	_, port, err := net.SplitHostPort(c.ListenAddr)
	if err != nil || port == "" {
		return Config{}, &Error{"PORTAL_LISTEN_ADDR", fmt.Sprintf("%q must be host:port or :port", c.ListenAddr)}
	}
	if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
		return Config{}, &Error{"PORTAL_LISTEN_ADDR", fmt.Sprintf("%q has no valid port", c.ListenAddr)}
	}

	devDefault := func(v string) string {
		if c.Dev {
			return v
		}
		return ""
	}
	if port == "0" {
		port = "8080"
	}
	c.PublicURL = strings.TrimRight(p.str("PORTAL_PUBLIC_URL", devDefault("http://localhost:"+port)), "/")
	if err := checkPublicURL(c.PublicURL, c.Dev); err != nil {
		return Config{}, &Error{"PORTAL_PUBLIC_URL", err.Error()}
	}
	c.Audit.Site = p.str("PORTAL_AUDIT_SITE", "")
	if c.Audit.Site == "" {
		if u, err := url.Parse(c.PublicURL); err == nil {
			c.Audit.Site = u.Hostname()
		}
	}
	if !validSite(c.Audit.Site) {
		return Config{}, &Error{"PORTAL_AUDIT_SITE", fmt.Sprintf("%q must be a host name: 1-255 letters, digits, '-', '.' or ':'", c.Audit.Site)}
	}

	if err := c.loadKEKs(getenv, needKEK); err != nil {
		return Config{}, err
	}

	if err := c.LogLevel.UnmarshalText([]byte(p.str("PORTAL_LOG_LEVEL", "info"))); err != nil {
		return Config{}, &Error{"PORTAL_LOG_LEVEL", fmt.Sprintf("%q must be debug, info, warn or error", getenv("PORTAL_LOG_LEVEL"))}
	}

	if c.MetricsAddr != "" {
		if _, port, err := net.SplitHostPort(c.MetricsAddr); err != nil || port == "" {
			return Config{}, &Error{"PORTAL_METRICS_ADDR", fmt.Sprintf("%q must be host:port, :port or public", c.MetricsAddr)}
		}
		if c.MetricsAddr == c.ListenAddr {
			return Config{}, &Error{"PORTAL_METRICS_ADDR", "must differ from PORTAL_LISTEN_ADDR (set it to public to serve /metrics there)"}
		}
	}
	if err := checkFrameAncestors(c.FrameAncestors); err != nil {
		return Config{}, &Error{"PORTAL_FRAME_ANCESTORS", err.Error()}
	}
	if raw := p.str("PORTAL_TRUSTED_PROXIES", ""); raw != "" {
		for _, entry := range strings.Split(raw, ",") {
			entry = strings.TrimSpace(entry)
			if !strings.Contains(entry, "/") {
				if ip := net.ParseIP(entry); ip != nil && ip.To4() != nil {
					entry += "/32"
				} else {
					entry += "/128"
				}
			}
			_, n, err := net.ParseCIDR(entry)
			if err != nil {
				return Config{}, &Error{"PORTAL_TRUSTED_PROXIES", fmt.Sprintf("%q is not an IP address or CIDR such as 10.0.0.0/8", entry)}
			}
			c.TrustedProxies = append(c.TrustedProxies, n)
		}
	}

	// Service-wide timings.
	if c.TokenLifetime <= 0 || c.TokenLifetime > 300*time.Second {
		return Config{}, &Error{"PORTAL_LAUNCH_TOKEN_TTL", fmt.Sprintf("%s must be more than 0 and at most 300s (HTI 2.0: a launch token lives at most five minutes)", c.TokenLifetime)}
	}
	if c.TokenLifetime%time.Second != 0 {
		return Config{}, &Error{"PORTAL_LAUNCH_TOKEN_TTL", fmt.Sprintf("%s must be whole seconds (exp and iat are whole seconds)", c.TokenLifetime)}
	}
	if c.IATBackdate < 0 || c.IATBackdate > 30*time.Second || c.IATBackdate%time.Second != 0 {
		return Config{}, &Error{"PORTAL_TOKEN_IAT_BACKDATE", fmt.Sprintf("%s must be whole seconds from 0s to 30s (iat is whole seconds)", c.IATBackdate)}
	}
	if 2*c.IATBackdate >= c.TokenLifetime {
		return Config{}, &Error{"PORTAL_TOKEN_IAT_BACKDATE", fmt.Sprintf("%s must be less than half of PORTAL_LAUNCH_TOKEN_TTL (%s): a backdated token must still live long enough", c.IATBackdate, c.TokenLifetime)}
	}
	if c.JWKSMaxAge < time.Second || c.JWKSMaxAge > time.Hour || c.JWKSMaxAge%time.Second != 0 {
		return Config{}, &Error{"PORTAL_JWKS_MAX_AGE", fmt.Sprintf("%s must be whole seconds from 1s to 1h (TOP-KT-020 suggests 60s)", c.JWKSMaxAge)}
	}
	if c.KeyringRefresh < 100*time.Millisecond {
		return Config{}, &Error{"PORTAL_KEYRING_REFRESH", fmt.Sprintf("%s must be at least 100ms", c.KeyringRefresh)}
	}
	if c.KeyringMaxStaleness <= c.KeyringRefresh {
		return Config{}, &Error{"PORTAL_KEYRING_MAX_STALENESS", fmt.Sprintf("%s must be more than PORTAL_KEYRING_REFRESH (%s): an instance that polls on time must never be stale", c.KeyringMaxStaleness, c.KeyringRefresh)}
	}
	if c.RotationCheckInterval < 100*time.Millisecond {
		return Config{}, &Error{"PORTAL_ROTATION_CHECK_INTERVAL", fmt.Sprintf("%s must be at least 100ms", c.RotationCheckInterval)}
	}
	if c.TicketLifetime <= 0 || c.TicketLifetime > 10*time.Minute {
		return Config{}, &Error{"PORTAL_TICKET_TTL", fmt.Sprintf("%s must be more than 0 and at most 10m (a launch link is meant to be followed at once)", c.TicketLifetime)}
	}
	if c.ShutdownTimeout <= 0 || c.ShutdownTimeout > 5*time.Minute {
		return Config{}, &Error{"PORTAL_SHUTDOWN_TIMEOUT", fmt.Sprintf("%s must be more than 0 and at most 5m", c.ShutdownTimeout)}
	}

	// The default issuer, with the timing rules of docs/ARCHITECTURE.md, "Key lifecycle".
	is := keys.Issuer{
		Slug:        p.str("PORTAL_DEFAULT_ISSUER", "default"),
		ClientID:    p.str("PORTAL_CLIENT_ID", devDefault("portal-dev")),
		FHIRBaseURL: p.str("PORTAL_FHIR_BASE_URL", devDefault("https://fhir.koppeltaal.example/fhir")),
		Profile:     keys.Profile(p.str("PORTAL_ISSUER_PROFILE", string(keys.DefaultProfile))),
		Device:      p.str("PORTAL_DEVICE", ""),
		Alg:         keys.Algorithm(p.str("PORTAL_SIGNING_ALG", string(keys.DefaultAlgorithm))),
		RSABits:     p.int("PORTAL_RSA_KEY_BITS", keys.DefaultRSABits),
		Policy: keys.Policy{
			RotationPeriod: p.duration("PORTAL_ROTATION_PERIOD", 24*time.Hour),
			PublishLead:    p.duration("PORTAL_PUBLISH_LEAD", time.Hour),
			RetireGrace:    p.duration("PORTAL_RETIRE_GRACE", time.Hour),
		},
		IsDefault: true,
	}
	if p.err != nil {
		return Config{}, p.err
	}
	if is.ClientID == "" {
		return Config{}, &Error{"PORTAL_CLIENT_ID", "required: the Koppeltaal client_id of this portal (the JWT iss claim)"}
	}
	if is.FHIRBaseURL == "" {
		return Config{}, &Error{"PORTAL_FHIR_BASE_URL", "required: the FHIR base URL of the Koppeltaal domain (the form field iss)"}
	}
	if err := is.Validate(c.Limits()); err != nil {
		var ie *keys.IssuerError
		if errors.As(err, &ie) {
			return Config{}, &Error{issuerFieldVar[ie.Field], ie.Reason}
		}
		return Config{}, err
	}
	c.DefaultIssuer = is
	return c, nil
}

// issuerFieldVar maps an issuer field to the variable that sets it for the
// default issuer.
var issuerFieldVar = map[string]string{
	"slug":            "PORTAL_DEFAULT_ISSUER",
	"client_id":       "PORTAL_CLIENT_ID",
	"fhir_base_url":   "PORTAL_FHIR_BASE_URL",
	"profile":         "PORTAL_ISSUER_PROFILE",
	"device":          "PORTAL_DEVICE",
	"alg":             "PORTAL_SIGNING_ALG",
	"rsa_bits":        "PORTAL_RSA_KEY_BITS",
	"rotation_period": "PORTAL_ROTATION_PERIOD",
	"publish_lead":    "PORTAL_PUBLISH_LEAD",
	"retire_grace":    "PORTAL_RETIRE_GRACE",
}

func checkPublicURL(s string, dev bool) error {
	if s == "" {
		return errors.New("required: the URL browsers and modules use to reach this service, e.g. https://portal.example.org")
	}
	u, err := url.Parse(s)
	if err != nil || !u.IsAbs() || u.Host == "" || (u.Scheme != "https" && u.Scheme != "http") {
		return fmt.Errorf("%q must be an absolute http(s) URL", s)
	}
	if u.RawQuery != "" || u.Fragment != "" || u.User != nil {
		return fmt.Errorf("%q must not have a query, fragment or user info", s)
	}
	if u.Scheme == "http" && !dev && !weburl.IsLoopbackHost(u.Hostname()) {
		return fmt.Errorf("%q must use https outside development mode (plain http is allowed for loopback hosts)", s)
	}
	return nil
}

// checkFrameAncestors accepts a CSP frame-ancestors source list of 'none',
// 'self' and http(s) origins, which cannot smuggle in another directive.
func checkFrameAncestors(s string) error {
	sources := strings.Fields(s)
	if len(sources) == 0 {
		return errors.New("must not be empty")
	}
	for _, src := range sources {
		switch src {
		case "'none'":
			if len(sources) > 1 {
				return errors.New("'none' cannot be combined with other sources")
			}
			continue
		case "'self'":
			continue
		}
		u, err := url.Parse(src)
		if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || strings.ContainsAny(src, ";,'\"") {
			return fmt.Errorf("%q must be 'none', 'self' or an origin such as https://portal.example.org", src)
		}
	}
	return nil
}

// loadKEKs reads PORTAL_KEK or PORTAL_KEKS. In development mode both may be
// absent; the caller then uses the development KEK file.
func (c *Config) loadKEKs(getenv func(string) string, needKEK bool) error {
	single, ring := strings.TrimSpace(getenv("PORTAL_KEK")), strings.TrimSpace(getenv("PORTAL_KEKS"))
	switch {
	case single != "" && ring != "":
		return &Error{"PORTAL_KEKS", "set either PORTAL_KEK or PORTAL_KEKS, not both"}
	case single != "":
		key, err := decodeKEK(single)
		if err != nil {
			return &Error{"PORTAL_KEK", err.Error()}
		}
		c.KEKs = []keys.KEK{{ID: keys.KEKIDFor(key), Key: key}}
	case ring != "":
		seen := map[string]bool{}
		for i, entry := range strings.Split(ring, ",") {
			key, err := decodeKEK(strings.TrimSpace(entry))
			if err != nil {
				return &Error{"PORTAL_KEKS", fmt.Sprintf("entry %d %s; the list is base64,base64 with the sealing KEK first (ids are derived from the keys)", i+1, err)}
			}
			id := keys.KEKIDFor(key)
			if seen[id] {
				return &Error{"PORTAL_KEKS", fmt.Sprintf("entry %d repeats KEK %s", i+1, id)}
			}
			seen[id] = true
			c.KEKs = append(c.KEKs, keys.KEK{ID: id, Key: key})
		}
	case !c.Dev && needKEK:
		return &Error{"PORTAL_KEK", "required outside development mode: base64 of 32 random bytes (openssl rand -base64 32), or set PORTAL_KEKS"}
	}
	return nil
}

// decodeKEK accepts standard or URL-safe base64, padded or not. The error
// never repeats the value.
func decodeKEK(s string) ([]byte, error) {
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
		if key, err := enc.DecodeString(s); err == nil {
			if len(key) != keys.KEKSize {
				return nil, fmt.Errorf("must decode to %d bytes, got %d (openssl rand -base64 32)", keys.KEKSize, len(key))
			}
			return key, nil
		}
	}
	return nil, errors.New("is not base64 (openssl rand -base64 32)")
}

// parser reads typed values, remembering the first error.
type parser struct {
	getenv func(string) string
	err    error
}

func (p *parser) str(name, def string) string {
	if v := strings.TrimSpace(p.getenv(name)); v != "" {
		return v
	}
	return def
}

func (p *parser) bool(name string, def bool) bool {
	v := p.str(name, "")
	if v == "" {
		return def
	}
	b, err := strconv.ParseBool(v)
	if err != nil && p.err == nil {
		p.err = &Error{name, fmt.Sprintf("%q must be true or false", v)}
	}
	return b
}

func (p *parser) int(name string, def int) int {
	v := p.str(name, "")
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil && p.err == nil {
		p.err = &Error{name, fmt.Sprintf("%q must be a whole number", v)}
	}
	return n
}

func (p *parser) duration(name string, def time.Duration) time.Duration {
	v := p.str(name, "")
	if v == "" {
		return def
	}
	d, err := time.ParseDuration(v)
	if err != nil && p.err == nil {
		p.err = &Error{name, fmt.Sprintf("%q must be a Go duration such as 90s, 15m or 24h", v)}
	}
	return d
}

// validScope is RFC 6749 §3.3: scope tokens of %x21 / %x23-5B / %x5D-7E,
// separated by single spaces.
func validScope(s string) bool {
	for _, tok := range strings.Split(s, " ") {
		if tok == "" {
			return false
		}
		for _, c := range []byte(tok) {
			if c < 0x21 || c > 0x7e || c == '"' || c == '\\' {
				return false
			}
		}
	}
	return true
}

// validSite reports whether s can be AuditEvent.source.site: a host name
// (or address), nothing a log or an event should not hold.
func validSite(s string) bool {
	if len(s) < 1 || len(s) > 255 {
		return false
	}
	for _, c := range []byte(s) {
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '.' || c == ':') {
			return false
		}
	}
	return true
}
