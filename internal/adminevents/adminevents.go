// Package adminevents is the trail of changes made by people: who changed
// an issuer, a signing key, a module or an API key, when, through which
// API key or command line, and what it was before and after. A store that
// changes one of those writes its event with Record in the transaction of
// the change, so there is no change without its event and no event
// without its change. Who pointed a module's launch URL (where tokens are
// posted) somewhere else is then always answerable.
package adminevents

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/user"
	"regexp"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/ehealth-nl/portal/internal/pagecursor"
	"github.com/ehealth-nl/portal/internal/postgres"
)

// Actor names who made a change: "apikey:<name>" for a request with an
// admin API key, "cli:<os user>@<host>" for the command line, and
// "serve:<host>" for the default issuer a starting instance writes from
// its configuration.
type Actor string

// APIKeyActor is the actor of a request authenticated with the named key.
func APIKeyActor(name string) Actor { return Actor("apikey:" + name) }

// CommandLineActor is the actor of a command run by this process's user on
// this host.
func CommandLineActor() Actor {
	name := "unknown"
	if u, err := user.Current(); err == nil && u.Username != "" {
		name = u.Username
	}
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "unknown"
	}
	return Actor("cli:" + name + "@" + host)
}

// ServeActor is the actor of the configuration a starting instance applies.
func ServeActor() Actor {
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "unknown"
	}
	return Actor("serve:" + host)
}

type actorKey struct{}

// WithActor returns a context that carries who is making the changes done
// with it. Every store that changes an issuer, a key, a module or an API
// key reads it and refuses to change anything without one.
func WithActor(ctx context.Context, a Actor) context.Context {
	return context.WithValue(ctx, actorKey{}, a)
}

// ActorFrom returns the actor the context carries.
func ActorFrom(ctx context.Context) (Actor, bool) {
	a, ok := ctx.Value(actorKey{}).(Actor)
	return a, ok && a != ""
}

// ErrNoActor means a change was attempted without saying who makes it: a
// bug in the caller, refused so that no change goes unrecorded.
var ErrNoActor = errors.New("no actor for an administrative change")

// The actions recorded, as "<what>.<verb>".
const (
	ModulePut    = "module.put"
	ModuleDelete = "module.delete"
	IssuerAdd    = "issuer.add"
	IssuerUpdate = "issuer.update"
	IssuerConfig = "issuer.configure" // the default issuer written from a starting instance's configuration
	KeyRotate    = "key.rotate"
	KeyRevoke    = "key.revoke"
	KeyReseal    = "key.reseal"
	APIKeyCreate = "apikey.create"
	APIKeyRevoke = "apikey.revoke"
)

// Change is one change to record: the action, what it was done to
// ("module:<slug>", "issuer:<slug>", "key:<kid>", "apikey:<name>"), and the
// thing before and after (nil when it did not exist; never a secret).
type Change struct {
	Action string
	Target string
	Before any
	After  any
}

const sqlInsertEvent = `INSERT INTO admin_events (id, at, actor, action, target, before, after) VALUES ($1, $2, $3, $4, $5, $6, $7)`

// Record writes the change as an event of the context's actor, in tx: the
// caller's transaction of the change itself. Without an actor in the
// context it changes nothing and returns ErrNoActor.
func Record(ctx context.Context, tx pgx.Tx, at time.Time, c Change) error {
	actor, ok := ActorFrom(ctx)
	if !ok {
		return fmt.Errorf("%s %s: %w", c.Action, c.Target, ErrNoActor)
	}
	before, err := marshalState(c.Before)
	if err != nil {
		return fmt.Errorf("record %s %s: %w", c.Action, c.Target, err)
	}
	after, err := marshalState(c.After)
	if err != nil {
		return fmt.Errorf("record %s %s: %w", c.Action, c.Target, err)
	}
	if _, err := tx.Exec(ctx, sqlInsertEvent, newID(), at.UTC(), string(actor), c.Action, c.Target, before, after); err != nil {
		return postgres.Error("record "+c.Action+" "+c.Target, err)
	}
	return nil
}

// marshalState renders a state as JSON, nil staying NULL.
func marshalState(v any) ([]byte, error) {
	if v == nil {
		return nil, nil
	}
	b, err := json.Marshal(v)
	if err != nil || string(b) == "null" {
		return nil, err
	}
	return b, nil
}

