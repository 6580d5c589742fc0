package server

import (
	"net/http"
	"strings"

	"github.com/labstack/echo/v4"

	"github.com/ehealth-nl/portal/internal/launch"
)

// launchPage is the data of launch.html.
type launchPage struct {
	Nonce string
	Form  launch.Form
}

// handleLaunchPage answers GET /launch/{ticket}: it redeems the ticket
// (once), and sends the browser on to the module with a freshly signed
// token — an auto-submitting form post, or a 303 for get modules.
func (s *server) handleLaunchPage(c echo.Context) error {
	req := c.Request()
	form, err := s.Launches.Redeem(req.Context(), c.Param("ticket"), launch.Browser{Addr: c.RealIP(), UserAgent: req.UserAgent()})
	log := s.logger(c)
	if err != nil {
		p := problemFor(err)
		s.Metrics.LaunchRefused(refusalReason(err))
		switch problemKind(p) {
		case "ticket-used":
			log.Info("launch link used again", "launch_id", form.LaunchID)
			return s.renderMessage(c, p.Status, pageTicketUsed)
		case "ticket-expired":
			log.Info("launch link expired", "launch_id", form.LaunchID)
			return s.renderMessage(c, p.Status, pageTicketExpired)
		case "ticket-unknown":
			return s.renderMessage(c, p.Status, pageTicketNotFound)
		}
		if p.Status == http.StatusServiceUnavailable {
			log.Warn("launch link could not be followed now", "launch_id", form.LaunchID, "err", err)
			c.Response().Header().Set("Retry-After", "30")
		} else {
			log.Error("launch link failed", "launch_id", form.LaunchID, "err", err)
		}
		return s.renderMessage(c, p.Status, statusPage(p.Status))
	}
	s.Metrics.LaunchRedeemed()
	log.Info("launch redeemed", "launch_id", form.LaunchID, "module", form.Module, "jti", form.JTI, "kid", form.Kid)
	if form.Method == launch.MethodGet {
		// Launch type "redirect": iss and launch travel as query parameters.
		s.setPageHeaders(c, newNonce(), "'none'")
		return c.Redirect(http.StatusSeeOther, form.RedirectURL())
	}
	nonce := newNonce()
	return s.renderPage(c, http.StatusOK, "launch.html", nonce, launchFormAction(form.URL), launchPage{Nonce: nonce, Form: form})
}

// launchFormAction is the CSP form-action of the launch page: the module's
// origin and any https destination. Browsers apply form-action to every
// redirect after the post, and modules answer the launch post by sending
// the browser on (to their login or to the Koppeltaal auth server's
// authorize endpoint) — a policy of the module's origin alone blocks that in
// Chromium. What stays forbidden is leaving https: a module served over
// plain http (loopback or development only) may redirect over http too.
func launchFormAction(moduleURL string) string {
	origin := originOf(moduleURL)
	if strings.HasPrefix(origin, "http://") {
		return origin + " https: http:"
	}
	return origin + " https:"
}
