package server

import (
	"context"
	"errors"
	"net/http"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/ehealth-nl/portal/internal/keys"
)

// probeStatus is the JSON body of the probes.
type probeStatus struct {
	Status string `json:"status"`
	Reason string `json:"reason,omitempty"`
	// NotReady lists each issuer that is not ready and why: no usable
	// active key, a refused key (named by kid), a policy outside the
	// service limits.
	NotReady map[string][]string `json:"issuers_not_ready,omitempty"`
}

// handleHealthz answers while the process can serve HTTP at all.
func (s *server) handleHealthz(c echo.Context) error {
	c.Response().Header().Set("Cache-Control", "no-store")
	return c.JSON(http.StatusOK, probeStatus{Status: "ok"})
}

// handleReadyz tells a load balancer whether to send traffic here. It
// answers 503 when the database does not answer, the keyring is not
// loaded or is older than the maximum staleness, or the default issuer
// cannot sign; the reason names the issuers and kids. Otherwise 200: with
// status "ready" when every issuer is ready, or status "degraded" with the
// issuers that are not (an issuer of its own cannot take the instance out
// of service for the others).
func (s *server) handleReadyz(c echo.Context) error {
	c.Response().Header().Set("Cache-Control", "no-store")
	ctx, cancel := context.WithTimeout(c.Request().Context(), 2*time.Second)
	defer cancel()
	if err := s.Database.Ping(ctx); err != nil {
		return c.JSON(http.StatusServiceUnavailable, probeStatus{Status: "unavailable", Reason: "database unreachable"})
	}
	err := s.Keyring.Ready()
	if err == nil {
		return c.JSON(http.StatusOK, probeStatus{Status: "ready"})
	}
	var re *keys.ReadinessError
	if !errors.As(err, &re) {
		return c.JSON(http.StatusServiceUnavailable, probeStatus{Status: "unavailable", Reason: err.Error()})
	}
	if re.Critical() {
		return c.JSON(http.StatusServiceUnavailable, probeStatus{Status: "unavailable", Reason: err.Error(), NotReady: re.Issuers})
	}
	return c.JSON(http.StatusOK, probeStatus{Status: "degraded", Reason: err.Error(), NotReady: re.Issuers})
}
