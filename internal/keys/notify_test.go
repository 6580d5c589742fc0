package keys

import (
	"context"
	"slices"
	"testing"
	"time"
)

// waitFor polls cond until it holds or the deadline passes. The deadline is
// a safety net for a broken build, not a performance assertion.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("gave up waiting: %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestFollow_NotifyReachesAnotherInstanceLongBeforeThePoll gives the
// follower a one-hour poll interval: only a notification can make it see a
// rotation or a revocation within the test.
func TestFollow_NotifyReachesAnotherInstanceLongBeforeThePoll(t *testing.T) {
	ctx, cancel := context.WithCancel(testContext())
	defer cancel()
	url := testDB.Fresh(t)
	clock := newFakeClock()
	sealer := newSealer(t, newKEK(t, "k1"))
	a := newFixture(t, url, clock, sealer)
	a.addIssuer(t, testIssuer("follow", ES256))
	b := newFixture(t, url, clock, sealer)
	b.refresh(t)
	first, _ := b.keyring.Signer("follow")

	refreshed := make(chan error, 100)
	go b.keyring.Follow(ctx, time.Hour, func(err error) { refreshed <- err })
	// Follow refreshes once when its LISTEN connection is up; after that
	// every change is announced.
	if err := <-refreshed; err != nil {
		t.Fatal(err)
	}

	c, err := a.rotator.Rotate(ctx, "follow", true)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the other keyring to sign with the rotated key", func() bool {
		s, err := b.keyring.Signer("follow")
		return err == nil && s.Kid == c.Activated && s.Kid != first.Kid
	})

	c, err = a.rotator.Revoke(ctx, "follow", c.Activated)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the revoked key to leave the other keyring", func() bool {
		s, err := b.keyring.Signer("follow")
		set, _ := b.keyring.JWKS("follow")
		return err == nil && s.Kid == c.Activated && !slices.Contains(jwksKids(t, set), c.Revoked)
	})
}
