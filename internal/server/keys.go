package server

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/ehealth-nl/portal/internal/launch"
)

// keyBody is how a signing key is shown on the admin API: never its
// private part.
type keyBody struct {
	Kid         string     `json:"kid"`
	Issuer      string     `json:"issuer"`
	State       string     `json:"state"`
	Alg         string     `json:"alg"`
	Bits        int        `json:"bits"`
	KEK         string     `json:"kek,omitempty"`
	CreatedAt   time.Time  `json:"created_at"`
	ActivatedAt *time.Time `json:"activated_at,omitempty"`
	RetiredAt   *time.Time `json:"retired_at,omitempty"`
	ExpiresAt   *time.Time `json:"expires_at,omitempty"`
	RevokedAt   *time.Time `json:"revoked_at,omitempty"`
}

func optionalTime(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	return &t
}

func (s *server) issuerParam(v string) string {
	if v == "" {
		return s.DefaultIssuer
	}
	return v
}

// handleListKeys answers GET /api/v1/keys?issuer=SLUG with the issuer's
// keys, newest first.
func (s *server) handleListKeys(c echo.Context) error {
	list, err := s.KeyAdmin.Keys(c.Request().Context(), s.issuerParam(c.QueryParam("issuer")))
	if err != nil {
		return err
	}
	out := make([]keyBody, 0, len(list))
	for i := len(list) - 1; i >= 0; i-- {
		k := list[i]
		out = append(out, keyBody{Kid: k.Kid, Issuer: k.Issuer, State: string(k.State), Alg: string(k.Alg), Bits: k.Bits, KEK: k.KEKID,
			CreatedAt: k.CreatedAt, ActivatedAt: optionalTime(k.ActivatedAt), RetiredAt: optionalTime(k.RetiredAt),
			ExpiresAt: optionalTime(k.ExpiresAt), RevokedAt: optionalTime(k.RevokedAt)})
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
	var body rotateBody
	data, err := io.ReadAll(c.Request().Body)
	if err != nil {
		return err
	}
	if len(bytes.TrimSpace(data)) > 0 {
		if err := requireJSON(c); err != nil {
			return err
		}
		dec := json.NewDecoder(bytes.NewReader(data))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&body); err != nil {
			return &launch.MalformedError{Field: "body", Reason: `must be {"issuer": "slug", "ignore_publish_lead": false}`}
		}
	}
	change, err := s.KeyAdmin.Rotate(c.Request().Context(), s.issuerParam(body.Issuer), body.IgnorePublishLead)
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
		"created": change.Created, "expired": change.Expired,
	})
}
