package apikeys

import (
	"context"
	"crypto/subtle"
	"sync"
	"time"
)

// Recent authenticates API keys from memory when this instance found them
// valid in the database less than a lifetime ago, else from the database.
// It is for requests whose write checks the key again in the same SQL
// statement (the launch routes: launch.Caller.KeyID), so that a revocation
// still takes effect on the next request of every instance: the write of a
// revoked key's request finds the key revoked and stores nothing, and the
// request is answered 401 (docs/ARCHITECTURE.md, "API keys on the launch
// routes"). Requests that only read (the admin routes) must use
// Store.Authenticate.
//
// Only what never changes after a key's creation is remembered (id, name,
// scope, issuers, the secret's hash), and only for keys found valid. The
// presented secret is still compared in constant time with the hash.
type Recent struct {
	store    *Store
	lifetime time.Duration
	now      func() time.Time

	mu   sync.Mutex
	keys map[string]recentKey // by key id
}

// recentKey is a key found valid at checkedAt, with its secret's hash.
type recentKey struct {
	key       Key
	hash      []byte
	checkedAt time.Time
}

// maxRecentKeys bounds the memory Recent uses; keys beyond it are checked
// in the database every time.
const maxRecentKeys = 10_000

// NewRecent returns a Recent over store that remembers a key for lifetime.
func NewRecent(store *Store, lifetime time.Duration, now func() time.Time) *Recent {
	return &Recent{store: store, lifetime: lifetime, now: now, keys: map[string]recentKey{}}
}

// Authenticate returns the key a presented key string belongs to: from
// memory while it was found valid less than a lifetime ago, else as
// Store.Authenticate does.
func (r *Recent) Authenticate(ctx context.Context, presented string) (Key, error) {
	keyID, secret, ok := splitPresented(presented)
	if !ok {
		return Key{}, ErrUnauthenticated
	}
	now := r.now()
	r.mu.Lock()
	rk, found := r.keys[keyID]
	r.mu.Unlock()
	if found && now.Sub(rk.checkedAt) < r.lifetime && !now.Before(rk.checkedAt) {
		if subtle.ConstantTimeCompare(hashSecret(secret), rk.hash) != 1 {
			return Key{}, ErrUnauthenticated
		}
		return rk.key, nil
	}
	k, hash, err := r.store.authenticate(ctx, presented)
	if err != nil {
		r.Forget(keyID)
		return Key{}, err
	}
	r.mu.Lock()
	if _, known := r.keys[keyID]; known || len(r.keys) < maxRecentKeys {
		r.keys[keyID] = recentKey{key: k, hash: hash, checkedAt: now}
	}
	r.mu.Unlock()
	return k, nil
}

// Forget drops what is remembered of a key: its next use is checked in the
// database. The launch routes call it when a write found the key revoked.
func (r *Recent) Forget(keyID string) {
	r.mu.Lock()
	delete(r.keys, keyID)
	r.mu.Unlock()
}
