package auditoutbox

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"log/slog"
	mathrand "math/rand/v2"
	"strings"
	"sync"
	"time"
	"unicode"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/ehealth-nl/portal/internal/auditevent"
	"github.com/ehealth-nl/portal/internal/fhirdomain"
	"github.com/ehealth-nl/portal/internal/postgres"
)

// Sender writes a resource to an issuer's FHIR server; *fhirdomain.Client
// is one. It returns fhirdomain.ErrUnavailable when sending again later may
// succeed, and a *fhirdomain.RejectedError for a client error.
type Sender interface {
	Put(ctx context.Context, issuer, resourceType, id string, body []byte) (int, error)
}

var _ Sender = (*fhirdomain.Client)(nil)

// Defaults for the zero values of Config.
const (
	DefaultPoll      = 2 * time.Second
	DefaultBatch     = 8
	DefaultLease     = time.Minute
	DefaultRetryBase = time.Second
	DefaultRetryMax  = 5 * time.Minute
	DefaultRetention = 30 * 24 * time.Hour
	DefaultPruneIdle = 10 * time.Minute
	pruneBatch       = 500
)

// Delivery outcomes, as Config.Observe is told of them.
const (
	OutcomeDelivered = "delivered" // the server stored the event (200 or 201)
	OutcomeRetry     = "retry"     // not delivered this time; due again after a backoff
	OutcomeFailed    = "failed"    // refused as invalid, or not buildable: failed for good
)

// Config is what NewWorker needs. Sender is required.
type Config struct {
	Sender Sender
	// Instance names this process in leased_by (host and pid, say).
	Instance string
	// Poll is how often the worker looks for due events when nothing woke
	// it (DefaultPoll): other instances' events, and retries.
	Poll time.Duration
	// Batch is how many events one pass takes, sent concurrently
	// (DefaultBatch).
	Batch int
	// Lease is how long a taken event stays with this worker before
	// another may take it (DefaultLease); it must outlast a request.
	Lease time.Duration
	// RetryBase and RetryMax bound the backoff: the n-th failed attempt
	// waits a random time between half and all of min(RetryMax,
	// RetryBase·2^(n-1)) (DefaultRetryBase, DefaultRetryMax).
	RetryBase, RetryMax time.Duration
	// Retention is how long delivered events are kept (DefaultRetention);
	// pending and failed ones are never pruned.
	Retention time.Duration
	// Clock is the time (time.Now).
	Clock func() time.Time
	// Log receives a warning for every event that fails for good.
	Log *slog.Logger
	// Observe, if set, is told of each attempt's outcome (OutcomeDelivered,
	// OutcomeRetry, OutcomeFailed); Stats of the outbox after each pass.
	// Neither may block.
	Observe      func(outcome string)
	ObserveStats func(Stats)
}

// Worker delivers the outbox's due events; run one in every instance.
type Worker struct {
	store *Store
	cfg   Config
	wake  chan struct{}
}

