package server

import (
	"net/http"
	"net/url"
	"strings"

	"github.com/labstack/echo/v4"

	"github.com/ehealth-nl/portal/internal/launch"
)

// launchPage is the data of launch.html.
type launchPage struct {
	Nonce string
	Form  launch.Form
}

// followPage is the data of follow.html.
type followPage struct {
	Nonce  string
	Action string // the launch link itself: the form posts to it
	// AutoSubmit posts the form at once; otherwise the page shows a button
	// the user presses (see userNavigated).
	AutoSubmit bool
}

// handleFollowLink answers GET and HEAD /launch/{ticket}. Following a link
// changes nothing: a link previewer, a prefetch or a security scanner may
// fetch it any number of times. A usable link gets a small page that posts
// back to the same URL at once (with a button when JavaScript is off); a
// used, expired or unknown one gets the page that says so.
func (s *server) handleFollowLink(c echo.Context) error {
	ticket := c.Param("ticket")
	if _, err := s.Launches.Inspect(c.Request().Context(), ticket); err != nil {
		return s.launchRefused(c, err, "")
	}
	nonce := newNonce()
	return s.renderPage(c, http.StatusOK, "follow.html", nonce, "'self'",
		followPage{Nonce: nonce, Action: s.PublicURL + "/launch/" + url.PathEscape(ticket), AutoSubmit: userNavigated(c.Request())})
}

// userNavigated reports whether the browser says the user opened the link
// themselves: typed or bookmarked (Sec-Fetch-Site none), from this
// service's own pages (same-origin), or by an activation such as a click,
// redirects included (Sec-Fetch-User ?1) — the portal's "start" button
// that leads to the link. A page of another site that merely navigates to
// a link it learnt (location.href, no user activation) does not qualify:
// the page then waits for a press of its button instead of posting itself,
// so another site cannot make a victim's browser spend a link unseen.
// frame-ancestors 'none' keeps the button from being pressed through a
// frame. Browsers without Fetch Metadata send neither header and get the
// automatic post.
func userNavigated(r *http.Request) bool {
	site := r.Header.Get("Sec-Fetch-Site")
	return site == "" || site == "same-origin" || site == "none" || r.Header.Get("Sec-Fetch-User") == "?1"
}

// handleRedeemLink answers POST /launch/{ticket}: it redeems the ticket
// (once), and sends the browser on to the module with a freshly signed
// token — an auto-submitting form post, or a 303 for get modules. A post
// that a browser marks as coming from another site is refused before the
// link is touched (see crossSite).
func (s *server) handleRedeemLink(c echo.Context) error {
	req := c.Request()
	if why := crossSite(req, s.PublicURL); why != "" {
		s.Metrics.LaunchRefused("cross_site")
		s.logger(c).Warn("launch link post refused as cross-site", "reason", why)
		return s.renderMessage(c, http.StatusForbidden, pageCrossSite)
	}
	form, err := s.Launches.Redeem(req.Context(), c.Param("ticket"), launch.Browser{Addr: c.RealIP(), UserAgent: req.UserAgent(),
		RequestID: c.Response().Header().Get("X-Request-Id")})
	if err != nil {
		return s.launchRefused(c, err, form.LaunchID)
	}
	s.Metrics.LaunchRedeemed()
	s.logger(c).Info("launch redeemed", "launch_id", form.LaunchID, "module", form.Module, "jti", form.JTI, "kid", form.Kid)
	if form.Method == launch.MethodGet {
		// Launch type "redirect": iss and launch travel as query parameters.
		s.setPageHeaders(c, newNonce(), "'none'")
		return c.Redirect(http.StatusSeeOther, form.RedirectURL())
	}
	nonce := newNonce()
	return s.renderPage(c, http.StatusOK, "launch.html", nonce, launchFormAction(form.URL), launchPage{Nonce: nonce, Form: form})
}

// launchRefused shows the page for a launch link that cannot be followed
// or redeemed, and counts and logs why.
func (s *server) launchRefused(c echo.Context, err error, launchID string) error {
	p := problemFor(err)
	log := s.logger(c)
	if c.Request().Method == http.MethodPost {
		s.Metrics.LaunchRefused(refusalReason(err))
	}
	switch problemKind(p) {
	case "ticket-used":
		log.Info("launch link used again", "launch_id", launchID)
		return s.renderMessage(c, p.Status, pageTicketUsed)
	case "ticket-expired":
		log.Info("launch link expired", "launch_id", launchID)
		return s.renderMessage(c, p.Status, pageTicketExpired)
	case "module-changed":
		log.Info("launch link of a module that changed since", "launch_id", launchID)
		return s.renderMessage(c, p.Status, pageModuleChanged)
	case "ticket-unknown":
		return s.renderMessage(c, p.Status, pageTicketNotFound)
	}
	if p.Status == http.StatusServiceUnavailable {
		log.Warn("launch link could not be followed now", "launch_id", launchID, "err", err)
		c.Response().Header().Set("Retry-After", "30")
	} else {
		log.Error("launch link failed", "launch_id", launchID, "err", err)
	}
	return s.renderMessage(c, p.Status, statusPage(p.Status))
}

// crossSite says why a POST to a launch link must be refused as coming
// from another site, or "" when it may proceed. The ticket in the path is
// the secret, and whoever knows it can redeem it; what this check stops is
// another site making a victim's browser spend a link it learnt (so the
// victim lands in a module as someone else, or the portal's user finds the
// link used). Browsers send Fetch Metadata on every request, and the page
// of handleFollowLink posts same-origin, so Sec-Fetch-Site must be
// same-origin or none (typed or bookmarked). Without that header (older
// browsers, non-browser clients) an Origin of another site is refused;
// "null" is what browsers send on form posts from pages with
// Referrer-Policy: no-referrer, such as ours, so it passes.
func crossSite(r *http.Request, publicURL string) string {
	if site := r.Header.Get("Sec-Fetch-Site"); site != "" {
		if site != "same-origin" && site != "none" {
			return "Sec-Fetch-Site " + site
		}
		return ""
	}
	if origin := r.Header.Get("Origin"); origin != "" && origin != "null" && !strings.EqualFold(origin, originOf(publicURL)) {
		return "Origin " + origin
	}
	return ""
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
