package server

import (
	"errors"
	"net/http"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/ehealth-nl/portal/internal/launch"
)

// decodeLaunchRequest reads the body of POST /api/v1/launches and
// /api/v1/launch-tokens.
func decodeLaunchRequest(c echo.Context) (launch.Request, error) {
	if err := allowQuery(c); err != nil {
		return launch.Request{}, err
	}
	var req launch.Request
	err := bindJSON(c, &req, false)
	return req, err
}

// handleCreateLaunch answers POST /api/v1/launches with a one-time launch link.
func (s *server) handleCreateLaunch(c echo.Context) error {
	req, err := decodeLaunchRequest(c)
	if err != nil {
		return err
	}
	created, err := s.Launches.Create(c.Request().Context(), req, caller(c))
	if err != nil {
		s.logRefusal(c, req, err)
		return err
	}
	s.Metrics.LaunchCreated("ticket")
	s.logger(c).Info("launch created", "launch_id", created.ID, "module", req.Module, "task", req.Task, "api_key", caller(c).Name)
	return c.JSON(http.StatusCreated, created)
}

// logRefusal logs a launch the Koppeltaal domain refused, with its rule
// and FHIR references only (no token, no personal data).
func (s *server) logRefusal(c echo.Context, req launch.Request, err error) {
	var refused *launch.RefusedError
	if errors.As(err, &refused) {
		s.logger(c).Info("launch refused by the domain", "launch_id", refused.LaunchID, "stage", string(refused.Stage),
			"refusal", refused.Rule, "task", req.Task, "user", req.User, "api_key", caller(c).Name)
	}
}

// issuedTokenBody is the answer of POST /api/v1/launch-tokens.
type issuedTokenBody struct {
	ID        string            `json:"id"`
	Token     string            `json:"token"`
	JTI       string            `json:"jti"`
	ExpiresAt time.Time         `json:"expires_at"`
	URL       string            `json:"url"`
	Method    string            `json:"method"`
	Fields    map[string]string `json:"fields"`
}

// handleIssueToken answers POST /api/v1/launch-tokens with a signed token
// and the form fields, for portals that post the form themselves.
func (s *server) handleIssueToken(c echo.Context) error {
	req, err := decodeLaunchRequest(c)
	if err != nil {
		return err
	}
	issued, err := s.Launches.IssueToken(c.Request().Context(), req, caller(c))
	if err != nil {
		s.logRefusal(c, req, err)
		return err
	}
	s.Metrics.LaunchCreated("token")
	s.logger(c).Info("launch token issued", "launch_id", issued.ID, "module", issued.Form.Module, "task", req.Task,
		"jti", issued.JTI, "kid", issued.Form.Kid, "api_key", caller(c).Name)
	c.Response().Header().Set("Cache-Control", "no-store")
	return c.JSON(http.StatusCreated, issuedTokenBody{
		ID: issued.ID, Token: issued.Token, JTI: issued.JTI, ExpiresAt: issued.ExpiresAt,
		URL: issued.Form.URL, Method: string(issued.Form.Method), Fields: issued.Form.FieldMap(),
	})
}

// handleListLaunches answers GET /api/v1/launches: the audit trail, newest
// first, filtered by task, user, patient, module, issuer and time.
func (s *server) handleListLaunches(c echo.Context) error {
	if err := allowQuery(c, "task", "user", "patient", "module", "issuer", "outcome", "from", "to", "limit", "cursor"); err != nil {
		return err
	}
	q := c.QueryParams()
	f := launch.Filter{Task: q.Get("task"), User: q.Get("user"), Patient: q.Get("patient"), Module: q.Get("module"),
		Issuer: q.Get("issuer"), Outcome: q.Get("outcome"), Cursor: q.Get("cursor")}
	if err := timeRange(c, &f.From, &f.To); err != nil {
		return err
	}
	if v := q.Get("limit"); v != "" {
		if err := echo.QueryParamsBinder(c).Int("limit", &f.Limit).BindError(); err != nil {
			return &malformedError{Field: "limit", Reason: "must be a whole number"}
		}
		if f.Limit < 1 || f.Limit > 500 {
			return &launch.ValidationError{Fields: []launch.FieldError{{Field: "limit", Reason: "must be between 1 and 500"}}}
		}
	}
	page, err := s.Launches.List(c.Request().Context(), f)
	if err != nil {
		return err
	}
	c.Response().Header().Set("Cache-Control", "no-store")
	return c.JSON(http.StatusOK, page)
}
