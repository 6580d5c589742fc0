package keys

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
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

// setFHIRBase changes an issuer's FHIR base URL behind the keyring's back:
// no notification, so only a refresh that reads the issuer sees it.
func setFHIRBase(t testing.TB, f *fixture, slug, url string) {
	t.Helper()
	if _, err := f.pool.Exec(testContext(), `UPDATE issuers SET fhir_base_url = $2 WHERE slug = $1`, slug, url); err != nil {
		t.Fatal(err)
	}
}

func fhirBase(t testing.TB, k *Keyring, slug string) string {
	t.Helper()
	is, err := k.Issuer(slug)
	if err != nil {
		t.Fatal(err)
	}
	return is.FHIRBaseURL
}

// TestRefreshIssuers_ReadsOnlyTheNamedIssuer revokes a key of issuer B and,
// unannounced, changes issuer A: refreshing B alone drops the revoked key
// and observes the revocation, and neither reads A (whose ring stays the
// same object, unaware of the change) nor the others; a full refresh then
// catches up with A.
func TestRefreshIssuers_ReadsOnlyTheNamedIssuer(t *testing.T) {
	ctx := testContext()
	clock := newFakeClock()
	url := testDB.Fresh(t)
	sealer := newSealer(t, newKEK(t, "k1"))
	writer := newFixture(t, url, clock, sealer)
	rotatedIssuers(t, writer, "part-a", "part-b", "part-c")
	f := newFixture(t, url, clock, sealer)
	var events []Event
	f.keyring.OnEvent(func(e Event) { events = append(events, e) })
	f.refresh(t)
	a, c := ringOf(t, f.keyring, "part-a"), ringOf(t, f.keyring, "part-c")
	jwksA := string(mustJWKS(t, f.keyring, "part-a").Body)

	setFHIRBase(t, writer, "part-a", "https://fhir.example.org/unannounced")
	active := kidOf(t, writer, "part-b", StateActive)
	c2, err := writer.rotator.Revoke(ctx, "part-b", active)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.keyring.RefreshIssuers(ctx, "part-b"); err != nil {
		t.Fatal(err)
	}
	if kids := jwksKids(t, mustJWKS(t, f.keyring, "part-b")); slices.Contains(kids, active) {
		t.Fatalf("part-b still publishes the revoked key %s: %v", active, kids)
	}
	if s, err := f.keyring.Signer("part-b"); err != nil || s.Kid != c2.Activated {
		t.Fatalf("part-b signs with %v %v, want the next key %s that took over", s, err, c2.Activated)
	}
	if want := []Event{{"part-b", EventRevocation, active}}; !slices.Equal(events, want) {
		t.Fatalf("observed %v, want %v", events, want)
	}
	if ringOf(t, f.keyring, "part-a") != a || ringOf(t, f.keyring, "part-c") != c {
		t.Fatal("refreshing part-b replaced the rings of the other issuers")
	}
	if got := fhirBase(t, f.keyring, "part-a"); got == "https://fhir.example.org/unannounced" {
		t.Fatal("refreshing part-b read part-a")
	}
	if string(mustJWKS(t, f.keyring, "part-a").Body) != jwksA {
		t.Fatal("part-a's JWKS changed")
	}

	f.refresh(t)
	if got := fhirBase(t, f.keyring, "part-a"); got != "https://fhir.example.org/unannounced" {
		t.Fatalf("after a full refresh part-a's FHIR base is %s", got)
	}
	if ringOf(t, f.keyring, "part-c") != c {
		t.Fatal("the full refresh rebuilt part-c, which did not change")
	}
}

