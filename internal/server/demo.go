package server

import (
	"context"
	"errors"
	"net/http"
	"strconv"

	"github.com/labstack/echo/v4"

	"github.com/ehealth-nl/portal/internal/launch"
	"github.com/ehealth-nl/portal/pkg/hti"
)

// TokenVerifier checks a launch token as a module would.
type TokenVerifier interface {
	Verify(ctx context.Context, token string) (*hti.Claims, error)
}

// The demo's sample patient task and the people who may open it.
const (
	demoTask         = "Task/demo-task-1"
	demoPatient      = "Patient/demo-patient"
	demoPractitioner = "Practitioner/demo-practitioner"
	demoRelative     = "RelatedPerson/demo-relative"
)

// demoRole is one way to launch the demo task.
type demoRole struct {
	Key, Label, User string
}

var demoRoles = []demoRole{
	{"patient", "Start als de patiënt (Anna de Vries)", demoPatient},
	{"practitioner", "Start als de behandelaar (dr. P. Jansen)", demoPractitioner},
	{"related-person", "Start als naaste (Kees de Vries, partner)", demoRelative},
}

type demoPortalPage struct {
	Nonce     string
	Task      string
	Patient   string
	Roles     []demoRole
	PublicURL string
}

// handleDemoPortal shows a portal page with one patient task and a button
// per role.
func (s *server) handleDemoPortal(c echo.Context) error {
	nonce := newNonce()
	return s.renderPage(c, http.StatusOK, "demo_portal.html", nonce, "'self'",
		demoPortalPage{Nonce: nonce, Task: demoTask, Patient: demoPatient, Roles: demoRoles, PublicURL: s.PublicURL})
}

// handleDemoLaunch creates a launch for the chosen role, as a portal
// backend would through POST /api/v1/launches, and sends the browser to
// the launch link.
func (s *server) handleDemoLaunch(c echo.Context) error {
	// Only the demo page itself may start launches (a cross-site form must not).
	if site := c.Request().Header.Get("Sec-Fetch-Site"); site != "" && site != "same-origin" {
		return s.renderMessage(c, http.StatusForbidden, message{Title: "Niet toegestaan", Message: "Start de demo vanaf de demopagina.", English: "Start the demo from the demo page."})
	}
	req := launch.Request{Module: s.Demo.Module, Task: demoTask}
	for _, r := range demoRoles {
		if r.Key == c.FormValue("role") {
			req.User = r.User
			if task, ok := s.Demo.Tasks[r.Key]; ok {
				req.Task = task // from the domain, which must agree on module and patient
			}
		}
	}
	if req.User == "" {
		return s.renderMessage(c, http.StatusBadRequest, message{Title: "Onbekende rol", Message: "Kies een van de knoppen op de demopagina.", English: "Pick one of the buttons on the demo page."})
	}
	if req.User != demoPatient {
		req.Patient = demoPatient
	}
	created, err := s.Launches.Create(c.Request().Context(), req, launch.Caller{Name: "demo-portal", Addr: c.RealIP(),
		RequestID: c.Response().Header().Get("X-Request-Id")})
	if err != nil {
		s.logger(c).Error("demo launch failed", "err", err)
		status := problemFor(err).Status
		return s.renderMessage(c, status, statusPage(status))
	}
	c.Response().Header().Set("Cache-Control", "no-store")
	return c.Redirect(http.StatusSeeOther, created.LaunchURL)
}

type claimRow struct{ Name, Value string }

type demoModulePage struct {
	Nonce     string
	FormIss   string
	Fields    []string
	Claims    []claimRow
	Error     string
	PortalURL string
}

// handleDemoModule is a module's launch endpoint: it takes the token from
// the form (or query), verifies it with pkg/hti against this service's
// JWKS fetched over HTTP, and shows the verified claims.
func (s *server) handleDemoModule(c echo.Context) error {
	if _, err := c.FormParams(); err != nil {
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) {
			return echo.ErrStatusRequestEntityTooLarge
		}
		return &malformedError{Field: "body", Reason: "is not a form"}
	}
	token := c.FormValue("launch")
	if token == "" {
		token = c.FormValue("token")
	}
	page := demoModulePage{Nonce: newNonce(), FormIss: c.FormValue("iss"), PortalURL: s.PublicURL + "/"}
	if params, err := c.FormParams(); err == nil {
		for name := range params {
			page.Fields = append(page.Fields, name)
		}
	}
	status := http.StatusOK
	claims, err := s.Demo.Verifier.Verify(c.Request().Context(), token)
	if err != nil {
		page.Error = err.Error()
		status = http.StatusUnauthorized
	} else {
		page.Claims = []claimRow{
			{"iss", claims.Issuer}, {"aud", claims.Audience}, {"sub", claims.Subject}, {"resource", claims.Resource},
			{"patient", claims.Patient}, {"definition", claims.Definition}, {"intent", claims.Intent},
			{"hti-version", claims.HTIVersion}, {"idp_hint", claims.IDPHint}, {"jti", claims.JTI},
			{"iat", strconv.FormatInt(claims.IssuedAt, 10)}, {"exp", strconv.FormatInt(claims.ExpiresAt, 10)},
		}
	}
	return s.renderPage(c, status, "demo_module.html", page.Nonce, "'none'", page)
}
