package server

import (
	"net/http"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/ehealth-nl/portal/internal/adminevents"
)

// handleListAdminEvents answers GET /api/v1/admin-events: who changed
// issuers, keys, modules and API keys, newest first, filtered by actor,
// action, target and time, paged.
func (s *server) handleListAdminEvents(c echo.Context) error {
	if err := allowQuery(c, "actor", "action", "target", "from", "to", "limit", "cursor"); err != nil {
		return err
	}
	q := c.QueryParams()
	f := adminevents.Filter{Actor: q.Get("actor"), Action: q.Get("action"), Target: q.Get("target"), Cursor: q.Get("cursor")}
	for _, p := range []struct {
		name string
		dst  *time.Time
	}{{"from", &f.From}, {"to", &f.To}} {
		if v := q.Get(p.name); v != "" {
			t, err := time.Parse(time.RFC3339, v)
			if err != nil {
				return &malformedError{Field: p.name, Reason: "must be an RFC 3339 time such as 2026-11-24T09:00:00Z"}
			}
			*p.dst = t
		}
	}
	limit, err := limitParam(c)
	if err != nil {
		return err
	}
	f.Limit = limit
	page, err := s.AdminEvents.List(c.Request().Context(), f)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, page)
}
