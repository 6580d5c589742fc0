package keys

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/ehealth-nl/portal/internal/postgres"
)

// Store reads and writes issuers and signing keys in PostgreSQL. It is the
// only code that knows the issuers and signing_keys tables: the rotator and
// reseal change keys through its transactions.
type Store struct {
	pool *pgxpool.Pool
}

// NewStore returns a Store over a connection pool.
func NewStore(pool *pgxpool.Pool) *Store { return &Store{pool: pool} }

// ErrKeyNotFound means no key of the issuer has the given kid.
var ErrKeyNotFound = errors.New("signing key not found")

// NotifyChannel is the PostgreSQL channel on which every key change is
// announced; the payload is the slug of the issuer whose keys or settings
// changed. A keyring that follows the channel reloads only that issuer;
// an empty payload, or one that is not a slug, makes it reload every
// issuer (docs/ARCHITECTURE.md, "How instances learn of a change").
const NotifyChannel = "portal_keys"

const keyColumns = `kid, issuer, alg, key_bits, state, public_jwk, coalesce(kek_id, ''),
	created_at, activated_at, retired_at, expires_at, revoked_at, seal_version`

// storedKey is a key row with its sealed private part (nil once erased).
type storedKey struct {
	Key
	sealVersion SealVersion
	sealed      []byte
}

// binding is what the row's sealed part is bound to.
func (sk storedKey) binding() Binding {
	return Binding{Issuer: sk.Issuer, Kid: sk.Kid, Alg: sk.Alg, Bits: sk.Bits, PublicJWK: sk.PublicJWK, Version: sk.sealVersion}
}

// rowFingerprint identifies the whole content of a key row that matters
// for signing and publishing: a keyring opens a row again whenever any of
// it changes, rather than trusting what it opened under the same kid.
type rowFingerprint [sha256.Size]byte

func (sk storedKey) fingerprint() rowFingerprint {
	h := sha256.New()
	for _, part := range [][]byte{[]byte(sk.Kid), []byte(sk.Issuer), []byte(sk.Alg), []byte(strconv.Itoa(sk.Bits)),
		[]byte(sk.State), []byte(sk.KEKID), []byte(strconv.Itoa(int(sk.sealVersion))), sk.sealed, sk.PublicJWK} {
		var n [8]byte
		binary.BigEndian.PutUint64(n[:], uint64(len(part)))
		h.Write(n[:])
		h.Write(part)
	}
	var fp rowFingerprint
	h.Sum(fp[:0])
	return fp
}

func scanKey(row pgx.Row, withSealed bool) (storedKey, error) {
	var (
		k                                    storedKey
		alg, state                           string
		jwkJSON                              []byte
		version                              int16
		activated, retired, expires, revoked *time.Time
	)
	dest := []any{&k.Kid, &k.Issuer, &alg, &k.Bits, &state, &jwkJSON, &k.KEKID,
		&k.CreatedAt, &activated, &retired, &expires, &revoked, &version}
	if withSealed {
		dest = append(dest, &k.sealed)
	}
	if err := row.Scan(dest...); err != nil {
		return storedKey{}, err
	}
	k.Alg, k.State, k.PublicJWK, k.sealVersion = Algorithm(alg), State(state), json.RawMessage(jwkJSON), SealVersion(version)
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

func collectKeys(rows pgx.Rows, withSealed bool) ([]storedKey, error) {
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (storedKey, error) { return scanKey(r, withSealed) })
}

func publicKeys(sks []storedKey) []Key {
	out := make([]Key, len(sks))
	for i, sk := range sks {
		out[i] = sk.Key
	}
	return out
}

const sqlSelectIssuerKeys = `SELECT ` + keyColumns + ` FROM signing_keys WHERE issuer = $1 ORDER BY created_at, kid`

// Keys lists every key an issuer ever had, oldest first, without private parts.
func (s *Store) Keys(ctx context.Context, issuer string) ([]Key, error) {
	if _, err := s.Issuer(ctx, issuer); err != nil {
		return nil, err
	}
	rows, err := s.pool.Query(ctx, sqlSelectIssuerKeys, issuer)
	if err != nil {
		return nil, postgres.Error(fmt.Sprintf("list keys of issuer %q", issuer), err)
	}
	list, err := collectKeys(rows, false)
	if err != nil {
		return nil, postgres.Error(fmt.Sprintf("list keys of issuer %q", issuer), err)
	}
	return publicKeys(list), nil
}

const sqlSelectKey = `SELECT ` + keyColumns + ` FROM signing_keys WHERE issuer = $1 AND kid = $2`

