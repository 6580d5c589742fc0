package keys

import (
	"context"
	"crypto/rand"
	"errors"
	"io"
	"log/slog"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/ehealth-nl/portal/internal/pgtest"
	"github.com/ehealth-nl/portal/internal/postgres"

	"github.com/ehealth-nl/portal/internal/adminevents"
)

var testDB *pgtest.Package

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m, "keys", &testDB)) }

// fakeClock is a settable clock shared by rotators and keyrings in a test.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func newFakeClock() *fakeClock {
	return &fakeClock{now: time.Date(2026, 3, 1, 9, 0, 0, 0, time.UTC)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

var testLimits = TimingLimits{JWKSMaxAge: 60 * time.Second, MaxStaleness: 90 * time.Second, TokenLifetime: 300 * time.Second}

func testPolicy() Policy {
	return Policy{RotationPeriod: 24 * time.Hour, PublishLead: time.Hour, RetireGrace: time.Hour}
}

// testIssuer is an issuer signing with alg: a koppeltaal issuer when the
// Koppeltaal auth server accepts alg, else an hti one.
func testIssuer(slug string, alg Algorithm) Issuer {
	profile := ProfileKoppeltaal
	if !profile.Allows(alg) {
		profile = ProfileHTI
	}
	return Issuer{Slug: slug, ClientID: "client-" + slug, FHIRBaseURL: "https://fhir.example.org/fhir", Profile: profile, Alg: alg, RSABits: 2048, Policy: testPolicy()}
}

func newKEK(t testing.TB, id string) KEK {
	t.Helper()
	k := make([]byte, KEKSize)
	if _, err := rand.Read(k); err != nil {
		t.Fatal(err)
	}
	return KEK{ID: id, Key: k}
}

func newSealer(t testing.TB, ring ...KEK) *Sealer {
	t.Helper()
	s, err := NewSealer(ring)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func connect(t testing.TB, url string) *pgxpool.Pool {
	t.Helper()
	pool, err := postgres.Connect(testContext(), url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return pool
}

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// fixture is a store, rotator and keyring over one database.
type fixture struct {
	pool    *pgxpool.Pool
	store   *Store
	sealer  *Sealer
	clock   *fakeClock
	rotator *Rotator
	keyring *Keyring
}

func newFixture(t testing.TB, url string, clock *fakeClock, sealer *Sealer) *fixture {
	t.Helper()
	pool := connect(t, url)
	store := NewStore(pool)
	return &fixture{
		pool: pool, store: store, sealer: sealer, clock: clock,
		rotator: NewRotator(store, sealer, clock.Now, quietLogger()),
		keyring: NewKeyring(store, sealer, clock.Now, quietLogger()),
	}
}

// addIssuer stores an issuer and gives it its first keys.
func (f *fixture) addIssuer(t testing.TB, is Issuer) {
	t.Helper()
	ctx := testContext()
	if err := is.Validate(testLimits); err != nil {
		t.Fatal(err)
	}
	if err := f.store.CreateIssuer(ctx, is, f.clock.Now()); err != nil {
		t.Fatal(err)
	}
	if _, err := f.rotator.EnsureKeys(ctx, is.Slug); err != nil {
		t.Fatal(err)
	}
}

// refresh loads the keyring and fails the test if the database could not
// be read; per-issuer problems are left to Ready and Status.
func (f *fixture) refresh(t testing.TB) {
	t.Helper()
	var problems *RefreshProblems
	if err := f.keyring.Refresh(testContext()); err != nil && !errors.As(err, &problems) {
		t.Fatal(err)
	}
}

// testContext is the context of the changes tests make: an operator at the
// command line, as the admin trail records it.
func testContext() context.Context {
	return adminevents.WithActor(context.Background(), "cli:test@localhost")
}
