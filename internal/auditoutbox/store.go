// Package auditoutbox delivers the Koppeltaal AuditEvents of launches
// (TOP-KT-011) from the outbox table audit_events to the domain's FHIR
// server, at least once, through outages and restarts (docs/ARCHITECTURE.md,
// "Reporting launches").
//
// The launch flow (package launch) writes an event's row in the same
// statement as the launch record's change; this package never writes a
// launch. Its Worker, one in every instance, takes due rows under a lease
// (FOR UPDATE SKIP LOCKED, then a deadline in next_attempt_at), builds each
// event from the launch record with package auditevent, and PUTs it under
// its stable id; it retries with exponential backoff and jitter, and marks
// an event failed, keeping the server's OperationOutcome, when the server
// says the event is invalid. Its Store is what operators read and retry.
package auditoutbox

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/ehealth-nl/portal/internal/auditevent"
	"github.com/ehealth-nl/portal/internal/pagecursor"
	"github.com/ehealth-nl/portal/internal/postgres"
)

// The states of an event in the outbox.
const (
	StatePending   = "pending"   // to deliver (again)
	StateDelivered = "delivered" // the domain's FHIR server stored it
	StateFailed    = "failed"    // the server refused it as invalid (or it could not be built): an operator retries it
)

// Store reads and changes the outbox table audit_events. Safe for
// concurrent use.
type Store struct {
	pool *pgxpool.Pool
}

// NewStore returns a Store over a connection pool.
func NewStore(pool *pgxpool.Pool) *Store { return &Store{pool: pool} }

// Event is one row of the outbox, as operators see it.
type Event struct {
	ID       string    `json:"id"`        // the AuditEvent's id: AuditEvent/<id> in the domain
	LaunchID string    `json:"launch_id"` // the launch it reports
	Issuer   string    `json:"issuer"`    // the issuer whose domain receives it
	State    string    `json:"state"`     // pending, delivered or failed
	Outcome  string    `json:"outcome"`   // AuditEvent.outcome: 0, 4 or 8
	Recorded time.Time `json:"recorded"`  // AuditEvent.recorded
	Created  time.Time `json:"created_at"`
	Attempts int       `json:"attempts"` // delivery attempts so far
	// NextAttemptAt is when a pending event is due (or, while a worker
	// holds it, when its lease ends).
	NextAttemptAt *time.Time `json:"next_attempt_at,omitempty"`
	LastAttemptAt *time.Time `json:"last_attempt_at,omitempty"`
	LastStatus    int        `json:"last_status,omitempty"` // HTTP status of the latest attempt; 0 for no answer
	LastError     string     `json:"last_error,omitempty"`  // why the latest attempt did not deliver it
	// OperationOutcome is what the FHIR server answered when it refused
	// the event.
	OperationOutcome json.RawMessage `json:"operation_outcome,omitempty"`
	DeliveredAt      *time.Time      `json:"delivered_at,omitempty"`
	FailedAt         *time.Time      `json:"failed_at,omitempty"`
	LeasedBy         string          `json:"leased_by,omitempty"` // the instance that took it last
}

// Filter selects outbox rows; empty fields do not filter.
type Filter struct {
	State  string // pending, delivered or failed
	Launch string // the launch id
	Limit  int    // 1-500, default 50
	Cursor string // from Page.Next
}

// Page is one page of outbox rows, newest first.
type Page struct {
	Events []Event `json:"events"`
	Next   string  `json:"next,omitempty"` // cursor of the next page; empty on the last
}

// FieldError names a filter field and what is wrong with it.
type FieldError struct {
	Field  string
	Reason string
}

// ValidationError lists what is wrong with a filter or a retry request.
type ValidationError struct {
	Fields []FieldError
}

// Error lists the fields and what is wrong with each.
func (e *ValidationError) Error() string {
	msg := "invalid request:"
	for _, f := range e.Fields {
		msg += " " + f.Field + ": " + f.Reason + ";"
	}
	return msg
}

var uuidPattern = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)

// validate checks a filter and fills in the default limit.
func (f *Filter) validate() error {
	var v ValidationError
	switch f.State {
	case "", StatePending, StateDelivered, StateFailed:
	default:
		v.Fields = append(v.Fields, FieldError{"state", "must be pending, delivered or failed"})
	}
	if f.Launch != "" && !uuidPattern.MatchString(f.Launch) {
		v.Fields = append(v.Fields, FieldError{"launch", "must be a launch id (a UUID in lower case)"})
	}
	switch {
	case f.Limit == 0:
		f.Limit = 50
	case f.Limit < 1 || f.Limit > 500:
		v.Fields = append(v.Fields, FieldError{"limit", "must be between 1 and 500"})
	}
	if f.Cursor != "" {
		if _, _, err := pagecursor.Decode(f.Cursor); err != nil {
			v.Fields = append(v.Fields, FieldError{"cursor", "is not a cursor this service returned"})
		}
	}
	if len(v.Fields) > 0 {
		return &v
	}
	return nil
}

