package server

import (
	"context"
	"net/http"

	"github.com/labstack/echo/v4"

	"github.com/ehealth-nl/portal/internal/auditoutbox"
)

// AuditEvents is the outbox of the Koppeltaal AuditEvents that report
// launches to the domain; *auditoutbox.Store is one.
type AuditEvents interface {
	List(ctx context.Context, f auditoutbox.Filter) (auditoutbox.Page, error)
}

// handleListAuditEvents answers GET /api/v1/audit-events: the AuditEvents
// of launches and how their delivery to the domain stands (pending,
// delivered, failed with the server's OperationOutcome), newest first,
// filtered by state and launch, paged.
func (s *server) handleListAuditEvents(c echo.Context) error {
	if err := allowQuery(c, "state", "launch", "limit", "cursor"); err != nil {
		return err
	}
	if s.AuditEvents == nil {
		return echo.NewHTTPError(http.StatusNotFound)
	}
	q := c.QueryParams()
	f := auditoutbox.Filter{State: q.Get("state"), Launch: q.Get("launch"), Cursor: q.Get("cursor")}
	limit, err := limitParam(c)
	if err != nil {
		return err
	}
	f.Limit = limit
	page, err := s.AuditEvents.List(c.Request().Context(), f)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, page)
}
