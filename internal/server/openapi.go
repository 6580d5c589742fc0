package server

import (
	"net/http"

	"github.com/labstack/echo/v4"

	"github.com/ehealth-nl/portal/api"
)

// handleOpenAPI answers GET /api/v1/openapi.yaml with the API contract
// embedded in the binary. It needs no API key: the document holds no
// secret and describes routes anyone can reach anyway (a key only decides
// which of them answer), and client generators and API explorers fetch it
// before they have a key.
func (s *server) handleOpenAPI(c echo.Context) error {
	if err := allowQuery(c); err != nil {
		return err
	}
	c.Response().Header().Set("X-Content-Type-Options", "nosniff")
	return c.Blob(http.StatusOK, "application/yaml", api.OpenAPI)
}
