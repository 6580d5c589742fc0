package main

// The generated audit trail, all in this file: the rows (issuers, launches
// with their AuditEvent rows, admin events) and the query values drawn from
// them. Everything is written through the tables' columns, as the service
// writes them (docs/ARCHITECTURE.md, "Data model"); nothing here knows
// which indexes exist, so a migration that changes them needs no change
// here. A migration that changes the columns does: adapt the statements
// below and change generatorVersion, so that kept databases are generated
// anew.

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/ehealth-nl/portal/internal/auditoutbox"
)

// generatorVersion names the rows this file generates. A kept database is
// reused only when this version generated it, with the same row count.
const generatorVersion = "1"

// The shape of the trail. Dimension sizes scale with the row count (at 10
// million rows: 2 million tasks, 200,000 users, 500,000 patients); the
// modules do not.
const (
	span             = 365 * 24 * time.Hour // creation times cover a year, ending at midnight UTC of the generation day
	rowsPerTask      = 5
	rowsPerUser      = 50
	rowsPerPatient   = 20
	registryModules  = 120  // hand-registered modules (module-000 …)
	domainModules    = 30   // modules of the Koppeltaal domain (Device/kt-module-00 …)
	domainShare      = 0.20 // launches of the domain issuer (source domain)
	tokenShare       = 0.10 // tokens handed to the backend; the rest are links
	refusedShare     = 0.04 // of domain launches: refused by the domain
	redeemedShare    = 0.85 // of links: followed (the rest expired)
	failedShare      = 0.001
	pendingWindow    = 4 * time.Hour // AuditEvents of the last hours are pending: a domain outage in progress
	adminEventRows   = 5000
	signingKeysAYear = 12 // one kid per issuer per month: the rotation
)

// The skew of each dimension: a key k in [0, n) is floor(n * u^skew) for a
// uniform u, so low keys are frequent. At 10 million rows the most frequent
// task has about 630 launches, the most frequent user about 22,000 and
// module about 730,000; the least frequent of each a handful, 25 and
// 33,000.
const (
	taskSkew   = 1.5
	userSkew   = 2
	moduleSkew = 2
)

// userAgents are browser User-Agents, 109 bytes on average (the claim
// keeps at most 512).
var userAgents = []string{
	"Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
	"Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Safari/605.1.15",
	"Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Mobile/15E148 Safari/604.1",
	"Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0",
	"Mozilla/5.0 (Linux; Android 10; K) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Mobile Safari/537.36",
}

// Refusal rules of domain launches, repeated by weight: the first three
// are decided at authorization (AuditEvent outcome 4, the module known),
// the others at resolution (outcome 8, no module).
var (
	authorizationRefusals = []string{"careteam-not-member", "careteam-not-member", "careteam-not-member", "careteam-not-member", "not-owner", "not-owner", "task-completed"}
	resolutionRefusals    = []string{"task-not-found", "endpoint-not-https", "task-no-patient"}
)

// shape is the size of each dimension for a row count.
type shape struct {
	rows, tasks, users, patients int64
	end                          time.Time // the newest creation time
}

func newShape(rows int64, now time.Time) shape {
	return shape{rows: rows, tasks: max(1, rows/rowsPerTask), users: max(1, rows/rowsPerUser), patients: max(1, rows/rowsPerPatient),
		end: now.UTC().Truncate(24 * time.Hour)}
}

// uniform is a SQL expression for a number in [0, 1) drawn from the bigint
// expression of by seed: the same for the same row on every run.
func uniform(of string, seed int) string {
	return fmt.Sprintf("((hashint8extended(%s, %d) & 9007199254740991)::float8 / 9007199254740992)", of, seed)
}

// uniformOfUUID is uniform for a uuid expression.
func uniformOfUUID(of string, seed int) string {
	return fmt.Sprintf("((uuid_hash_extended(%s, %d) & 9007199254740991)::float8 / 9007199254740992)", of, seed)
}