// TestRefreshIssuers_DoesNotMakeTheKeyringFresh: only a refresh that reads
// every issuer proves that no change of another issuer was missed, so a
// refresh of one issuer leaves a stale keyring stale.
func TestRefreshIssuers_DoesNotMakeTheKeyringFresh(t *testing.T) {
	ctx := testContext()
	clock := newFakeClock()
	f := newFixture(t, testDB.Fresh(t), clock, newSealer(t, newKEK(t, "k1")))
	f.addIssuer(t, testIssuer("fresh-a", ES256))
	f.addIssuer(t, testIssuer("fresh-b", ES256))
	f.refresh(t)
	clock.Advance(f.keyring.MaxStaleness() + time.Second)
	if err := f.keyring.RefreshIssuers(ctx, "fresh-a"); err != nil {
		t.Fatal(err)
	}
	if err := f.keyring.Ready(); !errors.Is(err, ErrKeyringStale) {
		t.Fatalf("Ready after refreshing one issuer of a stale keyring: %v, want ErrKeyringStale", err)
	}
	if _, err := f.keyring.Signer("fresh-a"); !errors.Is(err, ErrKeyringStale) {
		t.Fatalf("Signer: %v, want ErrKeyringStale", err)
	}
	f.refresh(t)
	if err := f.keyring.Ready(); err != nil {
		t.Fatal(err)
	}
}

// TestRefreshIssuers_FollowsNewAndDefaultIssuersAndTheClock: a new issuer
// joins on its own refresh; a new default issuer (whose change also
// demotes the former one) reloads every issuer; an issuer's retired key
// leaves at the end of its grace on a refresh of that issuer alone; an
// issuer no longer stored leaves.
func TestRefreshIssuers_FollowsNewAndDefaultIssuersAndTheClock(t *testing.T) {
	ctx := testContext()
	clock := newFakeClock()
	f := newFixture(t, testDB.Fresh(t), clock, newSealer(t, newKEK(t, "k1")))
	first := testIssuer("first-default", ES256)
	if err := f.store.UpsertDefaultIssuer(ctx, first, clock.Now()); err != nil {
		t.Fatal(err)
	}
	if _, err := f.rotator.EnsureKeys(ctx, first.Slug); err != nil {
		t.Fatal(err)
	}
	f.refresh(t)

	rotatedIssuers(t, f, "joins")
	if err := f.keyring.RefreshIssuers(ctx, "joins"); err != nil {
		t.Fatal(err)
	}
	if kids := jwksKids(t, mustJWKS(t, f.keyring, "joins")); len(kids) != 3 {
		t.Fatalf("the new issuer publishes %v, want three keys", kids)
	}

	second := testIssuer("second-default", ES256)
	if err := f.store.UpsertDefaultIssuer(ctx, second, clock.Now()); err != nil {
		t.Fatal(err)
	}
	if _, err := f.rotator.EnsureKeys(ctx, second.Slug); err != nil {
		t.Fatal(err)
	}
	if err := f.keyring.RefreshIssuers(ctx, second.Slug); err != nil {
		t.Fatal(err)
	}
	if is, err := f.keyring.Issuer(""); err != nil || is.Slug != second.Slug || !is.IsDefault {
		t.Fatalf("default issuer %+v %v, want %s", is, err, second.Slug)
	}
	if is, err := f.keyring.Issuer(first.Slug); err != nil || is.IsDefault {
		t.Fatalf("the former default issuer %+v %v is still marked default", is, err)
	}

	retired := kidOf(t, f, "joins", StateRetired)
	clock.Advance(testPolicy().RetireGrace)
	if err := f.keyring.RefreshIssuers(ctx, "joins"); err != nil {
		t.Fatal(err)
	}
	if slices.Contains(jwksKids(t, mustJWKS(t, f.keyring, "joins")), retired) {
		t.Fatal("the retired key is still published after its grace ended")
	}

	// An issuer without keys can be removed by hand.
	if err := f.store.CreateIssuer(ctx, testIssuer("leaves", ES256), clock.Now()); err != nil {
		t.Fatal(err)
	}
	if err := f.keyring.RefreshIssuers(ctx, "leaves"); err == nil {
		t.Fatal("an issuer without keys reported no problem")
	}
	ringOf(t, f.keyring, "leaves")
	if _, err := f.pool.Exec(ctx, `DELETE FROM issuers WHERE slug = 'leaves'`); err != nil {
		t.Fatal(err)
	}
	if err := f.keyring.RefreshIssuers(ctx, "leaves"); err != nil {
		t.Fatal(err)
	}
	if _, err := f.keyring.JWKS("leaves"); !errors.Is(err, ErrUnknownIssuer) {
		t.Fatalf("JWKS of a removed issuer: %v, want ErrUnknownIssuer", err)
	}
}

