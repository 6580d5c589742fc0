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