// The references of the key k (a SQL expression) of each dimension: hex
// ids, as the domain's FHIR server hands them out.
func taskRef(k string) string    { return `'Task/' || md5('task-' || ` + k + `)` }
func patientRef(k string) string { return `'Patient/' || md5('patient-' || ` + k + `)` }
func userRef(k string) string {
	return `(CASE WHEN ` + k + ` % 10 < 6 THEN 'Practitioner/' WHEN ` + k + ` % 10 < 9 THEN 'Patient/' ELSE 'RelatedPerson/' END) || md5('user-' || ` + k + `)`
}

// registryModule is a hand-registered module's slug; domainModule a domain
// module's Device (what the module column holds for a domain launch).
func registryModule(k string) string { return `'module-' || lpad((` + k + `)::text, 3, '0')` }
func domainModule(k string) string   { return `'Device/kt-module-' || lpad((` + k + `)::text, 2, '0')` }

// moduleRef numbers all modules: the registry's first, then the domain's.
func moduleRef(k string) string {
	return fmt.Sprintf(`(CASE WHEN %[1]s < %[2]d THEN %[3]s ELSE %[4]s END)`, k, registryModules, registryModule(k), domainModule(k+" - "+fmt.Sprint(registryModules)))
}

func sqlArray(values []string) string {
	quoted := make([]string, len(values))
	for i, v := range values {
		quoted[i] = "'" + strings.ReplaceAll(v, "'", "''") + "'"
	}
	return "ARRAY[" + strings.Join(quoted, ", ") + "]"
}

const sqlInsertIssuers = `INSERT INTO issuers (slug, client_id, fhir_base_url, profile, signing_alg, rsa_key_bits,
	rotation_period_ms, publish_lead_ms, retire_grace_ms, is_default, device, created_at, updated_at)
VALUES ('default', 'portal-default', 'https://fhir.example.org/fhir', 'koppeltaal', 'RS384', 2048,
		2592000000, 86400000, 86400000, true, NULL, $1, $1),
	('kt', 'portal-kt', 'https://fhir.kt.example.org/fhir', 'koppeltaal', 'ES384', 2048,
		2592000000, 86400000, 86400000, false, 'Device/portal-kt', $1, $1)`

