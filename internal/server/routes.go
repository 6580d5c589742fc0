package server

import (
	"github.com/labstack/echo/v4"
	"github.com/labstack/echo/v4/middleware"
)

// routes installs the whole HTTP surface of the portal (DESIGN 2.5).
func (s *server) routes(e *echo.Echo) {
	e.Use(middleware.Recover())

	// Public keys for module providers and the Koppeltaal auth server.
	e.GET("/.well-known/jwks.json", s.handleJWKS)
	e.HEAD("/.well-known/jwks.json", s.handleJWKS)
	e.GET("/issuers/:issuer/jwks.json", s.handleJWKS)
	e.HEAD("/issuers/:issuer/jwks.json", s.handleJWKS)

	// Probes.
	e.GET("/healthz", s.handleHealthz)
	e.GET("/readyz", s.handleReadyz)
}
