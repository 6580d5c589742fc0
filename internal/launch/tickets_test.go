package launch

import (
	"bytes"
	"encoding/hex"
	"strings"
	"testing"
	"time"
)

// TestNewLaunchID_TimeOrderedVersion7: launch ids are RFC 9562 version 7
// UUIDs (version nibble 7, variant 10) whose first 48 bits are the Unix
// time in milliseconds, so ids made later sort after earlier ones, and the
// 74 other bits differ between ids made in the same millisecond.
func TestNewLaunchID_TimeOrderedVersion7(t *testing.T) {
	before := time.Now().UnixMilli()
	ids := make([]string, 200)
	for i := range ids {
		ids[i] = newLaunchID()
		if i == 100 {
			time.Sleep(2 * time.Millisecond)
		}
	}
	after := time.Now().UnixMilli()
	seen := map[string]bool{}
	for i, id := range ids {
		b, err := hex.DecodeString(strings.ReplaceAll(id, "-", ""))
		if err != nil || len(b) != 16 || len(id) != 36 {
			t.Fatalf("%q is not a UUID", id)
		}
		if b[6]>>4 != 7 || b[8]>>6 != 2 {
			t.Errorf("%s: version %d, variant %b; want 7 and 10", id, b[6]>>4, b[8]>>6)
		}
		var ms int64
		for _, x := range b[:6] {
			ms = ms<<8 | int64(x)
		}
		if ms < before || ms > after {
			t.Errorf("%s carries %d ms, made between %d and %d", id, ms, before, after)
		}
		if i > 100 && bytes.Compare(b[:6], mustHex(t, ids[50])[:6]) <= 0 {
			t.Errorf("%s (made after a pause) does not sort after %s", id, ids[50])
		}
		if seen[id] {
			t.Fatalf("%s made twice", id)
		}
		seen[id] = true
	}
}

func mustHex(t *testing.T, id string) []byte {
	b, err := hex.DecodeString(strings.ReplaceAll(id, "-", ""))
	if err != nil {
		t.Fatal(err)
	}
	return b
}
