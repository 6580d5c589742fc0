package launch

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/ehealth-nl/portal/internal/auditevent"
	"github.com/ehealth-nl/portal/internal/keys"
)

// Store keeps the launch records in PostgreSQL: it is the only code that
// knows the launches table. One row per launch is the audit record; its
// ticket hash, claim and give-back are single statements, so that a launch
// link is redeemed at most once however many requests race for it.
type Store struct {
	pool *pgxpool.Pool
}

// NewStore returns a Store over a connection pool.
func NewStore(pool *pgxpool.Pool) *Store { return &Store{pool: pool} }

// newLaunch is a launch row as it is created: a ticket (ticketHash and
// expiresAt set), a token signed at once (jti, kid, clientID and
// tokenExpiresAt set), or a refusal (refusal set, nothing to follow). A
// token or a refusal of a domain launch writes its AuditEvent row to the
// outbox in the same statement (sqlReportNewLaunch), with site as its
// source.site.
type newLaunch struct {
	site           string
	id             string
	kind           string // ticket or token: what was asked for
	sp             spec
	by             Caller
	createdAt      time.Time
	ticketHash     []byte
	expiresAt      time.Time
	clientID       string
	jti, kid       string
	tokenExpiresAt time.Time
	refusal        *Refusal
}

const launchColumns = `id, kind, issuer, client_id, module, audience, launch_url, method, fields,
	task, sub, patient, definition, intent, idp_hint, created_by, created_from, created_at,
	ticket_hash, expires_at, redeemed_at, client_addr, user_agent, jti, kid, token_expires_at,
	source, outcome, refusal, refusal_detail, endpoint, authorized_by, domain_versions, request_id`

const launchValues = `$1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20,
	$21, $22, $23, $24, $25, $26, $27, $28, $29, $30, $31, $32, $33, $34`

// sqlCallerStillValid holds when the API key $N that the request was
// authenticated with (Caller.KeyID) is still not revoked, or when the
// request came without one ($N = ”). The server authenticates launch
// requests from a memory of keys it found valid (apikeys.Recent); this
// check in the statement that writes the launch is what makes a
// revocation take effect on the next request of every instance
// (docs/ARCHITECTURE.md, "API keys on the launch routes").
func sqlCallerStillValid(n int) string {
	return fmt.Sprintf(`($%[1]d::text = '' OR EXISTS (SELECT 1 FROM api_keys WHERE key_id = $%[1]d AND revoked_at IS NULL))`, n)
}

// sqlModuleStillCurrent holds when the module copied into the launch
// ($5 slug, $3 issuer, $6 audience, $7 launch URL, $8 method, $9 fields)
// is still registered so, with default definition $N, or when the launch
// comes from the domain ($27 source). The service reads modules from a
// memory of the registry; this check makes a module changed or removed
// on any instance take effect on the next launch.
func sqlModuleStillCurrent(n int) string {
	return fmt.Sprintf(`($27::text = 'domain' OR EXISTS (SELECT 1 FROM modules m WHERE m.slug = $5 AND m.issuer = $3
	AND m.launch_url = $7 AND m.audience = $6 AND m.method = $8 AND m.fields = $9
	AND coalesce(m.default_definition, '') = $%d::text))`, n)
}

// sqlInsertLaunch records a launch with a one-time link ($35 the caller's
// API key, $36 the module's default definition), only while the caller's
// key and the module are as the request was resolved with. It returns how
// many launches it stored: 0 or 1.
var sqlInsertLaunch = `INSERT INTO launches (` + launchColumns + `) SELECT ` + launchValues + `
WHERE ` + sqlCallerStillValid(35) + ` AND ` + sqlModuleStillCurrent(36)

// sqlReportNewLaunch writes the AuditEvent row (table audit_events, the
// outbox of docs/ARCHITECTURE.md, "Reporting launches") of the launch the
// CTE new_launch created, when it is a domain launch: outcome $35, request
// id $36, correlation id $37, site $38, the issuer's Device as the portal.
// An issuer that lost its Device meanwhile has no portal to name: the
// NOT NULL of portal_device then refuses the whole statement, launch
// included, rather than lose the event.
const sqlReportNewLaunch = `INSERT INTO audit_events (launch_id, outcome, recorded_at, request_id, correlation_id,
	portal_device, site, created_at, next_attempt_at)
SELECT n.id, $35, n.created_at, $36, $37, i.device, $38, n.created_at, n.created_at
FROM new_launch n JOIN issuers i ON i.slug = n.issuer WHERE n.source = 'domain'`

