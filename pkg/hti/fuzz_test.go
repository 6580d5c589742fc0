package hti

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v2/jwa"
)

// forgetfulReplay accepts every jti, so the fuzzer explores signatures and
// claims rather than the replay rule.
type forgetfulReplay struct{}

func (forgetfulReplay) Claim(context.Context, string, time.Time) (bool, error) { return true, nil }

// FuzzVerify feeds arbitrary strings to the verifier as tokens. Whatever the
// input: no panic, and nothing is accepted but a token the portal fixture
// itself signed — the fuzzer cannot forge or bend one.
func FuzzVerify(f *testing.F) {
	p := newPortalFixture(&testing.T{})
	defer p.srv.Close()
	signed := map[string]bool{}
	add := func(tok string) {
		signed[tok] = true
		f.Add(tok)
	}
	fixtureT := &testing.T{}
	rsaToken := p.sign(fixtureT, p.claims(), "rsa-1", jwa.RS512)
	add(rsaToken)
	add(p.sign(fixtureT, p.claims(), "ec-1", jwa.ES384))
	// The same bytes in non-canonical serializations (RFC 7515 §7.1).
	parts := strings.Split(rsaToken, ".")
	hc := parts[0] + "." + parts[1] + "."
	for _, sig := range []string{padded(parts[2]), stdAlphabet(parts[2]), withTrailingBits(parts[2]), parts[2][:10] + "\r\n" + parts[2][10:]} {
		f.Add(hc + sig)
	}
	f.Add(parts[0][:10] + "\n" + parts[0][10:] + "." + parts[1] + "." + parts[2])
	c := p.claims()
	c["aud"] = []string{"Device/module-1"}
	f.Add(p.sign(fixtureT, c, "rsa-1", jwa.RS512))
	c = p.claims()
	delete(c, "resource")
	f.Add(p.sign(fixtureT, c, "rsa-1", jwa.RS512))
	for _, s := range []string{"", ".", "..", "a.b.c", "eyJhbGciOiJub25lIn0.e30.", "eyJhbGciOiJIUzI1NiIsImtpZCI6InJzYS0xIn0.e30.AAAA"} {
		f.Add(s)
	}
	v, err := NewVerifier(VerifierConfig{JWKSURL: p.srv.URL, Issuer: "portal-client", Audience: "Device/module-1",
		Replay: forgetfulReplay{}, Now: func() time.Time { return p.now }})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, token string) {
		claims, err := v.Verify(context.Background(), token)
		if err != nil {
			return
		}
		if !signed[token] {
			t.Fatalf("accepted a token the fixture never signed: %q", token)
		}
		if err := claims.CheckReferences(); err != nil {
			t.Fatalf("accepted claims that break the reference rules: %v", err)
		}
	})
}

// FuzzParseClaims feeds arbitrary payloads to the claims parsers: no panic;
// what ParseClaims accepts survives a round trip unchanged; what
// ParseClaimsStrict accepts, ParseClaims accepts the same.
func FuzzParseClaims(f *testing.F) {
	for _, seed := range []string{
		`{"iss":"p","aud":"Device/1","sub":"Patient/1","resource":"Task/1","hti-version":"2.0","jti":"abcdefghijklmnopqrstuv","iat":1,"exp":2}`,
		`{"iss":"p","aud":["Device/1"],"sub":"Patient/1","resource":"Task/1","hti-version":"2.0","jti":"j","iat":1,"exp":2}`,
		`{"iss":"p","aud":"Device/1","sub":"Patient/1","resource":"Task/1","hti-version":"2.0","jti":"j","iat":1,"exp":2,"ISS":"q","x":{}}`,
		`{"iss":"p","iss":"q"}`, `{"iat":"1"}`, `{"iat":1.5}`, `[]`, `null`, `{}`, `{"x":1}`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, payload []byte) {
		strict, strictErr := ParseClaimsStrict(payload)
		c, err := ParseClaims(payload)
		if strictErr == nil && (err != nil || *c != *strict) {
			t.Fatalf("strict parse gave %+v, lenient %+v, %v", strict, c, err)
		}
		if err != nil {
			return
		}
		again, err := json.Marshal(c)
		if err != nil {
			t.Fatal(err)
		}
		c2, err := ParseClaimsStrict(again)
		if err != nil {
			t.Fatalf("re-encoded claims do not parse: %v\n%s", err, again)
		}
		if *c2 != *c {
			t.Fatalf("round trip changed the claims: %+v → %+v", c, c2)
		}
	})
}
