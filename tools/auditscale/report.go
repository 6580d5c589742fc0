package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/ehealth-nl/portal/tools/internal/instance"
)

// The tables the report sizes: the audit trails the queries read.
var reportedTables = []string{"launches", "audit_events", "admin_events"}

// settingsShown are the server settings that bear on these plans.
var settingsShown = []string{"shared_buffers", "work_mem", "effective_cache_size", "random_page_cost", "effective_io_concurrency",
	"jit", "plan_cache_mode", "default_statistics_target"}

type relationSize struct {
	name    string
	heap    int64 // main fork, or the index itself
	toast   int64
	total   int64
	indexes []relationSize
}

// serverInfo is what the report says of the server and the database.
type serverInfo struct {
	version     string
	settings    []string // "name value"
	database    string
	schema      uint
	sizes       []relationSize
	distinct    []string // "column n"
	auditStates string
	auditRows   int64
	adminRows   int64
	loadBefore  string
	loadAfter   string
	measuring   time.Duration
}

func readServer(ctx context.Context, conn *pgx.Conn, database string) (serverInfo, error) {
	info := serverInfo{database: database}
	if err := conn.QueryRow(ctx, `SELECT version()`).Scan(&info.version); err != nil {
		return info, err
	}
	if v, _, ok := strings.Cut(info.version, " on "); ok {
		info.version = v
	}
	for _, s := range settingsShown {
		var v string
		if err := conn.QueryRow(ctx, `SELECT current_setting($1)`, s).Scan(&v); err != nil {
			return info, err
		}
		info.settings = append(info.settings, s+" "+v)
	}
	for _, table := range reportedTables {
		rel := relationSize{name: table}
		err := conn.QueryRow(ctx, `SELECT pg_relation_size(c.oid), coalesce(pg_total_relation_size(nullif(c.reltoastrelid, 0)), 0),
			pg_total_relation_size(c.oid) FROM pg_class c WHERE c.oid = $1::regclass`, table).Scan(&rel.heap, &rel.toast, &rel.total)
		if err != nil {
			return info, fmt.Errorf("size of %s: %w", table, err)
		}
		rows, err := conn.Query(ctx, `SELECT i.indexrelid::regclass::text, pg_relation_size(i.indexrelid)
			FROM pg_index i WHERE i.indrelid = $1::regclass ORDER BY 2 DESC, 1`, table)
		if err != nil {
			return info, err
		}
		rel.indexes, err = pgx.CollectRows(rows, func(row pgx.CollectableRow) (relationSize, error) {
			var r relationSize
			err := row.Scan(&r.name, &r.heap)
			return r, err
		})
		if err != nil {
			return info, err
		}
		info.sizes = append(info.sizes, rel)
	}
	rows, err := conn.Query(ctx, `SELECT s.attname, CASE WHEN s.n_distinct < 0 THEN -s.n_distinct * c.reltuples ELSE s.n_distinct END::bigint
		FROM pg_stats s JOIN pg_class c ON c.relname = s.tablename AND c.relnamespace = 'public'::regnamespace
		WHERE s.schemaname = 'public' AND s.tablename = 'launches' AND s.attname IN ('task', 'sub', 'patient', 'module')
		ORDER BY array_position(ARRAY['task', 'sub', 'patient', 'module']::name[], s.attname)`)
	if err != nil {
		return info, err
	}
	info.distinct, err = pgx.CollectRows(rows, func(row pgx.CollectableRow) (string, error) {
		var col string
		var n int64
		err := row.Scan(&col, &n)
		return col + " " + thousands(n), err
	})
	if err != nil {
		return info, err
	}
	rows, err = conn.Query(ctx, `SELECT state || ' ' || count(*) FROM audit_events GROUP BY state ORDER BY count(*) DESC`)
	if err != nil {
		return info, err
	}
	states, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return info, err
	}
	info.auditStates = strings.Join(states, ", ")
	err = conn.QueryRow(ctx, `SELECT count(*) FROM admin_events`).Scan(&info.adminRows)
	return info, err
}

type mixedResult struct {
	executions      int
	custom, generic int64
	filters         int
}

type report struct {
	sh         shape
	gen        generation
	server     serverInfo
	results    []measuredCase
	runs, warm int
	mixed      mixedResult
}

