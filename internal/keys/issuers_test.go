package keys

import (
	"errors"
	"strings"
	"testing"
)

// TestIssuer_ProfileLimitsAlgorithms: a koppeltaal issuer signs with what
// the Koppeltaal auth server accepts, an hti issuer with any algorithm; the
// schema refuses the mix too.
func TestIssuer_ProfileLimitsAlgorithms(t *testing.T) {
	for _, alg := range Algorithms() {
		is := testIssuer("p", alg)
		is.Profile = ProfileKoppeltaal
		err := is.Validate(testLimits)
		var ie *IssuerError
		switch alg {
		case RS512, RS384, ES384:
			if err != nil {
				t.Errorf("koppeltaal issuer with %s: %v", alg, err)
			}
		default:
			if !errors.As(err, &ie) || ie.Field != "alg" || !strings.Contains(ie.Reason, "hti") {
				t.Errorf("koppeltaal issuer with %s: %v, want a refusal of field alg pointing at profile hti", alg, err)
			}
		}
		is.Profile = ProfileHTI
		if err := is.Validate(testLimits); err != nil {
			t.Errorf("hti issuer with %s: %v", alg, err)
		}
	}
	is := testIssuer("p", RS512)
	is.Profile = "smart"
	var ie *IssuerError
	if err := is.Validate(testLimits); !errors.As(err, &ie) || ie.Field != "profile" {
		t.Errorf("unknown profile: %v", err)
	}

	ctx := testContext()
	f := newFixture(t, testDB.Fresh(t), newFakeClock(), newSealer(t, newKEK(t, "k1")))
	mix := testIssuer("mix", ES256)
	mix.Profile = ProfileKoppeltaal
	if err := f.store.CreateIssuer(ctx, mix, f.clock.Now()); err == nil {
		t.Error("the schema accepted a koppeltaal issuer signing with ES256")
	}
	f.addIssuer(t, testIssuer("kt", RS384))
	for _, bad := range []string{`signing_alg = 'PS256'`, `publish_lead_ms = 0`, `retire_grace_ms = 0`, `profile = 'smart'`} {
		if _, err := f.pool.Exec(ctx, `UPDATE issuers SET `+bad+` WHERE slug = 'kt'`); err == nil {
			t.Errorf("the schema accepted %s", bad)
		}
	}
}

func TestValidateFHIRBaseURL(t *testing.T) {
	for _, ok := range []string{"https://fhir.example.org/fhir", "https://fhir.example.org:8443/r4", "http://localhost:8080/fhir", "http://127.0.0.1/fhir", "http://[::1]/fhir"} {
		if err := ValidateFHIRBaseURL(ok); err != nil {
			t.Errorf("%s: %v", ok, err)
		}
	}
	for _, bad := range []string{"http://evil.test/fhir", "https://user:pw@f.test/fhir", "https://user@f.test/fhir", "https://f.test/fhir?x=1",
		"https://f.test/fhir?", "https://f.test/fhir#frag", "ftp://f.test/fhir", "/fhir", "https:fhir", "https://f.test/f hir"} {
		if err := ValidateFHIRBaseURL(bad); err == nil {
			t.Errorf("%s was accepted", bad)
		}
	}
}

// TestKeyring_IssuerBreakingTheTimingLimitsIsNotReady: a stored issuer
// whose policy no longer fits the service limits (they were raised) is
// reported not ready naming the rule; it keeps signing, and the others are
// unaffected.
func TestKeyring_IssuerBreakingTheTimingLimitsIsNotReady(t *testing.T) {
	clock := newFakeClock()
	f := newFixture(t, testDB.Fresh(t), clock, newSealer(t, newKEK(t, "k1")))
	f.addIssuer(t, testIssuer("fits", RS512))
	tight := testIssuer("tight", RS512)
	f.addIssuer(t, tight)
	if _, err := f.pool.Exec(testContext(), `UPDATE issuers SET publish_lead_ms = 60000, rotation_period_ms = 60000 WHERE slug = 'tight'`); err != nil {
		t.Fatal(err)
	}
	k := NewKeyring(f.store, f.sealer, clock.Now, quietLogger(), WithTimingLimits(testLimits))
	err := k.Refresh(testContext())
	var problems *RefreshProblems
	if !errors.As(err, &problems) || len(problems.Issuers["tight"]) != 1 || len(problems.Issuers["fits"]) != 0 {
		t.Fatalf("refresh: %v, want one problem of issuer tight", err)
	}
	ready, reasons := issuerReady(k, "tight")
	if ready || !strings.Contains(strings.Join(reasons, " "), "publish_lead") {
		t.Fatalf("issuer tight: ready %v, reasons %v; want not ready naming publish_lead", ready, reasons)
	}
	if _, err := k.Signer("tight"); err != nil {
		t.Fatalf("issuer tight stopped signing: %v", err)
	}
	if ready, _ := issuerReady(k, "fits"); !ready {
		t.Fatal("issuer fits is not ready")
	}
}

