package server

import (
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/ehealth-nl/portal/internal/keys"
)

// Prepared header values of the JWKS answer.
var (
	anyOrigin       = []string{"*"}
	noSniff         = []string{"nosniff"}
	jsonContentType = []string{"application/json"}
)

func jwksCacheControl(maxAge time.Duration) []string {
	// TOP-KT-020: verifiers may cache the JWKS; never no-cache.
	return []string{"public, max-age=" + strconv.Itoa(int(maxAge/time.Second))}
}

// handleJWKS serves an issuer's JWK Set from memory (docs/ARCHITECTURE.md,
// "The JWKS"): no database access, so it keeps answering while the
// database is away.
func (s *server) handleJWKS(c echo.Context) error {
	issuer := c.Param("issuer")
	if issuer == "" && c.Path() != "/.well-known/jwks.json" {
		return keys.ErrUnknownIssuer // "/issuers//jwks.json" is not the default issuer
	}
	set, err := s.Keyring.JWKS(issuer)
	if err != nil {
		return err
	}
	// The hottest path of the service: headers are set in canonical form
	// from prepared values, without the allocations of Header.Set.
	h := c.Response().Header()
	h["Cache-Control"] = s.jwksCacheControl
	h["Etag"] = set.ETagHeader
	h["Access-Control-Allow-Origin"] = anyOrigin
	h["X-Content-Type-Options"] = noSniff
	if etagMatches(c.Request().Header.Get("If-None-Match"), set.ETag) {
		s.Metrics.JWKSServed(http.StatusNotModified)
		return c.NoContent(http.StatusNotModified)
	}
	s.Metrics.JWKSServed(http.StatusOK)
	h["Content-Type"] = jsonContentType
	c.Response().WriteHeader(http.StatusOK)
	_, err = c.Response().Write(set.Body)
	return err
}

// serveJWKSDirect answers a GET or HEAD of a JWKS route itself, before
// Echo, when it can: the hottest path of the service (the domain's auth
// server fetches the JWKS for every launch it verifies) then costs what a
// bare net/http handler serving the same bytes costs, plus a request id and
// the metrics (docs/ARCHITECTURE.md, "The JWKS"). It answers exactly what
// handleJWKS would, and leaves everything else to Echo (reporting false):
// another path or method, an escaped path, an unknown issuer (the problem
// answer), and every request while debug logging is on (so each is
// logged).
func (s *server) serveJWKSDirect(w http.ResponseWriter, r *http.Request) bool {
	if (r.Method != http.MethodGet && r.Method != http.MethodHead) || r.URL.RawPath != "" {
		return false
	}
	var issuer, route string
	switch path := r.URL.Path; {
	case path == "/.well-known/jwks.json":
		route = path
	case strings.HasPrefix(path, "/issuers/") && strings.HasSuffix(path, "/jwks.json"):
		issuer = path[len("/issuers/") : len(path)-len("/jwks.json")]
		if !keys.ValidSlug(issuer) {
			return false
		}
		route = "/issuers/:issuer/jwks.json"
	default:
		return false
	}
	if s.Logger.Enabled(r.Context(), slog.LevelDebug) {
		return false
	}
	set, err := s.Keyring.JWKS(issuer)
	if err != nil {
		return false
	}
	start := time.Now()
	h := w.Header()
	id := r.Header.Get("X-Request-Id")
	if !validRequestID(id) {
		id = newRequestID()
	}
	h["X-Request-Id"] = []string{id}
	h["Cache-Control"] = s.jwksCacheControl
	h["Etag"] = set.ETagHeader
	h["Access-Control-Allow-Origin"] = anyOrigin
	h["X-Content-Type-Options"] = noSniff
	status := http.StatusOK
	if etagMatches(r.Header.Get("If-None-Match"), set.ETag) {
		status = http.StatusNotModified
		w.WriteHeader(status)
	} else {
		h["Content-Type"] = jsonContentType
		w.WriteHeader(status)
		_, _ = w.Write(set.Body)
	}
	s.Metrics.JWKSServed(status)
	s.Metrics.ObserveHTTP(route, r.Method, status, time.Since(start))
	return true
}

// etagMatches implements the weak comparison If-None-Match uses (RFC 9110
// 13.1.2): a list of tags or "*", where W/"x" matches "x".
func etagMatches(header, etag string) bool {
	if header == "" {
		return false
	}
	if strings.TrimSpace(header) == "*" {
		return true
	}
	for rest := header; rest != ""; {
		var candidate string
		candidate, rest, _ = strings.Cut(rest, ",")
		if strings.TrimPrefix(strings.TrimSpace(candidate), "W/") == etag {
			return true
		}
	}
	return false
}
