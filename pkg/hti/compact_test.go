package hti

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/lestrrat-go/jwx/v2/jwa"
)

// padded adds the "=" padding standard base64 would have.
func padded(s string) string { return s + strings.Repeat("=", (4-len(s)%4)%4) }

// withTrailingBits sets the lowest bit of the last character, which
// encodes no data when the length is not a multiple of 4.
func withTrailingBits(s string) string {
	last := strings.IndexByte(base64URLAlphabet, s[len(s)-1])
	return s[:len(s)-1] + string(base64URLAlphabet[last|1])
}

// stdAlphabet turns base64url into the standard alphabet.
func stdAlphabet(s string) string { return strings.NewReplacer("-", "+", "_", "/").Replace(s) }

// TestVerify_OnlyTheCanonicalCompactSerialization: a token that decodes to
// the same bytes as a genuine one but is not written in base64url without
// padding (RFC 7515 §2, §7.1) is malformed. Go's decoder skips line
// breaks and, unless strict, ignores trailing bits; jwx also takes padding
// and the standard alphabet.
func TestVerify_OnlyTheCanonicalCompactSerialization(t *testing.T) {
	p := newPortalFixture(t)
	// A token whose every part has a length that is not a multiple of 4
	// (so padding and trailing bits apply) and whose signature uses both
	// alphabet-specific characters.
	var parts []string
	for i := 0; ; i++ {
		claims := p.claims()
		claims["jti"] = claims["jti"].(string) + strings.Repeat("x", i%3) // varies the payload's length
		parts = strings.Split(p.sign(t, claims, "rsa-1", jwa.RS512), ".")
		if len(parts[0])%4 != 0 && len(parts[1])%4 != 0 && strings.Contains(parts[2], "-") && strings.Contains(parts[2], "_") {
			break
		}
		if i == 100 {
			t.Fatalf("no token of the shape wanted: %q", parts)
		}
	}
	h, c, s := parts[0], parts[1], parts[2]
	join := func(h, c, s string) string { return h + "." + c + "." + s }
	mid := func(x, insert string) string { return x[:len(x)/2] + insert + x[len(x)/2:] }
	if _, err := p.verifier(t, nil).Verify(context.Background(), join(h, c, s)); err != nil {
		t.Fatalf("the canonical token: %v", err)
	}
	for _, tc := range []struct{ name, token string }{
		{"padded header", join(padded(h), c, s)},
		{"padded payload", join(h, padded(c), s)},
		{"padded signature", join(h, c, padded(s))},
		{"signature in the standard alphabet", join(h, c, stdAlphabet(s))},
		{"CRLF in the header", join(mid(h, "\r\n"), c, s)},
		{"CRLF in the payload", join(h, mid(c, "\r\n"), s)},
		{"LF in the signature", join(h, c, mid(s, "\n"))},
		{"CR at the end of the signature", join(h, c, s+"\r")},
		{"space in the signature", join(h, c, mid(s, " "))},
		{"trailing bits in the header", join(withTrailingBits(h), c, s)},
		{"trailing bits in the payload", join(h, withTrailingBits(c), s)},
		{"trailing bits in the signature", join(h, c, withTrailingBits(s))},
		{"an impossible length", join(h, c, s+"AAA")}, // 4k+1 characters
		{"empty payload", join(h, "", s)},
		{"duplicate header parameter", join(b64raw(`{"alg":"RS512","kid":"rsa-1","alg":"ES384"}`), c, s)},
		{"header not an object", join(b64raw(`null`), c, s)},
		{"kid not a string", join(b64raw(`{"alg":"RS512","kid":1}`), c, s)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := p.verifier(t, nil).Verify(context.Background(), tc.token); !errors.Is(err, ErrMalformed) {
				t.Fatalf("err %v, want ErrMalformed", err)
			}
		})
	}
}

// b64raw encodes a literal JSON text as a token part.
func b64raw(s string) string { return canonicalBase64URL.EncodeToString([]byte(s)) }
