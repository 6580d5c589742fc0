package server

import (
	"encoding/json"
	"errors"
	"net/http"
	"strings"

	"github.com/labstack/echo/v4"

	"github.com/ehealth-nl/portal/internal/adminevents"
	"github.com/ehealth-nl/portal/internal/apikeys"
	"github.com/ehealth-nl/portal/internal/auditoutbox"
	"github.com/ehealth-nl/portal/internal/keys"
	"github.com/ehealth-nl/portal/internal/launch"
	"github.com/ehealth-nl/portal/internal/postgres"
	"github.com/ehealth-nl/portal/internal/smart"
)

// problemTypePrefix starts every problem type URI; the README lists them.
const problemTypePrefix = "urn:portal:problem:"

// Problem is an RFC 9457 problem details body, the shape of every API error.
type Problem struct {
	Type   string       `json:"type"`             // a stable URI naming the kind of problem
	Title  string       `json:"title"`            // a short human summary of the type
	Status int          `json:"status"`           // the HTTP status
	Detail string       `json:"detail,omitempty"` // what happened in this case
	Errors []FieldError `json:"errors,omitempty"` // the invalid fields, for request errors
	// Refusal is the rule of the Koppeltaal domain that refused a launch
	// (launch-refused, task-not-launchable), e.g. careteam-not-member.
	Refusal string `json:"refusal,omitempty"`
	// LaunchID is the refused launch's record in the audit trail.
	LaunchID string `json:"launch_id,omitempty"`
}

// FieldError names one invalid request field and says what is wrong with it.
type FieldError struct {
	Field  string `json:"field"`  // the request field (or header) at fault
	Reason string `json:"reason"` // what is wrong with it
}

func newProblem(status int, kind, title, detail string) *Problem {
	return &Problem{Type: problemTypePrefix + kind, Title: title, Status: status, Detail: detail}
}