// sqlInsertBatch writes the launches $1 to $2 (row numbers) of $3 and,
// in the same statement as the service does, the AuditEvent rows of the
// domain launches that started a module or were refused. Parameters: $4
// the newest creation time, $5 tasks, $6 users, $7 patients, $8 the
// retention cutoff (delivered events older than it have been pruned,
// auditoutbox.DefaultRetention), $9 the start of the pending window.
var sqlInsertBatch = func() string {
	u := func(seed int) string { return uniform("i", seed) }
	refusals := append(append([]string{}, authorizationRefusals...), resolutionRefusals...)
	auth := sqlArray(authorizationRefusals)
	return fmt.Sprintf(`WITH draw AS (
	SELECT i,
		$4::timestamptz - (($3::float8 - i + 1 - %[1]s) / $3::float8) * interval '%[2]d seconds' AS created_at,
		%[3]s < %[4]g AS domain,
		%[5]s < %[6]g AS token,
		%[7]s AS refusal_draw,
		%[8]s AS redeem_draw,
		floor($5::float8 * power(%[9]s, %[10]g))::bigint AS task_key,
		floor($6::float8 * power(%[11]s, %[12]g))::bigint AS user_key,
		%[13]s AS module_draw,
		%[14]s AS detail_draw,
		floor((i - 1) * %[15]d / $3::float8)::int AS key_period
	FROM generate_series($1::bigint, $2::bigint) AS g(i)
), shaped AS (
	SELECT d.*,
		CASE WHEN d.domain AND d.refusal_draw < %[16]g
			THEN (%[17]s)[1 + floor(d.refusal_draw / %[16]g * %[18]d)::int] END AS refusal,
		(hashint8extended(d.task_key, 42) & 9223372036854775807) %% $7 AS patient_key,
		CASE WHEN d.domain THEN floor(%[19]d * power(d.module_draw, %[20]g)) ELSE floor(%[21]d * power(d.module_draw, %[20]g)) END::int AS module_key,
		CASE WHEN d.domain THEN 'kt' ELSE 'default' END AS issuer
	FROM draw d
), launch AS (
	SELECT s.*,
		s.refusal IS NULL AS accepted,
		s.refusal IS NULL OR s.refusal = ANY (%[22]s) AS module_known,
		s.refusal IS NULL AND (s.token OR s.redeem_draw < %[23]g) AS redeemed,
		%[24]s AS task, %[25]s AS sub,
		CASE WHEN s.domain THEN %[26]s ELSE %[27]s END AS module_ref,
		CASE WHEN s.domain THEN 'kt-module-' || lpad(s.module_key::text, 2, '0') ELSE 'module-' || lpad(s.module_key::text, 3, '0') END AS module_host,
		'10.20.0.' || (11 + s.i %% 4) AS created_from
	FROM shaped s
), launch_row AS (
	SELECT l.*,
		CASE WHEN NOT l.redeemed THEN NULL WHEN l.token THEN l.created_at
			ELSE l.created_at + (3 + 57 * l.redeem_draw / %[23]g) * interval '1 second' END AS redeemed_at
	FROM launch l
), launched AS (
	INSERT INTO launches (id, kind, issuer, client_id, module, audience, launch_url, method, fields,
		task, sub, patient, definition, intent, idp_hint, created_by, created_from, created_at,
		ticket_hash, expires_at, redeemed_at, client_addr, user_agent, jti, kid, token_expires_at,
		source, outcome, refusal, refusal_detail, endpoint, authorized_by, domain_versions, request_id)
	SELECT md5('launch-' || r.i)::uuid,
		CASE WHEN r.token THEN 'token' ELSE 'ticket' END,
		r.issuer,
		CASE WHEN r.redeemed THEN 'portal-' || r.issuer END,
		CASE WHEN r.module_known THEN r.module_ref END,
		CASE WHEN NOT r.module_known THEN NULL WHEN r.domain THEN r.module_ref ELSE 'Device/' || r.module_ref END,
		CASE WHEN r.module_known THEN 'https://' || r.module_host || '.example.org/launch' END,
		CASE WHEN NOT r.module_known THEN NULL WHEN NOT r.domain AND r.module_key %% 10 = 9 THEN 'get' ELSE 'post' END,
		CASE WHEN NOT r.module_known THEN NULL WHEN r.domain THEN 'koppeltaal' ELSE (ARRAY['koppeltaal', 'hti', 'all'])[1 + r.module_key %% 3] END,
		r.task, r.sub,
		CASE WHEN r.refusal IN ('task-no-patient', 'task-not-found') THEN NULL ELSE %[28]s END,
		CASE WHEN r.module_known THEN 'ActivityDefinition/def-' || r.module_host END,
		CASE WHEN NOT r.module_known THEN NULL WHEN r.task_key %% 5 = 0 THEN 'order' ELSE 'plan' END,
		NULL,
		r.issuer || '-backend',
		r.created_from,
		r.created_at,
		CASE WHEN r.accepted AND NOT r.token THEN sha256(int8send(r.i)) END,
		CASE WHEN r.accepted AND NOT r.token THEN r.created_at + interval '120 seconds' END,
		r.redeemed_at,
		CASE WHEN NOT r.redeemed THEN NULL WHEN r.token THEN r.created_from
			ELSE (20 + r.user_key %% 200) || '.' || (r.user_key / 200 %% 256) || '.' || (r.user_key / 51200 %% 256) || '.' || (1 + r.i %% 254) END,
		CASE WHEN r.redeemed AND NOT r.token THEN (%[29]s)[1 + r.user_key %% %[30]d] END,
		CASE WHEN r.redeemed THEN md5('jti-' || r.i) END,
		CASE WHEN r.redeemed THEN md5(r.issuer || '-key-' || r.key_period) END,
		r.redeemed_at + interval '300 seconds',
		CASE WHEN r.domain THEN 'domain' ELSE 'registry' END,
		CASE WHEN r.accepted THEN 'accepted' ELSE 'refused' END,
		r.refusal,
		CASE WHEN r.refusal IS NOT NULL THEN r.sub || ' may not launch ' || r.task || ' (' || r.refusal || ')' END,
		CASE WHEN r.domain AND r.accepted THEN 'Endpoint/' || r.module_host END,
		CASE WHEN NOT (r.domain AND r.accepted) THEN NULL WHEN r.detail_draw < 0.7 THEN 'owner'
			ELSE 'careteam:' || md5('careteam-' || r.patient_key) END,
		CASE WHEN NOT r.domain THEN NULL
			WHEN NOT r.accepted THEN jsonb_build_object('Task', (1 + r.i %% 4)::text)
			ELSE jsonb_build_object('Task', (1 + r.i %% 4)::text, 'ActivityDefinition', '2', 'Endpoint', '1', 'Device', '3')
				|| CASE WHEN r.detail_draw < 0.7 THEN '{}'::jsonb ELSE jsonb_build_object('CareTeam', '5') END END,
		md5('request-' || r.i)
	FROM launch_row r
	RETURNING id, kind, source, outcome, refusal, created_at, redeemed_at, request_id
), event AS (
	SELECT l.*, coalesce(l.redeemed_at, l.created_at) AS at,
		CASE WHEN coalesce(l.redeemed_at, l.created_at) >= $9 THEN 'pending'
			WHEN %[31]s < %[32]g THEN 'failed' ELSE 'delivered' END AS state,
		%[33]s AS attempt_draw
	FROM launched l
	WHERE l.source = 'domain' AND (l.outcome = 'refused' OR l.redeemed_at IS NOT NULL)
), attempted AS (
	SELECT e.*,
		CASE e.state WHEN 'delivered' THEN CASE WHEN e.attempt_draw < 0.03 THEN 2 ELSE 1 END
			WHEN 'failed' THEN 1 ELSE floor(e.attempt_draw * 4)::int END AS attempts,
		e.at + (0.2 + e.attempt_draw) * interval '1 second' AS done_at
	FROM event e
)
INSERT INTO audit_events (launch_id, outcome, recorded_at, request_id, correlation_id, portal_device, site, state, created_at,
	attempts, next_attempt_at, leased_by, lease, event_id, last_attempt_at, last_status, last_error, operation_outcome,
	delivered_at, failed_at)
SELECT a.id,
	CASE WHEN a.refusal IS NULL THEN '0' WHEN a.refusal = ANY (%[22]s) THEN '4' ELSE '8' END,
	a.at,
	CASE WHEN a.kind = 'ticket' AND a.outcome = 'accepted' THEN md5('redeem-' || a.id) ELSE a.request_id END,
	CASE WHEN a.kind = 'ticket' AND a.outcome = 'accepted' THEN a.request_id END,
	'Device/portal-kt', 'portal.example.org', a.state, a.at, a.attempts,
	CASE WHEN a.state = 'pending' AND a.attempts > 0 THEN a.done_at + power(2, a.attempts) * interval '30 seconds' ELSE a.at END,
	CASE WHEN a.attempts > 0 THEN 'portal-' || (ARRAY['a', 'b', 'c'])[1 + floor(a.attempt_draw * 3)::int] END,
	CASE WHEN a.attempts > 0 THEN md5('lease-' || a.id)::uuid END,
	CASE WHEN a.attempts > 0 THEN md5('event-' || a.id)::uuid END,
	CASE WHEN a.attempts > 0 THEN a.done_at END,
	CASE a.state WHEN 'delivered' THEN 201 WHEN 'failed' THEN 422 ELSE CASE WHEN a.attempts > 0 THEN 503 END END,
	CASE WHEN a.state = 'failed' THEN 'the FHIR server refused the AuditEvent as invalid (422)'
		WHEN a.state = 'pending' AND a.attempts > 0 THEN 'PUT https://fhir.kt.example.org/fhir/AuditEvent/' || md5('event-' || a.id)::uuid || ': 503 Service Unavailable' END,
	CASE WHEN a.state = 'failed' THEN jsonb_build_object('resourceType', 'OperationOutcome', 'issue', jsonb_build_array(jsonb_build_object(
		'severity', 'error', 'code', 'invalid', 'diagnostics', 'AuditEvent.entity[1].what: the Task was not found in this domain'))) END,
	CASE WHEN a.state = 'delivered' THEN a.done_at END,
	CASE WHEN a.state = 'failed' THEN a.done_at END
FROM attempted a
WHERE NOT (a.state = 'delivered' AND a.done_at < $8)`,
		u(1), int64(span/time.Second),
		u(2), domainShare, u(3), tokenShare, u(4), u(5),
		u(6), float64(taskSkew), u(7), float64(userSkew), u(8), u(9), signingKeysAYear,
		refusedShare, sqlArray(refusals), len(refusals),
		domainModules, float64(moduleSkew), registryModules,
		auth, redeemedShare,
		taskRef("s.task_key"), userRef("s.user_key"), domainModule("s.module_key"), registryModule("s.module_key"),
		patientRef("r.patient_key"),
		sqlArray(userAgents), len(userAgents),
		uniformOfUUID("l.id", 11), failedShare, uniformOfUUID("l.id", 12))
}()

