package keys

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/lestrrat-go/jwx/v2/jwa"
	"github.com/lestrrat-go/jwx/v2/jwk"
	"github.com/lestrrat-go/jwx/v2/jws"
)

func algSlug(prefix string, alg Algorithm) string {
	return prefix + "-" + strings.ToLower(string(alg))
}

// privateMembers are the JWK members that must never be published (docs/ARCHITECTURE.md, "The JWKS").
var privateMembers = []string{"d", "p", "q", "dp", "dq", "qi", "oth", "k"}

func TestJWKS_PublicMembersOnlyForEveryAlgorithm(t *testing.T) {
	clock := newFakeClock()
	f := newFixture(t, testDB.Fresh(t), clock, newSealer(t, newKEK(t, "k1")))
	for _, alg := range Algorithms() {
		f.addIssuer(t, testIssuer(algSlug("jwks", alg), alg))
	}
	f.refresh(t)
	for _, alg := range Algorithms() {
		t.Run(string(alg), func(t *testing.T) {
			set := mustJWKS(t, f.keyring, algSlug("jwks", alg))
			var doc struct {
				Keys []map[string]any `json:"keys"`
			}
			if err := json.Unmarshal(set.Body, &doc); err != nil {
				t.Fatal(err)
			}
			if len(doc.Keys) != 2 {
				t.Fatalf("JWKS has %d keys, want the active and the next key", len(doc.Keys))
			}
			wantKty := "EC"
			if alg.IsRSA() {
				wantKty = "RSA"
			}
			for _, k := range doc.Keys {
				for _, m := range privateMembers {
					if _, ok := k[m]; ok {
						t.Errorf("key %v publishes private member %q", k["kid"], m)
					}
				}
				if k["kty"] != wantKty || k["use"] != "sig" || k["alg"] != string(alg) || k["kid"] == "" {
					t.Errorf("key members kty=%v use=%v alg=%v kid=%v, want %s, sig, %s and a kid", k["kty"], k["use"], k["alg"], k["kid"], wantKty, alg)
				}
				allowed := map[string]bool{"kty": true, "kid": true, "use": true, "alg": true, "n": true, "e": true, "crv": true, "x": true, "y": true}
				for m := range k {
					if !allowed[m] {
						t.Errorf("unexpected member %q in key %v", m, k["kid"])
					}
				}
			}
		})
	}
}

// TestSigner_TokenVerifiesWithJWKSForEveryAlgorithm signs with each
// algorithm and verifies strictly against the published set: kid required,
// only the issuer's algorithm accepted.
func TestSigner_TokenVerifiesWithJWKSForEveryAlgorithm(t *testing.T) {
	clock := newFakeClock()
	f := newFixture(t, testDB.Fresh(t), clock, newSealer(t, newKEK(t, "k1")))
	for _, alg := range Algorithms() {
		f.addIssuer(t, testIssuer(algSlug("sign", alg), alg))
	}
	f.refresh(t)
	for _, alg := range Algorithms() {
		t.Run(string(alg), func(t *testing.T) {
			slug := algSlug("sign", alg)
			signer, err := f.keyring.Signer(slug)
			if err != nil {
				t.Fatal(err)
			}
			token, err := signer.Sign([]byte(`{"sub":"Patient/1"}`))
			if err != nil {
				t.Fatal(err)
			}
			set, err := jwk.Parse(mustJWKS(t, f.keyring, slug).Body)
			if err != nil {
				t.Fatal(err)
			}
			payload, err := jws.Verify(token, jws.WithKeySet(set, jws.WithRequireKid(true), jws.WithUseDefault(false), jws.WithInferAlgorithmFromKey(false)))
			if err != nil {
				t.Fatalf("token does not verify with the JWKS: %v", err)
			}
			if string(payload) != `{"sub":"Patient/1"}` {
				t.Fatalf("payload %s", payload)
			}
			msg, err := jws.Parse(token)
			if err != nil {
				t.Fatal(err)
			}
			h := msg.Signatures()[0].ProtectedHeaders()
			if h.Algorithm() != jwa.SignatureAlgorithm(alg) || h.KeyID() != signer.Kid || h.Type() != "JWT" || h.JWKSetURL() != "" || h.X509URL() != "" {
				t.Fatalf("header alg=%s kid=%s typ=%s jku=%q x5u=%q", h.Algorithm(), h.KeyID(), h.Type(), h.JWKSetURL(), h.X509URL())
			}
		})
	}
}