// problemFor translates an error from a domain package or from Echo into
// the problem the client sees. It is the only place that classifies errors:
// API answers, the launch page and the refusal metrics all derive from it.
// Unknown errors become a 500 whose detail reveals nothing.
func problemFor(err error) *Problem {
	var (
		he        *echo.HTTPError
		malformed *malformedError
		invalid   *launch.ValidationError
		filter    *adminevents.FilterError
		outbox    *auditoutbox.ValidationError
		refused   *launch.RefusedError
	)
	switch {
	case errors.As(err, &he) && he.Code == http.StatusRequestEntityTooLarge:
		// Also when a chunked body ran over the limit while the decoder read it.
		p := newProblem(he.Code, "body-too-large", "Request body too large", "The request body is over the size limit.")
		p.Errors = []FieldError{{Field: "body", Reason: "is over the size limit"}}
		return p
	case errors.As(err, &malformed):
		p := newProblem(http.StatusBadRequest, "malformed-request", "Malformed request", "The request body or query could not be read: "+malformed.Field+" "+malformed.Reason+".")
		p.Errors = []FieldError{{Field: malformed.Field, Reason: malformed.Reason}}
		return p
	case errors.As(err, &invalid):
		p := newProblem(http.StatusUnprocessableEntity, "invalid-request", "Invalid request", "Some fields are invalid; see errors.")
		for _, f := range invalid.Fields {
			p.Errors = append(p.Errors, FieldError{Field: f.Field, Reason: f.Reason})
		}
		return p
	case errors.As(err, &filter):
		p := newProblem(http.StatusUnprocessableEntity, "invalid-request", "Invalid request", "Some fields are invalid; see errors.")
		p.Errors = []FieldError{{Field: filter.Field, Reason: filter.Reason}}
		return p
	case errors.As(err, &outbox):
		p := newProblem(http.StatusUnprocessableEntity, "invalid-request", "Invalid request", "Some fields are invalid; see errors.")
		for _, f := range outbox.Fields {
			p.Errors = append(p.Errors, FieldError{Field: f.Field, Reason: f.Reason})
		}
		return p
	case errors.Is(err, errNotJSON):
		p := newProblem(http.StatusUnsupportedMediaType, "unsupported-media-type", "Unsupported media type", "Send the body as application/json.")
		p.Errors = []FieldError{{Field: "Content-Type", Reason: "must be application/json"}}
		return p
	case errors.Is(err, errMissingAPIKey):
		p := newProblem(http.StatusUnauthorized, "unauthenticated", "API key required", "Send an API key as Authorization: Bearer <key>.")
		p.Errors = []FieldError{{Field: "Authorization", Reason: "must be Bearer followed by an API key"}}
		return p
	case errors.Is(err, apikeys.ErrUnauthenticated), errors.Is(err, launch.ErrCallerRevoked):
		p := newProblem(http.StatusUnauthorized, "unauthenticated", "Unknown or revoked API key", "The API key is not valid (unknown, malformed or revoked).")
		p.Errors = []FieldError{{Field: "Authorization", Reason: "is not a valid API key"}}
		return p
	case errors.Is(err, errWrongScope):
		p := newProblem(http.StatusForbidden, "forbidden", "Wrong scope", "This API key's scope does not allow this request.")
		p.Errors = []FieldError{{Field: "Authorization", Reason: "the key's scope does not allow this request"}}
		return p
	case errors.As(err, &refused):
		// Refusal details name FHIR references only (pseudonymous ids), as
		// the launch record does.
		var p *Problem
		if refused.Stage == launch.StageAuthorization {
			p = newProblem(http.StatusForbidden, "launch-refused", "Launch refused",
				"The Koppeltaal domain does not let this user start this Task: "+refused.Rule+".")
		} else {
			p = newProblem(http.StatusUnprocessableEntity, "task-not-launchable", "Task not launchable",
				"The Task does not lead to a module that can be launched: "+refused.Rule+".")
		}
		detail := refused.Detail
		if len(detail) > 300 {
			detail = strings.ToValidUTF8(detail[:300], "") + "…"
		}
		p.Errors = []FieldError{{Field: refused.Field(), Reason: refused.Rule + ": " + detail}}
		p.Refusal, p.LaunchID = refused.Rule, refused.LaunchID
		return p
	case errors.Is(err, smart.ErrRefused):
		return newProblem(http.StatusServiceUnavailable, "domain-client-refused", "Koppeltaal domain refused the portal",
			"The domain's token endpoint refused this portal's client authentication; nothing was changed. An operator must check the registration in Domain Management.")
	case errors.Is(err, launch.ErrTicketUsed):
		return newProblem(http.StatusGone, "ticket-used", "Launch link already used", "A launch link works once; start the module again from the portal.")
	case errors.Is(err, launch.ErrTicketExpired):
		return newProblem(http.StatusGone, "ticket-expired", "Launch link expired", "Start the module again from the portal.")
	case errors.Is(err, launch.ErrModuleChanged):
		return newProblem(http.StatusGone, "module-changed", "Module changed", "The module was removed or re-pointed after the launch link was made; start the launch again.")
	case errors.Is(err, launch.ErrTicketNotFound):
		return newProblem(http.StatusNotFound, "ticket-unknown", "Unknown launch link", "No launch has this link.")
	case errors.Is(err, postgres.ErrUnavailable):
		return newProblem(http.StatusServiceUnavailable, "unavailable", "Temporarily unavailable", "The database cannot be reached; nothing was changed. Retry shortly.")
	case errors.Is(err, keys.ErrUnknownIssuer), errors.Is(err, keys.ErrIssuerNotFound):
		return newProblem(http.StatusNotFound, "unknown-issuer", "Unknown issuer", "No issuer has that name.")
	case errors.Is(err, launch.ErrModuleNotFound):
		return newProblem(http.StatusNotFound, "unknown-module", "Unknown module", "No module has that slug.")
	case errors.Is(err, keys.ErrNotLoaded), errors.Is(err, keys.ErrNoActiveKey):
		return newProblem(http.StatusServiceUnavailable, "keys-unavailable", "Signing keys unavailable", "This instance has not loaded an active signing key yet; try again shortly.")
	case errors.Is(err, launch.ErrDomainUnavailable):
		// After the keys: an issuer that cannot sign cannot authenticate to
		// its domain either, and that is the cause to report.
		return newProblem(http.StatusServiceUnavailable, "domain-unavailable", "Koppeltaal domain unavailable",
			"The domain's FHIR server or token endpoint did not answer in time or answered wrongly; nothing was changed. Retry shortly.")
	case errors.Is(err, keys.ErrNextKeyTooYoung), errors.Is(err, keys.ErrNoNextKey), errors.Is(err, keys.ErrRotationTooSoon):
		return newProblem(http.StatusConflict, "rotation-refused", "Rotation refused", err.Error())
	case errors.As(err, &he):
		switch he.Code {
		case http.StatusNotFound:
			return newProblem(he.Code, "not-found", "Not found", "No resource at this path.")
		case http.StatusMethodNotAllowed:
			return newProblem(he.Code, "method-not-allowed", "Method not allowed", "This path does not accept that method.")
		}
		if he.Code >= 400 && he.Code < 500 {
			return newProblem(he.Code, "bad-request", http.StatusText(he.Code), http.StatusText(he.Code))
		}
	}
	return newProblem(http.StatusInternalServerError, "internal", "Internal error", "The request could not be completed; the error was logged.")
}

// handleError is Echo's error handler: it writes the problem+json answer
// and logs server-side failures.
func (s *server) handleError(err error, c echo.Context) {
	if c.Response().Committed {
		return
	}
	p := problemFor(err)
	switch p.Status {
	case http.StatusUnauthorized:
		c.Response().Header().Set("WWW-Authenticate", `Bearer realm="portal"`)
	case http.StatusServiceUnavailable:
		c.Response().Header().Set("Retry-After", "5")
	}
	switch {
	case p.Status == http.StatusServiceUnavailable:
		// Expected while the database is away; the cause is in the message.
		s.logger(c).Warn("request refused for now", "method", c.Request().Method, "route", c.Path(), "status", p.Status, "err", err)
	case p.Status >= 500:
		s.logger(c).Error("request failed", "method", c.Request().Method, "route", c.Path(), "status", p.Status, "err", err)
	}
	c.Response().Header().Set("Cache-Control", "no-store")
	if c.Request().Method == http.MethodHead {
		_ = c.NoContent(p.Status)
		return
	}
	c.Response().Header().Set(echo.HeaderContentType, "application/problem+json")
	c.Response().WriteHeader(p.Status)
	_ = writeJSON(c.Response(), p)
}

func writeJSON(w http.ResponseWriter, v any) error {
	return json.NewEncoder(w).Encode(v)
}

// problemKind is the problem type without its prefix, e.g. "ticket-used".
func problemKind(p *Problem) string { return strings.TrimPrefix(p.Type, problemTypePrefix) }