// sqlInsertAdminEvents writes $1 admin events over the year before $2: the
// starting instances' issuer configuration, an operator's API key and five
// people at the command line changing modules, keys, issuers and API keys.
var sqlInsertAdminEvents = func() string {
	u := func(seed int) string { return uniform("i", seed) }
	return fmt.Sprintf(`WITH d AS (
	SELECT i, $2::timestamptz - (($1::bigint - i + 1 - %[1]s) / $1::bigint::float8) * interval '%[2]d seconds' AS at,
		%[3]s AS who, %[4]s AS what, %[5]s AS which
	FROM generate_series(1, $1::bigint) AS g(i)
), e AS (
	SELECT d.*,
		CASE WHEN d.who < 0.3 THEN 'serve:portal-' || (ARRAY['a', 'b', 'c'])[1 + floor(d.which * 3)::int]
			WHEN d.who < 0.7 THEN 'apikey:ops-admin'
			ELSE 'cli:' || (ARRAY['anna', 'bram', 'chris', 'dewi', 'eva'])[1 + floor((d.who - 0.7) / 0.3 * 5)::int] || '@ops-1' END AS actor,
		CASE WHEN d.who < 0.3 THEN 'issuer.configure'
			WHEN d.what < 0.55 THEN 'module.put' WHEN d.what < 0.6 THEN 'module.delete'
			WHEN d.what < 0.8 THEN 'key.rotate' WHEN d.what < 0.81 THEN 'key.revoke'
			WHEN d.what < 0.85 THEN 'issuer.update' WHEN d.what < 0.95 THEN 'apikey.create' ELSE 'apikey.revoke' END AS action,
		%[6]s AS module_slug,
		CASE WHEN d.which < 0.5 THEN 'default' ELSE 'kt' END AS issuer
	FROM d
), t AS (
	SELECT e.*,
		CASE split_part(e.action, '.', 1)
			WHEN 'module' THEN 'module:' || e.module_slug
			WHEN 'key' THEN 'key:' || md5(e.issuer || '-key-' || floor((e.i - 1) * %[7]d / $1::bigint::float8)::int)
			WHEN 'issuer' THEN 'issuer:' || e.issuer
			ELSE 'apikey:backend-' || floor(e.which * 40)::int END AS target,
		jsonb_build_object('slug', e.module_slug, 'issuer', e.issuer, 'launch_url', 'https://' || e.module_slug || '.example.org/launch',
			'audience', 'Device/' || e.module_slug, 'method', 'post', 'fields', 'koppeltaal', 'updated_at', e.at) AS state
	FROM e
)
INSERT INTO admin_events (id, at, actor, action, target, before, after)
SELECT md5('admin-' || t.i)::uuid, t.at, t.actor, t.action, t.target,
	CASE WHEN t.action = 'apikey.create' OR (t.action = 'module.put' AND t.which < 0.3) THEN NULL ELSE t.state END,
	CASE WHEN t.action = 'module.delete' THEN NULL ELSE t.state || jsonb_build_object('updated_at', t.at + interval '1 second') END
FROM t`, u(101), int64(span/time.Second), u(102), u(103), u(104), registryModule(fmt.Sprintf("floor(%d * power(d.which, %g))::int", registryModules, float64(moduleSkew))), signingKeysAYear)
}()

