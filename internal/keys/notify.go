package keys

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/ehealth-nl/portal/internal/postgres"
)

// Follow keeps the keyring current until ctx ends. It LISTENs on
// NotifyChannel over a connection of its own and refreshes on every
// notification, so a rotation or revocation made by any instance or command
// reaches this one within moments; it also refreshes every poll interval in
// case a notification was lost while the connection was down. Every
// database call is bounded by the refresh timeout, so a database that stops
// answering makes the keyring stale (and stop signing after the maximum
// staleness) instead of hanging. onRefresh, if not nil, sees the outcome of
// every refresh (for metrics): nil when the keys were loaded, even if some
// issuers have problems (those are logged once, when they appear).
func (k *Keyring) Follow(ctx context.Context, poll time.Duration, onRefresh func(error)) {
	refresh := func(reason string) {
		err := k.Refresh(ctx)
		var problems *RefreshProblems
		if errors.As(err, &problems) {
			err = nil
		}
		if err != nil && ctx.Err() == nil {
			k.log.Error("keyring refresh failed", "reason", reason, "err", err)
		}
		if onRefresh != nil && ctx.Err() == nil {
			onRefresh(err)
		}
	}
	notified := make(chan struct{}, 1)
	go k.listen(ctx, poll, notified)
	t := time.NewTicker(poll)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			refresh("poll")
		case <-notified:
			refresh("notify")
		}
	}
}

// listen holds a LISTEN connection open, reconnecting with back-off, and
// signals notified for every notification and after every (re)connect (a
// notification may have been missed while disconnected).
func (k *Keyring) listen(ctx context.Context, idle time.Duration, notified chan<- struct{}) {
	signal := func() {
		select {
		case notified <- struct{}{}:
		default: // a refresh is already pending; it will see this change too
		}
	}
	backoff := 250 * time.Millisecond
	connected := false
	for ctx.Err() == nil {
		err := k.listenOnce(ctx, idle, func() { backoff = 250 * time.Millisecond; connected = true; signal() }, signal)
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

// listenOnce connects, LISTENs and waits for notifications. When none came
// for idle, it pings the connection (within the refresh timeout): a
// connection whose packets are silently dropped is noticed and replaced
// rather than waited on forever.
func (k *Keyring) listenOnce(ctx context.Context, idle time.Duration, onConnect, onNotify func()) error {
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
		_, err := conn.WaitForNotification(waitCtx)
		cancel()
		if err == nil {
			onNotify()
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
