package server

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"reflect"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/labstack/echo/v4"

	"github.com/ehealth-nl/portal/internal/keys"
)

// maxBodyBytes is the largest request body any route accepts. Launch
// requests, module registrations and rotation requests are a few hundred
// bytes; the limit only has to stop a client from making the service read
// and hold megabytes.
const maxBodyBytes = 16 << 10

// malformedError means a request could not be read: the body is not the
// JSON object the route takes, or a path or query parameter is not of the
// form it must have. It is a 400 naming the member or parameter at fault.
type malformedError struct {
	Field  string // the JSON member, path or query parameter; "body" when no single one is to blame
	Reason string // what is wrong with it
	Err    error  // what reading the body failed with, if it did
}

// Error says which field is malformed and how.
func (e *malformedError) Error() string { return "malformed request: " + e.Field + ": " + e.Reason }

// Unwrap returns the read error, so a body over the size limit (413) can be
// told from one that is merely unreadable.
func (e *malformedError) Unwrap() error { return e.Err }

// limitBody caps every request body at maxBodyBytes, on every route (the
// demo module's form post and the launch link's post included): a body
// that says it is longer is refused with 413 at once, and reading past the
// limit of one that does not say (chunked) fails with an
// *http.MaxBytesError, which the decoder answers with 413 too.
func limitBody(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		r := c.Request()
		if r.ContentLength > maxBodyBytes {
			return echo.ErrStatusRequestEntityTooLarge
		}
		if r.Body != nil && r.Body != http.NoBody { // a GET has nothing to limit
			r.Body = http.MaxBytesReader(c.Response(), r.Body, maxBodyBytes)
		}
		return next(c)
	}
}

// noStore marks every answer of a route as not to be cached: API answers
// hold launch links, tokens and audit records.
func noStore(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		c.Response().Header().Set("Cache-Control", "no-store")
		return next(c)
	}
}

// allowQuery refuses query parameters other than the named ones, so a
// misspelt filter is an error instead of being ignored.
func allowQuery(c echo.Context, names ...string) error {
	for name := range c.QueryParams() {
		if !slices.Contains(names, name) {
			known := "none"
			if len(names) > 0 {
				known = strings.Join(names, ", ")
			}
			return &malformedError{Field: printableName(name), Reason: "is not a known query parameter (known: " + known + ")"}
		}
	}
	return nil
}

// timeRange reads the from and to query parameters of a list: RFC 3339
// times, either may be absent.
func timeRange(c echo.Context, from, to *time.Time) error {
	for _, p := range []struct {
		name string
		dst  *time.Time
	}{{"from", from}, {"to", to}} {
		if v := c.QueryParam(p.name); v != "" {
			t, err := time.Parse(time.RFC3339, v)
			if err != nil {
				return &malformedError{Field: p.name, Reason: "must be an RFC 3339 time such as 2026-11-24T09:00:00Z"}
			}
			*p.dst = t
		}
	}
	return nil
}

// slugParam reads a path or query parameter that names a module or an
// issuer, refusing what cannot be a slug before it reaches the database
// (PostgreSQL refuses NUL and invalid UTF-8 with an error, not a miss).
func slugParam(field, value string) (string, error) {
	if !keys.ValidSlug(value) {
		return "", &malformedError{Field: field, Reason: "must be 1-63 lower-case letters, digits or dashes, starting with a letter or digit"}
	}
	return value, nil
}

// errNotJSON means a request body was sent with another content type.
var errNotJSON = errors.New("the request body must be application/json")

// requireJSON refuses bodies that do not say they are JSON.
func requireJSON(c echo.Context) error {
	mt, _, err := mime.ParseMediaType(c.Request().Header.Get(echo.HeaderContentType))
	if err != nil || mt != echo.MIMEApplicationJSON {
		return errNotJSON
	}
	return nil
}

// bindJSON reads the request body into dst, a pointer to a struct whose
// members carry json tags, through decodeStrict. An empty body is allowed
// only when optional is true (dst is then left as it is).
func bindJSON(c echo.Context, dst any, optional bool) error {
	data, err := io.ReadAll(io.LimitReader(c.Request().Body, maxBodyBytes+1))
	if err != nil {
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) {
			return echo.ErrStatusRequestEntityTooLarge
		}
		return &malformedError{Field: "body", Reason: "could not be read", Err: err}
	}
	if optional && len(bytes.TrimSpace(data)) == 0 {
		return nil
	}
	if err := requireJSON(c); err != nil {
		return err
	}
	return decodeStrict(data, dst)
}