// sqlInsertReportedLaunch records a refused launch and its AuditEvent row
// in one statement, while the caller's API key ($39) is still valid. It
// returns how many launches it stored: 0 or 1.
var sqlInsertReportedLaunch = `WITH new_launch AS (
	INSERT INTO launches (` + launchColumns + `) SELECT ` + launchValues + `
	WHERE ` + sqlCallerStillValid(39) + `
	RETURNING id, issuer, source, created_at),
event AS (` + sqlReportNewLaunch + `)
SELECT count(*) FROM new_launch`

// sqlInsertSignedLaunch records a launch whose token is already signed,
// and its AuditEvent row, only while the signing key ($25) is still usable
// in the database (as in sqlClaimTicket): a revoked key's token is never
// handed out, even by an instance that missed the revocation's
// notification; and only while the caller's API key ($39) and the module
// (default definition $40) are as the request was resolved with. It
// returns how many launches it stored: 0 or 1.
var sqlInsertSignedLaunch = `WITH new_launch AS (
	INSERT INTO launches (` + launchColumns + `)
	SELECT ` + launchValues + `
	WHERE EXISTS (SELECT 1 FROM signing_keys WHERE kid = $25 AND issuer = $3
		AND (state = 'active' OR (state = 'retired' AND expires_at > $26)))
		AND ` + sqlCallerStillValid(39) + ` AND ` + sqlModuleStillCurrent(40) + `
	RETURNING id, issuer, source, created_at),
event AS (` + sqlReportNewLaunch + `)
SELECT count(*) FROM new_launch`

// fhirIDPattern is the FHIR id rule of auditevent.ValidID in SQL, for
// request ids stored before the server kept only FHIR ids: the request ids
// an AuditEvent names must follow it (TOP-KT-011).
const fhirIDPattern = `'^[A-Za-z0-9.-]{1,64}$'`

// sqlCallerValid tells whether the caller's API key $1 is still valid
// (sqlCallerStillValid), to say why a launch was not stored.
var sqlCallerValid = `SELECT ` + sqlCallerStillValid(1)

// eventOutcome is the AuditEvent.outcome of a launch that started (0) or
// was refused: 4 when the user may not launch the Task (an expected
// refusal), 8 when the Task leads to no module that can be launched (the
// domain's data is not as a launch needs it: an unexpected failure).
func eventOutcome(r *Refusal) string {
	switch {
	case r == nil:
		return "0"
	case r.Stage == StageAuthorization:
		return "4"
	}
	return "8"
}

// fhirID is s when it is a FHIR id, else NULL: an id that is not one is
// not named in the AuditEvent (it would make the event invalid).
func fhirID(s string) *string {
	if !auditevent.ValidID(s) {
		return nil
	}
	return &s
}

// args are the values of launchColumns for l.
func (l newLaunch) args() []any {
	sp := l.sp
	outcome, refusal, detail := "accepted", (*string)(nil), (*string)(nil)
	if l.refusal != nil {
		outcome, refusal, detail = "refused", &l.refusal.Rule, nullable(truncate(l.refusal.Detail, 1000))
	}
	var redeemedAt, tokenExpires, ticketExpires *time.Time
	var clientAddr *string
	if l.jti != "" { // signed at once: handed out at creation
		redeemedAt, tokenExpires, clientAddr = &l.createdAt, &l.tokenExpiresAt, nullable(l.by.Addr)
	}
	if l.ticketHash != nil {
		ticketExpires = &l.expiresAt
	}
	var versions any
	if sp.versions != nil { // {} for a domain whose server gives no versionIds
		versions = sp.versions
	}
	return []any{l.id, l.kind, sp.issuer, nullable(l.clientID), nullable(sp.module.Slug), nullable(sp.module.Audience),
		nullable(sp.module.LaunchURL), nullable(string(sp.module.Method)), nullable(string(sp.module.Fields)), sp.task, sp.user,
		nullable(sp.patient), nullable(sp.definition), nullable(sp.intent), nullable(sp.idpHint), l.by.Name, nullable(l.by.Addr),
		l.createdAt, l.ticketHash, ticketExpires, redeemedAt, clientAddr, nil, nullable(l.jti), nullable(l.kid), tokenExpires,
		sp.source(), outcome, refusal, detail, nullable(sp.endpoint), nullable(sp.authorizedBy), versions,
		nullable(truncate(l.by.RequestID, 128))}
}

