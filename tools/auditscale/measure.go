package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/ehealth-nl/portal/internal/adminevents"
	"github.com/ehealth-nl/portal/internal/auditoutbox"
	"github.com/ehealth-nl/portal/internal/launch"
)

// statement is one statement as pgx ran it: its SQL and arguments.
type statement struct {
	sql  string
	args []any
}

// recorder is a pgx tracer that keeps the statements run while it records.
// It changes nothing about how they run: the SQL, the arguments and pgx's
// statement cache stay the service's own.
type recorder struct {
	mu        sync.Mutex
	recording bool
	seen      []statement
}

// TraceQueryStart keeps the statement when recording.
func (r *recorder) TraceQueryStart(ctx context.Context, _ *pgx.Conn, d pgx.TraceQueryStartData) context.Context {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.recording {
		r.seen = append(r.seen, statement{sql: d.SQL, args: slices.Clone(d.Args)})
	}
	return ctx
}

// TraceQueryEnd does nothing.
func (r *recorder) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}

// record runs fn and returns the statements it ran.
func (r *recorder) record(fn func() error) ([]statement, error) {
	r.mu.Lock()
	r.recording, r.seen = true, nil
	r.mu.Unlock()
	err := fn()
	r.mu.Lock()
	defer r.mu.Unlock()
	r.recording = false
	return r.seen, err
}

// lists are the service's own list operations over one pool.
type lists struct {
	launches *launch.Service
	admin    *adminevents.Store
	outbox   *auditoutbox.Store
}

// listCall is one execution of a list with one filter value: run lists the
// page after cursor ("" for the first page) and returns the number of rows
// on it and the next page's cursor.
type listCall struct {
	label string // the filter value, for the report
	run   func(ctx context.Context, l lists, cursor string) (rows int, next string, err error)
}

// queryCase is one query of the report: a list with one kind of filter,
// executed once for each of calls (each with its own value).
type queryCase struct {
	name     string
	values   string     // how the values were drawn
	warmUp   []listCall // run first, not measured: pgx prepares, PostgreSQL passes its five custom plans
	calls    []listCall
	matching []int // rows matching each call's filter, at most matchCap+1; nil when not counted
	nextPage bool  // also measure the page after the first, through its cursor
}

// execution is one measured list call.
type execution struct {
	label string
	took  time.Duration
	rows  int
	stmt  statement
}

// plan is EXPLAIN (ANALYZE, BUFFERS) of one execution through the prepared
// statement, and which kind of plan PostgreSQL used for it.
type plan struct {
	of   execution
	kind string // custom or generic
	text string
}

// series is the measurements of one page of a case.
type series struct {
	page            string // first page, next page
	execs           []execution
	matching        []int
	median, slowest plan
}

// measuredCase is a case's result.
type measuredCase struct {
	c     queryCase
	pages []*series
	// custom and generic count the plans PostgreSQL made for the case's
	// statement on its connection: over the warm-up, the measured
	// executions and the EXPLAINs.
	custom, generic int64
}

// connector opens the pools the cases run on: one connection each, set up
// as postgres.Connect sets up the service's pool, plus a recorder.
type connector struct {
	cfg *pgxpool.Config
}

func (c connector) open(ctx context.Context) (*pgxpool.Pool, *recorder, error) {
	cfg := c.cfg.Copy()
	rec := &recorder{}
	cfg.ConnConfig.Tracer = rec
	// One connection, kept for the whole case: its prepared statements and
	// their plan history are those of one connection of the service.
	cfg.MaxConns, cfg.MinConns = 1, 0
	cfg.MaxConnLifetime, cfg.MaxConnIdleTime = 24*time.Hour, 24*time.Hour
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, nil, err
	}
	return pool, rec, nil
}

func newLists(pool *pgxpool.Pool) lists {
	return lists{
		launches: launch.NewService(pool, nil, nil, launch.Config{}, time.Now, slog.New(slog.DiscardHandler)),
		admin:    adminevents.NewStore(pool),
		outbox:   auditoutbox.NewStore(pool),
	}
}

