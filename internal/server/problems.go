package server

import (
	"encoding/json"
	"errors"
	"net/http"

	"github.com/labstack/echo/v4"

	"github.com/ehealth-nl/portal/internal/keys"
)

// problemTypePrefix starts every problem type URI; the README lists them.
const problemTypePrefix = "urn:portal:problem:"

// Problem is an RFC 9457 problem details body, the shape of every API error.
type Problem struct {
	Type   string       `json:"type"`
	Title  string       `json:"title"`
	Status int          `json:"status"`
	Detail string       `json:"detail,omitempty"`
	Errors []FieldError `json:"errors,omitempty"`
}

// FieldError names one invalid request field and says what is wrong with it.
type FieldError struct {
	Field  string `json:"field"`
	Reason string `json:"reason"`
}

func newProblem(status int, kind, title, detail string) *Problem {
	return &Problem{Type: problemTypePrefix + kind, Title: title, Status: status, Detail: detail}
}

// problemFor translates an error from a domain package or from Echo into
// the problem the client sees. It is the only place that maps errors to
// status codes. Unknown errors become a 500 whose detail reveals nothing.
func problemFor(err error) *Problem {
	var he *echo.HTTPError
	switch {
	case errors.Is(err, keys.ErrUnknownIssuer):
		return newProblem(http.StatusNotFound, "unknown-issuer", "Unknown issuer", "No issuer has that name.")
	case errors.Is(err, keys.ErrNotLoaded), errors.Is(err, keys.ErrNoActiveKey):
		return newProblem(http.StatusServiceUnavailable, "keys-unavailable", "Signing keys unavailable", "This instance has not loaded an active signing key yet; try again shortly.")
	case errors.As(err, &he):
		switch he.Code {
		case http.StatusNotFound:
			return newProblem(he.Code, "not-found", "Not found", "No resource at this path.")
		case http.StatusMethodNotAllowed:
			return newProblem(he.Code, "method-not-allowed", "Method not allowed", "This path does not accept that method.")
		case http.StatusRequestEntityTooLarge:
			return newProblem(he.Code, "body-too-large", "Request body too large", "The request body is over the size limit.")
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
	if p.Status >= 500 {
		s.Logger.Error("request failed", "method", c.Request().Method, "path", c.Path(), "status", p.Status, "err", err)
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