// reportArgs are args followed by the AuditEvent row's values
// (sqlReportNewLaunch).
func (l newLaunch) reportArgs() []any {
	return append(l.args(), eventOutcome(l.refusal), fhirID(l.by.RequestID), fhirID(l.by.CorrelationID), l.site)
}

// insert stores a launch with a one-time link, or a refused launch and its
// AuditEvent row: the ticket (if any) and its audit record in one
// statement. A link's AuditEvent is written when it is followed. It
// reports false, storing nothing, when the caller's API key was revoked or
// the module changed since the request was resolved (whyNotStored tells
// which).
func (st *Store) insert(ctx context.Context, l newLaunch) (bool, error) {
	if l.refusal != nil {
		return st.count(ctx, sqlInsertReportedLaunch, append(l.reportArgs(), l.by.KeyID)...)
	}
	tag, err := st.pool.Exec(ctx, sqlInsertLaunch, append(l.args(), l.by.KeyID, l.sp.module.DefaultDefinition)...)
	return tag.RowsAffected() == 1, err
}

// insertSigned stores a launch whose token is signed, with its AuditEvent
// row, and reports false (storing nothing) when its key is no longer
// usable in the database, or the caller's API key or the module changed.
func (st *Store) insertSigned(ctx context.Context, l newLaunch) (bool, error) {
	return st.count(ctx, sqlInsertSignedLaunch, append(l.reportArgs(), l.by.KeyID, l.sp.module.DefaultDefinition)...)
}

// count runs a statement that answers how many launches it stored.
func (st *Store) count(ctx context.Context, sql string, args ...any) (bool, error) {
	var stored int
	if err := st.pool.QueryRow(ctx, sql, args...).Scan(&stored); err != nil {
		return false, err
	}
	return stored == 1, nil
}

// callerValid tells whether the API key keyID is still valid ("" always
// is: a caller without a key).
func (st *Store) callerValid(ctx context.Context, keyID string) (bool, error) {
	var valid bool
	err := st.pool.QueryRow(ctx, sqlCallerValid, keyID).Scan(&valid)
	return valid, err
}

// sqlClaimTicket marks a ticket redeemed and returns its launch, in one
// statement: two requests for the same ticket cannot both match
// "redeemed_at IS NULL" (the second waits for the first's row lock, then
// re-checks). The kid and client_id come from the arrays of this instance's
// active signers, joined with signing_keys so that the key must still be
// usable in the database at this moment — active, or retired by a rotation
// this instance has not seen yet and published beyond the token's exp — so
// a revocation takes effect on the next redemption even if this instance
// missed its notification. The
// module must still be registered as it was when the link was made (same
// issuer, launch URL, audience, method and fields): a module removed or
// re-pointed since does not receive the pending links made for it
// (docs/ARCHITECTURE.md, Decisions). When any of this fails, no row
// matches and nothing changes.
//
// A domain launch's AuditEvent row is written by the same statement
// (docs/ARCHITECTURE.md, "Reporting launches"): request id $10 (the
// redeeming request's), correlation id the request that made the link,
// site $11.
const sqlClaimTicket = `WITH signer AS (
	SELECT s.issuer, s.kid, s.client_id
	FROM unnest($7::text[], $8::text[], $9::text[]) AS s(issuer, kid, client_id)
	JOIN signing_keys k ON k.kid = s.kid AND k.issuer = s.issuer
		AND (k.state = 'active' OR (k.state = 'retired' AND k.expires_at > $6))),
claimed AS (
	UPDATE launches l SET redeemed_at = $2, client_addr = $3, user_agent = $4, jti = $5,
		token_expires_at = $6, kid = signer.kid, client_id = signer.client_id
	FROM signer
	WHERE l.ticket_hash = $1 AND l.redeemed_at IS NULL AND l.expires_at > $2 AND signer.issuer = l.issuer
		AND ` + sqlModuleCurrent + `
	RETURNING l.id, l.issuer, l.module, l.audience, l.launch_url, l.method, l.fields, l.task, l.sub, l.patient, l.definition,
		l.intent, l.idp_hint, l.kid, l.source, l.request_id),
event AS (
	INSERT INTO audit_events (launch_id, outcome, recorded_at, request_id, correlation_id, portal_device, site,
		created_at, next_attempt_at)
	SELECT c.id, '0', $2, $10, CASE WHEN c.request_id ~ ` + fhirIDPattern + ` THEN c.request_id END, i.device, $11, $2, $2
	FROM claimed c JOIN issuers i ON i.slug = c.issuer WHERE c.source = 'domain')
SELECT id, issuer, module, audience, launch_url, method, fields, task, sub, coalesce(patient, ''),
	coalesce(definition, ''), intent, coalesce(idp_hint, ''), kid, source = 'domain'
FROM claimed`

