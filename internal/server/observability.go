package server

import (
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"

	"runtime/debug"
	"strings"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/ehealth-nl/portal/internal/apikeys"
	"github.com/ehealth-nl/portal/internal/auditevent"
	"github.com/ehealth-nl/portal/internal/launch"
)

// Where logger keeps the request's logger.
const loggerContextKey = "portal.logger"

// validRequestID is what an incoming X-Request-Id (or X-Correlation-Id)
// must be to be kept: a FHIR id (auditevent.ValidID), because it is sent on
// to the domain and becomes the valueId of the launch's AuditEvent
// (TOP-KT-011). Anything else (too long, control characters, '_') is
// replaced, so a client can neither inject into the logs nor make an
// event the domain must refuse.
var validRequestID = auditevent.ValidID

// newRequestID returns 128 random bits in hex. A request id correlates log
// lines; it is no secret, so the fast generator of math/rand/v2 serves.
func newRequestID() string {
	var b [16]byte
	binary.LittleEndian.PutUint64(b[:8], rand.Uint64())
	binary.LittleEndian.PutUint64(b[8:], rand.Uint64())
	return hex.EncodeToString(b[:])
}

// quietRoutes are answered too often to log each request at info level.
var quietRoutes = map[string]bool{
	"/.well-known/jwks.json": true, "/issuers/:issuer/jwks.json": true,
	"/healthz": true, "/readyz": true, "/metrics": true,
}

// observe gives every request an id (X-Request-Id, taken from the request
// or made here, and echoed back), a logger that carries it, a log line and
// a duration in the metrics. It logs the route pattern, never the raw path:
// a launch link's path is its ticket.
func (s *server) observe(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		start := time.Now()
		id := c.Request().Header.Get("X-Request-Id")
		if !validRequestID(id) {
			id = newRequestID()
		}
		// Kept in the answer's header only (logger reads it from there): a
		// value in the context would cost the JWKS two allocations.
		c.Response().Header()["X-Request-Id"] = []string{id}
		if err := next(c); err != nil {
			c.Error(err)
		}
		route := c.Path()
		if route == "" || route == "/*" {
			route = "unmatched"
		}
		status, elapsed := c.Response().Status, time.Since(start)
		s.Metrics.ObserveHTTP(route, c.Request().Method, status, elapsed)
		level := slog.LevelInfo
		if quietRoutes[route] {
			level = slog.LevelDebug
		}
		if s.Logger.Enabled(c.Request().Context(), level) {
			attrs := []any{"method", c.Request().Method, "route", route,
				"status", status, "duration_ms", float64(elapsed.Microseconds()) / 1000, "client", c.RealIP()}
			if key, ok := c.Get(apiKeyContextKey).(apikeys.Key); ok {
				attrs = append(attrs, "api_key", key.Name)
			}
			s.logger(c).Log(c.Request().Context(), level, "request", attrs...)
		}
		return nil
	}
}

// logger returns the request's logger, which puts the request id on every
// line; it is made the first time a handler logs.
func (s *server) logger(c echo.Context) *slog.Logger {
	if l, ok := c.Get(loggerContextKey).(*slog.Logger); ok {
		return l
	}
	id := c.Response().Header().Get("X-Request-Id")
	if id == "" {
		return s.Logger
	}
	l := s.Logger.With("request_id", id)
	c.Set(loggerContextKey, l)
	return l
}

// launchCreatingRoutes are the routes whose refusals are counted as
// refused launches.
var launchCreatingRoutes = map[string]bool{"/api/v1/launches": true, "/api/v1/launch-tokens": true}

// countLaunchRefusals counts, on the launch-creating routes, every request
// that was refused and why (authentication and body size included). It
// runs for every route, before the body limit, and looks at the route.
func (s *server) countLaunchRefusals(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		err := next(c)
		if err != nil && c.Request().Method == http.MethodPost && launchCreatingRoutes[c.Path()] {
			s.Metrics.LaunchRefused(refusalReason(err))
		}
		return err
	}
}

// refusalReasons groups problem kinds into the reasons of the refusal
// metric.
var refusalReasons = map[string]string{
	"malformed-request": "malformed", "unsupported-media-type": "malformed", "body-too-large": "malformed",
	"invalid-request": "invalid", "unauthenticated": "unauthenticated", "forbidden": "forbidden",
	"ticket-used": "ticket_used", "ticket-expired": "ticket_expired", "ticket-unknown": "ticket_unknown",
	"module-changed": "module_changed",
	"unavailable":    "unavailable", "keys-unavailable": "unavailable",
	"domain-unavailable": "domain_unavailable", "domain-client-refused": "domain_client_refused",
}

// refusalReason names why a launch was refused, for the metrics, from the
// problem the error becomes.
func refusalReason(err error) string {
	var refused *launch.RefusedError
	if errors.As(err, &refused) {
		return "domain_" + strings.ReplaceAll(refused.Rule, "-", "_") // a fixed set of rules
	}
	if reason, ok := refusalReasons[problemKind(problemFor(err))]; ok {
		return reason
	}
	return "error"
}

// errPanic stands for a handler that panicked; the client gets a 500.
var errPanic = errors.New("handler panicked")

// recoverPanics turns a panicking handler into a 500, logged with the
// request id and the stack, so that observe still logs and times it.
func (s *server) recoverPanics(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) (err error) {
		defer func() {
			r := recover()
			if r == nil {
				return
			}
			if r == http.ErrAbortHandler {
				panic(r) // net/http's way to abort a response; not ours to swallow
			}
			s.logger(c).Error("handler panicked", "route", c.Path(), "panic", fmt.Sprint(r), "stack", string(debug.Stack()))
			err = errPanic
		}()
		return next(c)
	}
}
