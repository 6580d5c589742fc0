package keys

import (
	"slices"
	"testing"
	"time"
)

// ringOf is the issuer's ring in the keyring's current snapshot.
func ringOf(t testing.TB, k *Keyring, slug string) *issuerRing {
	t.Helper()
	ir := k.current.Load().ring(slug)
	if ir == nil {
		t.Fatalf("the keyring holds no issuer %q", slug)
	}
	return ir
}

// rotatedIssuers gives each issuer a next, an active and a retired key.
func rotatedIssuers(t testing.TB, f *fixture, slugs ...string) {
	t.Helper()
	for _, slug := range slugs {
		f.addIssuer(t, testIssuer(slug, ES256))
		if _, err := f.rotator.Rotate(testContext(), slug, true); err != nil {
			t.Fatal(err)
		}
	}
}

// TestRefresh_KeepsTheRingsOfUnchangedIssuers revokes a key of one issuer
// through another instance's rotator: a full refresh rebuilds that
// issuer's ring, which no longer publishes the key, and keeps the other
// issuers' rings as they were.
func TestRefresh_KeepsTheRingsOfUnchangedIssuers(t *testing.T) {
	ctx := testContext()
	clock := newFakeClock()
	url := testDB.Fresh(t)
	sealer := newSealer(t, newKEK(t, "k1"))
	writer := newFixture(t, url, clock, sealer)
	rotatedIssuers(t, writer, "keep-a", "keep-b", "keep-c")
	f := newFixture(t, url, clock, sealer)
	var events []Event
	f.keyring.OnEvent(func(e Event) { events = append(events, e) })
	f.refresh(t)
	a, b := ringOf(t, f.keyring, "keep-a"), ringOf(t, f.keyring, "keep-b")

	f.refresh(t)
	if ringOf(t, f.keyring, "keep-a") != a || ringOf(t, f.keyring, "keep-b") != b {
		t.Fatal("a refresh with nothing changed built the rings again")
	}

	retired := kidOf(t, writer, "keep-b", StateRetired)
	if _, err := writer.rotator.Revoke(ctx, "keep-b", retired); err != nil {
		t.Fatal(err)
	}
	f.refresh(t)
	if ringOf(t, f.keyring, "keep-a") != a {
		t.Fatal("issuer keep-a's ring was built again although none of its rows changed")
	}
	if ringOf(t, f.keyring, "keep-b") == b {
		t.Fatal("issuer keep-b's ring was kept although one of its keys was revoked")
	}
	if kids := jwksKids(t, mustJWKS(t, f.keyring, "keep-b")); slices.Contains(kids, retired) || len(kids) != 2 {
		t.Fatalf("keep-b publishes %v after the revocation of %s", kids, retired)
	}
	if want := []Event{{"keep-b", EventRevocation, retired}}; !slices.Equal(events, want) {
		t.Fatalf("observed %v, want %v", events, want)
	}
}

// TestRefresh_GraceEndingTakesTheRetiredKeyOutWithoutARowChange moves only
// the clock: a ring is kept until its retired key's grace ends, and the
// first refresh after that stops publishing the key, before any rotator
// has marked it expired. It is not a revocation.
func TestRefresh_GraceEndingTakesTheRetiredKeyOutWithoutARowChange(t *testing.T) {
	clock := newFakeClock()
	f := newFixture(t, testDB.Fresh(t), clock, newSealer(t, newKEK(t, "k1")))
	rotatedIssuers(t, f, "grace", "grace-other")
	var events []Event
	f.keyring.OnEvent(func(e Event) { events = append(events, e) })
	f.refresh(t)
	retired := kidOf(t, f, "grace", StateRetired)
	before, other := ringOf(t, f.keyring, "grace"), ringOf(t, f.keyring, "grace-other")
	active, err := f.keyring.Signer("grace")
	if err != nil {
		t.Fatal(err)
	}

	clock.Advance(testPolicy().RetireGrace - time.Second)
	f.refresh(t)
	if ringOf(t, f.keyring, "grace") != before {
		t.Fatal("the ring was built again before its retired key's grace ended")
	}
	if !slices.Contains(jwksKids(t, mustJWKS(t, f.keyring, "grace")), retired) {
		t.Fatal("the retired key left before its grace ended")
	}

	clock.Advance(time.Second)
	f.refresh(t)
	if kids := jwksKids(t, mustJWKS(t, f.keyring, "grace")); slices.Contains(kids, retired) || len(kids) != 2 {
		t.Fatalf("at the end of its grace the retired key %s is still published: %v", retired, kids)
	}
	if s, err := f.keyring.Signer("grace"); err != nil || s.Kid != active.Kid {
		t.Fatalf("signer %v %v, want the active key %s", s, err, active.Kid)
	}
	// The other issuer's retired key has the same grace: both rings change.
	if ringOf(t, f.keyring, "grace-other") == other {
		t.Fatal("grace-other's ring was kept past its retired key's grace")
	}
	if len(events) != 0 {
		t.Fatalf("a grace that ended was observed as %v", events)
	}
}

// TestRefresh_RebuildsWhenOnlyATimeOrTheIssuerChanged changes a key row's
// expiry (which its fingerprint does not cover) and then the issuer's
// settings: each refresh builds the ring again and publishes accordingly.
func TestRefresh_RebuildsWhenOnlyATimeOrTheIssuerChanged(t *testing.T) {
	ctx := testContext()
	clock := newFakeClock()
	f := newFixture(t, testDB.Fresh(t), clock, newSealer(t, newKEK(t, "k1")))
	rotatedIssuers(t, f, "times")
	f.refresh(t)
	retired := kidOf(t, f, "times", StateRetired)
	before := ringOf(t, f.keyring, "times")

	if _, err := f.pool.Exec(ctx, `UPDATE signing_keys SET expires_at = $2 WHERE kid = $1`, retired, clock.Now().Add(-time.Second)); err != nil {
		t.Fatal(err)
	}
	f.refresh(t)
	if slices.Contains(jwksKids(t, mustJWKS(t, f.keyring, "times")), retired) {
		t.Fatal("a retired key whose expiry moved into the past is still published")
	}
	if ringOf(t, f.keyring, "times") == before {
		t.Fatal("the ring was kept although a key row's expiry changed")
	}

	is, err := f.store.Issuer(ctx, "times")
	if err != nil {
		t.Fatal(err)
	}
	is.FHIRBaseURL = "https://fhir.example.org/other"
	if err := f.store.UpdateIssuer(ctx, is, clock.Now()); err != nil {
		t.Fatal(err)
	}
	f.refresh(t)
	if got, err := f.keyring.Issuer("times"); err != nil || got.FHIRBaseURL != is.FHIRBaseURL {
		t.Fatalf("issuer %+v %v after its FHIR base changed to %s", got, err, is.FHIRBaseURL)
	}
	if s, err := f.keyring.Signer("times"); err != nil || s.Issuer.FHIRBaseURL != is.FHIRBaseURL {
		t.Fatalf("signer %+v %v still signs for the former settings", s, err)
	}
}
