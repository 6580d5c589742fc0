package main

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/ehealth-nl/portal/internal/config"
	"github.com/ehealth-nl/portal/internal/keys"
	"github.com/ehealth-nl/portal/internal/postgres"
)

// environment is what a database command works with: the configuration, a
// logger, the pool and the key lifecycle objects built on it.
type environment struct {
	cfg     config.Config
	log     *slog.Logger
	pool    *pgxpool.Pool
	sealer  *keys.Sealer
	store   *keys.Store
	rotator *keys.Rotator
	clock   func() time.Time
}

func (e *environment) close() {
	if e.pool != nil {
		e.pool.Close()
	}
}

// newLogger returns the JSON logger every command writes to stderr.
func newLogger(w io.Writer, level slog.Level) *slog.Logger {
	return slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: level}))
}

// openEnvironment loads the configuration, connects to the database and
// builds the key store, sealer and rotator.
func openEnvironment(ctx context.Context, c *cli) (*environment, error) {
	cfg, err := config.Load(c.getenv)
	if err != nil {
		return nil, err
	}
	e := &environment{cfg: cfg, log: newLogger(c.stderr, cfg.LogLevel), clock: time.Now}
	keks := cfg.KEKs
	if len(keks) == 0 {
		kek, err := developmentKEK(cfg.DevKEKFile)
		if err != nil {
			return nil, err
		}
		e.log.Warn("using the development KEK; set PORTAL_KEK outside development", "file", cfg.DevKEKFile, "kek_id", kek.ID)
		keks = []keys.KEK{kek}
	}
	if e.sealer, err = keys.NewSealer(keks); err != nil {
		return nil, err
	}
	if e.pool, err = postgres.Connect(ctx, cfg.DatabaseURL); err != nil {
		return nil, err
	}
	e.store = keys.NewStore(e.pool)
	e.rotator = keys.NewRotator(e.store, e.sealer, e.clock, e.log)
	return e, nil
}

// openDatabase is openEnvironment for the commands that never open a
// private key: it reads config.DatabaseVariables only (no KEK, no issuer
// settings) and leaves the sealer and rotator unset.
func openDatabase(ctx context.Context, c *cli) (*environment, error) {
	dc, err := config.LoadDatabase(c.getenv)
	if err != nil {
		return nil, err
	}
	e := &environment{cfg: config.Config{DatabaseURL: dc.DatabaseURL, LogLevel: dc.LogLevel, AllowHTTPModules: dc.AllowHTTPModules},
		log: newLogger(c.stderr, dc.LogLevel), clock: time.Now}
	if e.pool, err = postgres.Connect(ctx, dc.DatabaseURL); err != nil {
		return nil, err
	}
	e.store = keys.NewStore(e.pool)
	return e, nil
}

// defaultIssuer returns the slug of the default issuer as stored.
func defaultIssuer(ctx context.Context, e *environment) (string, error) {
	issuers, err := e.store.Issuers(ctx)
	if err != nil {
		return "", err
	}
	for _, is := range issuers {
		if is.IsDefault {
			return is.Slug, nil
		}
	}
	return "", errors.New("no default issuer is stored yet: start portal serve once, or name the issuer with --issuer")
}

// developmentKEK reads the development KEK from path, creating the file with
// a random key the first time, so that a restart opens the same keys.
func developmentKEK(path string) (keys.KEK, error) {
	raw, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		if err := createDevelopmentKEK(path); err != nil {
			return keys.KEK{}, fmt.Errorf("PORTAL_DEV_KEK_FILE: %w", err)
		}
		raw, err = os.ReadFile(path)
	}
	if err != nil {
		return keys.KEK{}, fmt.Errorf("PORTAL_DEV_KEK_FILE: %w", err)
	}
	key, err := base64.StdEncoding.DecodeString(strings.TrimSpace(string(raw)))
	if err != nil || len(key) != keys.KEKSize {
		return keys.KEK{}, fmt.Errorf("PORTAL_DEV_KEK_FILE: %s does not hold base64 of %d bytes", path, keys.KEKSize)
	}
	return keys.KEK{ID: keys.KEKIDFor(key), Key: key}, nil
}

// createDevelopmentKEK writes a random KEK to a temporary file and links it
// into place, so instances starting together all end up with the same one.
func createDevelopmentKEK(path string) error {
	key := make([]byte, keys.KEKSize)
	if _, err := rand.Read(key); err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".kek-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	_, err = tmp.WriteString(base64.StdEncoding.EncodeToString(key) + "\n")
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	if err := os.Link(tmp.Name(), path); err != nil && !errors.Is(err, fs.ErrExist) {
		return err
	}
	return nil
}

// newKeyring builds the keyring with the configured staleness bound: a
// refresh takes at most the poll interval (and 10s), and every issuer's
// policy is checked against the service limits on every refresh.
func newKeyring(e *environment) *keys.Keyring {
	return keys.NewKeyring(e.store, e.sealer, e.clock, e.log,
		keys.WithMaxStaleness(e.cfg.KeyringMaxStaleness),
		keys.WithRefreshTimeout(min(keys.DefaultRefreshTimeout, e.cfg.KeyringRefresh)),
		keys.WithTimingLimits(e.cfg.Limits()))
}
