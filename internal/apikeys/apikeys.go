// Package apikeys owns the API keys with which portal backends create
// launches and operators manage the service: creating them (the secret is
// shown once), authenticating a presented key in constant time, listing and
// revoking. Only a SHA-256 of each secret is stored. A launch key may be
// limited to issuers, so that in a deployment serving several portals one
// portal's backend cannot launch under another portal's client_id.
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
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/ehealth-nl/portal/internal/adminevents"
	"github.com/ehealth-nl/portal/internal/postgres"
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
	Issuers   []string  // slugs of the issuers a launch key may launch for, sorted; nil means any
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
	// ErrInvalidIssuer means an issuer limit is not an issuer slug, or was
	// given for a key that does not launch.
	ErrInvalidIssuer = errors.New("invalid issuer limit")
	// ErrUnknownIssuer means an issuer limit names an issuer that does not exist.
	ErrUnknownIssuer = errors.New("unknown issuer")
)

// issuerSlugPattern is the rule of issuers.slug (migrations 0001).
var issuerSlugPattern = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,62}$`)

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

// SQL of the store.
const (
	sqlMissingIssuers = `SELECT coalesce(array_agg(u.slug ORDER BY u.slug), '{}') FROM unnest($1::text[]) AS u(slug)
WHERE NOT EXISTS (SELECT 1 FROM issuers i WHERE i.slug = u.slug)`
	sqlInsertKey = `INSERT INTO api_keys (key_id, name, scope, secret_hash, created_at, issuers)
VALUES ($1, $2, $3, $4, $5, $6)`
	sqlKeyByID  = `SELECT key_id, name, scope, secret_hash, created_at, revoked_at, issuers FROM api_keys WHERE key_id = $1`
	sqlListKeys = `SELECT key_id, name, scope, created_at, revoked_at, issuers FROM api_keys
ORDER BY revoked_at IS NOT NULL, created_at DESC, key_id`
	sqlRevokeKey = `UPDATE api_keys SET revoked_at = $2 WHERE name = $1 AND revoked_at IS NULL