// measure runs a case on a fresh connection: the warm-up calls, then each
// call timed (and its next page, when asked), then EXPLAIN (ANALYZE,
// BUFFERS) of the median and the slowest execution of each page through
// the very prepared statement pgx made, as PostgreSQL runs it after those
// executions (plan_cache_mode auto: after five custom plans it keeps the
// generic plan when that is no costlier than their average).
func measure(ctx context.Context, cn connector, c queryCase) (measuredCase, error) {
	pool, rec, err := cn.open(ctx)
	if err != nil {
		return measuredCase{}, err
	}
	defer pool.Close()
	l := newLists(pool)
	for _, call := range c.warmUp {
		_, next, err := call.run(ctx, l, "")
		if err != nil {
			return measuredCase{}, fmt.Errorf("%s: warm-up: %w", c.name, err)
		}
		if c.nextPage && next != "" {
			if _, _, err := call.run(ctx, l, next); err != nil {
				return measuredCase{}, fmt.Errorf("%s: warm-up: %w", c.name, err)
			}
		}
	}
	first := &series{page: "first page", matching: c.matching}
	second := &series{page: "next page"}
	for _, call := range c.calls {
		e, next, err := timeCall(ctx, rec, l, call, "")
		if err != nil {
			return measuredCase{}, fmt.Errorf("%s: %w", c.name, err)
		}
		first.execs = append(first.execs, e)
		if c.nextPage && next != "" {
			e, _, err := timeCall(ctx, rec, l, call, next)
			if err != nil {
				return measuredCase{}, fmt.Errorf("%s, next page: %w", c.name, err)
			}
			second.execs = append(second.execs, e)
		}
	}
	m := measuredCase{c: c, pages: []*series{first}}
	if len(second.execs) > 0 {
		m.pages = append(m.pages, second)
	}
	for _, s := range m.pages {
		byTime := slices.Clone(s.execs)
		slices.SortStableFunc(byTime, func(a, b execution) int { return int(a.took - b.took) })
		if s.median, err = explain(ctx, pool, byTime[len(byTime)/2]); err != nil {
			return measuredCase{}, fmt.Errorf("%s, %s: %w", c.name, s.page, err)
		}
		if s.slowest, err = explain(ctx, pool, byTime[len(byTime)-1]); err != nil {
			return measuredCase{}, fmt.Errorf("%s, %s: %w", c.name, s.page, err)
		}
	}
	sqls := map[string]bool{}
	for _, s := range m.pages {
		for _, e := range s.execs {
			sqls[e.stmt.sql] = true
		}
	}
	if len(sqls) != 1 {
		return measuredCase{}, fmt.Errorf("%s: the list ran %d different statements, want 1", c.name, len(sqls))
	}
	for sql := range sqls {
		if _, m.generic, m.custom, err = preparedStatement(ctx, pool, sql); err != nil {
			return measuredCase{}, err
		}
	}
	return m, nil
}

// timeCall runs one call and returns its execution and the next cursor.
func timeCall(ctx context.Context, rec *recorder, l lists, call listCall, cursor string) (execution, string, error) {
	var (
		rows  int
		next  string
		start time.Time
		took  time.Duration
	)
	stmts, err := rec.record(func() error {
		var err error
		start = time.Now()
		rows, next, err = call.run(ctx, l, cursor)
		took = time.Since(start)
		return err
	})
	if err != nil {
		return execution{}, "", err
	}
	if len(stmts) != 1 {
		return execution{}, "", fmt.Errorf("a list ran %d statements, want 1", len(stmts))
	}
	return execution{label: call.label, took: took, rows: rows, stmt: stmts[0]}, next, nil
}

// preparedStatement finds the statement pgx prepared for sql on the pool's
// connection, and how many generic and custom plans PostgreSQL made for it.
func preparedStatement(ctx context.Context, pool *pgxpool.Pool, sql string) (name string, generic, custom int64, err error) {
	err = pool.QueryRow(ctx, `SELECT name, generic_plans, custom_plans FROM pg_prepared_statements WHERE statement = $1`, sql).
		Scan(&name, &generic, &custom)
	if errors.Is(err, pgx.ErrNoRows) {
		return "", 0, 0, errors.New("the list's statement is not prepared on its connection (is pgx's statement cache off?)")
	}
	return name, generic, custom, err
}

