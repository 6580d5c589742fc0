package keys

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/ehealth-nl/portal/internal/postgres"
)

// Follow keeps the keyring current until ctx ends. It LISTENs on
// NotifyChannel over a connection of its own and, on every notification,
// reloads the issuer it names (RefreshIssuers), so a rotation or revocation
// made by any instance or command reaches this one within moments at a
// cost that does not grow with the number of issuers; a notification that
// names no issuer reloads them all. It reloads every issuer (Refresh)
// after every (re)connect and every poll interval, in case a notification
// was lost while the connection was down, and for the changes that only
// time makes. Every database call is bounded by the refresh timeout, so a
// database that stops answering makes the keyring stale (and stop signing
// after the maximum staleness) instead of hanging. onRefresh, if not nil,
// sees the outcome of every refresh (for metrics): nil when the keys were
// loaded, even if some issuers have problems (those are logged once, when
// they appear).
func (k *Keyring) Follow(ctx context.Context, poll time.Duration, onRefresh func(error)) {
	refresh := func(reason string, slugs []string) {
		var err error
		if slugs == nil {
			err = k.Refresh(ctx)
		} else {
			err = k.RefreshIssuers(ctx, slugs...)
		}
		var problems *RefreshProblems
		if errors.As(err, &problems) {
			err = nil
		}
		if err != nil && ctx.Err() == nil {
			k.log.Error("keyring refresh failed", "reason", reason, "issuers", slugs, "err", err)
		}
		if onRefresh != nil && ctx.Err() == nil {
			onRefresh(err)
		}
	}
	changes := newPendingChanges()
	go k.listen(ctx, poll, changes)
	t := time.NewTicker(poll)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			refresh("poll", nil)
		case <-changes.ready:
			all, slugs := changes.take()
			switch {
			case all:
				refresh("notify", nil)
			case len(slugs) > 0:
				refresh("notify", slugs)
			}
		}
	}
}

// maxPendingIssuers is how many issuers' changes are merged into one
// refresh of those issuers; beyond it the refresh reloads every issuer.
const maxPendingIssuers = 64

// pendingChanges merges the key changes announced while a refresh runs
// into the next refresh: the issuers named, or every issuer.
type pendingChanges struct {
	ready chan struct{} // holds a token while there may be something to take

	mu      sync.Mutex
	all     bool
	issuers map[string]bool
}

func newPendingChanges() *pendingChanges {
	return &pendingChanges{ready: make(chan struct{}, 1), issuers: map[string]bool{}}
}

// add records a notification's payload: the slug of the issuer that
// changed. An empty payload, or one that is not a slug (a notification of
// another version, or one sent by hand), stands for every issuer.
func (p *pendingChanges) add(payload string) {
	p.mu.Lock()
	switch {
	case !ValidSlug(payload) || len(p.issuers) >= maxPendingIssuers:
		p.all = true
	case !p.all:
		p.issuers[payload] = true
	}
	p.mu.Unlock()
	p.signal()
}

// everything records that every issuer must be reloaded.
func (p *pendingChanges) everything() {
	p.mu.Lock()
	p.all = true
	p.mu.Unlock()
	p.signal()
}

func (p *pendingChanges) signal() {
	select {
	case p.ready <- struct{}{}:
	default: // a refresh is already pending; it will see this change too
	}
}

// take returns what was recorded since the last take, and forgets it:
// all when every issuer must be reloaded, otherwise the issuers named.
func (p *pendingChanges) take() (all bool, slugs []string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	all = p.all
	if !all {
		slugs = slices.Sorted(maps.Keys(p.issuers))
	}
	p.all = false
	clear(p.issuers)
	return all, slugs
}

// listen holds a LISTEN connection open, reconnecting with back-off, and
// records in changes every notification, and every issuer after every
// (re)connect (a notification may have been missed while disconnected).
func (k *Keyring) listen(ctx context.Context, idle time.Duration, changes *pendingChanges) {
	backoff := 250 * time.Millisecond
	connected := false
	for ctx.Err() == nil {
		err := k.listenOnce(ctx, idle, func() { backoff = 250 * time.Millisecond; connected = true; changes.everything() }, changes.add)
		if ctx.Err() != nil {
			return
		}
		if connected {
			k.log.Warn("key change listener lost its connection; reconnecting", "err", err)
			connected = false
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		if backoff < 5*time.Second {
			backoff *= 2
		}
	}
}

// listenOnce connects, LISTENs and hands every notification's payload to
// onNotify. When none came for idle, it pings the connection (within the
// refresh timeout): a connection whose packets are silently dropped is
// noticed and replaced rather than waited on forever.
func (k *Keyring) listenOnce(ctx context.Context, idle time.Duration, onConnect func(), onNotify func(payload string)) error {
	cfg := k.store.pool.Config().ConnConfig.Copy()
	connectCtx, cancel := context.WithTimeout(ctx, k.refreshTimeout)
	conn, err := pgx.ConnectConfig(connectCtx, cfg)
	cancel()
	if err != nil {
		return postgres.Error("key change listener: connect", err)
	}
	defer func() {
		closeCtx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_ = conn.Close(closeCtx)
	}()
	listenCtx, cancel := context.WithTimeout(ctx, k.refreshTimeout)
	_, err = conn.Exec(listenCtx, "LISTEN "+pgx.Identifier{NotifyChannel}.Sanitize())
	cancel()
	if err != nil {
		return postgres.Error("key change listener: listen", err)
	}
	onConnect()
	for {
		waitCtx, cancel := context.WithTimeout(ctx, idle)
		n, err := conn.WaitForNotification(waitCtx)
		cancel()
		if err == nil {
			onNotify(n.Payload)
			continue
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if !errors.Is(err, context.DeadlineExceeded) && !pgconn.Timeout(err) {
			return postgres.Error("key change listener: wait", err)
		}
		pingCtx, cancel := context.WithTimeout(ctx, k.refreshTimeout)
		err = conn.Ping(pingCtx)
		cancel()
		if err != nil {
			return postgres.Error("key change listener: the connection does not answer", fmt.Errorf("ping: %w", err))
		}
	}
}
