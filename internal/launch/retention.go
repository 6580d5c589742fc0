package launch

import (
	"context"
	"log/slog"
	"time"

	"github.com/ehealth-nl/portal/internal/postgres"
)

// RetentionConfig is how long launch data is kept (docs/ARCHITECTURE.md,
// "Retention").
type RetentionConfig struct {
	// Links is how long after a launch link expired its ticket hash and
	// the browser details of its redemption (client address, User-Agent)
	// are kept.
	Links time.Duration
	// Launches is how long launch records are kept after their creation;
	// 0 keeps them forever. A record whose AuditEvent is not delivered yet
	// is kept until it is.
	Launches time.Duration
	// Every is how often the retention pass runs.
	Every time.Duration
}

// retentionBatch is how many rows one retention statement changes: each
// batch is its own short transaction that skips rows another transaction
// holds (a link being redeemed), so a pass never blocks a launch.
const retentionBatch = 500

// sqlScrubLinks removes the ticket hash and browser details of a batch of
// links that expired before $1. It finds them through the partial index
// launches_links_to_scrub (only rows that still hold a hash), so its cost
// does not grow with the rows already scrubbed.
const sqlScrubLinks = `UPDATE launches SET ticket_hash = NULL, client_addr = NULL, user_agent = NULL
WHERE id IN (SELECT id FROM launches WHERE ticket_hash IS NOT NULL AND expires_at < $1
	ORDER BY expires_at LIMIT $2 FOR UPDATE SKIP LOCKED)`

// sqlPruneLaunches deletes a batch of launch records created before $1,
// oldest first, except those whose AuditEvent is still pending or failed
// (their outbox rows would go with them: ON DELETE CASCADE). A delivered
// event's outbox row goes with its launch.
const sqlPruneLaunches = `DELETE FROM launches WHERE id IN (SELECT l.id FROM launches l
	WHERE l.created_at < $1 AND NOT EXISTS (SELECT 1 FROM audit_events a WHERE a.launch_id = l.id AND a.state <> 'delivered')
	ORDER BY l.created_at LIMIT $2 FOR UPDATE OF l SKIP LOCKED)`

// RetentionResult is what one retention pass changed.
type RetentionResult struct {
	LinksScrubbed  int // links whose hash and browser details were removed
	LaunchesPruned int // launch records deleted
}

// ApplyRetention runs one retention pass at now: scrubs the links expired
// for longer than cfg.Links, then deletes the launch records older than
// cfg.Launches (if set), in batches until none is left.
func (st *Store) ApplyRetention(ctx context.Context, cfg RetentionConfig, now time.Time) (RetentionResult, error) {
	var r RetentionResult
	var err error
	if r.LinksScrubbed, err = st.inBatches(ctx, sqlScrubLinks, now.Add(-cfg.Links)); err != nil {
		return r, postgres.Error("scrub expired launch links", err)
	}
	if cfg.Launches > 0 {
		if r.LaunchesPruned, err = st.inBatches(ctx, sqlPruneLaunches, now.Add(-cfg.Launches)); err != nil {
			return r, postgres.Error("prune launch records", err)
		}
	}
	return r, nil
}

// inBatches runs a retention statement until it changes fewer rows than
// a batch, and returns how many it changed.
func (st *Store) inBatches(ctx context.Context, sql string, cutoff time.Time) (int, error) {
	total := 0
	for {
		tag, err := st.pool.Exec(ctx, sql, cutoff, retentionBatch)
		if err != nil {
			return total, err
		}
		total += int(tag.RowsAffected())
		if tag.RowsAffected() < retentionBatch {
			return total, nil
		}
	}
}

// KeepRetention runs a retention pass every cfg.Every until ctx ends,
// logging what each pass changed and, once until it recovers, that it
// failed. Every instance may run it: the batches skip each other's rows.
func (st *Store) KeepRetention(ctx context.Context, cfg RetentionConfig, clock func() time.Time, log *slog.Logger) {
	failing := false
	t := time.NewTicker(cfg.Every)
	defer t.Stop()
	for {
		r, err := st.ApplyRetention(ctx, cfg, clock().UTC())
		switch {
		case err != nil && ctx.Err() == nil && !failing:
			log.Warn("launch retention failed; retrying at the next pass", "err", err)
			failing = true
		case err == nil:
			failing = false
			if r.LinksScrubbed > 0 || r.LaunchesPruned > 0 {
				log.Info("launch retention applied", "links_scrubbed", r.LinksScrubbed, "launches_pruned", r.LaunchesPruned)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
