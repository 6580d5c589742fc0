package server

import (
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
	h["Etag"] = []string{set.ETag}
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

// etagMatches implements the weak comparison If-None-Match uses (RFC 9110
// 13.1.2): a list of tags or "*", where W/"x" matches "x".
func etagMatches(header, etag string) bool {
	if header == "" {
		return false
	}
	if strings.TrimSpace(header) == "*" {
		return true
	}
	for _, candidate := range strings.Split(header, ",") {
		candidate = strings.TrimPrefix(strings.TrimSpace(candidate), "W/")
		if candidate == etag {
			return true
		}
	}
	return false
}