// Key returns one key of an issuer, without its private part.
func (s *Store) Key(ctx context.Context, issuer, kid string) (Key, error) {
	k, err := scanKey(s.pool.QueryRow(ctx, sqlSelectKey, issuer, kid), false)
	if errors.Is(err, pgx.ErrNoRows) {
		return Key{}, fmt.Errorf("key %s of issuer %q: %w", kid, issuer, ErrKeyNotFound)
	}
	if err != nil {
		return Key{}, postgres.Error(fmt.Sprintf("read key %s of issuer %q", kid, issuer), err)
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
	ks, err := s.queryPublished(ctx, sqlSelectPublishedKeys)
	return issuers, ks, err
}

const sqlSelectIssuersOf = `SELECT ` + issuerColumns + ` FROM issuers WHERE slug = ANY($1) ORDER BY slug`

const sqlSelectPublishedKeysOf = `SELECT ` + keyColumns + `, sealed_private FROM signing_keys
WHERE issuer = ANY($1) AND state IN ('next', 'active', 'retired') ORDER BY issuer, created_at, kid`

// publishedKeysOf is publishedKeys for the named issuers only: those of
// them that exist, and their keys, in the same order.
func (s *Store) publishedKeysOf(ctx context.Context, slugs []string) ([]Issuer, []storedKey, error) {
	rows, err := s.pool.Query(ctx, sqlSelectIssuersOf, slugs)
	if err != nil {
		return nil, nil, postgres.Error("list issuers", err)
	}
	issuers, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Issuer, error) { return scanIssuer(r) })
	if err != nil {
		return nil, nil, postgres.Error("list issuers", err)
	}
	ks, err := s.queryPublished(ctx, sqlSelectPublishedKeysOf, slugs)
	return issuers, ks, err
}

// queryPublished runs a query of published keys with their sealed parts.
func (s *Store) queryPublished(ctx context.Context, sql string, args ...any) ([]storedKey, error) {
	rows, err := s.pool.Query(ctx, sql, args...)
	if err != nil {
		return nil, postgres.Error("load published keys", err)
	}
	ks, err := collectKeys(rows, true)
	if err != nil {
		return nil, postgres.Error("load published keys", err)
	}
	return ks, nil
}

const sqlKEKUsage = `SELECT kek_id, count(*) FROM signing_keys WHERE kek_id IS NOT NULL GROUP BY kek_id`

// KEKUsage counts the keys with a private part per KEK id, over all issuers.
func (s *Store) KEKUsage(ctx context.Context) (map[string]int, error) {
	rows, err := s.pool.Query(ctx, sqlKEKUsage)
	if err != nil {
		return nil, postgres.Error("count keys per KEK", err)
	}
	usage := map[string]int{}
	var (
		id string
		n  int
	)
	_, err = pgx.ForEachRow(rows, []any{&id, &n}, func() error { usage[id] = n; return nil })
	if err != nil {
		return nil, postgres.Error("count keys per KEK", err)
	}
	return usage, nil
}

const sqlCountSealV1 = `SELECT count(*) FROM signing_keys WHERE sealed_private IS NOT NULL AND seal_version < 2`

// sealV1Count counts the keys whose private part is still sealed as SealV1.
func (s *Store) sealV1Count(ctx context.Context) (int, error) {
	var n int
	if err := s.pool.QueryRow(ctx, sqlCountSealV1).Scan(&n); err != nil {
		return 0, postgres.Error("count keys sealed as v1", err)
	}
	return n, nil
}

const sqlSelectIssuerPublished = `SELECT ` + keyColumns + `, sealed_private FROM signing_keys
WHERE issuer = $1 AND state IN ('next', 'active', 'retired') ORDER BY created_at, kid`

// issuerKeys reads an issuer and its published keys outside a transaction:
// the rotator's guess of what it will need before it takes the lock.
func (s *Store) issuerKeys(ctx context.Context, slug string) (Issuer, []Key, error) {
	is, ks, err := readIssuerKeys(ctx, s.pool, slug, false)
	return is, publicKeys(ks), err
}

// querier is what both a pool and a transaction offer.
type querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// readIssuerKeys reads an issuer and its published keys with their sealed
// parts; inside a transaction it locks the key rows.
func readIssuerKeys(ctx context.Context, q querier, slug string, lock bool) (Issuer, []storedKey, error) {
	is, err := scanIssuer(q.QueryRow(ctx, sqlSelectIssuer, slug))
	if errors.Is(err, pgx.ErrNoRows) {
		return Issuer{}, nil, fmt.Errorf("issuer %q: %w", slug, ErrIssuerNotFound)
	}
	if err != nil {
		return Issuer{}, nil, postgres.Error(fmt.Sprintf("read issuer %q", slug), err)
	}
	query := sqlSelectIssuerPublished
	if lock {
		query += ` FOR UPDATE`
	}
	rows, err := q.Query(ctx, query, slug)
	if err != nil {
		return Issuer{}, nil, postgres.Error(fmt.Sprintf("read keys of issuer %q", slug), err)
	}
	ks, err := collectKeys(rows, true)
	if err != nil {
		return Issuer{}, nil, postgres.Error(fmt.Sprintf("read keys of issuer %q", slug), err)
	}
	return is, ks, nil
}

// The per-issuer advisory lock of key changes (a key pair: the class, and
// the hash of the slug).
const (
	sqlLockIssuerKeys    = `SELECT pg_advisory_xact_lock(1886351989, hashtext($1))`
	sqlTryLockIssuerKeys = `SELECT pg_try_advisory_xact_lock(1886351989, hashtext($1))`
)

