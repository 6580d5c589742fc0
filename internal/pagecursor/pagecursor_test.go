package pagecursor

import (
	"encoding/base64"
	"testing"
	"time"
)

func TestCursor_RoundTripsAndRefusesWhatItDidNotMake(t *testing.T) {
	at := time.Date(2026, 12, 2, 10, 0, 0, 123456000, time.UTC)
	id := "0b5e7c1a-3f4d-4c2b-9a8e-1d2c3b4a5f60"
	gotAt, gotID, err := Decode(Encode(at, id))
	if err != nil || !gotAt.Equal(at) || gotID != id {
		t.Fatalf("round trip: %v %v %v", gotAt, gotID, err)
	}
	for _, bad := range []string{"%%", "", base64.RawURLEncoding.EncodeToString([]byte("123|not-a-uuid")),
		base64.RawURLEncoding.EncodeToString([]byte("x|" + id)), base64.RawURLEncoding.EncodeToString([]byte(id))} {
		if _, _, err := Decode(bad); err != ErrBadCursor {
			t.Errorf("Decode(%q) = %v, want ErrBadCursor", bad, err)
		}
	}
}
