package keys

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/ehealth-nl/portal/internal/pgtest"
	"github.com/ehealth-nl/portal/internal/postgres"
)

// TestKeyring_StaleBehindABlackHoleStopsSigning follows the database
// through a proxy that stops forwarding bytes without closing anything (a
// partition that drops packets). Refreshes must time out rather than hang;
// once the keyring is older than the maximum staleness (by the injected
// clock) it is not ready and does not sign, but still serves the JWKS; when
// the database is back it recovers.
func TestKeyring_StaleBehindABlackHoleStopsSigning(t *testing.T) {
	ctx, cancel := context.WithCancel(testContext())
	defer cancel()
	url := testDB.Fresh(t)
	clock := newFakeClock()
	sealer := newSealer(t, newKEK(t, "k1"))
	setup := newFixture(t, url, clock, sealer)
	setup.addIssuer(t, testIssuer("partition", ES256))

	proxy := pgtest.NewProxy(t, url)
	defer proxy.Restore() // let the pool close cleanly
	f := newFixture(t, proxy.URL(url), clock, sealer)
	const maxStaleness = 90 * time.Second
	k := NewKeyring(f.store, sealer, clock.Now, quietLogger(), WithMaxStaleness(maxStaleness), WithRefreshTimeout(200*time.Millisecond))
	refreshed := make(chan error, 1000)
	go k.Follow(ctx, 50*time.Millisecond, func(err error) { refreshed <- err })
	if err := <-refreshed; err != nil {
		t.Fatal(err)
	}
	if err := k.Ready(); err != nil {
		t.Fatal(err)
	}

	proxy.BlackHole()
	for err := range refreshed {
		if err != nil {
			if !errors.Is(err, postgres.ErrUnavailable) {
				t.Fatalf("a refresh behind the black hole failed with %v, want a timeout classified as unavailable", err)
			}
			break
		}
	}
	if _, err := k.Signer("partition"); err != nil {
		t.Fatalf("within the maximum staleness the keyring must still sign: %v", err)
	}
	clock.Advance(maxStaleness + time.Second)
	err := k.Ready()
	var re *ReadinessError
	if !errors.As(err, &re) || !re.Critical() || !errors.Is(err, ErrKeyringStale) {
		t.Fatalf("Ready after the maximum staleness: %v, want a critical ErrKeyringStale", err)
	}
	if s, err := k.Signer("partition"); !errors.Is(err, ErrKeyringStale) || !errors.Is(err, ErrNoActiveKey) {
		t.Fatalf("a stale keyring signs with %v (err %v)", s, err)
	}
	if n := len(k.ActiveSigners()); n != 0 {
		t.Fatalf("a stale keyring offers %d signers", n)
	}
	if kids := jwksKids(t, mustJWKS(t, k, "partition")); len(kids) != 2 {
		t.Fatalf("a stale keyring serves JWKS %v, want the last known keys", kids)
	}
	if age, ok := k.Staleness(); !ok || age <= maxStaleness {
		t.Fatalf("staleness %s (%v), want more than %s", age, ok, maxStaleness)
	}
	if st := k.Status(); len(st) != 1 || st[0].CanSign || !strings.Contains(strings.Join(st[0].Reasons, " "), "stale") {
		t.Fatalf("status of a stale keyring: %+v", st)
	}

	proxy.Restore()
	for err := range refreshed {
		if err == nil {
			break
		}
	}
	if err := k.Ready(); err != nil {
		t.Fatalf("after the database came back: %v", err)
	}
	if _, err := k.Signer("partition"); err != nil {
		t.Fatal(err)
	}
}

// TestKeyring_RefreshGivesUpWaitingForAStuckRefresh: a caller with a
// deadline (the admin rotate endpoint) does not wait behind a refresh in
// progress beyond its own context.
func TestKeyring_RefreshGivesUpWaitingForAStuckRefresh(t *testing.T) {
	clock := newFakeClock()
	f := newFixture(t, testDB.Fresh(t), clock, newSealer(t, newKEK(t, "k1")))
	f.keyring.refreshLock <- struct{}{} // a refresh in progress that does not end
	ctx, cancel := context.WithTimeout(testContext(), 50*time.Millisecond)
	defer cancel()
	err := f.keyring.Refresh(ctx)
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "refresh in progress") {
		t.Fatalf("Refresh behind a stuck refresh: %v, want the caller's deadline", err)
	}
	<-f.keyring.refreshLock
	f.refresh(t)
}
