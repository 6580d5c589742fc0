// Package pagecursor is the one cursor format of the paged lists (the
// launch audit trail, the admin trail): the position of the last row of a
// page, its time and UUID, newest first, opaque to clients. Lists ordered
// by (time, id) continue strictly after it, so rows inserted meanwhile
// neither repeat nor vanish.
package pagecursor

import (
	"encoding/base64"
	"errors"
	"regexp"
	"strconv"
	"strings"
	"time"
)

var uuidPattern = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)

// ErrBadCursor means a cursor was not made by Encode.
var ErrBadCursor = errors.New("not a cursor this service returned")

// Encode makes the cursor of a row at time t with UUID id.
func Encode(t time.Time, id string) string {
	return base64.RawURLEncoding.EncodeToString([]byte(strconv.FormatInt(t.UnixMicro(), 10) + "|" + id))
}

// Decode reads a cursor made by Encode, or returns ErrBadCursor.
func Decode(c string) (time.Time, string, error) {
	raw, err := base64.RawURLEncoding.DecodeString(c)
	if err != nil {
		return time.Time{}, "", ErrBadCursor
	}
	micros, id, ok := strings.Cut(string(raw), "|")
	n, err := strconv.ParseInt(micros, 10, 64)
	if !ok || err != nil || !uuidPattern.MatchString(id) {
		return time.Time{}, "", ErrBadCursor
	}
	return time.UnixMicro(n).UTC(), id, nil
}