// explain runs EXPLAIN (ANALYZE, BUFFERS) EXECUTE of the execution's
// prepared statement with its arguments (as literals: EXECUTE takes no
// protocol parameters through EXPLAIN) and tells from the statement's plan
// counts whether PostgreSQL used a custom or the generic plan.
func explain(ctx context.Context, pool *pgxpool.Pool, e execution) (plan, error) {
	name, generic0, _, err := preparedStatement(ctx, pool, e.stmt.sql)
	if err != nil {
		return plan{}, err
	}
	literals := make([]string, len(e.stmt.args))
	for i, a := range e.stmt.args {
		if literals[i], err = literal(a); err != nil {
			return plan{}, err
		}
	}
	rows, err := pool.Query(ctx, "EXPLAIN (ANALYZE, BUFFERS) EXECUTE "+pgx.Identifier{name}.Sanitize()+"("+strings.Join(literals, ", ")+")",
		pgx.QueryExecModeSimpleProtocol)
	if err != nil {
		return plan{}, err
	}
	lines, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return plan{}, fmt.Errorf("explain: %w", err)
	}
	_, generic1, _, err := preparedStatement(ctx, pool, e.stmt.sql)
	if err != nil {
		return plan{}, err
	}
	kind := "custom"
	if generic1 > generic0 {
		kind = "generic"
	}
	return plan{of: e, kind: kind, text: strings.Join(lines, "\n")}, nil
}

// literal renders an argument the service passed as an SQL literal.
func literal(v any) (string, error) {
	quote := func(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }
	switch x := v.(type) {
	case nil:
		return "NULL", nil
	case string:
		return quote(x), nil
	case *string:
		if x == nil {
			return "NULL", nil
		}
		return quote(*x), nil
	case time.Time:
		return quote(x.Format(time.RFC3339Nano)), nil
	case *time.Time:
		if x == nil {
			return "NULL", nil
		}
		return quote(x.Format(time.RFC3339Nano)), nil
	case int:
		return strconv.Itoa(x), nil
	case int64:
		return strconv.FormatInt(x, 10), nil
	case int32:
		return strconv.FormatInt(int64(x), 10), nil
	case bool:
		return strconv.FormatBool(x), nil
	}
	return "", fmt.Errorf("no SQL literal for an argument of type %T", v)
}

// planShape is a plan's nodes with the relations and indexes they read,
// without figures or conditions: two executions with the same shape ran
// the same plan. In EXPLAIN's text format the first line is the top node
// and every other node starts with "->".
func planShape(text string) string {
	var nodes []string
	for i, line := range strings.Split(text, "\n") {
		node, child := strings.CutPrefix(strings.TrimSpace(line), "->")
		if i > 0 && !child {
			continue
		}
		node = strings.TrimSpace(node)
		if j := strings.Index(node, "  ("); j >= 0 {
			node = node[:j]
		}
		nodes = append(nodes, node)
	}
	return strings.Join(nodes, " / ")
}

// mixed runs the launch list calls of several cases interleaved on one
// connection, as one instance's connection sees them, and returns how
// many custom and generic plans PostgreSQL made for the list's statement.
func mixed(ctx context.Context, cn connector, cases []queryCase, rounds int) (executions int, custom, generic int64, err error) {
	pool, rec, err := cn.open(ctx)
	if err != nil {
		return 0, 0, 0, err
	}
	defer pool.Close()
	l := newLists(pool)
	var sql string
	for r := range rounds {
		for _, c := range cases {
			call := c.calls[r%len(c.calls)]
			e, _, err := timeCall(ctx, rec, l, call, "")
			if err != nil {
				return 0, 0, 0, fmt.Errorf("mixed, %s: %w", c.name, err)
			}
			if sql != "" && e.stmt.sql != sql {
				return 0, 0, 0, errors.New("mixed: the launch lists ran more than one statement")
			}
			sql = e.stmt.sql
			executions++
		}
	}
	_, generic, custom, err = preparedStatement(ctx, pool, sql)
	return executions, custom, generic, err
}
