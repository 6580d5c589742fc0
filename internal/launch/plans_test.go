package launch

import (
	"context"
	"encoding/json"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/ehealth-nl/portal/internal/pgtest"
	"github.com/ehealth-nl/portal/internal/postgres"
)

var testDB *pgtest.Package

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m, "launch", &testDB)) }

// auditRows is the size of the generated audit trail: large enough that
// the planner prefers an index wherever one serves, small enough for CI.
const auditRows = 200_000

// TestAuditQueries_PlansUseTheirIndexes fills the launches table with a
// generated audit trail (many tasks, users, patients and modules, a year
// of creation times), and asks PostgreSQL how it would run each filter of
// the audit list (sqlListLaunches): by task, user, patient and module each
// through its own index, by time and unfiltered through launches_created,
// the refused ones (one in 500) through launches_refused, never by reading
// the whole table. It checks the plan for the values as given (a custom
// plan), and the plan PostgreSQL picks for the prepared
// statement after five executions (plan_cache_mode auto), as pgx's
// statement cache runs it: the generic plan of these queries cannot use
// the indexes (their filters are "$1 = ” OR task = $1"), so it must lose
// to the custom ones, or every list would become a full scan. It asserts
// plans, never times.
func TestAuditQueries_PlansUseTheirIndexes(t *testing.T) {
	ctx := context.Background()
	pool, err := postgres.Connect(ctx, testDB.Fresh(t))
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	_, err = pool.Exec(ctx, `INSERT INTO issuers (slug, client_id, fhir_base_url, profile, signing_alg, rsa_key_bits,
		rotation_period_ms, publish_lead_ms, retire_grace_ms, is_default, created_at, updated_at)
		VALUES ('default', 'portal-plans', 'https://fhir.example.org/fhir', 'hti', 'ES256', 2048, 86400000, 3600000, 3600000, true, now(), now())`)
	if err != nil {
		t.Fatal(err)
	}
	// A year of launches: 20,000 tasks, 5,000 users, 10,000 patients, 50
	// modules, every tenth a refusal-free token, the rest links.
	_, err = pool.Exec(ctx, `INSERT INTO launches (id, kind, issuer, module, audience, launch_url, method, fields, task, sub,
		patient, intent, created_by, created_at, ticket_hash, expires_at)
		SELECT gen_random_uuid(), 'ticket', 'default', 'module-' || (i % 50), 'Device/module-' || (i % 50),
			'https://module.example.org/launch', 'post', 'koppeltaal', 'Task/t-' || (i % 20000), 'Practitioner/u-' || (i % 5000),
			'Patient/p-' || (i % 10000), 'plan', 'backend', timestamptz '2026-01-01' + (i * interval '157 seconds'),
			sha256(i::text::bytea), timestamptz '2026-01-01' + (i * interval '157 seconds') + interval '2 minutes'
		FROM generate_series(1, $1) AS i`, auditRows)
	if err != nil {
		t.Fatal(err)
	}
	// One launch in 500 refused by the domain (no ticket, no module).
	_, err = pool.Exec(ctx, `INSERT INTO launches (id, kind, issuer, task, sub, patient, created_by, created_at, source, outcome, refusal)
		SELECT gen_random_uuid(), 'token', 'default', 'Task/t-' || (i % 20000), 'Practitioner/u-' || (i % 5000), 'Patient/p-' || (i % 10000),
			'backend', timestamptz '2026-01-01' + (i * interval '78500 seconds'), 'domain', 'refused', 'not-owner'
		FROM generate_series(1, $1) AS i`, auditRows/500)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `ANALYZE launches`); err != nil {
		t.Fatal(err)
	}

	from := time.Date(2026, 6, 1, 0, 0, 0, 0, time.UTC)
	to := from.Add(24 * time.Hour)
	for _, tc := range []struct {
		name  string
		f     Filter
		index string
	}{
		{"task", Filter{Task: "Task/t-42"}, "launches_task"},
		{"user", Filter{User: "Practitioner/u-42"}, "launches_sub"},
		{"patient", Filter{Patient: "Patient/p-42"}, "launches_patient"},
		{"module", Filter{Module: "module-7"}, "launches_module"},
		{"time", Filter{From: from, To: to}, "launches_created"},
		{"all", Filter{}, "launches_created"},
		{"refused", Filter{Outcome: "refused"}, "launches_refused"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := tc.f
			f.Limit = 51
			args := []any{f.Task, f.User, f.Patient, f.Module, f.Issuer, nullableTime(f.From), nullableTime(f.To), nil, nil, f.Limit, f.Outcome}
			for _, mode := range []string{"force_custom_plan", "auto"} {
				plan := explain(t, pool, mode, sqlListLaunches, args)
				if !strings.Contains(plan, `"Index Name": "`+tc.index+`"`) || strings.Contains(plan, `"Node Type": "Seq Scan"`) {
					t.Errorf("%s: the plan does not read %s by its index:\n%s", mode, tc.index, plan)
				}
			}
		})
	}
}

// explain returns the JSON plan of query with args under plan_cache_mode
// mode, as PREPARE and EXPLAIN EXECUTE give it.
func explain(t *testing.T, pool interface {
	Begin(context.Context) (pgx.Tx, error)
}, mode, query string, args []any) string {
	t.Helper()
	ctx := context.Background()
	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tx.Rollback(ctx) }()
	if _, err := tx.Exec(ctx, "SET LOCAL plan_cache_mode = "+mode); err != nil {
		t.Fatal(err)
	}
	// A named prepared statement, so that EXECUTE goes through the plan
	// cache that plan_cache_mode governs.
	if _, err := tx.Exec(ctx, "PREPARE audit_list AS "+query, pgx.QueryExecModeSimpleProtocol); err != nil {
		t.Fatal(err)
	}
	// EXECUTE takes its values as literals (a parameter of EXPLAIN would
	// not reach it).
	literals := make([]string, len(args))
	for i, a := range args {
		switch v := a.(type) {
		case nil:
			literals[i] = "NULL"
		case *time.Time:
			literals[i] = "NULL"
			if v != nil {
				literals[i] = "'" + v.Format(time.RFC3339Nano) + "'"
			}
		case int:
			literals[i] = strconv.Itoa(v)
		case string:
			literals[i] = "'" + strings.ReplaceAll(v, "'", "''") + "'"
		default:
			t.Fatalf("no literal for %T", a)
		}
	}
	execute := "EXECUTE audit_list(" + strings.Join(literals, ", ") + ")"
	// Five executions first: then PostgreSQL weighs the generic plan
	// against the custom ones it made, and keeps the cheaper kind.
	for range 5 {
		if _, err := tx.Exec(ctx, execute, pgx.QueryExecModeSimpleProtocol); err != nil {
			t.Fatal(err)
		}
	}
	var plan []byte
	err = tx.QueryRow(ctx, "EXPLAIN (FORMAT JSON) "+execute, pgx.QueryExecModeSimpleProtocol).Scan(&plan)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "DEALLOCATE audit_list", pgx.QueryExecModeSimpleProtocol); err != nil {
		t.Fatal(err)
	}
	var pretty any
	_ = json.Unmarshal(plan, &pretty)
	out, _ := json.MarshalIndent(pretty, "", " ")
	return string(out)
}