func (r report) print(out io.Writer) {
	w := bufio.NewWriter(out)
	defer w.Flush()
	s := r.server
	fmt.Fprintf(w, "portal auditscale — %s\n", time.Now().UTC().Format("2006-01-02 15:04 UTC"))
	fmt.Fprintf(w, "machine: %d CPUs (%s), %s memory, %s; load average %s before, %s after (other work shares the machine)\n",
		runtime.NumCPU(), instance.CPUModel(), memTotal(), runtime.Version(), s.loadBefore, s.loadAfter)
	fmt.Fprintf(w, "%s, the server's settings (none changed): %s\n", s.version, strings.Join(s.settings, ", "))
	fmt.Fprintf(w, "database %s, schema version %d: %s launches, %s AuditEvent rows (%s), %s admin events\n",
		s.database, s.schema, thousands(r.gen.rows), thousands(s.auditRows), s.auditStates, thousands(s.adminRows))
	if r.gen.reused {
		fmt.Fprintf(w, "rows: kept from an earlier run (generated %s in %s, VACUUM ANALYZE %s; generator %s)",
			r.gen.at.UTC().Format("2006-01-02 15:04 UTC"), r.gen.took.Round(time.Second), r.gen.vacuum.Round(time.Second), r.gen.version)
		if r.gen.migrated != "" {
			fmt.Fprintf(w, "; %s", r.gen.migrated)
		}
		fmt.Fprintln(w)
	} else {
		fmt.Fprintf(w, "rows: generated in this run in %s (INSERT … SELECT generate_series, %s launches a statement; %s), VACUUM ANALYZE %s\n",
			r.gen.took.Round(time.Second), thousands(r.gen.batchRows), r.gen.niceness, r.gen.vacuum.Round(time.Second))
	}
	fmt.Fprintln(w, "the trail (tools/auditscale/generate.go):")
	for _, line := range describeShape(r.sh) {
		fmt.Fprintf(w, "  - %s\n", line)
	}
	fmt.Fprintf(w, "  - distinct values (ANALYZE's estimates): %s\n", strings.Join(s.distinct, ", "))
	fmt.Fprintf(w, "\nEach query: %d executions after %d of warm-up, on a fresh connection of its own, one at a time, through the service's code\n", r.runs, r.warm)
	fmt.Fprintln(w, "(launch.Service.List, adminevents.Store.List, auditoutbox.Store.List: the service's SQL and pgx's statement cache).")
	fmt.Fprintln(w, "Times in ms, as the caller sees them. rows: on the page (at most 50, the default limit). matching: rows the filter")
	fmt.Fprintf(w, "matches in the whole table over the values drawn, min / median / max (counted up to %s). plans: custom / generic plans\n", thousands(matchCap))
	fmt.Fprintln(w, "PostgreSQL made for the statement on that connection. planning, execution: the server's own times (ms) in EXPLAIN ANALYZE")
	fmt.Fprintf(w, "of the median execution, run again after the others (see Plans). Measuring took %s.\n\n", s.measuring.Round(time.Second))

	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "query\t page\t n\t p50\t p99\t max\t rows\t matching\t plans\t planning\t execution\t")
	for _, m := range r.results {
		for i, p := range m.pages {
			name, plans := m.c.name, fmt.Sprintf("%d / %d", m.custom, m.generic)
			if i > 0 {
				name, plans = "", ""
			}
			took := make([]time.Duration, len(p.execs))
			var rows int
			for j, e := range p.execs {
				took[j], rows = e.took, rows+e.rows
			}
			slices.Sort(took)
			fmt.Fprintf(tw, "%s\t %s\t %d\t %s\t %s\t %s\t %.1f\t %s\t %s\t %s\t %s\t\n", name, strings.TrimSuffix(p.page, " page"), len(p.execs),
				ms(took[len(took)/2]), ms(took[min(len(took)-1, len(took)*99/100)]), ms(took[len(took)-1]),
				float64(rows)/float64(len(p.execs)), matchingRange(p.matching), plans,
				explainTime(p.median.text, "Planning Time:"), explainTime(p.median.text, "Execution Time:"))
		}
	}
	_ = tw.Flush()
	fmt.Fprintf(w, "\nInterleaved: the %d launch filters above, first pages, round-robin on one connection (%d executions): %d custom, %d generic plans.\n",
		r.mixed.filters, r.mixed.executions, r.mixed.custom, r.mixed.generic)

	fmt.Fprintln(w, "\nSizes (MB; heap is the main fork, toast with its index)")
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "relation\t heap\t toast\t indexes\t total\t")
	for _, rel := range s.sizes {
		var idx int64
		for _, i := range rel.indexes {
			idx += i.heap
		}
		fmt.Fprintf(tw, "%s\t %s\t %s\t %s\t %s\t\n", rel.name, mb(rel.heap), mb(rel.toast), mb(idx), mb(rel.total))
		for _, i := range rel.indexes {
			fmt.Fprintf(tw, "  %s\t \t \t %s\t \t\n", i.name, mb(i.heap))
		}
	}
	_ = tw.Flush()

	fmt.Fprintln(w, "\nPlans: EXPLAIN (ANALYZE, BUFFERS) EXECUTE of the statement pgx prepared, on the case's connection after its executions,")
	fmt.Fprintln(w, "for the median execution of each page; for the slowest one too when its plan differs.")
	for _, m := range r.results {
		for _, p := range m.pages {
			fmt.Fprintf(w, "\n== %s, %s: median execution (%s ms in the run, %d rows), %s; %s plan\n", m.c.name, p.page,
				ms(p.median.of.took), p.median.of.rows, p.median.of.label, p.median.kind)
			fmt.Fprintln(w, indent(p.median.text, "    "))
			if planShape(p.slowest.text) == planShape(p.median.text) && p.slowest.kind == p.median.kind {
				fmt.Fprintf(w, "-- slowest execution (%s ms in the run, %d rows), %s: the same plan; now %s\n",
					ms(p.slowest.of.took), p.slowest.of.rows, p.slowest.of.label, planSummary(p.slowest.text))
			} else {
				fmt.Fprintf(w, "-- slowest execution (%s ms in the run, %d rows), %s: another plan (%s)\n", ms(p.slowest.of.took), p.slowest.of.rows,
					p.slowest.of.label, p.slowest.kind)
				fmt.Fprintln(w, indent(p.slowest.text, "    "))
			}
		}
	}
}