RETURNING key_id, name, scope, created_at, issuers`
)

// normalizeIssuers checks an issuer limit and returns it sorted and without
// repeats; no issuers means an unlimited key (nil).
func normalizeIssuers(scope Scope, issuers []string) ([]string, error) {
	if len(issuers) == 0 {
		return nil, nil
	}
	if scope != ScopeLaunch {
		return nil, fmt.Errorf("%w: only launch keys launch, so only they can be limited to issuers", ErrInvalidIssuer)
	}
	for _, slug := range issuers {
		if !issuerSlugPattern.MatchString(slug) {
			return nil, fmt.Errorf("%w: %q is not an issuer slug (1-63 lower-case letters, digits or dashes)", ErrInvalidIssuer, slug)
		}
	}
	out := slices.Clone(issuers)
	slices.Sort(out)
	return slices.Compact(out), nil
}

// quoteList renders slugs as "a", "b" for messages.
func quoteList(slugs []string) string {
	q := make([]string, len(slugs))
	for i, s := range slugs {
		q[i] = fmt.Sprintf("%q", s)
	}
	return strings.Join(q, ", ")
}

// Create makes a new key and returns it with the secret to hand to its
// user. The secret cannot be shown again. A launch key given issuers may
// launch only for those (each must exist); without issuers it may launch
// for any issuer.
func (s *Store) Create(ctx context.Context, name string, scope Scope, now time.Time, issuers ...string) (Key, string, error) {
	if !namePattern.MatchString(name) {
		return Key{}, "", ErrInvalidName
	}
	if _, err := ParseScope(string(scope)); err != nil {
		return Key{}, "", err
	}
	limit, err := normalizeIssuers(scope, issuers)
	if err != nil {
		return Key{}, "", fmt.Errorf("create API key %q: %w", name, err)
	}
	if limit != nil {
		// Issuers are never deleted, so a slug found here stays valid.
		var missing []string
		if err := s.pool.QueryRow(ctx, sqlMissingIssuers, limit).Scan(&missing); err != nil {
			return Key{}, "", postgres.Error(fmt.Sprintf("create API key %q: check issuers", name), err)
		}
		if len(missing) > 0 {
			return Key{}, "", fmt.Errorf("create API key %q: %w %s", name, ErrUnknownIssuer, quoteList(missing))
		}
	}
	idBytes, secretBytes := make([]byte, keyIDLen/2), make([]byte, 32)
	if _, err := rand.Read(idBytes); err != nil {
		return Key{}, "", err
	}
	if _, err := rand.Read(secretBytes); err != nil {
		return Key{}, "", err
	}
	k := Key{KeyID: hex.EncodeToString(idBytes), Name: name, Scope: scope, Issuers: limit, CreatedAt: now.UTC()}
	secret := base64.RawURLEncoding.EncodeToString(secretBytes)
	err = pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, sqlInsertKey, k.KeyID, k.Name, string(k.Scope), hashSecret(secret), k.CreatedAt, k.Issuers); err != nil {
			return err
		}
		return adminevents.Record(ctx, tx, now, adminevents.Change{Action: adminevents.APIKeyCreate, Target: "apikey:" + k.Name, After: k.auditState()})
	})
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "23505" && pgErr.ConstraintName == "api_keys_name_in_use" {
		return Key{}, "", fmt.Errorf("create API key %q: %w", name, ErrNameInUse)
	}
	if errors.Is(err, adminevents.ErrNoActor) {
		return Key{}, "", fmt.Errorf("create API key %q: %w", name, err)
	}
	if err != nil {
		return Key{}, "", postgres.Error(fmt.Sprintf("create API key %q", name), err)
	}
	return k, keyPrefix + k.KeyID + "_" + secret, nil
}

// auditState is what the admin trail records of a key: never its secret
// or the secret's hash.
func (k Key) auditState() map[string]any {
	state := map[string]any{"key_id": k.KeyID, "name": k.Name, "scope": string(k.Scope), "created_at": k.CreatedAt}
	if k.Issuers != nil {
		state["issuers"] = k.Issuers
	}
	if !k.RevokedAt.IsZero() {
		state["revoked_at"] = k.RevokedAt
	}
	return state
}

// Authenticate returns the valid key a presented key string belongs to,
// with its issuer limit. The secret is compared in constant time against
// the stored hash. Database errors are classified by postgres.Error: a
// transient one wraps postgres.ErrUnavailable.
func (s *Store) Authenticate(ctx context.Context, presented string) (Key, error) {
	k, _, err := s.authenticate(ctx, presented)
	return k, err
}

// splitPresented returns the key id and secret of a presented key, or
// false when it does not have the shape of one.
func splitPresented(presented string) (keyID, secret string, ok bool) {
	if len(presented) != keyLen || presented[:len(keyPrefix)] != keyPrefix || presented[len(keyPrefix)+keyIDLen] != '_' {
		return "", "", false
	}
	return presented[len(keyPrefix) : len(keyPrefix)+keyIDLen], presented[len(keyPrefix)+keyIDLen+1:], true
}

// authenticate is Authenticate, also returning the stored secret hash.
func (s *Store) authenticate(ctx context.Context, presented string) (Key, []byte, error) {
	keyID, secret, ok := splitPresented(presented)
	if !ok {
		return Key{}, nil, ErrUnauthenticated
	}
	var (
		k       Key
		scope   string
		hash    []byte
		revoked *time.Time
	)
	err := s.pool.QueryRow(ctx, sqlKeyByID, keyID).Scan(&k.KeyID, &k.Name, &scope, &hash, &k.CreatedAt, &revoked, &k.Issuers)
	if errors.Is(err, pgx.ErrNoRows) {
		// Spend the same hashing work as for a known key.
		subtle.ConstantTimeCompare(hashSecret(secret), make([]byte, 32))
		return Key{}, nil, ErrUnauthenticated
	}
	if err != nil {
		// The presented key id is not in the message: it is the client's text.
		return Key{}, nil, postgres.Error("authenticate API key", err)
	}
	if subtle.ConstantTimeCompare(hashSecret(secret), hash) != 1 || revoked != nil {
		return Key{}, nil, ErrUnauthenticated
	}
	k.Scope = Scope(scope)
	return k, hash, nil
}

// List returns every key, valid ones first, newest first.
func (s *Store) List(ctx context.Context) ([]Key, error) {
	rows, err := s.pool.Query(ctx, sqlListKeys)
	if err != nil {
		return nil, postgres.Error("list API keys", err)
	}
	keys, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Key, error) {
		var (
			k       Key
			scope   string
			revoked *time.Time
		)
		err := r.Scan(&k.KeyID, &k.Name, &scope, &k.CreatedAt, &revoked, &k.Issuers)
		k.Scope = Scope(scope)
		if revoked != nil {
			k.RevokedAt = revoked.UTC()
		}
		k.CreatedAt = k.CreatedAt.UTC()
		return k, err
	})
	if err != nil {
		return nil, postgres.Error("list API keys", err)
	}
	return keys, nil
}

// Revoke withdraws the valid key with the given name at once.
func (s *Store) Revoke(ctx context.Context, name string, now time.Time) (Key, error) {
	var k Key
	var scope string
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if err := tx.QueryRow(ctx, sqlRevokeKey, name, now.UTC()).Scan(&k.KeyID, &k.Name, &scope, &k.CreatedAt, &k.Issuers); err != nil {
			return err
		}
		k.Scope, k.CreatedAt = Scope(scope), k.CreatedAt.UTC()
		before := k.auditState()
		k.RevokedAt = now.UTC()
		return adminevents.Record(ctx, tx, now, adminevents.Change{Action: adminevents.APIKeyRevoke, Target: "apikey:" + k.Name, Before: before, After: k.auditState()})
	})
	if errors.Is(err, pgx.ErrNoRows) {
		return Key{}, fmt.Errorf("revoke API key %q: %w", name, ErrNotFound)
	}
	if errors.Is(err, adminevents.ErrNoActor) {
		return Key{}, fmt.Errorf("revoke API key %q: %w", name, err)
	}
	if err != nil {
		return Key{}, postgres.Error(fmt.Sprintf("revoke API key %q", name), err)
	}
	return k, nil
}
