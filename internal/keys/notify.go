package keys

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// Follow keeps the keyring current until ctx ends. It LISTENs on
// NotifyChannel over a connection of its own and refreshes on every
// notification, so a rotation or revocation made by any instance or command
// reaches this one within moments; it also refreshes every poll interval in
// case a notification was lost while the connection was down. onRefresh, if
// not nil, sees the outcome of every refresh (for metrics).
func (k *Keyring) Follow(ctx context.Context, poll time.Duration, onRefresh func(error)) {
	refresh := func(reason string) {
		err := k.Refresh(ctx)
		if err != nil && ctx.Err() == nil {
			k.log.Error("keyring refresh failed", "reason", reason, "err", err)
		}
		if onRefresh != nil && ctx.Err() == nil {
			onRefresh(err)
		}
	}
	notified := make(chan struct{}, 1)
	go k.listen(ctx, notified)
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
func (k *Keyring) listen(ctx context.Context, notified chan<- struct{}) {
	signal := func() {
		select {
		case notified <- struct{}{}:
		default: // a refresh is already pending; it will see this change too
		}
	}
	backoff := 250 * time.Millisecond
	connected := false
	for ctx.Err() == nil {
		err := k.listenOnce(ctx, func() { backoff = 250 * time.Millisecond; connected = true; signal() }, signal)
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

func (k *Keyring) listenOnce(ctx context.Context, onConnect, onNotify func()) error {
	cfg := k.store.pool.Config().ConnConfig.Copy()
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	defer func() {
		closeCtx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_ = conn.Close(closeCtx)
	}()
	if _, err := conn.Exec(ctx, "LISTEN "+pgx.Identifier{NotifyChannel}.Sanitize()); err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	onConnect()
	for {
		if _, err := conn.WaitForNotification(ctx); err != nil {
			return err
		}
		onNotify()
	}
}
