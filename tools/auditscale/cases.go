package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/ehealth-nl/portal/internal/adminevents"
	"github.com/ehealth-nl/portal/internal/auditoutbox"
	"github.com/ehealth-nl/portal/internal/launch"
)

// matchCap bounds the count of the rows a filter matches (for the report:
// "from a handful to many thousands").
const matchCap = 10_000

const (
	drawnMixed   = "values alternately of a random row (frequent values often) and of a random id (each alike, mostly rare ones)"
	drawnWindows = "windows placed uniformly over the year"
	drawnNone    = "no value: the same query each time"
)

func launchCall(label string, f launch.Filter) listCall {
	return listCall{label: label, run: func(ctx context.Context, l lists, cursor string) (int, string, error) {
		f := f
		f.Cursor = cursor
		page, err := l.launches.List(ctx, f)
		return len(page.Records), page.Next, err
	}}
}

func adminCall(label string, f adminevents.Filter) listCall {
	return listCall{label: label, run: func(ctx context.Context, l lists, cursor string) (int, string, error) {
		f := f
		f.Cursor = cursor
		page, err := l.admin.List(ctx, f)
		return len(page.Events), page.Next, err
	}}
}

func outboxCall(label string, f auditoutbox.Filter) listCall {
	return listCall{label: label, run: func(ctx context.Context, l lists, cursor string) (int, string, error) {
		f := f
		f.Cursor = cursor
		page, err := l.outbox.List(ctx, f)
		return len(page.Events), page.Next, err
	}}
}

// caseBuilder draws the values of the cases and counts the rows each
// value matches.
type caseBuilder struct {
	conn       *pgx.Conn
	sh         shape
	runs, warm int
	rng        *rand.Rand
}

// split makes a case of runs+warm calls: the last warm ones warm up.
func (b caseBuilder) split(name, values string, calls []listCall, matching []int) queryCase {
	return queryCase{name: name, values: values, calls: calls[:b.runs], warmUp: calls[b.runs:], matching: matching[:b.runs], nextPage: true}
}

// count returns how many rows of table match where (at most matchCap+1).
func (b caseBuilder) count(ctx context.Context, table, where string, args ...any) (int, error) {
	var n int
	q := fmt.Sprintf(`SELECT count(*) FROM (SELECT 1 FROM %s WHERE %s LIMIT %d) matching`, pgx.Identifier{table}.Sanitize(), where, matchCap+1)
	if err := b.conn.QueryRow(ctx, q, args...).Scan(&n); err != nil {
		return 0, fmt.Errorf("count %s where %s: %w", table, where, err)
	}
	return n, nil
}

// repeat makes n calls of one fixed filter and counts its rows once.
func (b caseBuilder) repeat(ctx context.Context, table, where string, args []any, call listCall) ([]listCall, []int, error) {
	n, err := b.count(ctx, table, where, args...)
	if err != nil {
		return nil, nil, err
	}
	calls, matching := make([]listCall, b.runs+b.warm), make([]int, b.runs+b.warm)
	for i := range calls {
		calls[i], matching[i] = call, n
	}
	return calls, matching, nil
}

// launchCases are the audit list (launch.Service.List) by task, user,
// patient, module and time, unfiltered, and by outcome and issuer.
func (b caseBuilder) launchCases(ctx context.Context) ([]queryCase, error) {
	var cases []queryCase
	dims := b.sh.dimensions()
	for _, dim := range []struct {
		name string
		set  func(*launch.Filter, string)
	}{
		{"task", func(f *launch.Filter, v string) { f.Task = v }},
		{"user", func(f *launch.Filter, v string) { f.User = v }},
		{"patient", func(f *launch.Filter, v string) { f.Patient = v }},
		{"module", func(f *launch.Filter, v string) { f.Module = v }},
	} {
		d := dims[dim.name]
		values, err := drawValues(ctx, b.conn, d, b.sh.rows, b.runs+b.warm, b.rng)
		if err != nil {
			return nil, err
		}
		calls, matching := make([]listCall, len(values)), make([]int, len(values))
		for i, v := range values {
			var f launch.Filter
			dim.set(&f, v)
			calls[i] = launchCall(v, f)
			if matching[i], err = b.count(ctx, d.table, pgx.Identifier{d.column}.Sanitize()+" = $1", v); err != nil {
				return nil, err
			}
		}
		cases = append(cases, b.split("launches by "+dim.name, drawnMixed, calls, matching))
	}

	windows := drawWindows(b.sh, 24*time.Hour, b.runs+b.warm, b.rng)
	calls, matching := make([]listCall, len(windows)), make([]int, len(windows))
	for i, w := range windows {
		calls[i] = launchCall(w[0].Format("2006-01-02 15:04")+" + 1 day", launch.Filter{From: w[0], To: w[1]})
		var err error
		if matching[i], err = b.count(ctx, "launches", "created_at >= $1 AND created_at < $2", w[0], w[1]); err != nil {
			return nil, err
		}
	}
	cases = append(cases, b.split("launches by time (1 day)", "1-day "+drawnWindows, calls, matching))

	for _, fixed := range []struct {
		name, where string
		args        []any
		f           launch.Filter
	}{
		{"launches, no filter", "true", nil, launch.Filter{}},
		{"launches refused", "outcome = $1", []any{"refused"}, launch.Filter{Outcome: "refused"}},
		{"launches of issuer kt (domain)", "issuer = $1", []any{"kt"}, launch.Filter{Issuer: "kt"}},
	} {
		calls, matching, err := b.repeat(ctx, "launches", fixed.where, fixed.args, launchCall("-", fixed.f))
		if err != nil {
			return nil, err
		}
		cases = append(cases, b.split(fixed.name, drawnNone, calls, matching))
	}
	return cases, nil
}

