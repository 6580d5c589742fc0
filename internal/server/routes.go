package server

import (
	"github.com/labstack/echo/v4"

	"github.com/ehealth-nl/portal/internal/apikeys"
)

// routes installs the whole HTTP surface of the portal (README.md, "HTTP
// surface").
func (s *server) routes(e *echo.Echo) {
	// Every request: an id, a log line and a duration; panics answered;
	// refused launches counted; a body of at most maxBodyBytes, on every
	// route.
	e.Use(s.observe, s.recoverPanics, s.countLaunchRefusals, limitBody)

	// Public keys for module providers and the Koppeltaal auth server.
	e.GET("/.well-known/jwks.json", s.handleJWKS)
	e.HEAD("/.well-known/jwks.json", s.handleJWKS)
	e.GET("/issuers/:issuer/jwks.json", s.handleJWKS)
	e.HEAD("/issuers/:issuer/jwks.json", s.handleJWKS)

	// The browser follows a one-time launch link (GET and HEAD change
	// nothing) and its page redeems it (POST).
	e.GET("/launch/:ticket", s.handleFollowLink)
	e.HEAD("/launch/:ticket", s.handleFollowLink)
	e.POST("/launch/:ticket", s.handleRedeemLink)

	// The API for portal backends (scope launch) and operators (scope admin).
	// Nothing it answers may be cached.
	api := e.Group("/api/v1", noStore)
	// The launch routes may authenticate from a memory of keys found valid
	// (Deps.LaunchKeys): the statement that writes the launch checks the
	// key again. The admin routes read, so they check in the database.
	launchKeys := s.LaunchKeys
	if launchKeys == nil {
		launchKeys = s.APIKeys
	}
	launcher, admin := s.requireScope(apikeys.ScopeLaunch, launchKeys), s.requireScope(apikeys.ScopeAdmin, s.APIKeys)
	api.POST("/launches", s.handleCreateLaunch, launcher)
	api.POST("/launch-tokens", s.handleIssueToken, launcher)
	api.GET("/launches", s.handleListLaunches, admin)
	api.GET("/modules", s.handleListModules, admin)
	api.GET("/modules/:slug", s.handleGetModule, admin)
	api.PUT("/modules/:slug", s.handlePutModule, admin)
	api.DELETE("/modules/:slug", s.handleDeleteModule, admin)
	api.GET("/keys", s.handleListKeys, admin)
	api.POST("/keys/rotate", s.handleRotateKeys, admin)
	api.GET("/admin-events", s.handleListAdminEvents, admin)
	api.GET("/audit-events", s.handleListAuditEvents, admin)
	api.GET("/openapi.yaml", s.handleOpenAPI) // the contract of all of the above; no key needed

	// Probes and metrics.
	e.GET("/healthz", s.handleHealthz)
	e.GET("/readyz", s.handleReadyz)
	if !s.MetricsElsewhere {
		e.GET("/metrics", echo.WrapHandler(s.Metrics.Handler()))
	}

	// The demo portal and module (PORTAL_DEMO=true only).
	if s.Demo != nil {
		e.GET("/", s.handleDemoPortal)
		e.POST("/demo/launch", s.handleDemoLaunch)
		e.POST("/demo/module/launch", s.handleDemoModule)
		e.GET("/demo/module/launch", s.handleDemoModule)
	}
}
