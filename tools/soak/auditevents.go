package main

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/ehealth-nl/portal/internal/auditevent"
)

// auditFigures is what the AuditEvent check found: the outbox by state,
// how long it took to drain, and how the domain launches recorded in the
// audit trail compare with the AuditEvents in the domain.
type auditFigures struct {
	created, delivered, failed, pending int
	retried                             int // delivered after more than one attempt
	held                                int // pending, held by a lease, yet already in the domain
	leased                              int // held by a lease when the wait began
	drained                             time.Duration
	launches                            int // domain launches that must have an AuditEvent
	inDomain                            int // AuditEvents the domain holds
	lost                                int // such launches without their AuditEvent in the domain
	duplicates                          int // launches with more than one AuditEvent
	unknown                             int // AuditEvents no launch accounts for
	refusalsSeen, refusalsRecorded      int // refusals the clients were told of, and of those recorded
}

// checkAuditEvents waits, once the load has stopped, until the outbox has
// no pending event (at most outboxDrainLimit), then compares it and the
// audit trail with what the domain holds. Every domain launch that started
// a module (a token handed out, a link redeemed: a jti) or was refused has
// one AuditEvent (TOP-KT-011; docs/ARCHITECTURE.md, "Reporting launches"),
// whose id follows from the launch id, the outcome and the request id
// (auditevent.EventID). Lost: such a launch whose event is not in the
// domain; a duplicate: a launch with more than one event there, by id or
// by its trace id (the jti) or request id. The run fails on any lost,
// duplicate, unknown, failed or still pending event.
func (s *soak) checkAuditEvents(ctx context.Context, dbURL string, loadStopped time.Time) auditFigures {
	var f auditFigures
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		s.fail("connect for the AuditEvent check: %v", err)
		return f
	}
	defer conn.Close(ctx)
	token, err := s.domain.checker.accessToken(ctx, s.domain)
	if err != nil {
		s.fail("the soak's client of the domain: %v", err)
		return f
	}
	if f.held, f.leased, err = s.drainOutbox(ctx, conn, token); err != nil {
		s.fail("AuditEvent check: %v", err)
		return f
	}
	f.drained = time.Since(loadStopped)
	if err := conn.QueryRow(ctx, `SELECT count(*), count(*) FILTER (WHERE state = 'delivered'), count(*) FILTER (WHERE state = 'failed'),
		count(*) FILTER (WHERE state = 'pending'), count(*) FILTER (WHERE state = 'delivered' AND attempts > 1) FROM audit_events`).
		Scan(&f.created, &f.delivered, &f.failed, &f.pending, &f.retried); err != nil {
		s.fail("AuditEvent check: %v", err)
		return f
	}
	if f.pending > f.held {
		s.fail("%d AuditEvents still pending %s after the load stopped", f.pending-f.held, outboxDrainLimit)
	}
	if f.failed > 0 {
		s.fail("%d AuditEvents failed for good (portal audit-events list --state failed)", f.failed)
	}

	// The launches that must have an AuditEvent, with their outbox row.
	type reported struct {
		id, jti, outcome, requestID, eventID string
		hasRow                               bool
	}
	rows, err := conn.Query(ctx, `SELECT l.id::text, coalesce(l.jti, ''), a.launch_id IS NOT NULL, coalesce(a.outcome, ''),
		coalesce(a.request_id, ''), coalesce(a.event_id::text, '')
		FROM launches l LEFT JOIN audit_events a ON a.launch_id = l.id
		WHERE l.source = 'domain' AND (l.outcome = 'refused' OR l.jti IS NOT NULL)`)
	if err != nil {
		s.fail("AuditEvent check: %v", err)
		return f
	}
	var launches []reported
	for rows.Next() {
		var r reported
		if err := rows.Scan(&r.id, &r.jti, &r.hasRow, &r.outcome, &r.requestID, &r.eventID); err != nil {
			rows.Close()
			s.fail("AuditEvent check: %v", err)
			return f
		}
		launches = append(launches, r)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		s.fail("AuditEvent check: %v", err)
		return f
	}
	f.launches = len(launches)
	var extra int
	if err := conn.QueryRow(ctx, `SELECT count(*) FROM audit_events a JOIN launches l ON l.id = a.launch_id
		WHERE NOT (l.source = 'domain' AND (l.outcome = 'refused' OR l.jti IS NOT NULL))`).Scan(&extra); err != nil {
		s.fail("AuditEvent check: %v", err)
		return f
	}
	if extra > 0 {
		s.fail("%d outbox rows belong to launches that started nothing and refused nothing", extra)
	}

	events, err := s.domain.auditEvents(ctx, token)
	if err != nil {
		s.fail("read the AuditEvents of the domain: %v", err)
		return f
	}
	f.inDomain = len(events)
	byID := map[string]bool{}
	byTrace, byRequest := map[string][]string{}, map[string][]string{}
	for _, e := range events {
		byID[e.ID] = true
		if e.TraceID != "" {
			byTrace[e.TraceID] = append(byTrace[e.TraceID], e.ID)
		}
		if e.RequestID != "" {
			byRequest[e.RequestID] = append(byRequest[e.RequestID], e.ID)
		}
	}
	accounted := map[string]bool{}
	refused := map[string]bool{}
	for _, l := range launches {
		if !l.hasRow {
			f.lost++
			s.fail("domain launch %s has no AuditEvent in the outbox", l.id)
			continue
		}
		if l.jti == "" {
			refused[l.id] = true
		}
		want, err := auditevent.EventID(l.id, auditevent.Outcome(l.outcome), l.requestID)
		if err != nil {
			s.fail("AuditEvent of launch %s: %v", l.id, err)
			continue
		}
		if l.eventID != "" && l.eventID != want {
			s.fail("the outbox row of launch %s names event %s, but its id is %s", l.id, l.eventID, want)
		}
		own := map[string]bool{}
		if byID[want] {
			own[want] = true
		} else {
			f.lost++
			s.fail("domain launch %s (outcome %s) has no AuditEvent %s in the domain", l.id, l.outcome, want)
		}
		for _, key := range []struct {
			index map[string][]string
			value string
		}{{byTrace, l.jti}, {byRequest, l.requestID}} {
			if key.value == "" {
				continue
			}
			for _, id := range key.index[key.value] {
				own[id] = true
			}
		}
		if len(own) > 1 {
			f.duplicates++
			s.fail("domain launch %s has %d AuditEvents in the domain", l.id, len(own))
		}
		for id := range own {
			accounted[id] = true
		}
	}
	for _, e := range events {
		if !accounted[e.ID] {
			f.unknown++
			s.fail("AuditEvent %s in the domain belongs to no domain launch of the audit trail (trace id %q, request id %q)", e.ID, e.TraceID, e.RequestID)
		}
	}
	s.mu.Lock()
	seen := append([]string(nil), s.refusedLaunches...)
	s.mu.Unlock()
	f.refusalsSeen = len(seen)
	for _, id := range seen {
		if refused[id] {
			f.refusalsRecorded++
		} else {
			s.fail("the refusal of launch %s, named in its answer, has no record with an AuditEvent", id)
		}
	}
	return f
}