// progress reports how far generation is.
type progress func(done, total int64, elapsed time.Duration)

// generate fills an empty, migrated database with the trail of sh: the
// issuers, sh.rows launches in batches of batch rows (each one statement
// and one transaction, so memory stays small), their AuditEvent rows and
// the admin events.
func generate(ctx context.Context, conn *pgx.Conn, sh shape, batch int64, report progress) error {
	start := time.Now()
	if _, err := conn.Exec(ctx, sqlInsertIssuers, sh.end.Add(-span)); err != nil {
		return fmt.Errorf("insert issuers: %w", err)
	}
	retentionCutoff := sh.end.Add(-auditoutbox.DefaultRetention)
	pendingSince := sh.end.Add(-pendingWindow)
	for lo := int64(1); lo <= sh.rows; lo += batch {
		hi := min(lo+batch-1, sh.rows)
		if _, err := conn.Exec(ctx, sqlInsertBatch, lo, hi, sh.rows, sh.end, sh.tasks, sh.users, sh.patients, retentionCutoff, pendingSince); err != nil {
			return fmt.Errorf("insert launches %d to %d: %w", lo, hi, err)
		}
		report(hi, sh.rows, time.Since(start))
	}
	if _, err := conn.Exec(ctx, sqlInsertAdminEvents, adminEventRows, sh.end); err != nil {
		return fmt.Errorf("insert admin events: %w", err)
	}
	return nil
}

