package server

import (
	"encoding/base64"
	"net/http"
	"strconv"

	"github.com/labstack/echo/v4"

	"github.com/ehealth-nl/portal/internal/keys"
	"github.com/ehealth-nl/portal/internal/launch"
)

// moduleBody is what PUT /api/v1/modules/{slug} accepts.
type moduleBody struct {
	Slug              string `json:"slug"`
	Issuer            string `json:"issuer"`
	LaunchURL         string `json:"launch_url"`
	Audience          string `json:"audience"`
	DefaultDefinition string `json:"default_definition"`
	Method            string `json:"method"`
	Fields            string `json:"fields"`
}

// modulesPage is the answer of GET /api/v1/modules: modules by slug, paged
// like the launch audit trail.
type modulesPage struct {
	Modules []launch.Module `json:"modules"`
	Next    string          `json:"next,omitempty"` // cursor of the next page; empty on the last
}

// handleListModules answers GET /api/v1/modules?limit=&cursor=.
func (s *server) handleListModules(c echo.Context) error {
	if err := allowQuery(c, "limit", "cursor"); err != nil {
		return err
	}
	limit, err := limitParam(c)
	if err != nil {
		return err
	}
	after := ""
	if cursor := c.QueryParam("cursor"); cursor != "" {
		raw, err := base64.RawURLEncoding.DecodeString(cursor)
		if err != nil || !keys.ValidSlug(string(raw)) {
			return &malformedError{Field: "cursor", Reason: "is not a cursor this service returned"}
		}
		after = string(raw)
	}
	list, next, err := s.Modules.ModulesPage(c.Request().Context(), after, limit)
	if err != nil {
		return err
	}
	page := modulesPage{Modules: list}
	if page.Modules == nil {
		page.Modules = []launch.Module{}
	}
	if next != "" {
		page.Next = base64.RawURLEncoding.EncodeToString([]byte(next))
	}
	return c.JSON(http.StatusOK, page)
}

// limitParam reads the limit query parameter of a paged list: 1-500,
// 50 when absent.
func limitParam(c echo.Context) (int, error) {
	v := c.QueryParam("limit")
	if v == "" {
		return 50, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		return 0, &malformedError{Field: "limit", Reason: "must be a whole number"}
	}
	if n < 1 || n > 500 {
		return 0, &launch.ValidationError{Fields: []launch.FieldError{{Field: "limit", Reason: "must be between 1 and 500"}}}
	}
	return n, nil
}

// handleGetModule answers GET /api/v1/modules/{slug}.
func (s *server) handleGetModule(c echo.Context) error {
	if err := allowQuery(c); err != nil {
		return err
	}
	slug, err := slugParam("slug", c.Param("slug"))
	if err != nil {
		return err
	}
	m, err := s.Modules.Module(c.Request().Context(), slug)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, m)
}

// handlePutModule creates or replaces the module named in the path: 201
// when it is new, 200 when it replaced one.
func (s *server) handlePutModule(c echo.Context) error {
	if err := allowQuery(c); err != nil {
		return err
	}
	slug, err := slugParam("slug", c.Param("slug"))
	if err != nil {
		return err
	}
	var body moduleBody
	if err := bindJSON(c, &body, false); err != nil {
		return err
	}
	if body.Slug != "" && body.Slug != slug {
		return &launch.ValidationError{Fields: []launch.FieldError{{Field: "slug", Reason: "differs from the slug in the path"}}}
	}
	if body.Issuer == "" {
		body.Issuer = s.DefaultIssuer
	}
	m := launch.Module{Slug: slug, Issuer: body.Issuer, LaunchURL: body.LaunchURL, Audience: body.Audience,
		DefaultDefinition: body.DefaultDefinition, Method: launch.Method(body.Method), Fields: launch.FieldSet(body.Fields)}
	stored, created, err := s.Modules.Put(c.Request().Context(), m, s.Clock())
	if err != nil {
		return err
	}
	status := http.StatusOK
	if created {
		status = http.StatusCreated
	}
	return c.JSON(status, stored)
}

// handleDeleteModule answers DELETE /api/v1/modules/{slug}.
func (s *server) handleDeleteModule(c echo.Context) error {
	if err := allowQuery(c); err != nil {
		return err
	}
	slug, err := slugParam("slug", c.Param("slug"))
	if err != nil {
		return err
	}
	if err := s.Modules.Delete(c.Request().Context(), slug, s.Clock()); err != nil {
		return err
	}
	return c.NoContent(http.StatusNoContent)
}