// issuerTx is one transaction on an issuer's keys under the issuer's
// advisory lock: every change of the rotator and of reseal goes through it.
type issuerTx struct {
	tx   pgx.Tx
	slug string
}

// inIssuerTx runs fn in a transaction that holds the issuer's advisory lock
// and commits when fn returns nil. With wait false it returns locked false
// at once when another transaction holds the lock. When fn reports a
// change, the transaction announces it on NotifyChannel (delivered at
// commit).
func (s *Store) inIssuerTx(ctx context.Context, slug string, wait bool, fn func(*issuerTx) (changed bool, err error)) (locked bool, err error) {
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return false, postgres.Error(fmt.Sprintf("keys of issuer %q: begin", slug), err)
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }() // no-op after commit
	if wait {
		_, err = tx.Exec(ctx, sqlLockIssuerKeys, slug)
	} else {
		var got bool
		err = tx.QueryRow(ctx, sqlTryLockIssuerKeys, slug).Scan(&got)
		if err == nil && !got {
			return false, nil
		}
	}
	if err != nil {
		return false, postgres.Error(fmt.Sprintf("keys of issuer %q: lock", slug), err)
	}
	changed, err := fn(&issuerTx{tx: tx, slug: slug})
	if err != nil || !changed {
		return true, err
	}
	if err := notifyChange(ctx, tx, slug); err != nil {
		return true, postgres.Error(fmt.Sprintf("keys of issuer %q: notify", slug), err)
	}
	if err := tx.Commit(ctx); err != nil {
		return true, postgres.Error(fmt.Sprintf("keys of issuer %q: commit", slug), err)
	}
	return true, nil
}

// issuerAndKeys reads the issuer and its published keys, locking the rows.
func (t *issuerTx) issuerAndKeys(ctx context.Context) (Issuer, []storedKey, error) {
	return readIssuerKeys(ctx, t.tx, t.slug, true)
}

const sqlExpireKey = `UPDATE signing_keys SET state = 'expired', sealed_private = NULL, kek_id = NULL,
	expires_at = LEAST(coalesce(expires_at, $2), $2) WHERE kid = $1`

const sqlRevokeKey = `UPDATE signing_keys SET state = 'revoked', sealed_private = NULL, kek_id = NULL,
	revoked_at = $2 WHERE kid = $1`

const sqlRetireKey = `UPDATE signing_keys SET state = 'retired', retired_at = $2, expires_at = $3 WHERE kid = $1 AND state = 'active'`

const sqlActivateKey = `UPDATE signing_keys SET state = 'active', activated_at = $2 WHERE kid = $1 AND state = 'next'`

const sqlInsertKey = `INSERT INTO signing_keys (kid, issuer, alg, key_bits, state, public_jwk, sealed_private, kek_id, seal_version, created_at, activated_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)`

const sqlUpdateSealed = `UPDATE signing_keys SET kek_id = $2, sealed_private = $3, seal_version = $4 WHERE kid = $1 AND sealed_private IS NOT NULL`

func (t *issuerTx) exec(ctx context.Context, op, sql string, args ...any) error {
	if _, err := t.tx.Exec(ctx, sql, args...); err != nil {
		return postgres.Error(fmt.Sprintf("%s of issuer %q", op, t.slug), err)
	}
	return nil
}

// expire takes a key out of the JWKS for good and erases its private part.
func (t *issuerTx) expire(ctx context.Context, kid string, now time.Time) error {
	return t.exec(ctx, "expire key "+kid, sqlExpireKey, kid, now)
}

// revoke withdraws a key at once and erases its private part.
func (t *issuerTx) revoke(ctx context.Context, kid string, now time.Time) error {
	return t.exec(ctx, "revoke key "+kid, sqlRevokeKey, kid, now)
}

// retire stops the active key signing; it stays published until expires.
func (t *issuerTx) retire(ctx context.Context, kid string, now, expires time.Time) error {
	return t.exec(ctx, "retire key "+kid, sqlRetireKey, kid, now, expires)
}

// activate makes a next key the one that signs.
func (t *issuerTx) activate(ctx context.Context, kid string, now time.Time) error {
	return t.exec(ctx, "activate key "+kid, sqlActivateKey, kid, now)
}

// newRow is a key to insert: its public description and sealed private part.
type newRow struct {
	Key
	kekID  string
	sealed []byte
}

// insert stores a new key, sealed as SealV2.
func (t *issuerTx) insert(ctx context.Context, r newRow) error {
	var activated *time.Time
	if !r.ActivatedAt.IsZero() {
		activated = &r.ActivatedAt
	}
	return t.exec(ctx, fmt.Sprintf("insert %s key %s", r.State, r.Kid), sqlInsertKey, r.Kid, r.Issuer, string(r.Alg), r.Bits, string(r.State),
		[]byte(r.PublicJWK), r.sealed, r.kekID, int16(SealV2), r.CreatedAt, activated)
}

// updateSealed replaces a key's sealed private part.
func (t *issuerTx) updateSealed(ctx context.Context, kid, kekID string, sealed []byte, version SealVersion) error {
	return t.exec(ctx, "reseal key "+kid, sqlUpdateSealed, kid, kekID, sealed, int16(version))
}
