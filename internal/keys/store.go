package keys

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Store reads and writes issuers and signing keys in PostgreSQL. It is the
// only code that knows the issuers and signing_keys tables.
type Store struct {
	pool *pgxpool.Pool
}

// NewStore returns a Store over a connection pool.
func NewStore(pool *pgxpool.Pool) *Store { return &Store{pool: pool} }

// ErrKeyNotFound means no key of the issuer has the given kid.
var ErrKeyNotFound = errors.New("signing key not found")

// NotifyChannel is the PostgreSQL channel on which every key change is
// announced; the payload is the issuer slug.
const NotifyChannel = "portal_keys"

const keyColumns = `kid, issuer, alg, key_bits, state, public_jwk, coalesce(kek_id, ''),
	created_at, activated_at, retired_at, expires_at, revoked_at`

// storedKey is a key row with its sealed private part (nil once erased).
type storedKey struct {
	Key
	sealed []byte
}

func scanKey(row pgx.Row, withSealed bool) (storedKey, error) {
	var (
		k                                    storedKey
		alg, state                           string
		jwkJSON                              []byte
		activated, retired, expires, revoked *time.Time
	)
	dest := []any{&k.Kid, &k.Issuer, &alg, &k.Bits, &state, &jwkJSON, &k.KEKID,
		&k.CreatedAt, &activated, &retired, &expires, &revoked}
	if withSealed {
		dest = append(dest, &k.sealed)
	}
	if err := row.Scan(dest...); err != nil {
		return storedKey{}, err
	}
	k.Alg, k.State, k.PublicJWK = Algorithm(alg), State(state), json.RawMessage(jwkJSON)
	k.CreatedAt = k.CreatedAt.UTC()
	k.ActivatedAt, k.RetiredAt, k.ExpiresAt, k.RevokedAt = utc(activated), utc(retired), utc(expires), utc(revoked)
	return k, nil
}

func utc(t *time.Time) time.Time {
	if t == nil {
		return time.Time{}
	}
	return t.UTC()
}

const sqlSelectIssuerKeys = `SELECT ` + keyColumns + ` FROM signing_keys WHERE issuer = $1 ORDER BY created_at, kid`

// Keys lists every key an issuer ever had, oldest first, without private parts.
func (s *Store) Keys(ctx context.Context, issuer string) ([]Key, error) {
	if _, err := s.Issuer(ctx, issuer); err != nil {
		return nil, err
	}
	rows, err := s.pool.Query(ctx, sqlSelectIssuerKeys, issuer)
	if err != nil {
		return nil, fmt.Errorf("list keys of issuer %q: %w", issuer, err)
	}
	list, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Key, error) {
		k, err := scanKey(r, false)
		return k.Key, err
	})
	if err != nil {
		return nil, fmt.Errorf("list keys of issuer %q: %w", issuer, err)
	}
	return list, nil
}

const sqlSelectKey = `SELECT ` + keyColumns + ` FROM signing_keys WHERE issuer = $1 AND kid = $2`

// Key returns one key of an issuer, without its private part.
func (s *Store) Key(ctx context.Context, issuer, kid string) (Key, error) {
	k, err := scanKey(s.pool.QueryRow(ctx, sqlSelectKey, issuer, kid), false)
	if errors.Is(err, pgx.ErrNoRows) {
		return Key{}, fmt.Errorf("key %s of issuer %q: %w", kid, issuer, ErrKeyNotFound)
	}
	if err != nil {
		return Key{}, fmt.Errorf("read key %s of issuer %q: %w", kid, issuer, err)
	}
	return k.Key, nil
}

const sqlSelectPublishedKeys = `SELECT ` + keyColumns + `, sealed_private FROM signing_keys
WHERE state IN ('next', 'active', 'retired') ORDER BY issuer, created_at, kid`

// publishedKeys loads, for every issuer, the keys that belong in its JWKS
// with their sealed private parts: what a Keyring needs.
func (s *Store) publishedKeys(ctx context.Context) ([]Issuer, []storedKey, error) {
	issuers, err := s.Issuers(ctx)
	if err != nil {
		return nil, nil, err
	}
	rows, err := s.pool.Query(ctx, sqlSelectPublishedKeys)
	if err != nil {
		return nil, nil, fmt.Errorf("load published keys: %w", err)
	}
	ks, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (storedKey, error) { return scanKey(r, true) })
	if err != nil {
		return nil, nil, fmt.Errorf("load published keys: %w", err)
	}
	return issuers, ks, nil
}

// KEKUsage counts the keys with a private part per KEK id, over all issuers.
func (s *Store) KEKUsage(ctx context.Context) (map[string]int, error) {
	rows, err := s.pool.Query(ctx, `SELECT kek_id, count(*) FROM signing_keys WHERE kek_id IS NOT NULL GROUP BY kek_id`)
	if err != nil {
		return nil, fmt.Errorf("count keys per KEK: %w", err)
	}
	usage := map[string]int{}
	var (
		id string
		n  int
	)
	_, err = pgx.ForEachRow(rows, []any{&id, &n}, func() error { usage[id] = n; return nil })
	if err != nil {
		return nil, fmt.Errorf("count keys per KEK: %w", err)
	}
	return usage, nil
}