// TestFollow_NotificationReloadsTheIssuerItNames follows the database with
// an hour's poll: a revocation announced for issuer B reaches the keyring
// without reading issuer A (changed unannounced), and a notification that
// names no issuer, or something that is not a slug, reloads every issuer.
func TestFollow_NotificationReloadsTheIssuerItNames(t *testing.T) {
	ctx, cancel := context.WithCancel(testContext())
	defer cancel()
	clock := newFakeClock()
	url := testDB.Fresh(t)
	sealer := newSealer(t, newKEK(t, "k1"))
	writer := newFixture(t, url, clock, sealer)
	rotatedIssuers(t, writer, "follow-a", "follow-b")
	f := newFixture(t, url, clock, sealer)
	refreshed := make(chan error, 100)
	go f.keyring.Follow(ctx, time.Hour, func(err error) { refreshed <- err })
	if err := <-refreshed; err != nil {
		t.Fatal(err)
	}
	a := ringOf(t, f.keyring, "follow-a")

	setFHIRBase(t, writer, "follow-a", "https://fhir.example.org/unannounced")
	retired := kidOf(t, writer, "follow-b", StateRetired)
	if _, err := writer.rotator.Revoke(ctx, "follow-b", retired); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the revoked key to leave follow-b's JWKS", func() bool {
		set, err := f.keyring.JWKS("follow-b")
		return err == nil && !slices.Contains(jwksKids(t, set), retired)
	})
	if ringOf(t, f.keyring, "follow-a") != a {
		t.Fatal("a notification for follow-b rebuilt follow-a")
	}

	for i, payload := range []string{"", "Not A Slug!"} {
		want := fmt.Sprintf("https://fhir.example.org/everything-%d", i)
		setFHIRBase(t, writer, "follow-a", want)
		if _, err := writer.pool.Exec(ctx, `SELECT pg_notify($1, $2)`, NotifyChannel, payload); err != nil {
			t.Fatal(err)
		}
		waitFor(t, fmt.Sprintf("a notification with payload %q to reload follow-a", payload), func() bool {
			return fhirBase(t, f.keyring, "follow-a") == want
		})
	}
}

func TestPendingChanges_MergesIssuersUntilEverything(t *testing.T) {
	p := newPendingChanges()
	if all, slugs := p.take(); all || len(slugs) != 0 {
		t.Fatalf("nothing pending: took %v %v", all, slugs)
	}
	p.add("b")
	p.add("a")
	p.add("b")
	if all, slugs := p.take(); all || !slices.Equal(slugs, []string{"a", "b"}) {
		t.Fatalf("took %v %v, want issuers a and b", all, slugs)
	}
	if all, slugs := p.take(); all || len(slugs) != 0 {
		t.Fatalf("a second take gave %v %v", all, slugs)
	}
	for _, payload := range []string{"", "Not A Slug!", strings.Repeat("x", 64)} {
		p.add("a")
		p.add(payload)
		if all, slugs := p.take(); !all || slugs != nil {
			t.Fatalf("payload %q: took %v %v, want every issuer", payload, all, slugs)
		}
	}
	for i := range maxPendingIssuers + 1 {
		p.add(fmt.Sprintf("issuer-%d", i))
	}
	if all, _ := p.take(); !all {
		t.Fatalf("more than %d issuers pending did not turn into every issuer", maxPendingIssuers)
	}
	p.everything()
	p.add("a")
	if all, _ := p.take(); !all {
		t.Fatal("an issuer named after everything was pending hid everything")
	}
	select {
	case <-p.ready:
	default:
		t.Fatal("no signal after add")
	}
}
