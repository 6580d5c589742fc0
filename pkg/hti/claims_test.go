package hti

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/lestrrat-go/jwx/v2/jwa"
)

// TestParseClaims: unknown claims are ignored (RFC 7519 §4), or refused by
// ParseClaimsStrict; the HTI claims keep their types either way, and a
// duplicate member is refused either way.
func TestParseClaims(t *testing.T) {
	const base = `"iss":"p","aud":"Device/1","sub":"Patient/1","resource":"Task/1","hti-version":"2.0","jti":"j","iat":1,"exp":2`
	for _, tc := range []struct {
		name       string
		payload    string
		lenient    error  // ErrMalformedClaims, or nil: accepted
		strict     error  // the same for ParseClaimsStrict
		claim      string // instead: a *ClaimError for this claim, from both
		wantIssuer string // when accepted
		wantIAT    int64
	}{
		{name: "HTI claims only", payload: `{` + base + `}`, wantIssuer: "p", wantIAT: 1},
		{name: "an unknown string claim", payload: `{` + base + `,"role":"admin"}`, strict: ErrMalformedClaims, wantIssuer: "p", wantIAT: 1},
		{name: "an unknown object claim", payload: `{"nbf":{"x":[1,2]},` + base + `}`, strict: ErrMalformedClaims, wantIssuer: "p", wantIAT: 1},
		{name: "an upper-case variant of iss", payload: `{` + base + `,"ISS":"evil"}`, strict: ErrMalformedClaims, wantIssuer: "p", wantIAT: 1},
		{name: "an upper-case variant of iss first", payload: `{"ISS":"evil",` + base + `}`, strict: ErrMalformedClaims, wantIssuer: "p", wantIAT: 1},
		{name: "a variant of iat", payload: `{` + base + `,"IAT":99}`, strict: ErrMalformedClaims, wantIssuer: "p", wantIAT: 1},
		{name: "a duplicate unknown claim", payload: `{` + base + `,"x":1,"x":2}`, lenient: ErrMalformedClaims, strict: ErrMalformedClaims},
		{name: "a duplicate HTI claim", payload: `{` + base + `,"iss":"q"}`, lenient: ErrMalformedClaims, strict: ErrMalformedClaims},
		{name: "aud as an array", payload: `{"aud":["Device/1"],"iss":"p"}`, lenient: ErrMalformedClaims, strict: ErrMalformedClaims},
		{name: "iat as a string", payload: `{"iat":"1","iss":"p"}`, lenient: ErrMalformedClaims, strict: ErrMalformedClaims},
		{name: "iat with a fraction", payload: `{"iat":1.5,"iss":"p"}`, lenient: ErrMalformedClaims, strict: ErrMalformedClaims},
		{name: "jti null", payload: `{"jti":null,"iss":"p"}`, lenient: ErrMalformedClaims, strict: ErrMalformedClaims},
		{name: "an array", payload: `[]`, lenient: ErrMalformedClaims, strict: ErrMalformedClaims},
		{name: "null", payload: `null`, lenient: ErrMalformedClaims, strict: ErrMalformedClaims},
		{name: "missing exp", payload: `{"iss":"p","aud":"Device/1","sub":"Patient/1","resource":"Task/1","hti-version":"2.0","jti":"j","iat":1}`, claim: "exp"},
		{name: "only unknown claims", payload: `{"x":1}`, strict: ErrMalformedClaims, claim: "iss"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, parse := range []struct {
				name string
				fn   func([]byte) (*Claims, error)
				want error
			}{{"ParseClaims", ParseClaims, tc.lenient}, {"ParseClaimsStrict", ParseClaimsStrict, tc.strict}} {
				c, err := parse.fn([]byte(tc.payload))
				var ce *ClaimError
				switch {
				case parse.want != nil:
					if !errors.Is(err, parse.want) {
						t.Errorf("%s: err %v, want %v", parse.name, err, parse.want)
					}
				case tc.claim != "":
					if !errors.As(err, &ce) || ce.Claim != tc.claim {
						t.Errorf("%s: err %v, want a ClaimError for %s", parse.name, err, tc.claim)
					}
				case err != nil:
					t.Errorf("%s: %v", parse.name, err)
				case c.Issuer != tc.wantIssuer || c.IssuedAt != tc.wantIAT:
					t.Errorf("%s: iss %q, iat %d; want %q, %d", parse.name, c.Issuer, c.IssuedAt, tc.wantIssuer, tc.wantIAT)
				}
			}
		})
	}
}

