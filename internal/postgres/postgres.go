// Package postgres opens the connection pool and runs the embedded schema
// migrations (golang-migrate with the pgx/v5 driver and the iofs source).
package postgres

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/golang-migrate/migrate/v4"
	migratepgx "github.com/golang-migrate/migrate/v4/database/pgx/v5"
	"github.com/golang-migrate/migrate/v4/source/iofs"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"

	"github.com/ehealth-nl/portal/migrations"
)

// Connect opens a connection pool and checks that the database answers.
func Connect(ctx context.Context, databaseURL string) (*pgxpool.Pool, error) {
	cfg, err := pgxpool.ParseConfig(databaseURL)
	if err != nil {
		return nil, errors.New("parse DATABASE_URL: not a valid PostgreSQL connection string")
	}
	if cfg.ConnConfig.ConnectTimeout == 0 {
		// Fail fast while the database is away, so requests get a 503 instead
		// of hanging (pgx has no connect timeout by default).
		cfg.ConnConfig.ConnectTimeout = 5 * time.Second
	}
	cfg.ConnConfig.RuntimeParams["application_name"] = "portal"
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("open database pool: %w", err)
	}
	pingCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := pool.Ping(pingCtx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("connect to database %s@%s:%d/%s: %w", cfg.ConnConfig.User, cfg.ConnConfig.Host, cfg.ConnConfig.Port, cfg.ConnConfig.Database, err)
	}
	return pool, nil
}

// MigrationStatus is the schema version of a database.
type MigrationStatus struct {
	Version uint // 0 when no migration has run
	Dirty   bool // a migration failed half-way; fix by hand, then force the version
	Latest  uint // the newest migration this binary carries
}

// Migrator applies the embedded migrations to one database. Its methods take
// golang-migrate's advisory lock, so several instances may call Up at once:
// the first applies the migrations, the others wait and find nothing to do.
type Migrator struct {
	m        *migrate.Migrate
	db       *sql.DB
	latest   uint
	versions []uint // every embedded migration version, ascending
}

// NewMigrator opens a migrator over the pool's connection settings.
func NewMigrator(pool *pgxpool.Pool) (*Migrator, error) {
	db := stdlib.OpenDB(*pool.Config().ConnConfig.Copy())
	driver, err := migratepgx.WithInstance(db, &migratepgx.Config{})
	if err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("prepare migrations: %w", err)
	}
	src, err := iofs.New(migrations.Files, ".")
	if err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("read embedded migrations: %w", err)
	}
	m, err := migrate.NewWithInstance("iofs", src, "pgx5", driver)
	if err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("prepare migrations: %w", err)
	}
	versions, err := embeddedVersions(src)
	if err != nil {
		_ = db.Close()
		return nil, err
	}
	return &Migrator{m: m, db: db, latest: versions[len(versions)-1], versions: versions}, nil
}

func embeddedVersions(src interface {
	First() (uint, error)
	Next(uint) (uint, error)
}) ([]uint, error) {
	v, err := src.First()
	if err != nil {
		return nil, fmt.Errorf("read embedded migrations: %w", err)
	}
	versions := []uint{v}
	for {
		n, err := src.Next(v)
		if err != nil {
			return versions, nil
		}
		versions, v = append(versions, n), n
	}
}

// Close releases the migrator's connection.
func (m *Migrator) Close() error {
	srcErr, dbErr := m.m.Close()
	return errors.Join(srcErr, dbErr, m.db.Close())
}

// Up applies every pending migration; it is a no-op when none is pending.
func (m *Migrator) Up() error {
	if err := m.m.Up(); err != nil && !errors.Is(err, migrate.ErrNoChange) {
		return fmt.Errorf("migrate up: %w", err)
	}
	return nil
}

// Down reverts the newest steps migrations.
func (m *Migrator) Down(steps int) error {
	if steps <= 0 {
		return fmt.Errorf("migrate down: steps must be at least 1, got %d", steps)
	}
	st, err := m.Status()
	if err != nil {
		return err
	}
	applied := 0
	for _, v := range m.versions {
		if st.Version != 0 && v <= st.Version {
			applied++
		}
	}
	if steps > applied {
		return fmt.Errorf("migrate down %d: only %d migration(s) applied", steps, applied)
	}
	if err := m.m.Steps(-steps); err != nil && !errors.Is(err, migrate.ErrNoChange) {
		return fmt.Errorf("migrate down %d: %w", steps, err)
	}
	return nil
}

// Status reports the database's schema version.
func (m *Migrator) Status() (MigrationStatus, error) {
	v, dirty, err := m.m.Version()
	if errors.Is(err, migrate.ErrNilVersion) {
		return MigrationStatus{Latest: m.latest}, nil
	}
	if err != nil {
		return MigrationStatus{}, fmt.Errorf("read schema version: %w", err)
	}
	return MigrationStatus{Version: v, Dirty: dirty, Latest: m.latest}, nil
}
