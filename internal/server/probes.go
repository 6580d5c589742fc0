package server

import (
	"context"
	"errors"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/ehealth-nl/portal/internal/fhirdomain"
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
	// Domains is the state of each Koppeltaal domain this instance has
	// talked to, by issuer, from its last request there.
	Domains map[string]fhirdomain.Health `json:"domains,omitempty"`
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
//
// A Koppeltaal domain that cannot be reached makes the answer "degraded",
// never 503: an outage of the domain hits every instance alike, so taking
// them out of service fixes nothing and would also stop what still works
// without the domain — the JWKS, which the domain's auth server fetches to
// verify launches already handed out, launches of plain HTI issuers, and
// redeeming links already made (docs/ARCHITECTURE.md, "Launching from a
// Task").
func (s *server) handleReadyz(c echo.Context) error {
	c.Response().Header().Set("Cache-Control", "no-store")
	ctx, cancel := context.WithTimeout(c.Request().Context(), 2*time.Second)
	defer cancel()
	if err := s.Database.Ping(ctx); err != nil {
		return c.JSON(http.StatusServiceUnavailable, probeStatus{Status: "unavailable", Reason: "database unreachable"})
	}
	var domains map[string]fhirdomain.Health
	var unreachable []string
	if s.Domain != nil {
		domains = s.Domain.Health()
		for issuer, h := range domains {
			if h.State == fhirdomain.Unreachable {
				unreachable = append(unreachable, issuer)
			}
		}
		slices.Sort(unreachable)
	}
	domainReason := ""
	if len(unreachable) > 0 {
		domainReason = "koppeltaal domain unreachable for issuer " + strings.Join(unreachable, ", ")
	}
	err := s.Keyring.Ready()
	if err == nil {
		if domainReason != "" {
			return c.JSON(http.StatusOK, probeStatus{Status: "degraded", Reason: domainReason, Domains: domains})
		}
		return c.JSON(http.StatusOK, probeStatus{Status: "ready", Domains: domains})
	}
	var re *keys.ReadinessError
	if !errors.As(err, &re) {
		return c.JSON(http.StatusServiceUnavailable, probeStatus{Status: "unavailable", Reason: err.Error(), Domains: domains})
	}
	reason := err.Error()
	if domainReason != "" {
		reason += "; " + domainReason
	}
	if re.Critical() {
		return c.JSON(http.StatusServiceUnavailable, probeStatus{Status: "unavailable", Reason: reason, NotReady: re.Issuers, Domains: domains})
	}
	return c.JSON(http.StatusOK, probeStatus{Status: "degraded", Reason: reason, NotReady: re.Issuers, Domains: domains})
}
