package server

import (
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/ehealth-nl/portal/internal/keys"
)

func jwksCacheControl(maxAge time.Duration) string {
	// TOP-KT-020: verifiers may cache the JWKS; never no-cache.
	return "public, max-age=" + strconv.Itoa(int(maxAge/time.Second))
}

// handleJWKS serves an issuer's JWK Set from memory (DESIGN 1.3): no
// database access, so it keeps answering while the database is away.
func (s *server) handleJWKS(c echo.Context) error {
	issuer := c.Param("issuer")
	if issuer == "" && c.Path() != "/.well-known/jwks.json" {
		return keys.ErrUnknownIssuer // "/issuers//jwks.json" is not the default issuer
	}
	set, err := s.Keyring.JWKS(issuer)
	if err != nil {
		return err
	}
	h := c.Response().Header()
	h.Set("Cache-Control", s.jwksCacheControl)
	h.Set("ETag", set.ETag)
	h.Set("Access-Control-Allow-Origin", "*")
	h.Set("X-Content-Type-Options", "nosniff")
	if etagMatches(c.Request().Header.Get("If-None-Match"), set.ETag) {
		s.Metrics.JWKSServed(http.StatusNotModified)
		return c.NoContent(http.StatusNotModified)
	}
	s.Metrics.JWKSServed(http.StatusOK)
	return c.Blob(http.StatusOK, "application/json", set.Body)
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