// adminCases are the admin trail (adminevents.Store.List) by actor,
// action, target and time, and unfiltered.
func (b caseBuilder) adminCases(ctx context.Context) ([]queryCase, error) {
	var cases []queryCase
	for _, dim := range []struct {
		column string
		set    func(*adminevents.Filter, string)
	}{
		{"actor", func(f *adminevents.Filter, v string) { f.Actor = v }},
		{"action", func(f *adminevents.Filter, v string) { f.Action = v }},
		{"target", func(f *adminevents.Filter, v string) { f.Target = v }},
	} {
		values, err := drawAdminValues(ctx, b.conn, dim.column, b.runs+b.warm, b.rng)
		if err != nil {
			return nil, err
		}
		calls, matching := make([]listCall, len(values)), make([]int, len(values))
		for i, v := range values {
			var f adminevents.Filter
			dim.set(&f, v)
			calls[i] = adminCall(v, f)
			if matching[i], err = b.count(ctx, "admin_events", pgx.Identifier{dim.column}.Sanitize()+" = $1", v); err != nil {
				return nil, err
			}
		}
		cases = append(cases, b.split("admin events by "+dim.column, "values alternately of a random row and a random distinct value", calls, matching))
	}
	windows := drawWindows(b.sh, 30*24*time.Hour, b.runs+b.warm, b.rng)
	calls, matching := make([]listCall, len(windows)), make([]int, len(windows))
	for i, w := range windows {
		calls[i] = adminCall(w[0].Format("2006-01-02")+" + 30 days", adminevents.Filter{From: w[0], To: w[1]})
		var err error
		if matching[i], err = b.count(ctx, "admin_events", "at >= $1 AND at < $2", w[0], w[1]); err != nil {
			return nil, err
		}
	}
	cases = append(cases, b.split("admin events by time (30 days)", "30-day "+drawnWindows, calls, matching))
	calls, matching, err := b.repeat(ctx, "admin_events", "true", nil, adminCall("-", adminevents.Filter{}))
	if err != nil {
		return nil, err
	}
	return append(cases, b.split("admin events, no filter", drawnNone, calls, matching)), nil
}

// outboxCases are the AuditEvent outbox list (auditoutbox.Store.List):
// unfiltered, by state, and by launch.
func (b caseBuilder) outboxCases(ctx context.Context, auditRows int64) ([]queryCase, error) {
	var cases []queryCase
	calls, matching, err := b.repeat(ctx, "audit_events", "true", nil, outboxCall("-", auditoutbox.Filter{}))
	if err != nil {
		return nil, err
	}
	cases = append(cases, b.split("AuditEvents, no filter", drawnNone, calls, matching))
	for _, state := range []string{auditoutbox.StatePending, auditoutbox.StateDelivered, auditoutbox.StateFailed} {
		calls, matching, err := b.repeat(ctx, "audit_events", "state = $1", []any{state}, outboxCall(state, auditoutbox.Filter{State: state}))
		if err != nil {
			return nil, err
		}
		cases = append(cases, b.split("AuditEvents "+state, drawnNone, calls, matching))
	}
	ids, err := sampleColumn(ctx, b.conn, "audit_events", "launch_id", auditRows, b.runs+b.warm, b.rng)
	if err != nil {
		return nil, err
	}
	calls, matching = make([]listCall, len(ids)), make([]int, len(ids))
	for i, id := range ids {
		calls[i], matching[i] = outboxCall(id, auditoutbox.Filter{Launch: id}), 1
	}
	c := b.split("AuditEvents by launch", "launch ids of random rows", calls, matching)
	c.nextPage = false
	return append(cases, c), nil
}
