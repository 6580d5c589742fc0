// Package pgtest gives tests real PostgreSQL databases: each test package
// gets a freshly migrated template database, each test that asks gets its
// own copy of it, and everything is dropped afterwards. It also offers a TCP
// proxy that can cut a service off from its database, to test outages
// without stopping the shared server. It is used by tests only.
package pgtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/ehealth-nl/portal/internal/postgres"
)

// AdminURL is the connection string tests create their databases with:
// PORTAL_TEST_DATABASE_URL, else DATABASE_URL.
func AdminURL() string {
	if u := os.Getenv("PORTAL_TEST_DATABASE_URL"); u != "" {
		return u
	}
	return os.Getenv("DATABASE_URL")
}

// Package is a test package's migrated template database.
type Package struct {
	admin    string
	template string
}

// Main creates the package's template database, runs the tests and drops
// it. Without a database it fails loudly: tests never pass by skipping.
func Main(m *testing.M, name string, pkg **Package) int {
	admin := AdminURL()
	if admin == "" {
		fmt.Fprintln(os.Stderr, "FAIL: no PostgreSQL for the tests: set DATABASE_URL (or PORTAL_TEST_DATABASE_URL), or run `make test`, which finds or starts one")
		return 1
	}
	p, err := newPackage(admin, name)
	if err != nil {
		fmt.Fprintf(os.Stderr, "FAIL: prepare test database: %v\n", err)
		return 1
	}
	*pkg = p
	code := m.Run()
	if err := p.drop(p.template); err != nil {
		fmt.Fprintf(os.Stderr, "warning: drop template database %s: %v\n", p.template, err)
	}
	return code
}

func newPackage(admin, name string) (*Package, error) {
	p := &Package{admin: admin, template: "portal_t_" + name + "_" + randomSuffix()}
	if err := p.exec("CREATE DATABASE " + pgx.Identifier{p.template}.Sanitize()); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	pool, err := postgres.Connect(ctx, p.urlFor(p.template))
	if err != nil {
		return nil, err
	}
	defer pool.Close()
	m, err := postgres.NewMigrator(pool)
	if err != nil {
		return nil, err
	}
	err = m.Up()
	if cerr := m.Close(); err == nil {
		err = cerr
	}
	return p, err
}

// Fresh returns the URL of a new migrated database for one test, dropped
// when the test ends.
func (p *Package) Fresh(t testing.TB) string {
	t.Helper()
	return p.create(t, " TEMPLATE "+pgx.Identifier{p.template}.Sanitize())
}

// Empty returns the URL of a new database without any schema, for tests
// of the migrations themselves; it is dropped when the test ends.
func (p *Package) Empty(t testing.TB) string {
	t.Helper()
	return p.create(t, "")
}

// create makes a database named after the package's template, with the
// given CREATE DATABASE options, and drops it when the test ends.
func (p *Package) create(t testing.TB, options string) string {
	t.Helper()
	name := p.template[:strings.LastIndex(p.template, "_")] + "_" + randomSuffix()
	if err := p.exec("CREATE DATABASE " + pgx.Identifier{name}.Sanitize() + options); err != nil {
		t.Fatalf("create test database: %v", err)
	}
	t.Cleanup(func() {
		if err := p.drop(name); err != nil {
			t.Logf("drop test database %s: %v", name, err)
		}
	})
	return p.urlFor(name)
}

func (p *Package) drop(name string) error {
	return p.exec("DROP DATABASE IF EXISTS " + pgx.Identifier{name}.Sanitize() + " WITH (FORCE)")
}

func (p *Package) exec(sql string) error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := pgx.Connect(ctx, p.admin)
	if err != nil {
		return fmt.Errorf("connect to %s: %w", redact(p.admin), err)
	}
	defer conn.Close(ctx)
	// CREATE DATABASE ... TEMPLATE fails while another CREATE copies the
	// same template; retry briefly.
	for attempt := 0; ; attempt++ {
		_, err = conn.Exec(ctx, sql)
		if err == nil || attempt == 20 || !strings.Contains(err.Error(), "is being accessed by other users") {
			return err
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (p *Package) urlFor(db string) string {
	u, err := url.Parse(p.admin)
	if err != nil || u.Scheme == "" {
		// A keyword/value connection string.
		return p.admin + " dbname=" + db
	}
	u.Path = "/" + db
	return u.String()
}

func randomSuffix() string {
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func redact(s string) string {
	u, err := url.Parse(s)
	if err != nil || u.User == nil {
		return s
	}
	return u.Redacted()
}