func TestJWKS_SameBytesOnEveryInstance(t *testing.T) {
	clock := newFakeClock()
	url := testDB.Fresh(t)
	sealer := newSealer(t, newKEK(t, "k1"))
	a := newFixture(t, url, clock, sealer)
	a.addIssuer(t, testIssuer("same", RS512))
	a.refresh(t)
	b := newFixture(t, url, clock, sealer)
	b.refresh(t)
	ja, jb := mustJWKS(t, a.keyring, "same"), mustJWKS(t, b.keyring, "same")
	if string(ja.Body) != string(jb.Body) || ja.ETag != jb.ETag {
		t.Fatalf("two keyrings over one database serve different JWKS:\n%s %s\n%s %s", ja.Body, ja.ETag, jb.Body, jb.ETag)
	}
}

func TestKeyring_ReadyOnlyWhenEveryIssuerCanSign(t *testing.T) {
	ctx := testContext()
	clock := newFakeClock()
	f := newFixture(t, testDB.Fresh(t), clock, newSealer(t, newKEK(t, "k1")))
	if err := f.keyring.Ready(); err == nil {
		t.Fatal("ready before loading")
	}
	f.addIssuer(t, testIssuer("ready-a", ES256))
	if err := f.store.CreateIssuer(ctx, testIssuer("ready-b", ES256), clock.Now()); err != nil {
		t.Fatal(err)
	}
	f.refresh(t)
	if err := f.keyring.Ready(); err == nil {
		t.Fatal("ready although issuer ready-b has no key")
	}
	if _, err := f.rotator.EnsureKeys(ctx, "ready-b"); err != nil {
		t.Fatal(err)
	}
	f.refresh(t)
	if err := f.keyring.Ready(); err != nil {
		t.Fatal(err)
	}
}