// explainTime is the figure of EXPLAIN ANALYZE's line that starts with
// label, e.g. "Execution Time:", without its unit.
func explainTime(text, label string) string {
	for _, line := range strings.Split(text, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), label); ok {
			return strings.TrimSuffix(strings.TrimSpace(v), " ms")
		}
	}
	return "-"
}

// planSummary is the top node's buffers and the execution time of a plan.
func planSummary(text string) string {
	var buffers, exec string
	for _, line := range strings.Split(text, "\n") {
		t := strings.TrimSpace(line)
		if buffers == "" && strings.HasPrefix(t, "Buffers:") {
			buffers = t
		}
		if strings.HasPrefix(t, "Execution Time:") {
			exec = t
		}
	}
	return strings.Join(slices.DeleteFunc([]string{buffers, exec}, func(s string) bool { return s == "" }), ", ")
}

func matchingRange(m []int) string {
	if len(m) == 0 {
		return "-"
	}
	s := slices.Clone(m)
	slices.Sort(s)
	f := func(n int) string {
		if n > matchCap {
			return ">" + thousands(matchCap)
		}
		return thousands(int64(n))
	}
	if s[0] == s[len(s)-1] {
		return f(s[0])
	}
	return f(s[0]) + " / " + f(s[len(s)/2]) + " / " + f(s[len(s)-1])
}

func indent(text, prefix string) string {
	lines := strings.Split(text, "\n")
	for i := range lines {
		lines[i] = prefix + lines[i]
	}
	return strings.Join(lines, "\n")
}

func ms(d time.Duration) string {
	return strconv.FormatFloat(float64(d)/float64(time.Millisecond), 'f', 2, 64)
}

func mb(n int64) string { return strconv.FormatFloat(float64(n)/(1<<20), 'f', 1, 64) }

// thousands writes n with comma separators.
func thousands(n int64) string {
	s := strconv.FormatInt(n, 10)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	if neg {
		return "-" + s
	}
	return s
}

func memTotal() string {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return "?"
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "MemTotal:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err == nil {
				return strconv.FormatFloat(float64(kb)/(1<<20), 'f', 1, 64) + " GiB"
			}
		}
	}
	return "?"
}
