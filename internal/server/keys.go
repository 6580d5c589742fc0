package server

import (
	"net/http"

	"github.com/labstack/echo/v4"

	"github.com/ehealth-nl/portal/internal/keys"
)

// issuerParam reads the issuer named by a request: the default issuer when
// none is named, a slug otherwise.
func (s *server) issuerParam(field, v string) (string, error) {
	if v == "" {
		return s.DefaultIssuer, nil
	}
	return slugParam(field, v)
}

// handleListKeys answers GET /api/v1/keys?issuer=SLUG with the issuer's
// keys, newest first.
func (s *server) handleListKeys(c echo.Context) error {
	if err := allowQuery(c, "issuer"); err != nil {
		return err
	}
	issuer, err := s.issuerParam("issuer", c.QueryParam("issuer"))
	if err != nil {
		return err
	}
	list, err := s.KeyAdmin.Keys(c.Request().Context(), issuer)
	if err != nil {
		return err
	}
	out := make([]keys.Summary, 0, len(list))
	for i := len(list) - 1; i >= 0; i-- {
		out = append(out, list[i].Summary())
	}
	return c.JSON(http.StatusOK, map[string]any{"keys": out})
}

// rotateBody is what POST /api/v1/keys/rotate accepts (all optional).
type rotateBody struct {
	Issuer            string `json:"issuer"`
	IgnorePublishLead bool   `json:"ignore_publish_lead"`
}

// handleRotateKeys forces a rotation of an issuer's keys; this instance
// reloads its keyring at once, the others follow the notification.
func (s *server) handleRotateKeys(c echo.Context) error {
	if err := allowQuery(c); err != nil {
		return err
	}
	var body rotateBody
	if err := bindJSON(c, &body, true); err != nil {
		return err
	}
	issuer, err := s.issuerParam("issuer", body.Issuer)
	if err != nil {
		return err
	}
	change, err := s.KeyAdmin.Rotate(c.Request().Context(), issuer, body.IgnorePublishLead)
	if err != nil {
		return err
	}
	s.Metrics.KeyChange(change)
	s.logger(c).Info("keys rotated through the API", "issuer", change.Issuer, "change", change.String(), "api_key", caller(c).Name)
	if err := s.Keyring.Refresh(c.Request().Context()); err != nil {
		s.logger(c).Warn("keyring refresh after rotation failed; the notification will retry", "err", err)
	}
	return c.JSON(http.StatusOK, map[string]any{
		"issuer": change.Issuer, "retired": change.Retired, "activated": change.Activated,
		"created": orEmpty(change.Created), "expired": orEmpty(change.Expired),
	})
}

// orEmpty makes a nil list an empty one, so that the answer has [] where
// the API promises an array, never null.
func orEmpty(kids []string) []string {
	if kids == nil {
		return []string{}
	}
	return kids
}