const eventColumns = `a.launch_id, l.issuer, a.state, a.outcome, a.recorded_at, a.created_at, a.attempts,
	CASE WHEN a.state = 'pending' THEN a.next_attempt_at END, a.last_attempt_at, coalesce(a.last_status, 0),
	coalesce(a.last_error, ''), a.operation_outcome, a.delivered_at, a.failed_at, coalesce(a.leased_by, ''),
	coalesce(a.event_id::text, ''), coalesce(a.request_id, '')`

// The three lists, one per filter, each a fixed text whose plan can use
// its index (audit_events_created, audit_events_state_created, the primary
// key): the query text never depends on input. $1 and $2 are the cursor
// (NULL for the first page), $3 the limit, $4 the state or the launch.
const (
	sqlPage        = ` AND ($1::timestamptz IS NULL OR (a.created_at, a.launch_id) < ($1, $2::uuid)) ORDER BY a.created_at DESC, a.launch_id DESC LIMIT $3`
	sqlListEvents  = `SELECT ` + eventColumns + ` FROM audit_events a JOIN launches l ON l.id = a.launch_id WHERE true` + sqlPage
	sqlListByState = `SELECT ` + eventColumns + ` FROM audit_events a JOIN launches l ON l.id = a.launch_id WHERE a.state = $4` + sqlPage
	sqlListLaunch  = `SELECT ` + eventColumns + ` FROM audit_events a JOIN launches l ON l.id = a.launch_id WHERE a.launch_id = $4::uuid
	AND ($5 = '' OR a.state = $5)` + sqlPage
)

// List returns a page of the outbox, newest first.
func (st *Store) List(ctx context.Context, f Filter) (Page, error) {
	if err := f.validate(); err != nil {
		return Page{}, err
	}
	var (
		cursorTime *time.Time
		cursorID   *string
	)
	if f.Cursor != "" {
		t, id, _ := pagecursor.Decode(f.Cursor)
		cursorTime, cursorID = &t, &id
	}
	var (
		rows pgx.Rows
		err  error
	)
	switch {
	case f.Launch != "":
		rows, err = st.pool.Query(ctx, sqlListLaunch, cursorTime, cursorID, f.Limit+1, f.Launch, f.State)
	case f.State != "":
		rows, err = st.pool.Query(ctx, sqlListByState, cursorTime, cursorID, f.Limit+1, f.State)
	default:
		rows, err = st.pool.Query(ctx, sqlListEvents, cursorTime, cursorID, f.Limit+1)
	}
	if err != nil {
		return Page{}, postgres.Error("list audit events", err)
	}
	events, err := pgx.CollectRows(rows, scanEvent)
	if err != nil {
		return Page{}, postgres.Error("list audit events", err)
	}
	page := Page{Events: events}
	if len(events) > f.Limit {
		page.Events = events[:f.Limit]
		last := page.Events[f.Limit-1]
		page.Next = pagecursor.Encode(last.Created, last.LaunchID)
	}
	if page.Events == nil {
		page.Events = []Event{}
	}
	return page, nil
}

// scanEvent reads one row of eventColumns. An event not yet built has
// its id derived here, as the worker will derive it.
func scanEvent(row pgx.CollectableRow) (Event, error) {
	var (
		e         Event
		outcome   []byte
		requestID string
	)
	err := row.Scan(&e.LaunchID, &e.Issuer, &e.State, &e.Outcome, &e.Recorded, &e.Created, &e.Attempts, &e.NextAttemptAt,
		&e.LastAttemptAt, &e.LastStatus, &e.LastError, &outcome, &e.DeliveredAt, &e.FailedAt, &e.LeasedBy, &e.ID, &requestID)
	if err != nil {
		return Event{}, err
	}
	if len(outcome) > 0 {
		e.OperationOutcome = json.RawMessage(outcome)
	}
	if e.ID == "" {
		e.ID, _ = auditevent.EventID(e.LaunchID, auditevent.Outcome(e.Outcome), requestID)
	}
	e.Recorded, e.Created = e.Recorded.UTC(), e.Created.UTC()
	for _, t := range []*time.Time{e.NextAttemptAt, e.LastAttemptAt, e.DeliveredAt, e.FailedAt} {
		if t != nil {
			*t = t.UTC()
		}
	}
	return e, nil
}

