package launch

import (
	"encoding/json"
	"testing"
)

// TestASCIIJSON_EscapesEverythingOutsideASCII keeps token payloads ASCII:
// the Koppeltaal auth server decodes them as ASCII a second time.
func TestASCIIJSON_EscapesEverythingOutsideASCII(t *testing.T) {
	claims := map[string]string{"iss": "pörtal-€-😀", "sub": "Patient/1"}
	raw, _ := json.Marshal(claims)
	out := asciiJSON(raw)
	for _, c := range out {
		if c >= 0x80 {
			t.Fatalf("payload %q holds a non-ASCII byte", out)
		}
	}
	var back map[string]string
	if err := json.Unmarshal(out, &back); err != nil || back["iss"] != claims["iss"] || back["sub"] != claims["sub"] {
		t.Fatalf("escaped payload %s reads back as %v (%v)", out, back, err)
	}
	if want := `{"iss":"p\u00f6rtal-\u20ac-\ud83d\ude00","sub":"Patient/1"}`; string(out) != want {
		t.Fatalf("got %s, want %s", out, want)
	}
}
