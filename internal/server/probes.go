package server

import (
	"context"
	"net/http"
	"time"

	"github.com/labstack/echo/v4"
)

// probeStatus is the JSON body of the probes.
type probeStatus struct {
	Status string `json:"status"`
	Reason string `json:"reason,omitempty"`
}

// handleHealthz answers while the process can serve HTTP at all.
func (s *server) handleHealthz(c echo.Context) error {
	c.Response().Header().Set("Cache-Control", "no-store")
	return c.JSON(http.StatusOK, probeStatus{Status: "ok"})
}

// handleReadyz answers 200 when the database is reachable and every issuer
// has an active key loaded, 503 with the reason otherwise.
func (s *server) handleReadyz(c echo.Context) error {
	c.Response().Header().Set("Cache-Control", "no-store")
	ctx, cancel := context.WithTimeout(c.Request().Context(), 2*time.Second)
	defer cancel()
	if err := s.Database.Ping(ctx); err != nil {
		return c.JSON(http.StatusServiceUnavailable, probeStatus{Status: "unavailable", Reason: "database unreachable"})
	}
	if err := s.Keyring.Ready(); err != nil {
		return c.JSON(http.StatusServiceUnavailable, probeStatus{Status: "unavailable", Reason: err.Error()})
	}
	return c.JSON(http.StatusOK, probeStatus{Status: "ready"})
}