// ErrNotFound means no event has the id or launch id given to Retry.
var ErrNotFound = errors.New("auditoutbox: no such audit event")

// ErrNotFailed means Retry was asked for an event that did not fail: a
// pending one is on its way already, a delivered one needs no retry.
var ErrNotFailed = errors.New("auditoutbox: the audit event has not failed")

// sqlRetry puts one failed event ($2: its id or its launch id) back in the
// queue, due at once, with its attempts counted anew and no lease; the
// last error and OperationOutcome stay until the next attempt replaces
// them. sqlRetryAll does it for every failed event.
const (
	sqlRetry = `UPDATE audit_events SET state = 'pending', failed_at = NULL, attempts = 0, next_attempt_at = $1, lease = NULL
WHERE state = 'failed' AND (launch_id = $2::uuid OR event_id = $2::uuid)`
	sqlRetryAll = `UPDATE audit_events SET state = 'pending', failed_at = NULL, attempts = 0, next_attempt_at = $1, lease = NULL
WHERE state = 'failed'`
)

// Retry puts one failed event back in the queue: id is the event's id or
// its launch id. It returns ErrNotFound or ErrNotFailed when there is
// nothing to retry.
func (st *Store) Retry(ctx context.Context, id string, now time.Time) error {
	if !uuidPattern.MatchString(id) {
		return &ValidationError{Fields: []FieldError{{"id", "must be an audit event id or a launch id (a UUID in lower case)"}}}
	}
	tag, err := st.pool.Exec(ctx, sqlRetry, now, id)
	if err != nil {
		return postgres.Error("retry audit event", err)
	}
	if tag.RowsAffected() > 0 {
		return nil
	}
	var state string
	err = st.pool.QueryRow(ctx, `SELECT state FROM audit_events WHERE launch_id = $1::uuid OR event_id = $1::uuid`, id).Scan(&state)
	if errors.Is(err, pgx.ErrNoRows) {
		return ErrNotFound
	}
	if err != nil {
		return postgres.Error("retry audit event", err)
	}
	return fmt.Errorf("%w: it is %s", ErrNotFailed, state)
}

// RetryAllFailed puts every failed event back in the queue and returns
// how many.
func (st *Store) RetryAllFailed(ctx context.Context, now time.Time) (int, error) {
	tag, err := st.pool.Exec(ctx, sqlRetryAll, now)
	if err != nil {
		return 0, postgres.Error("retry failed audit events", err)
	}
	return int(tag.RowsAffected()), nil
}

// Stats is the state of the outbox at one moment.
type Stats struct {
	Pending int // events not delivered yet
	Failed  int // events the domain refused for good
	// OldestPending is when the oldest pending event was written; zero
	// when none is pending.
	OldestPending time.Time
}

const sqlStats = `SELECT count(*) FILTER (WHERE state = 'pending'), count(*) FILTER (WHERE state = 'failed'),
	min(created_at) FILTER (WHERE state = 'pending')
FROM audit_events WHERE state IN ('pending', 'failed')`

// Stats counts the pending and failed events.
func (st *Store) Stats(ctx context.Context) (Stats, error) {
	var (
		s      Stats
		oldest *time.Time
	)
	if err := st.pool.QueryRow(ctx, sqlStats).Scan(&s.Pending, &s.Failed, &oldest); err != nil {
		return Stats{}, postgres.Error("audit outbox stats", err)
	}
	if oldest != nil {
		s.OldestPending = oldest.UTC()
	}
	return s, nil
}

// sqlPrune deletes a batch of events delivered before $1: a small batch
// at a time, so that pruning never holds many row locks at once.
const sqlPrune = `DELETE FROM audit_events WHERE launch_id IN (
	SELECT launch_id FROM audit_events WHERE state = 'delivered' AND delivered_at < $1
	ORDER BY delivered_at LIMIT $2 FOR UPDATE SKIP LOCKED)`

// Prune deletes events delivered before cutoff, in batches of batch rows,
// and returns how many. Pending and failed events are never pruned; the
// launch records stay.
func (st *Store) Prune(ctx context.Context, cutoff time.Time, batch int) (int, error) {
	total := 0
	for {
		tag, err := st.pool.Exec(ctx, sqlPrune, cutoff, batch)
		if err != nil {
			return total, postgres.Error("prune delivered audit events", err)
		}
		total += int(tag.RowsAffected())
		if tag.RowsAffected() < int64(batch) {
			return total, nil
		}
	}
}