// dimension is a column the audit list filters on, with the references
// the generator writes to it: key k in [0, keys) becomes ref(k).
type dimension struct {
	table, column string
	keys          int64
	ref           func(k string) string
}

func (sh shape) dimensions() map[string]dimension {
	return map[string]dimension{
		"task":    {"launches", "task", sh.tasks, taskRef},
		"user":    {"launches", "sub", sh.users, userRef},
		"patient": {"launches", "patient", sh.patients, patientRef},
		"module":  {"launches", "module", registryModules + domainModules, moduleRef},
	}
}

// drawValues returns n existing values of the dimension, alternately of
// two kinds: the value of a random row (so a value comes up as often as it
// is launched: frequent values often) and the reference of a random key
// (each value alike: mostly rare ones), keeping only keys that occur.
func drawValues(ctx context.Context, conn *pgx.Conn, d dimension, rows int64, n int, rng *rand.Rand) ([]string, error) {
	weighted, err := sampleColumn(ctx, conn, d.table, d.column, rows, (n+1)/2, rng)
	if err != nil {
		return nil, err
	}
	if _, err := conn.Exec(ctx, `SELECT setseed($1)`, rng.Float64()*2-1); err != nil {
		return nil, err
	}
	q := fmt.Sprintf(`SELECT v FROM (SELECT %s AS v FROM (SELECT floor(random() * $1)::bigint AS k FROM generate_series(1, $2)) keys) refs
		WHERE EXISTS (SELECT 1 FROM %s WHERE %s = refs.v) LIMIT $3`,
		d.ref("k"), pgx.Identifier{d.table}.Sanitize(), pgx.Identifier{d.column}.Sanitize())
	uniform, err := collectStrings(ctx, conn, q, d.keys, 4*n, n/2)
	if err != nil {
		return nil, fmt.Errorf("draw %s by key: %w", d.column, err)
	}
	var values []string
	for i := 0; len(values) < n && (i < len(weighted) || i < len(uniform)); i++ {
		if i < len(weighted) {
			values = append(values, weighted[i])
		}
		if i < len(uniform) && len(values) < n {
			values = append(values, uniform[i])
		}
	}
	if len(values) < n {
		return nil, fmt.Errorf("draw %s: only %d values found", d.column, len(values))
	}
	return values, nil
}

