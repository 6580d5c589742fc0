// Package server is the HTTP surface of the portal: an Echo application
// built by NewServer from its dependencies. Every route is listed in
// routes.go; handlers decode, call a domain package and encode, and every
// domain error becomes a status code and problem+json in problems.go.
package server

import (
	"context"
	"log/slog"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/ehealth-nl/portal/internal/keys"
)

// Keyring is what the server needs of the in-memory keyring.
type Keyring interface {
	JWKS(issuer string) (keys.JWKS, error)
	Ready() error
}

// Pinger checks that the database answers.
type Pinger interface {
	Ping(ctx context.Context) error
}

// Deps are the dependencies of the HTTP server.
type Deps struct {
	Keyring    Keyring
	Database   Pinger
	Logger     *slog.Logger
	JWKSMaxAge time.Duration
}

// server holds the dependencies the handlers use.
type server struct {
	Deps
	jwksCacheControl string
}

// NewServer returns the portal's HTTP handler with every route installed.
func NewServer(d Deps) *echo.Echo {
	s := &server{Deps: d, jwksCacheControl: jwksCacheControl(d.JWKSMaxAge)}
	e := echo.New()
	e.HideBanner, e.HidePort = true, true
	e.HTTPErrorHandler = s.handleError
	s.routes(e)
	return e
}