// sqlModuleCurrent holds when launch l's module is still as it was when
// the launch was created: a hand-registered module still registered with
// the same issuer, launch URL, audience, method and fields. A launch
// resolved from the domain was checked against the domain at creation and
// does not depend on the registry.
const sqlModuleCurrent = `(l.source = 'domain' OR EXISTS (SELECT 1 FROM modules m WHERE m.slug = l.module AND m.issuer = l.issuer
	AND m.launch_url = l.launch_url AND m.audience = l.audience AND m.method = l.method AND m.fields = l.fields))`

// sqlTicketState reads what a ticket's launch is in, without changing it.
const sqlTicketState = `SELECT l.id, l.redeemed_at IS NOT NULL, l.expires_at, ` + sqlModuleCurrent + `
FROM launches l WHERE l.ticket_hash = $1`

// sqlUnclaimTicket gives a ticket back when its token was not sent: the
// signing failed, or the claim's answer was lost (it may or may not have
// committed; the jti made here tells). The AuditEvent row the claim wrote
// goes with it: no module was started. (Should a worker have delivered it
// in the moment between, the domain holds an event of a start whose token
// never left; docs/ARCHITECTURE.md, "Reporting launches".)
const sqlUnclaimTicket = `WITH unclaimed AS (
	UPDATE launches SET redeemed_at = NULL, client_addr = NULL, user_agent = NULL, jti = NULL,
		token_expires_at = NULL, kid = NULL, client_id = NULL WHERE ticket_hash = $1 AND jti = $2
	RETURNING id)
DELETE FROM audit_events a USING unclaimed u WHERE a.launch_id = u.id`

// claimRequest is what a redemption claims a ticket with: who follows it,
// the jti of the token about to be signed, this instance's signers, and
// the source.site of the AuditEvent.
type claimRequest struct {
	hash           []byte
	now            time.Time
	site           string
	browser        Browser
	jti            string
	tokenExpiresAt time.Time
	signers        []*keys.Signer
}

// claim marks a ticket redeemed (sqlClaimTicket) and returns its launch and
// the kid chosen to sign; pgx.ErrNoRows when nothing was claimed.
func (st *Store) claim(ctx context.Context, r claimRequest) (id string, sp spec, kid string, err error) {
	n := len(r.signers)
	issuers, kids, clientIDs := make([]string, n), make([]string, n), make([]string, n)
	for i, sg := range r.signers {
		issuers[i], kids[i], clientIDs[i] = sg.Issuer.Slug, sg.Kid, sg.Issuer.ClientID
	}
	var method, fields string
	err = st.pool.QueryRow(ctx, sqlClaimTicket, r.hash, r.now, nullable(r.browser.Addr), nullable(truncate(r.browser.UserAgent, 512)), r.jti,
		r.tokenExpiresAt, issuers, kids, clientIDs, fhirID(r.browser.RequestID), r.site).
		Scan(&id, &sp.issuer, &sp.module.Slug, &sp.module.Audience, &sp.module.LaunchURL, &method, &fields,
			&sp.task, &sp.user, &sp.patient, &sp.definition, &sp.intent, &sp.idpHint, &kid, &sp.domain)
	sp.module.Method, sp.module.Fields = Method(method), FieldSet(fields)
	return id, sp, kid, err
}