// NewWorker checks cfg, fills in its defaults and returns a Worker.
func NewWorker(pool *pgxpool.Pool, cfg Config) (*Worker, error) {
	if cfg.Sender == nil {
		return nil, errors.New("auditoutbox: a Sender is required")
	}
	defaults := []struct {
		v *time.Duration
		d time.Duration
	}{{&cfg.Poll, DefaultPoll}, {&cfg.Lease, DefaultLease}, {&cfg.RetryBase, DefaultRetryBase},
		{&cfg.RetryMax, DefaultRetryMax}, {&cfg.Retention, DefaultRetention}}
	for _, x := range defaults {
		if *x.v <= 0 {
			*x.v = x.d
		}
	}
	if cfg.Batch <= 0 {
		cfg.Batch = DefaultBatch
	}
	if cfg.Clock == nil {
		cfg.Clock = time.Now
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if len(cfg.Instance) > 255 {
		cfg.Instance = cfg.Instance[:255]
	}
	return &Worker{store: NewStore(pool), cfg: cfg, wake: make(chan struct{}, 1)}, nil
}

// Wake makes the worker look for due events now (a launch just wrote
// one). It never blocks.
func (w *Worker) Wake() {
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

// Run delivers due events until ctx ends: at once when woken, else every
// Poll; and prunes delivered events past the retention now and then.
// Deliveries in flight when ctx ends are finished (each is bounded by the
// Sender's timeout) and recorded.
func (w *Worker) Run(ctx context.Context) {
	var lastPrune, failingSince, lastWarned time.Time
	for ctx.Err() == nil {
		n, err := w.DeliverDue(context.WithoutCancel(ctx))
		// While the database is away every poll fails: a warning when it
		// starts and then once a minute, a line when it is over.
		switch now := w.cfg.Clock(); {
		case err != nil && (failingSince.IsZero() || now.Sub(lastWarned) >= time.Minute):
			if failingSince.IsZero() {
				failingSince = now
			}
			lastWarned = now
			w.cfg.Log.Warn("audit events: could not take due events from the outbox; delivery waits for the database",
				"since", failingSince.UTC().Format(time.RFC3339), "err", err)
		case err == nil && !failingSince.IsZero():
			w.cfg.Log.Info("audit events: the outbox can be read again", "after", now.Sub(failingSince).Round(time.Millisecond).String())
			failingSince = time.Time{}
		}
		if w.cfg.ObserveStats != nil {
			if s, err := w.store.Stats(ctx); err == nil {
				w.cfg.ObserveStats(s)
			}
		}
		if now := w.cfg.Clock(); now.Sub(lastPrune) >= DefaultPruneIdle {
			lastPrune = now
			if pruned, err := w.store.Prune(ctx, now.Add(-w.cfg.Retention), pruneBatch); err != nil {
				w.cfg.Log.Warn("audit events: could not prune delivered events", "err", err)
			} else if pruned > 0 {
				w.cfg.Log.Info("audit events: pruned delivered events past the retention", "count", pruned,
					"retention", w.cfg.Retention.String())
			}
		}
		if n == w.cfg.Batch && err == nil {
			continue // there may be more due at once
		}
		timer := time.NewTimer(w.cfg.Poll)
		select {
		case <-ctx.Done():
		case <-w.wake:
		case <-timer.C:
		}
		timer.Stop()
	}
}

// due is an event taken from the outbox with what its launch record holds.
type due struct {
	launch   auditevent.Launch
	issuer   string
	attempts int
	lease    string // the lease id of this take: the outcome is recorded only while the row still has it
}

// sqlTakeDue takes up to $2 due events (FOR UPDATE SKIP LOCKED: two
// workers never take the same row) and leases them: next_attempt_at moves
// to the lease's end $3, so an instance that dies with them leaves them
// due again then, and each gets a fresh lease id, which the outcome of
// this attempt must find again (sqlMark*). It returns each with its launch
// record's fields.
const sqlTakeDue = `WITH due AS (
	SELECT launch_id FROM audit_events WHERE state = 'pending' AND next_attempt_at <= $1
	ORDER BY next_attempt_at LIMIT $2 FOR UPDATE SKIP LOCKED)
UPDATE audit_events a SET next_attempt_at = $3, leased_by = $4, attempts = a.attempts + 1, last_attempt_at = $1,
	lease = gen_random_uuid()
FROM due, launches l
WHERE a.launch_id = due.launch_id AND l.id = a.launch_id
RETURNING a.launch_id, a.outcome, a.recorded_at, coalesce(a.request_id, ''), coalesce(a.correlation_id, ''),
	a.portal_device, a.site, a.attempts, a.lease::text, l.issuer, coalesce(l.jti, ''), l.task, coalesce(l.domain_versions->>'Task', ''),
	l.sub, coalesce(l.patient, ''), coalesce(l.audience, ''), coalesce(l.launch_url, ''),
	coalesce(l.refusal, ''), coalesce(l.refusal_detail, '')`

// DeliverDue takes the events due now (at most Batch), sends them
// concurrently and records how each ended; it returns how many it took.
// Run calls it; tests may too.
func (w *Worker) DeliverDue(ctx context.Context) (int, error) {
	now := w.cfg.Clock().UTC()
	rows, err := w.store.pool.Query(ctx, sqlTakeDue, now, w.cfg.Batch, now.Add(w.cfg.Lease), w.cfg.Instance)
	if err != nil {
		return 0, postgres.Error("take due audit events", err)
	}
	var taken []due
	for rows.Next() {
		var (
			d            due
			outcome      string
			rule, detail string
		)
		l := &d.launch
		if err := rows.Scan(&l.LaunchID, &outcome, &l.Recorded, &l.RequestID, &l.CorrelationID, &l.Portal, &l.Site, &d.attempts,
			&d.lease, &d.issuer, &l.JTI, &l.Task, &l.TaskVersion, &l.User, &l.Patient, &l.Module, &l.EndpointAddress, &rule, &detail); err != nil {
			rows.Close()
			return 0, postgres.Error("take due audit events", err)
		}
		l.Outcome = auditevent.Outcome(outcome)
		if l.Outcome != auditevent.OutcomeSuccess {
			l.OutcomeDesc = outcomeDesc(rule, detail)
		}
		if l.User == l.Patient {
			l.Patient = "" // a patient launching their own task is one entity
		}
		taken = append(taken, d)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return 0, postgres.Error("take due audit events", err)
	}
	var wg sync.WaitGroup
	for _, d := range taken {
		wg.Add(1)
		go func() {
			defer wg.Done()
			w.deliver(ctx, d)
		}()
	}
	wg.Wait()
	return len(taken), nil
}

// outcomeDesc is the AuditEvent.outcomeDesc of a refused launch: the rule
// and what was found (FHIR references, no personal data), on one line.
func outcomeDesc(rule, detail string) string {
	desc := "launch refused: " + rule
	if detail != "" {
		desc += ": " + detail
	}
	desc = strings.Map(func(r rune) rune {
		if unicode.IsControl(r) {
			return ' '
		}
		return r
	}, desc)
	if len(desc) > 1000 {
		desc = strings.ToValidUTF8(desc[:1000], "")
	}
	return strings.TrimSpace(desc)
}

// deliver builds one event and PUTs it, then records the outcome.
func (w *Worker) deliver(ctx context.Context, d due) {
	id, _ := d.launch.ID()
	body, err := auditevent.Build(d.launch)
	if err != nil {
		w.fail(ctx, d, id, 0, "the event could not be built from its launch record: "+err.Error(), nil)
		return
	}
	traceID := d.launch.JTI
	if traceID == "" {
		traceID = d.launch.LaunchID
	}
	sendCtx := fhirdomain.WithTrace(ctx, fhirdomain.Trace{RequestID: newRequestID(), CorrelationID: d.launch.RequestID, TraceID: traceID})
	status, err := w.cfg.Sender.Put(sendCtx, d.issuer, "AuditEvent", id, body)
	var rejected *fhirdomain.RejectedError
	switch {
	case err == nil:
		w.record(ctx, sqlMarkDelivered, OutcomeDelivered, d.launch.LaunchID, w.cfg.Clock().UTC(), id, status, d.lease)
	case errors.As(err, &rejected) && rejected.Invalid():
		w.fail(ctx, d, id, rejected.Status, rejected.Text, rejected.Outcome)
	default:
		// Unavailable (no answer, 5xx, 429, 401 with a fresh token too), or
		// a refusal that may change (403, 404, 409, ...): try again later.
		next := w.cfg.Clock().UTC().Add(w.backoff(d.attempts))
		w.record(ctx, sqlMarkRetry, OutcomeRetry, d.launch.LaunchID, next, id, status, truncateText(err.Error(), 2000), d.lease)
	}
}

// backoff is the wait after the n-th failed attempt: exponential, capped,
// with jitter (between half and all of it) so that the events of an outage
// do not all come back at once.
func (w *Worker) backoff(n int) time.Duration {
	d := w.cfg.RetryBase
	for i := 1; i < n && d < w.cfg.RetryMax; i++ {
		d *= 2
	}
	d = min(d, w.cfg.RetryMax)
	return d/2 + time.Duration(mathrand.Int64N(int64(d/2)+1))
}

// fail marks an event failed for good and says so in the log.
func (w *Worker) fail(ctx context.Context, d due, id string, status int, reason string, outcome []byte) {
	reason = truncateText(reason, 2000)
	var oo any
	if len(outcome) > 0 {
		oo = string(outcome)
	}
	if !w.record(ctx, sqlMarkFailed, OutcomeFailed, d.launch.LaunchID, w.cfg.Clock().UTC(), nullableID(id), status, reason, oo, d.lease) {
		return
	}
	w.cfg.Log.Warn("audit event failed for good: the domain refused it, or it could not be built; see `portal audit-events list --state failed`",
		"launch_id", d.launch.LaunchID, "event_id", id, "issuer", d.issuer, "status", status, "reason", reason)
}

// The outcomes of an attempt, recorded only while the row still holds the
// lease id this attempt took it with (the last parameter): if its lease
// ran out and another worker took the row since, or an operator put it
// back, or the row was deleted with its redemption and written anew, the
// newer state counts and this outcome is dropped. (A delivery dropped so
// is harmless: whoever holds the row sends the same id again.)
const (
	sqlMarkDelivered = `UPDATE audit_events SET state = 'delivered', delivered_at = $2, event_id = $3, last_status = $4,
	last_error = NULL, operation_outcome = NULL WHERE launch_id = $1 AND state = 'pending' AND lease = $5`
	sqlMarkRetry = `UPDATE audit_events SET next_attempt_at = $2, event_id = $3, last_status = nullif($4, 0), last_error = $5
	WHERE launch_id = $1 AND state = 'pending' AND lease = $6`
	sqlMarkFailed = `UPDATE audit_events SET state = 'failed', failed_at = $2, event_id = $3, last_status = nullif($4, 0),
	last_error = $5, operation_outcome = $6::jsonb WHERE launch_id = $1 AND state = 'pending' AND lease = $7`
)

// record runs one of the sqlMark statements, within a bounded time even
// when ctx has ended, tells Observe, and reports whether the outcome was
// recorded.
func (w *Worker) record(ctx context.Context, sql, outcome string, args ...any) bool {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	tag, err := w.store.pool.Exec(ctx, sql, args...)
	switch {
	case err != nil:
		// The event stays pending with its lease; it is sent again when the
		// lease ends (the PUT of the same id replaces what was stored).
		w.cfg.Log.Warn("audit events: could not record a delivery attempt; the event will be sent again", "launch_id", args[0],
			"outcome", outcome, "err", err)
		return false
	case tag.RowsAffected() == 0:
		w.cfg.Log.Info("audit events: an attempt's outcome was not recorded: the event was taken again, retried or given back meanwhile",
			"launch_id", args[0], "outcome", outcome)
		return false
	}
	if w.cfg.Observe != nil {
		w.cfg.Observe(outcome)
	}
	return true
}

// nullableID is NULL for an event whose id could not be derived.
func nullableID(id string) any {
	if id == "" {
		return nil
	}
	return id
}

// truncateText cuts s to at most n bytes of valid UTF-8.
func truncateText(s string, n int) string {
	if len(s) > n {
		s = s[:n]
	}
	return strings.ToValidUTF8(s, "")
}

// newRequestID is the X-Request-Id of one delivery attempt: 128 random
// bits in hex, a FHIR id.
func newRequestID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
