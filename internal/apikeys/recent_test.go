package apikeys

import (
	"context"
	"errors"
	"os"
	"testing"
	"time"

	"github.com/ehealth-nl/portal/internal/adminevents"
	"github.com/ehealth-nl/portal/internal/pgtest"
	"github.com/ehealth-nl/portal/internal/postgres"
)

var testDB *pgtest.Package

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m, "apikeys", &testDB)) }

// TestRecent_RemembersValidKeysForItsLifetime shows what Recent is, and so
// why the launch routes that use it must check the key again when they
// write: within its lifetime it still admits a key revoked in the
// database; a wrong secret for a remembered key id is refused without the
// database; after the lifetime, or after Forget, the database answers. A
// key found invalid is never remembered.
func TestRecent_RemembersValidKeysForItsLifetime(t *testing.T) {
	ctx := adminevents.WithActor(context.Background(), "cli:test@localhost")
	pool, err := postgres.Connect(ctx, testDB.Fresh(t))
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	store := NewStore(pool)
	now := time.Date(2026, 12, 3, 10, 0, 0, 0, time.UTC)
	clock := func() time.Time { return now }
	_, presented, err := store.Create(ctx, "backend", ScopeLaunch, now)
	if err != nil {
		t.Fatal(err)
	}
	recent := NewRecent(store, time.Minute, clock)
	key, err := recent.Authenticate(ctx, presented)
	if err != nil || key.Name != "backend" || key.Scope != ScopeLaunch {
		t.Fatalf("valid key: %+v %v", key, err)
	}
	last := "A"
	if presented[len(presented)-1] == 'A' {
		last = "B"
	}
	wrongSecret := presented[:len(presented)-1] + last
	if _, err := recent.Authenticate(ctx, wrongSecret); !errors.Is(err, ErrUnauthenticated) {
		t.Errorf("remembered key id with another secret: %v, want ErrUnauthenticated", err)
	}
	if _, err := store.Revoke(ctx, "backend", now); err != nil {
		t.Fatal(err)
	}
	if _, err := recent.Authenticate(ctx, presented); err != nil {
		t.Errorf("within its lifetime a revoked key is still admitted from memory (the launch write refuses it): %v", err)
	}
	now = now.Add(time.Minute)
	if _, err := recent.Authenticate(ctx, presented); !errors.Is(err, ErrUnauthenticated) {
		t.Errorf("after its lifetime: %v, want ErrUnauthenticated from the database", err)
	}
	_, second, err := store.Create(ctx, "backend", ScopeLaunch, now)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := recent.Authenticate(ctx, second); err != nil {
		t.Fatal(err)
	}
	if _, err := store.Revoke(ctx, "backend", now); err != nil {
		t.Fatal(err)
	}
	recent.Forget(second[len(keyPrefix) : len(keyPrefix)+keyIDLen])
	if _, err := recent.Authenticate(ctx, second); !errors.Is(err, ErrUnauthenticated) {
		t.Errorf("after Forget: %v, want ErrUnauthenticated from the database", err)
	}
	if _, err := recent.Authenticate(ctx, second); !errors.Is(err, ErrUnauthenticated) {
		t.Errorf("a key found revoked was remembered: %v", err)
	}
}
