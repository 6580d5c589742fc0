package hti

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"errors"
	"strings"
	"testing"

	"github.com/lestrrat-go/jwx/v2/jwa"
)

// TestVerify_KeyMustFitTheAlgorithm publishes one key per case and verifies
// a token signed with it: RSA keys of at least 2048 bits; a key without alg
// is used only when its algorithm is unambiguous (RFC 8725 §3.1); an EC
// key's alg must be its curve's.
func TestVerify_KeyMustFitTheAlgorithm(t *testing.T) {
	rsa1024, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	rsa2048, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	ec := map[elliptic.Curve]*ecdsa.PrivateKey{}
	for _, c := range []elliptic.Curve{elliptic.P256(), elliptic.P384(), elliptic.P521()} {
		if ec[c], err = ecdsa.GenerateKey(c, rand.Reader); err != nil {
			t.Fatal(err)
		}
	}
	edPub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name       string
		priv, pub  any                    // priv nil: the token's signature is junk (it is refused before that counts)
		keyAlg     jwa.SignatureAlgorithm // the JWK's alg; none when empty
		tokenAlg   jwa.SignatureAlgorithm
		algorithms []string // the configuration's; DefaultAlgorithms when nil
		want       error    // nil: accepted
		mention    string
	}{
		{"RSA 2048", rsa2048, &rsa2048.PublicKey, jwa.RS512, jwa.RS512, nil, nil, ""},
		{"RSA 1024", rsa1024, &rsa1024.PublicKey, jwa.RS512, jwa.RS512, nil, ErrWeakKey, "RSA of 1024 bits, at least 2048"},
		{"RSA 1024 without alg", rsa1024, &rsa1024.PublicKey, "", jwa.PS256, []string{"PS256"}, ErrWeakKey, "1024 bits"},
		{"RSA without alg, several RSA algorithms allowed", rsa2048, &rsa2048.PublicKey, "", jwa.RS512, nil, ErrAlgorithm, "names no alg"},
		{"RSA without alg, RS and PS allowed", rsa2048, &rsa2048.PublicKey, "", jwa.PS256, []string{"RS256", "PS256"}, ErrAlgorithm, "names no alg"},
		{"RSA without alg, one RSA algorithm allowed", rsa2048, &rsa2048.PublicKey, "", jwa.PS256, []string{"PS256", "ES256", "ES384"}, nil, ""},
		{"RSA without alg, one RSA algorithm allowed, token says EC", nil, &rsa2048.PublicKey, "", jwa.ES256, []string{"PS256", "ES256"}, ErrAlgorithm, "token says ES256, key k is for PS256"},
		{"RSA naming an EC alg", nil, &rsa2048.PublicKey, jwa.ES256, jwa.ES256, nil, ErrAlgorithm, "RSA key k names alg ES256"},
		{"RSA naming another RSA alg", rsa2048, &rsa2048.PublicKey, jwa.PS512, jwa.RS512, nil, ErrAlgorithm, "token says RS512, key k is for PS512"},
		{"P-256 without alg", ec[elliptic.P256()], &ec[elliptic.P256()].PublicKey, "", jwa.ES256, nil, nil, ""},
		{"P-384 without alg", ec[elliptic.P384()], &ec[elliptic.P384()].PublicKey, "", jwa.ES384, nil, nil, ""},
		{"P-521 without alg", ec[elliptic.P521()], &ec[elliptic.P521()].PublicKey, "", jwa.ES512, []string{"ES512"}, nil, ""},
		{"P-521 with its alg", ec[elliptic.P521()], &ec[elliptic.P521()].PublicKey, jwa.ES512, jwa.ES512, []string{"ES512"}, nil, ""},
		{"P-256 without alg, token says ES384", ec[elliptic.P256()], &ec[elliptic.P256()].PublicKey, "", jwa.ES384, nil, ErrAlgorithm, "token says ES384, key k is for ES256"},
		{"P-384 naming ES256", ec[elliptic.P384()], &ec[elliptic.P384()].PublicKey, jwa.ES256, jwa.ES256, nil, ErrAlgorithm, "EC key k on P-384 names alg ES256; that curve is for ES384"},
		{"P-256 naming ES384", ec[elliptic.P256()], &ec[elliptic.P256()].PublicKey, jwa.ES384, jwa.ES384, nil, ErrAlgorithm, "that curve is for ES256"},
		{"Ed25519", nil, edPub, "", jwa.ES256, nil, ErrAlgorithm, "not RSA or EC"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := newPortalFixture(t)
			p.publish(t, "k", tc.keyAlg, tc.pub)
			v := p.verifier(t, func(c *VerifierConfig) { c.Algorithms = tc.algorithms })
			var tok string
			if tc.priv == nil {
				tok = b64(map[string]string{"alg": string(tc.tokenAlg), "kid": "k"}) + "." + b64(p.claims()) + ".AAAA"
			} else {
				tok = signWith(t, tc.priv, p.claims(), "k", tc.tokenAlg)
			}
			_, err := v.Verify(context.Background(), tok)
			if tc.want == nil {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.mention) {
				t.Fatalf("err %v, want %v saying %q", err, tc.want, tc.mention)
			}
		})
	}
}