// TestVerify_UnknownClaims: a token with a claim the verifier does not know
// verifies, unless StrictClaims is set.
func TestVerify_UnknownClaims(t *testing.T) {
	p := newPortalFixture(t)
	c := p.claims()
	c["role"], c["nbf"], c["ISS"] = "admin", p.now.Unix(), "another-portal"
	got, err := p.verifier(t, nil).Verify(context.Background(), p.sign(t, c, "rsa-1", jwa.RS512))
	if err != nil {
		t.Fatalf("unknown claims: %v", err)
	}
	if got.Issuer != "portal-client" {
		t.Fatalf("iss %q: an unknown claim changed a known one", got.Issuer)
	}
	_, err = p.verifier(t, func(c *VerifierConfig) { c.StrictClaims = true }).Verify(context.Background(), p.sign(t, c, "rsa-1", jwa.RS512))
	if !errors.Is(err, ErrMalformedClaims) || !strings.Contains(err.Error(), "unexpected claim") {
		t.Fatalf("StrictClaims: err %v, want ErrMalformedClaims for an unexpected claim", err)
	}
}

func TestJTICapacity(t *testing.T) {
	for _, tc := range []struct {
		jti  string
		bits int
	}{
		{"0f8fad5b-d9cb-469f-a165-70867728950e", 128}, // a UUID
		{"0F8FAD5B-D9CB-469F-A165-70867728950E", 128},
		{"0f8fad5bd9cb469fa16570867728950e", 128},
		{"0f8fad5bd9cb469fa16570867728950", 124},
		{"0f8fad5b-d9cb-469f-a165-70867728950", 6 * 35}, // not UUID-shaped: base64url
		{"0f8fad5b-d9cb-469f-a165-7086772895-e", 6 * 36},
		{"0f8fAD5Bd9cb469fa16570867728950e", 6 * 32}, // mixed case: base64url
		{"ZZZZZZZZZZZZZ-_Z", 96},                     // 16 base64url characters
		{"ZZZZZZZZZZZZZZZZZZZZZ", 126},
		{"ZZZZZZZZZZZZZZZZZZZZZZ", 132},
		{"siBt46nvcoJnBExMoD9RFUXM", 144}, // the portal's: 18 random bytes
		{"0123456789", 40},
		{"abc", 12},
		{"", 0},
		{"!!!!!!!!!!!!!!!!!!!!!", 126},
		{"ééééééééééééééééééééééé", 6 * 23},
	} {
		if bits, what := jtiCapacity(tc.jti); bits != tc.bits {
			t.Errorf("%q: %d bits (%s), want %d", tc.jti, bits, what, tc.bits)
		}
	}
}

// TestVerify_JTIOf128Bits: the jti minimum counts bits, not characters.
func TestVerify_JTIOf128Bits(t *testing.T) {
	p := newPortalFixture(t)
	for _, tc := range []struct {
		jti     string
		mention string // the error must say this; accepted when empty
	}{
		{"0f8fad5b-d9cb-469f-a165-70867728950e", ""},
		{"0f8fad5bd9cb469fa16570867728950e", ""},
		{"ZZZZZZZZZZZZZZZZZZZZZZ", ""},
		{"ZZZZZZZZZZZZZ-_Z", "carries at most 96 bits (16 base64url characters); at least 128 random bits are required"},
		{"0f8fad5bd9cb469fa16570867728950", "carries at most 124 bits (31 hex digits)"},
		{"xyz", "carries at most 18 bits"},
	} {
		c := p.claims()
		c["jti"] = tc.jti
		_, err := p.verifier(t, nil).Verify(context.Background(), p.sign(t, c, "rsa-1", jwa.RS512))
		var ce *ClaimError
		switch {
		case tc.mention == "" && err != nil:
			t.Errorf("%q: %v", tc.jti, err)
		case tc.mention != "" && (!errors.As(err, &ce) || ce.Claim != "jti" || !strings.Contains(err.Error(), tc.mention)):
			t.Errorf("%q: err %v, want a ClaimError for jti saying %q", tc.jti, err, tc.mention)
		}
	}
}