// decodeStrict is the one JSON decoder of the API. encoding/json on its own
// matches member names case-insensitively and keeps the last of two equal
// members, so {"user":"Patient/1","USER":"Patient/2"} would pass one value
// to a check and another to the token. Here the body must be exactly one
// JSON object of valid UTF-8, at most maxBodyBytes, whose member names are
// the exact names of dst's fields, each at most once, whose values have the
// field's JSON type, whose strings hold no NUL (PostgreSQL cannot store it),
// and after which nothing follows. A refusal is a *malformedError naming
// the member.
func decodeStrict(data []byte, dst any) error {
	if len(data) > maxBodyBytes {
		return &malformedError{Field: "body", Reason: fmt.Sprintf("is over %d bytes", maxBodyBytes), Err: echo.ErrStatusRequestEntityTooLarge}
	}
	if !utf8.Valid(data) {
		return &malformedError{Field: "body", Reason: "is not valid UTF-8"}
	}
	known := jsonMembers(dst)
	dec := json.NewDecoder(bytes.NewReader(data))
	tok, err := dec.Token()
	if err != nil || tok != json.Delim('{') {
		return &malformedError{Field: "body", Reason: "must be a JSON object"}
	}
	seen := map[string]bool{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return syntaxProblem(err)
		}
		name, _ := tok.(string)
		switch {
		case name == "":
			return &malformedError{Field: "body", Reason: "has a member with an empty name"}
		case !known[name]:
			return &malformedError{Field: printableName(name), Reason: "is not a known member (names are case-sensitive)"}
		case seen[name]:
			return &malformedError{Field: name, Reason: "appears twice"}
		}
		seen[name] = true
		var value json.RawMessage
		if err := dec.Decode(&value); err != nil {
			return syntaxProblem(err)
		}
	}
	if tok, err := dec.Token(); err != nil || tok != json.Delim('}') {
		return &malformedError{Field: "body", Reason: "is truncated JSON"}
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return &malformedError{Field: "body", Reason: "has data after the JSON object"}
	}
	// Names are now exact and unique, so encoding/json's case-insensitive
	// matching has nothing left to choose between.
	if err := json.Unmarshal(data, dst); err != nil {
		var typeErr *json.UnmarshalTypeError
		if errors.As(err, &typeErr) && typeErr.Field != "" {
			return &malformedError{Field: typeErr.Field, Reason: "must be " + jsonKind(typeErr.Type)}
		}
		return &malformedError{Field: "body", Reason: "is not a valid request"}
	}
	return refuseNUL(dst)
}

// refuseNUL refuses a decoded string member holding U+0000, which
// PostgreSQL cannot store in text: a 400 naming the member, not a 500.
func refuseNUL(dst any) error {
	v := reflect.ValueOf(dst).Elem()
	for i := range v.NumField() {
		f := v.Field(i)
		if f.Kind() == reflect.String && strings.ContainsRune(f.String(), 0) {
			name, _, _ := strings.Cut(v.Type().Field(i).Tag.Get("json"), ",")
			return &malformedError{Field: name, Reason: "must not contain a NUL character"}
		}
	}
	return nil
}

// syntaxProblem describes a JSON syntax error.
func syntaxProblem(err error) error {
	var syntax *json.SyntaxError
	if errors.As(err, &syntax) {
		return &malformedError{Field: "body", Reason: fmt.Sprintf("is not valid JSON (at byte %d)", syntax.Offset)}
	}
	return &malformedError{Field: "body", Reason: "is truncated JSON"}
}

// jsonMembers returns the member names of the struct dst points to.
func jsonMembers(dst any) map[string]bool {
	t := reflect.TypeOf(dst).Elem()
	names := map[string]bool{}
	for i := range t.NumField() {
		name, _, _ := strings.Cut(t.Field(i).Tag.Get("json"), ",")
		if name != "" && name != "-" {
			names[name] = true
		}
	}
	return names
}

// jsonKind names the JSON type a Go type decodes from.
func jsonKind(t reflect.Type) string {
	switch t.Kind() {
	case reflect.Bool:
		return "true or false"
	case reflect.Int, reflect.Int64, reflect.Int32, reflect.Float64:
		return "a number"
	case reflect.String:
		return "a string"
	}
	return "of another type"
}

// printableName makes an unknown member name safe to echo in a problem:
// at most 64 characters, control characters replaced.
func printableName(s string) string {
	if len(s) > 64 {
		s = s[:64]
		for len(s) > 0 && !utf8.ValidString(s) {
			s = s[:len(s)-1]
		}
		s += "…"
	}
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) {
			return '?'
		}
		return r
	}, s)
}
