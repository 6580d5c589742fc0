package server

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"net/http"
	"net/url"

	"github.com/labstack/echo/v4"
)

// newNonce returns a fresh CSP nonce for one response.
func newNonce() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)                            // never fails since Go 1.24
	return base64.RawURLEncoding.EncodeToString(b) // CSP allows - and _ in nonces; no escaping in HTML
}

// originOf returns scheme://host[:port] of a URL, for CSP source lists.
func originOf(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "'none'"
	}
	return u.Scheme + "://" + u.Host
}

// setPageHeaders sets what every browser page of the portal carries: never
// cached (docs/ARCHITECTURE.md, "The launch form": a reload must not
// resend a token), no referrer (the URL holds a ticket), and a CSP that
// allows only this response's inline script and style.
func (s *server) setPageHeaders(c echo.Context, nonce, formAction string) {
	h := c.Response().Header()
	h.Set("Cache-Control", "no-store")
	h.Set("Pragma", "no-cache")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("X-Content-Type-Options", "nosniff")
	if s.FrameAncestors == "'none'" {
		h.Set("X-Frame-Options", "DENY")
	}
	h.Set("Content-Security-Policy", "default-src 'none'; script-src 'nonce-"+nonce+"'; style-src 'nonce-"+nonce+
		"'; form-action "+formAction+"; frame-ancestors "+s.FrameAncestors+"; base-uri 'none'")
}

// renderPage writes an HTML page from a template with the page headers.
func (s *server) renderPage(c echo.Context, status int, name string, nonce, formAction string, data any) error {
	var buf bytes.Buffer
	if err := s.pages.ExecuteTemplate(&buf, name, data); err != nil {
		return err
	}
	s.setPageHeaders(c, nonce, formAction)
	return c.HTMLBlob(status, buf.Bytes())
}

// message is the data of message.html: a page that says what happened and
// what to do, in Dutch with an English line.
type message struct {
	Nonce   string
	Title   string
	Message string
	English string
}

// renderMessage shows a message page.
func (s *server) renderMessage(c echo.Context, status int, m message) error {
	m.Nonce = newNonce()
	return s.renderPage(c, status, "message.html", m.Nonce, "'none'", m)
}

var (
	pageTicketUsed = message{
		Title:   "Deze link is al gebruikt",
		Message: "Een module-link werkt maar één keer. Start de module opnieuw vanuit het portaal.",
		English: "This launch link was already used — start the module again from the portal.",
	}
	pageTicketExpired = message{
		Title:   "Deze link is verlopen",
		Message: "Een module-link werkt maar kort. Start de module opnieuw vanuit het portaal.",
		English: "This launch link has expired — start the module again from the portal.",
	}
	pageModuleChanged = message{
		Title:   "Deze link werkt niet meer",
		Message: "De module is gewijzigd nadat deze link werd gemaakt. Start de module opnieuw vanuit het portaal.",
		English: "The module changed after this launch link was made — start the module again from the portal.",
	}
	pageCrossSite = message{
		Title:   "Deze link kan zo niet worden geopend",
		Message: "Een andere website probeerde deze module-link te gebruiken. Open de module vanuit het portaal.",
		English: "Another website tried to use this launch link — open the module from the portal.",
	}
	pageTicketNotFound = message{
		Title:   "Onbekende link",
		Message: "Deze module-link bestaat niet. Start de module vanuit het portaal.",
		English: "This launch link does not exist — start the module from the portal.",
	}
	pageUnavailable = message{
		Title:   "Tijdelijk niet beschikbaar",
		Message: "De module kan nu niet worden geopend. Probeer het over een minuut opnieuw; de link blijft geldig zolang hij niet verlopen is.",
		English: "The module cannot be opened right now. Try again in a minute; the link stays valid until it expires.",
	}
	pageInternalError = message{
		Title:   "Er ging iets mis",
		Message: "De module kon niet worden geopend. Start de module opnieuw vanuit het portaal; blijft dit gebeuren, neem dan contact op met de beheerder.",
		English: "The module could not be opened. Start it again from the portal; if this keeps happening, contact the administrator.",
	}
)

// statusPage is the page shown for a status when no handler chose one.
func statusPage(status int) message {
	if status == http.StatusServiceUnavailable {
		return pageUnavailable
	}
	return pageInternalError
}