// TestRotate_ForcedRotationsCannotGrowTheJWKS: a forced rotation is refused
// while the key retired by the previous one is still published; revocation
// stays possible; after the grace the next forced rotation goes through.
func TestRotate_ForcedRotationsCannotGrowTheJWKS(t *testing.T) {
	ctx := testContext()
	clock := newFakeClock()
	f := newFixture(t, testDB.Fresh(t), clock, newSealer(t, newKEK(t, "k1")))
	f.addIssuer(t, testIssuer("bounded", ES384))
	first, err := f.rotator.Rotate(ctx, "bounded", true)
	if err != nil || !first.Rotated() {
		t.Fatalf("first forced rotation: %v, %v", first, err)
	}
	for _, ignoreLead := range []bool{true, false} {
		_, err := f.rotator.Rotate(ctx, "bounded", ignoreLead)
		if !errors.Is(err, ErrRotationTooSoon) || !strings.Contains(err.Error(), first.Retired) || !strings.Contains(err.Error(), "keys revoke") {
			t.Fatalf("second forced rotation (ignore lead %v): %v, want ErrRotationTooSoon naming %s and keys revoke", ignoreLead, err, first.Retired)
		}
	}
	f.refresh(t)
	if n := len(jwksKids(t, mustJWKS(t, f.keyring, "bounded"))); n != 3 {
		t.Fatalf("JWKS has %d keys, want 3", n)
	}
	if _, err := f.rotator.Revoke(ctx, "bounded", first.Activated); err != nil {
		t.Fatalf("revocation refused: %v", err)
	}
	clock.Advance(testPolicy().RetireGrace)
	if c, err := f.rotator.Rotate(ctx, "bounded", false); err != nil || !c.Rotated() {
		t.Fatalf("forced rotation after the grace: %v, %v", c, err)
	}
	f.refresh(t)
	if n := len(jwksKids(t, mustJWKS(t, f.keyring, "bounded"))); n > 3 {
		t.Fatalf("JWKS has %d keys, want at most 3", n)
	}
}

// TestRevoke_ReplacesANextKeyThatNoLongerFits: revoking the active key
// after the issuer changed algorithm must not activate the old-algorithm
// next key.
func TestRevoke_ReplacesANextKeyThatNoLongerFits(t *testing.T) {
	ctx := testContext()
	clock := newFakeClock()
	f := newFixture(t, testDB.Fresh(t), clock, newSealer(t, newKEK(t, "k1")))
	is := testIssuer("changed", ES256)
	f.addIssuer(t, is)
	active, next := kidOf(t, f, "changed", StateActive), kidOf(t, f, "changed", StateNext)
	is.Alg = ES384
	if err := f.store.UpdateIssuer(ctx, is, clock.Now()); err != nil {
		t.Fatal(err)
	}
	c, err := f.rotator.Revoke(ctx, "changed", active)
	if err != nil {
		t.Fatal(err)
	}
	if c.Activated == next || len(c.Expired) != 1 || c.Expired[0] != next {
		t.Fatalf("revocation: %s, want the ES256 next key %s replaced, not activated", c, next)
	}
	ks, err := f.store.Keys(ctx, "changed")
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range ks {
		if (k.State == StateActive || k.State == StateNext) && k.Alg != ES384 {
			t.Fatalf("%s key %s is %s, want ES384", k.State, k.Kid, k.Alg)
		}
	}
}
