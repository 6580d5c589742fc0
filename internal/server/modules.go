package server

import (
	"net/http"

	"github.com/labstack/echo/v4"

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

func (s *server) handleListModules(c echo.Context) error {
	list, err := s.Modules.Modules(c.Request().Context())
	if err != nil {
		return err
	}
	if list == nil {
		list = []launch.Module{}
	}
	return c.JSON(http.StatusOK, map[string]any{"modules": list})
}

func (s *server) handleGetModule(c echo.Context) error {
	m, err := s.Modules.Module(c.Request().Context(), c.Param("slug"))
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, m)
}

// handlePutModule creates or replaces the module named in the path: 201
// when it is new, 200 when it replaced one.
func (s *server) handlePutModule(c echo.Context) error {
	var body moduleBody
	if err := bindJSON(c, &body, false); err != nil {
		return err
	}
	slug := c.Param("slug")
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

func (s *server) handleDeleteModule(c echo.Context) error {
	if err := s.Modules.Delete(c.Request().Context(), c.Param("slug")); err != nil {
		return err
	}
	return c.NoContent(http.StatusNoContent)
}
