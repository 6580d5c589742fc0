package server

import (
	"net/http"

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
	if err := timeRange(c, &f.From, &f.To); err != nil {
		return err
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
