package server

import (
	"errors"
	"strings"

	"github.com/labstack/echo/v4"

	"github.com/ehealth-nl/portal/internal/adminevents"
	"github.com/ehealth-nl/portal/internal/apikeys"
	"github.com/ehealth-nl/portal/internal/launch"
	"github.com/ehealth-nl/portal/internal/postgres"
)

// Authentication outcomes, mapped to 401, 403 and 503 in problems.go.
var (
	errMissingAPIKey   = errors.New("no API key: send Authorization: Bearer <key>")
	errWrongScope      = errors.New("the API key's scope does not allow this")
	errAuthUnavailable = errors.New("API keys cannot be checked right now")
)

// apiKeyContextKey is where requireScope leaves the authenticated key.
const apiKeyContextKey = "portal.apikey"

// requireScope admits requests that carry a valid API key of the given
// scope as a bearer token, checked by keys.
func (s *server) requireScope(scope apikeys.Scope, keys Authenticator) echo.MiddlewareFunc {
	return func(next echo.HandlerFunc) echo.HandlerFunc {
		return func(c echo.Context) error {
			header := c.Request().Header.Get(echo.HeaderAuthorization)
			scheme, presented, _ := strings.Cut(header, " ")
			if header == "" || !strings.EqualFold(scheme, "Bearer") {
				return errMissingAPIKey
			}
			key, err := keys.Authenticate(c.Request().Context(), strings.TrimSpace(presented))
			switch {
			case errors.Is(err, apikeys.ErrUnauthenticated):
				return err
			case err != nil && postgres.Transient(err):
				// The database is away or busy: 503 with Retry-After.
				return errors.Join(errAuthUnavailable, launch.ErrUnavailable, err)
			case err != nil:
				// Anything else (a missing table, a broken schema) is a bug:
				// a 500, logged with the request id. The message names the
				// operation and pgx's cause, never the presented key.
				return err
			case key.Scope != scope:
				return errWrongScope
			}
			c.Set(apiKeyContextKey, key)
			// Changes made by this request are recorded as the key's.
			c.SetRequest(c.Request().WithContext(adminevents.WithActor(c.Request().Context(), adminevents.APIKeyActor(key.Name))))
			err = next(c)
			if f, ok := keys.(interface{ Forget(keyID string) }); ok && errors.Is(err, launch.ErrCallerRevoked) {
				f.Forget(key.KeyID) // its next request is checked in the database
			}
			return err
		}
	}
}

// caller describes the authenticated API client for the audit trail and
// the issuers its key may launch for.
func caller(c echo.Context) launch.Caller {
	key, _ := c.Get(apiKeyContextKey).(apikeys.Key)
	correlation := c.Request().Header.Get("X-Correlation-Id")
	if !validRequestID(correlation) {
		correlation = ""
	}
	return launch.Caller{Name: key.Name, KeyID: key.KeyID, Addr: c.RealIP(), Issuers: key.Issuers,
		RequestID: c.Response().Header().Get("X-Request-Id"), CorrelationID: correlation}
}