// BenchmarkSign measures signing a launch-token-sized payload through the
// keyring, per algorithm.
func BenchmarkSign(b *testing.B) {
	clock := newFakeClock()
	f := newFixture(b, testDB.Fresh(b), clock, newSealer(b, newKEK(b, "k1")))
	payload := []byte(`{"iss":"portal-client","aud":"Device/1f2a","sub":"Practitioner/42","resource":"Task/7","patient":"Patient/9","definition":"ActivityDefinition/3","intent":"plan","hti-version":"2.0","jti":"Zt1bKq3X5i4sN0u2m9wL8A","iat":1764000000,"exp":1764000300}`)
	for _, alg := range Algorithms() {
		slug := algSlug("bench", alg)
		if _, err := f.store.Issuer(testContext(), slug); err != nil {
			f.addIssuer(b, testIssuer(slug, alg))
		}
	}
	f.refresh(b)
	for _, alg := range Algorithms() {
		b.Run(string(alg), func(b *testing.B) {
			signer, err := f.keyring.Signer(algSlug("bench", alg))
			if err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			for b.Loop() {
				if _, err := signer.Sign(payload); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func TestKeyring_ObservesRotationsAndRevocations(t *testing.T) {
	ctx := testContext()
	clock := newFakeClock()
	url := testDB.Fresh(t)
	sealer := newSealer(t, newKEK(t, "k1"))
	a := newFixture(t, url, clock, sealer)
	a.addIssuer(t, testIssuer("events", ES256))
	b := newFixture(t, url, clock, sealer)
	var events []Event
	b.keyring.OnEvent(func(e Event) { events = append(events, e) })
	b.refresh(t)

	rotated, err := a.rotator.Rotate(ctx, "events", true)
	if err != nil {
		t.Fatal(err)
	}
	b.refresh(t)
	revoked, err := a.rotator.Revoke(ctx, "events", rotated.Activated)
	if err != nil {
		t.Fatal(err)
	}
	b.refresh(t)
	want := []Event{{"events", EventRotation, rotated.Retired}, {"events", EventRevocation, revoked.Revoked}}
	if !slices.Equal(events, want) {
		t.Fatalf("observed %v, want %v", events, want)
	}
}

// TestKeyring_NeverSignsWithAKeyMissingFromTheJWKS breaks the stored public
// JWK of the active key: the key cannot be published, so it must not sign.
func TestKeyring_NeverSignsWithAKeyMissingFromTheJWKS(t *testing.T) {
	ctx := testContext()
	clock := newFakeClock()
	f := newFixture(t, testDB.Fresh(t), clock, newSealer(t, newKEK(t, "k1")))
	f.addIssuer(t, testIssuer("broken", ES256))
	if _, err := f.pool.Exec(ctx, `UPDATE signing_keys SET public_jwk = '{"kty":"nonsense"}' WHERE issuer = 'broken' AND state = 'active'`); err != nil {
		t.Fatal(err)
	}
	if err := f.keyring.Refresh(ctx); err == nil {
		t.Fatal("a refresh with an unreadable public key reported no error")
	}
	if s, err := f.keyring.Signer("broken"); err == nil {
		t.Fatalf("signs with %s, which verifiers cannot find", s.Kid)
	}
	if err := f.keyring.Ready(); err == nil {
		t.Fatal("ready without a usable active key")
	}
}

// BenchmarkKeyringScale measures, for 1, 100 and 1,000 issuers with three
// published keys each (next, active, retired): a full keyring reload from
// the database with no key changed (what every instance does every
// PORTAL_KEYRING_REFRESH), the reload of the one issuer a notification
// names after a rotation of its keys (what every instance does after a
// key change), and serving one issuer's JWKS from memory.
// docs/BENCHMARKS.md records the figures.
func BenchmarkKeyringScale(b *testing.B) {
	for _, n := range []int{1, 100, 1000} {
		clock := newFakeClock()
		f := newFixture(b, testDB.Fresh(b), clock, newSealer(b, newKEK(b, "k1")))
		for i := range n {
			slug := fmt.Sprintf("issuer-%04d", i)
			f.addIssuer(b, testIssuer(slug, ES256))
			if _, err := f.rotator.Rotate(testContext(), slug, true); err != nil {
				b.Fatal(err)
			}
		}
		f.refresh(b)
		if set, err := f.keyring.JWKS("issuer-0000"); err != nil || strings.Count(string(set.Body), `"kid"`) != 3 {
			b.Fatalf("JWKS %s %v: want three keys", set.Body, err)
		}
		b.Run(fmt.Sprintf("refresh/%d-issuers", n), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				f.refresh(b)
			}
		})
		b.Run(fmt.Sprintf("notify/%d-issuers", n), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				b.StopTimer()
				clock.Advance(testPolicy().RetireGrace) // a forced rotation waits for the last one's grace
				c, err := f.rotator.Rotate(testContext(), "issuer-0000", true)
				if err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
				if err := f.keyring.RefreshIssuers(testContext(), "issuer-0000"); err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				if s := f.keyring.current.Load().ring("issuer-0000").signer; s == nil || s.Kid != c.Activated {
					b.Fatalf("signer %v after the rotation to %s", s, c.Activated)
				}
				b.StartTimer()
			}
		})
		slugs := make([]string, n)
		for i := range slugs {
			slugs[i] = fmt.Sprintf("issuer-%04d", i)
		}
		b.Run(fmt.Sprintf("jwks/%d-issuers", n), func(b *testing.B) {
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				if _, err := f.keyring.JWKS(slugs[i%n]); err != nil {
					b.Fatal(err)
				}
				i++
			}
		})
	}
}