// drainOutbox waits until the outbox has no pending event, at most
// outboxDrainLimit. It stops waiting sooner when every pending event is
// held by a delivery lease (due more than a retry backoff away) and is in
// the domain already: it was delivered, but the worker could not record
// that (the database was away) and sends it again, under the same id, when
// the lease ends. It returns how many are held so, and how many events
// were held by a lease when it began: taken by a worker whose delivery, or
// whose take's answer, the database outage cut off, each due again only
// when its lease ends.
func (s *soak) drainOutbox(ctx context.Context, conn *pgx.Conn, token string) (held, leased int, err error) {
	deadline := time.Now().Add(outboxDrainLimit)
	for first := true; ; first = false {
		rows, err := conn.Query(ctx, `SELECT launch_id::text, outcome, coalesce(request_id, ''), next_attempt_at > now() + interval '5 seconds'
			FROM audit_events WHERE state = 'pending'`)
		if err != nil {
			return 0, 0, err
		}
		type pending struct {
			launchID, outcome, requestID string
			leased                       bool
		}
		var all []pending
		for rows.Next() {
			var p pending
			if err := rows.Scan(&p.launchID, &p.outcome, &p.requestID, &p.leased); err != nil {
				rows.Close()
				return 0, 0, err
			}
			all = append(all, p)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return 0, 0, err
		}
		held = 0
		for _, p := range all {
			if !p.leased {
				continue
			}
			if first {
				leased++
			}
			id, err := auditevent.EventID(p.launchID, auditevent.Outcome(p.outcome), p.requestID)
			if err != nil {
				return 0, 0, err
			}
			found, err := s.domain.hasAuditEvent(ctx, token, id)
			if err != nil {
				return 0, 0, err
			}
			if found {
				held++
			}
		}
		if held == len(all) || time.Now().After(deadline) {
			return held, leased, nil
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// printAuditEvents prints the figures of checkAuditEvents.
func printAuditEvents(f auditFigures) {
	fmt.Printf("soak: AuditEvents: %d created (rows in audit_events), %d delivered (%d after more than one attempt), %d failed, %d pending (%d of them in the domain already, their delivery not recorded during the database outage: sent again when their lease ends)\n",
		f.created, f.delivered, f.retried, f.failed, f.pending, f.held)
	fmt.Printf("soak: outbox: the wait for it to drain ended %s after the load stopped; %d events were then held by a delivery lease the database outage had cut off (due again when it ends: twice PORTAL_DOMAIN_TIMEOUT and 15 s after it was taken)\n",
		f.drained.Round(100*time.Millisecond), f.leased)
	fmt.Printf("soak: AuditEvents in the domain: %d for %d domain launches that started a module or were refused: %d lost, %d duplicates, %d belonging to no launch; %d of the %d refusals the clients were told of recorded with theirs\n",
		f.inDomain, f.launches, f.lost, f.duplicates, f.unknown, f.refusalsRecorded, f.refusalsSeen)
}