// sampleColumn returns the non-NULL values of n random rows of a table of
// about rows rows (pages drawn by TABLESAMPLE SYSTEM, rows by rng).
func sampleColumn(ctx context.Context, conn *pgx.Conn, table, column string, rows int64, n int, rng *rand.Rand) ([]string, error) {
	percent := min(100, 100*float64(20*n+1000)/float64(max(rows, 1)))
	q := fmt.Sprintf(`SELECT %[2]s::text FROM %[1]s TABLESAMPLE SYSTEM ($1) REPEATABLE ($2) WHERE %[2]s IS NOT NULL`,
		pgx.Identifier{table}.Sanitize(), pgx.Identifier{column}.Sanitize())
	all, err := collectStrings(ctx, conn, q, percent, rng.Int32())
	if err != nil {
		return nil, fmt.Errorf("sample %s.%s: %w", table, column, err)
	}
	if len(all) < n {
		return nil, fmt.Errorf("sample %s.%s: %d rows, want %d", table, column, len(all), n)
	}
	rng.Shuffle(len(all), func(i, j int) { all[i], all[j] = all[j], all[i] })
	return all[:n], nil
}

// drawAdminValues returns n values of an admin_events column, alternately
// of a random row and a random distinct value.
func drawAdminValues(ctx context.Context, conn *pgx.Conn, column string, n int, rng *rand.Rand) ([]string, error) {
	col := pgx.Identifier{column}.Sanitize()
	rows, err := collectStrings(ctx, conn, `SELECT `+col+` FROM admin_events`)
	if err != nil {
		return nil, err
	}
	distinct, err := collectStrings(ctx, conn, `SELECT DISTINCT `+col+` FROM admin_events`)
	if err != nil {
		return nil, err
	}
	if len(rows) == 0 {
		return nil, fmt.Errorf("admin_events is empty")
	}
	values := make([]string, n)
	for i := range values {
		if i%2 == 0 {
			values[i] = rows[rng.IntN(len(rows))]
		} else {
			values[i] = distinct[rng.IntN(len(distinct))]
		}
	}
	return values, nil
}

// drawWindows returns n time windows of length d, uniformly placed in the
// year of the trail.
func drawWindows(sh shape, d time.Duration, n int, rng *rand.Rand) [][2]time.Time {
	windows := make([][2]time.Time, n)
	for i := range windows {
		from := sh.end.Add(-span).Add(time.Duration(rng.Int64N(int64(span - d))))
		windows[i] = [2]time.Time{from, from.Add(d)}
	}
	return windows
}

func collectStrings(ctx context.Context, conn *pgx.Conn, q string, args ...any) ([]string, error) {
	rows, err := conn.Query(ctx, q, args...)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowTo[string])
}

// describeShape is the generator's description for the report.
func describeShape(sh shape) []string {
	return []string{
		fmt.Sprintf("launches created over the year before %s, in creation order (row i at about i/rows of the year)", sh.end.Format("2006-01-02")),
		fmt.Sprintf("dimensions: %d tasks (skew u^%g), %d users (u^%g; 60 %% Practitioner, 30 %% Patient, 10 %% RelatedPerson), %d patients (each task belongs to one), %d modules (%d registry, %d domain Devices; u^%g); hex ids",
			sh.tasks, float64(taskSkew), sh.users, float64(userSkew), sh.patients, registryModules+domainModules, registryModules, domainModules, float64(moduleSkew)),
		fmt.Sprintf("%.0f %% domain launches (issuer kt), %.0f %% of those refused (%d rules); %.0f %% tokens to the backend, the rest links, %.0f %% of links redeemed (jti, kid, client_addr, a User-Agent of %d bytes on average, token_expires_at)",
			100*domainShare, 100*refusedShare, distinctCount(append(append([]string{}, authorizationRefusals...), resolutionRefusals...)), 100*tokenShare, 100*redeemedShare, meanLength(userAgents)),
		fmt.Sprintf("AuditEvent rows for domain launches that started or were refused: delivered ones only within the retention (%s, auditoutbox.DefaultRetention; older ones pruned), pending for the last %s (an outage in progress), %.1f %% failed",
			auditoutbox.DefaultRetention, pendingWindow, 100*failedShare),
		fmt.Sprintf("%d admin events over the year (issuer.configure by starting instances, module, key, issuer and API key changes by an API key and five operators)", adminEventRows),
	}
}

func distinctCount(values []string) int {
	seen := map[string]bool{}
	for _, v := range values {
		seen[v] = true
	}
	return len(seen)
}

func meanLength(values []string) int {
	total := 0
	for _, v := range values {
		total += len(v)
	}
	return total / max(1, len(values))
}
