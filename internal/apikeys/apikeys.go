// Package apikeys owns the API keys with which portal backends create
// launches and operators manage the service: creating them (the secret is
// shown once), authenticating a presented key in constant time, listing and
// revoking. Only a SHA-256 of each secret is stored.
package apikeys

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"regexp"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Scope is what a key may do.
type Scope string

// The scopes. They do not include each other: a launch key cannot manage
// the service and an admin key cannot launch (least privilege).
const (
	ScopeLaunch Scope = "launch"
	ScopeAdmin  Scope = "admin"
)

// ParseScope returns the named scope.
func ParseScope(s string) (Scope, error) {
	switch Scope(s) {
	case ScopeLaunch, ScopeAdmin:
		return Scope(s), nil
	}
	return "", fmt.Errorf("scope %q is not launch or admin", s)
}

// Key describes an API key; it never holds the secret.
type Key struct {
	KeyID     string    // public part of the presented key, shown in lists and logs
	Name      string    // who uses the key, unique among valid keys
	Scope     Scope     // what the key may do
	CreatedAt time.Time // when it was created
	RevokedAt time.Time // zero while the key is valid
}

// Errors of this package.
var (
	// ErrUnauthenticated means the presented key is malformed, unknown or revoked.
	ErrUnauthenticated = errors.New("unknown or revoked API key")
	// ErrNameInUse means a valid key already has that name.
	ErrNameInUse = errors.New("a valid API key with that name exists")
	// ErrNotFound means no valid key has that name.
	ErrNotFound = errors.New("no valid API key with that name")
	// ErrInvalidName means the name breaks the naming rule.
	ErrInvalidName = errors.New("name must be 1-64 letters, digits, '.', '_' or '-'")
)

var namePattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)

// A presented key is "ptl_" + 16 hex characters of key id + "_" + 43
// base64url characters of secret (256 bits).
const (
	keyPrefix = "ptl_"
	keyIDLen  = 16
	secretLen = 43
	keyLen    = len(keyPrefix) + keyIDLen + 1 + secretLen
)

// Store keeps API keys in PostgreSQL.
type Store struct {
	pool *pgxpool.Pool
}

// NewStore returns a Store over a pool.
func NewStore(pool *pgxpool.Pool) *Store { return &Store{pool: pool} }

func hashSecret(secret string) []byte {
	sum := sha256.Sum256([]byte(secret))
	return sum[:]
}

// Create makes a new key and returns it with the secret to hand to its
// user. The secret cannot be shown again.
func (s *Store) Create(ctx context.Context, name string, scope Scope, now time.Time) (Key, string, error) {
	if !namePattern.MatchString(name) {
		return Key{}, "", ErrInvalidName
	}
	if _, err := ParseScope(string(scope)); err != nil {
		return Key{}, "", err
	}
	idBytes, secretBytes := make([]byte, keyIDLen/2), make([]byte, 32)
	if _, err := rand.Read(idBytes); err != nil {
		return Key{}, "", err
	}
	if _, err := rand.Read(secretBytes); err != nil {
		return Key{}, "", err
	}
	k := Key{KeyID: hex.EncodeToString(idBytes), Name: name, Scope: scope, CreatedAt: now.UTC()}
	secret := base64.RawURLEncoding.EncodeToString(secretBytes)
	_, err := s.pool.Exec(ctx, `INSERT INTO api_keys (key_id, name, scope, secret_hash, created_at) VALUES ($1, $2, $3, $4, $5)`,
		k.KeyID, k.Name, string(k.Scope), hashSecret(secret), k.CreatedAt)
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "23505" && pgErr.ConstraintName == "api_keys_name_in_use" {
		return Key{}, "", fmt.Errorf("create API key %q: %w", name, ErrNameInUse)
	}
	if err != nil {
		return Key{}, "", fmt.Errorf("create API key %q: %w", name, err)
	}
	return k, keyPrefix + k.KeyID + "_" + secret, nil
}

// Authenticate returns the valid key a presented key string belongs to. The
// secret is compared in constant time against the stored hash.
func (s *Store) Authenticate(ctx context.Context, presented string) (Key, error) {
	if len(presented) != keyLen || presented[:len(keyPrefix)] != keyPrefix || presented[len(keyPrefix)+keyIDLen] != '_' {
		return Key{}, ErrUnauthenticated
	}
	keyID := presented[len(keyPrefix) : len(keyPrefix)+keyIDLen]
	secret := presented[len(keyPrefix)+keyIDLen+1:]
	var (
		k       Key
		scope   string
		hash    []byte
		revoked *time.Time
	)
	err := s.pool.QueryRow(ctx, `SELECT key_id, name, scope, secret_hash, created_at, revoked_at FROM api_keys WHERE key_id = $1`, keyID).
		Scan(&k.KeyID, &k.Name, &scope, &hash, &k.CreatedAt, &revoked)
	if errors.Is(err, pgx.ErrNoRows) {
		// Spend the same hashing work as for a known key.
		subtle.ConstantTimeCompare(hashSecret(secret), make([]byte, 32))
		return Key{}, ErrUnauthenticated
	}
	if err != nil {
		return Key{}, fmt.Errorf("authenticate API key: %w", err)
	}
	if subtle.ConstantTimeCompare(hashSecret(secret), hash) != 1 || revoked != nil {
		return Key{}, ErrUnauthenticated
	}
	k.Scope = Scope(scope)
	return k, nil
}

// List returns every key, valid ones first, newest first.
func (s *Store) List(ctx context.Context) ([]Key, error) {
	rows, err := s.pool.Query(ctx, `SELECT key_id, name, scope, created_at, revoked_at FROM api_keys
		ORDER BY revoked_at IS NOT NULL, created_at DESC, key_id`)
	if err != nil {
		return nil, fmt.Errorf("list API keys: %w", err)
	}
	keys, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Key, error) {
		var (
			k       Key
			scope   string
			revoked *time.Time
		)
		err := r.Scan(&k.KeyID, &k.Name, &scope, &k.CreatedAt, &revoked)
		k.Scope = Scope(scope)
		if revoked != nil {
			k.RevokedAt = revoked.UTC()
		}
		k.CreatedAt = k.CreatedAt.UTC()
		return k, err
	})
	if err != nil {
		return nil, fmt.Errorf("list API keys: %w", err)
	}
	return keys, nil
}

// Revoke withdraws the valid key with the given name at once.
func (s *Store) Revoke(ctx context.Context, name string, now time.Time) (Key, error) {
	var k Key
	var scope string
	err := s.pool.QueryRow(ctx, `UPDATE api_keys SET revoked_at = $2 WHERE name = $1 AND revoked_at IS NULL
		RETURNING key_id, name, scope, created_at`, name, now.UTC()).Scan(&k.KeyID, &k.Name, &scope, &k.CreatedAt)
	if errors.Is(err, pgx.ErrNoRows) {
		return Key{}, fmt.Errorf("revoke API key %q: %w", name, ErrNotFound)
	}
	if err != nil {
		return Key{}, fmt.Errorf("revoke API key %q: %w", name, err)
	}
	k.Scope, k.RevokedAt = Scope(scope), now.UTC()
	return k, nil
}
