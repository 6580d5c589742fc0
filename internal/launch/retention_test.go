package launch

import (
	"context"
	"errors"
	"log/slog"
	"testing"
	"time"

	"github.com/ehealth-nl/portal/internal/postgres"
)

// TestRetention_ScrubsExpiredLinksAndPrunesOldLaunches: one pass removes
// the ticket hash and browser details of links expired longer than the
// link retention (redeemed or not), and nothing of newer links; deletes
// launch records older than the launch retention with their delivered
// AuditEvent rows, but keeps an old record whose event is pending or
// failed, and every newer record; a second pass finds nothing to do. A
// scrubbed link cannot be followed: its ticket is no longer known.
func TestRetention_ScrubsExpiredLinksAndPrunesOldLaunches(t *testing.T) {
	ctx := context.Background()
	pool, err := postgres.Connect(ctx, testDB.Fresh(t))
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	now := time.Date(2026, 12, 3, 12, 0, 0, 0, time.UTC)
	_, err = pool.Exec(ctx, `INSERT INTO issuers (slug, client_id, fhir_base_url, profile, signing_alg, rsa_key_bits,
		rotation_period_ms, publish_lead_ms, retire_grace_ms, is_default, created_at, updated_at)
		VALUES ('default', 'portal-retention', 'https://fhir.example.org/fhir', 'hti', 'ES256', 2048, 86400000, 3600000, 3600000, true, now(), now())`)
	if err != nil {
		t.Fatal(err)
	}
	// name, created this long before now, redeemed?, AuditEvent state ("" none)
	rows := []struct {
		name     string
		age      time.Duration
		redeemed bool
		event    string
	}{
		{"new-link", time.Hour, false, ""},
		{"new-redeemed", time.Hour, true, "delivered"},
		{"expired-link", 3 * 24 * time.Hour, false, ""},
		{"expired-redeemed", 3 * 24 * time.Hour, true, "delivered"},
		{"old-delivered", 400 * 24 * time.Hour, true, "delivered"},
		{"old-pending", 400 * 24 * time.Hour, true, "pending"},
		{"old-failed", 400 * 24 * time.Hour, true, "failed"},
		{"old-no-event", 400 * 24 * time.Hour, false, ""},
	}
	ids, tickets := map[string]string{}, map[string]string{}
	for _, r := range rows {
		created := now.Add(-r.age)
		id := newLaunchID()
		ids[r.name] = id
		var redeemedAt, tokenExp *time.Time
		var addr, ua, jti, kid *string
		if r.redeemed {
			at, exp := created.Add(time.Minute), created.Add(6*time.Minute)
			redeemedAt, tokenExp, addr, ua, jti, kid = &at, &exp, nullable("192.0.2.7"), nullable("Mozilla/5.0"), nullable(newJTI()), nullable("k1")
		}
		ticket, hash := newTicket()
		tickets[r.name] = ticket
		_, err := pool.Exec(ctx, `INSERT INTO launches (id, kind, issuer, module, audience, launch_url, method, fields, task, sub, patient,
			intent, created_by, created_at, ticket_hash, expires_at, redeemed_at, client_addr, user_agent, jti, kid, token_expires_at, source)
			VALUES ($1, 'ticket', 'default', 'm', 'Device/m', 'https://m.example.org/launch', 'post', 'koppeltaal', 'Task/1', 'Patient/1',
			'Patient/1', 'plan', 'backend', $2, $3, $4, $5, $6, $7, $8, $9, $10, 'registry')`,
			id, created, hash, created.Add(2*time.Minute), redeemedAt, addr, ua, jti, kid, tokenExp)
		if err != nil {
			t.Fatalf("%s: %v", r.name, err)
		}
		if r.event != "" {
			var delivered, failed *time.Time
			switch r.event {
			case "delivered":
				delivered = redeemedAt
			case "failed":
				failed = redeemedAt
			}
			_, err := pool.Exec(ctx, `INSERT INTO audit_events (launch_id, outcome, recorded_at, portal_device, site, state, created_at,
				next_attempt_at, delivered_at, failed_at) VALUES ($1, '0', $2, 'Device/portal-retention', 'portal.example.org', $3, $2, $2, $4, $5)`,
				id, *redeemedAt, r.event, delivered, failed)
			if err != nil {
				t.Fatalf("%s event: %v", r.name, err)
			}
		}
	}
	svc := NewService(pool, nil, nil, Config{}, func() time.Time { return now }, slog.New(slog.DiscardHandler))
	if _, err := svc.Inspect(ctx, tickets["expired-link"]); !errors.Is(err, ErrTicketExpired) {
		t.Fatalf("expired link before the pass: %v, want ErrTicketExpired", err)
	}
	st := NewStore(pool)
	cfg := RetentionConfig{Links: 24 * time.Hour, Launches: 365 * 24 * time.Hour}
	got, err := st.ApplyRetention(ctx, cfg, now)
	if err != nil {
		t.Fatal(err)
	}
	// Scrubbed: the two expired ones and the three old ones kept (pruned ones
	// are scrubbed first too).
	if got.LinksScrubbed != 6 || got.LaunchesPruned != 2 {
		t.Errorf("pass: %+v, want 6 links scrubbed (all but the two new) and 2 launches pruned (old-delivered, old-no-event)", got)
	}
	for _, r := range rows {
		var hash []byte
		var addr, ua *string
		var events int
		err := pool.QueryRow(ctx, `SELECT ticket_hash, client_addr, user_agent, (SELECT count(*) FROM audit_events WHERE launch_id = l.id)
			FROM launches l WHERE id = $1`, ids[r.name]).Scan(&hash, &addr, &ua, &events)
		pruned := r.name == "old-delivered" || r.name == "old-no-event"
		switch {
		case pruned && err == nil:
			t.Errorf("%s: still there, want pruned", r.name)
		case pruned:
		case err != nil:
			t.Errorf("%s: %v, want kept", r.name, err)
		case r.age > cfg.Links && (hash != nil || addr != nil || ua != nil):
			t.Errorf("%s: hash %x, address %v, User-Agent %v kept past the link retention", r.name, hash, addr, ua)
		case r.age < cfg.Links && hash == nil:
			t.Errorf("%s: hash removed before the link retention", r.name)
		case r.age < cfg.Links && r.redeemed && (addr == nil || ua == nil):
			t.Errorf("%s: browser details removed before the link retention", r.name)
		case (r.event != "") != (events == 1):
			t.Errorf("%s: %d AuditEvent rows, want its event kept", r.name, events)
		}
	}
	if _, err := svc.Inspect(ctx, tickets["expired-link"]); !errors.Is(err, ErrTicketNotFound) {
		t.Errorf("scrubbed link: %v, want ErrTicketNotFound", err)
	}
	if _, err := svc.Inspect(ctx, tickets["new-link"]); err != nil && !errors.Is(err, ErrTicketExpired) {
		t.Errorf("new link: %v, want it still known", err)
	}
	if again, err := st.ApplyRetention(ctx, cfg, now); err != nil || again != (RetentionResult{}) {
		t.Errorf("second pass: %+v %v, want nothing to do", again, err)
	}
}