// newID returns a random (version 4) UUID.
func newID() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b) // never fails since Go 1.24
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	h := hex.EncodeToString(b)
	return h[:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

// Event is one recorded change.
type Event struct {
	ID     string          `json:"id"`               // a UUID
	At     time.Time       `json:"at"`               // when the change committed
	Actor  string          `json:"actor"`            // who made it
	Action string          `json:"action"`           // what was done, e.g. module.put
	Target string          `json:"target"`           // what it was done to, e.g. module:diary
	Before json.RawMessage `json:"before,omitempty"` // the thing before; absent when it was created
	After  json.RawMessage `json:"after,omitempty"`  // the thing after; absent when it was removed
}

// Filter selects events; empty fields do not filter.
type Filter struct {
	Actor  string    // only this actor
	Action string    // only this action
	Target string    // only this target
	From   time.Time // at or after
	To     time.Time // before
	Limit  int       // 1-500, 50 when zero
	Cursor string    // from Page.Next
}

// Page is one page of events, newest first.
type Page struct {
	Events []Event `json:"events"`         // newest first
	Next   string  `json:"next,omitempty"` // cursor of the next page; empty on the last
}

// FilterError names the filter field at fault.
type FilterError struct {
	Field  string // the filter field
	Reason string // what is wrong with it
}

// Error names the field and what is wrong with it.
func (e *FilterError) Error() string { return "admin events filter " + e.Field + ": " + e.Reason }

var (
	actorPattern  = regexp.MustCompile(`^(apikey|cli|serve):[^\x00-\x1f\x7f]{1,200}$`)
	actionPattern = regexp.MustCompile(`^[a-z]+\.[a-z-]+$`)
	targetPattern = regexp.MustCompile(`^[a-z]+:[^\x00-\x1f\x7f]{1,200}$`)
)

// Validate checks a filter before it reaches the database.
func (f *Filter) Validate() error {
	for field, v := range map[string]string{"actor": f.Actor, "action": f.Action, "target": f.Target} {
		if !utf8.ValidString(v) {
			return &FilterError{field, "is not valid UTF-8"}
		}
	}
	switch {
	case f.Actor != "" && !actorPattern.MatchString(f.Actor):
		return &FilterError{"actor", "must look like apikey:<name>, cli:<user>@<host> or serve:<host>"}
	case f.Action != "" && !actionPattern.MatchString(f.Action):
		return &FilterError{"action", "must look like module.put"}
	case f.Target != "" && !targetPattern.MatchString(f.Target):
		return &FilterError{"target", "must look like module:<slug>, issuer:<slug>, key:<kid> or apikey:<name>"}
	case !f.From.IsZero() && !f.To.IsZero() && !f.From.Before(f.To):
		return &FilterError{"to", "must be after from"}
	case f.Limit < 0 || f.Limit > 500:
		return &FilterError{"limit", "must be between 1 and 500"}
	}
	if f.Limit == 0 {
		f.Limit = 50
	}
	if f.Cursor != "" {
		if _, _, err := pagecursor.Decode(f.Cursor); err != nil {
			return &FilterError{"cursor", "is not a cursor this service returned"}
		}
	}
	return nil
}

// Store reads the trail.
type Store struct {
	pool *pgxpool.Pool
}

// NewStore returns a Store over a pool.
func NewStore(pool *pgxpool.Pool) *Store { return &Store{pool: pool} }

// The filters are fixed parameters compared only when set, so the query
// text never depends on input.
const sqlListEvents = `SELECT id, at, actor, action, target, before, after FROM admin_events
WHERE ($1 = '' OR actor = $1) AND ($2 = '' OR action = $2) AND ($3 = '' OR target = $3)
	AND ($4::timestamptz IS NULL OR at >= $4) AND ($5::timestamptz IS NULL OR at < $5)
	AND ($6::timestamptz IS NULL OR (at, id) < ($6, $7::uuid))
ORDER BY at DESC, id DESC
LIMIT $8`

// List returns a page of events, newest first.
func (s *Store) List(ctx context.Context, f Filter) (Page, error) {
	if err := f.Validate(); err != nil {
		return Page{}, err
	}
	var (
		cursorAt *time.Time
		cursorID *string
	)
	if f.Cursor != "" {
		t, id, _ := pagecursor.Decode(f.Cursor)
		cursorAt, cursorID = &t, &id
	}
	rows, err := s.pool.Query(ctx, sqlListEvents, f.Actor, f.Action, f.Target, timeOrNil(f.From), timeOrNil(f.To), cursorAt, cursorID, f.Limit+1)
	if err != nil {
		return Page{}, postgres.Error("list admin events", err)
	}
	events, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (Event, error) {
		var e Event
		var before, after []byte
		err := row.Scan(&e.ID, &e.At, &e.Actor, &e.Action, &e.Target, &before, &after)
		e.At, e.Before, e.After = e.At.UTC(), before, after
		return e, err
	})
	if err != nil {
		return Page{}, postgres.Error("list admin events", err)
	}
	page := Page{Events: events}
	if len(events) > f.Limit {
		page.Events = events[:f.Limit]
		last := page.Events[f.Limit-1]
		page.Next = pagecursor.Encode(last.At, last.ID)
	}
	if page.Events == nil {
		page.Events = []Event{}
	}
	return page, nil
}

func timeOrNil(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	return &t
}