// unclaim gives a ticket back (sqlUnclaimTicket).
func (st *Store) unclaim(ctx context.Context, hash []byte, jti string) error {
	_, err := st.pool.Exec(ctx, sqlUnclaimTicket, hash, jti)
	return err
}

// ticketState reads a ticket's launch without changing it; pgx.ErrNoRows
// for an unknown ticket.
func (st *Store) ticketState(ctx context.Context, hash []byte) (id string, redeemed bool, expires time.Time, moduleUnchanged bool, err error) {
	err = st.pool.QueryRow(ctx, sqlTicketState, hash).Scan(&id, &redeemed, &expires, &moduleUnchanged)
	return id, redeemed, expires, moduleUnchanged, err
}

// The filters are fixed parameters compared only when set, so the query
// text never depends on input.
const sqlListLaunches = `SELECT id, kind, issuer, coalesce(client_id, ''), coalesce(module, ''), coalesce(audience, ''),
	coalesce(launch_url, ''), task, sub, coalesce(patient, ''), coalesce(definition, ''), coalesce(intent, ''),
	coalesce(idp_hint, ''), created_by, coalesce(created_from, ''), created_at, expires_at, redeemed_at,
	coalesce(client_addr, ''), coalesce(user_agent, ''), coalesce(jti, ''), coalesce(kid, ''), token_expires_at,
	source, outcome, coalesce(refusal, ''), coalesce(refusal_detail, ''), coalesce(endpoint, ''), coalesce(authorized_by, ''),
	domain_versions, coalesce(request_id, '')
FROM launches
WHERE ($1 = '' OR task = $1) AND ($2 = '' OR sub = $2) AND ($3 = '' OR patient = $3) AND ($4 = '' OR module = $4)
	AND ($5 = '' OR issuer = $5) AND ($6::timestamptz IS NULL OR created_at >= $6) AND ($7::timestamptz IS NULL OR created_at < $7)
	AND ($8::timestamptz IS NULL OR (created_at, id) < ($8, $9::uuid)) AND ($11 = '' OR outcome = $11)
ORDER BY created_at DESC, id DESC
LIMIT $10`

// list reads one page (and one record more) of the audit trail, newest
// first, after the cursor when one is given.
func (st *Store) list(ctx context.Context, f Filter, cursorTime *time.Time, cursorID *string) ([]Record, error) {
	rows, err := st.pool.Query(ctx, sqlListLaunches, f.Task, f.User, f.Patient, f.Module, f.Issuer,
		nullableTime(f.From), nullableTime(f.To), cursorTime, cursorID, f.Limit+1, f.Outcome)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(row pgx.CollectableRow) (Record, error) {
		var r Record
		err := row.Scan(&r.ID, &r.Kind, &r.Issuer, &r.ClientID, &r.Module, &r.Audience, &r.LaunchURL, &r.Task, &r.User,
			&r.Patient, &r.Definition, &r.Intent, &r.IDPHint, &r.CreatedBy, &r.CreatedFrom, &r.CreatedAt, &r.ExpiresAt,
			&r.RedeemedAt, &r.ClientAddr, &r.UserAgent, &r.JTI, &r.Kid, &r.TokenExpiresAt,
			&r.Source, &r.Outcome, &r.Refusal, &r.RefusalDetail, &r.Endpoint, &r.AuthorizedBy, &r.DomainVersions, &r.RequestID)
		r.CreatedAt = r.CreatedAt.UTC()
		for _, t := range []*time.Time{r.ExpiresAt, r.RedeemedAt, r.TokenExpiresAt} {
			if t != nil {
				*t = t.UTC()
			}
		}
		return r, err
	})
}

// nullable maps "" to NULL.
func nullable(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

func nullableTime(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	return &t
}
