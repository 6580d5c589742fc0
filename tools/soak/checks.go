package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// The tolerances of the checks.
const (
	// revocationSlack is how long after the revoke command returns the
	// revocation must have reached every instance: a notification, or at
	// worst one keyring poll, plus scheduling.
	revocationSlack = refreshInterval + time.Second
	// recoveryGrace is how long after the database is back requests may
	// still meet a dead pooled connection.
	recoveryGrace = 3 * time.Second
	// fhirGrace is how long after the domain is back a launch may still
	// answer 503 domain-unavailable: one that hung in the black hole ends
	// at PORTAL_DOMAIN_TIMEOUT.
	fhirGrace = domainTimeout + time.Second
	// outboxDrainLimit bounds the wait, once the load has stopped, for the
	// outbox to have no pending AuditEvent. It must outlast the delivery
	// lease (twice PORTAL_DOMAIN_TIMEOUT and 15 s, 19 s here): an event
	// whose take or delivery could not be recorded during the database
	// outage is due again only when its lease ends.
	outboxDrainLimit = 60 * time.Second
)

// fail records a failure; the first 50 are kept and printed at the end,
// the others counted.
func (s *soak) fail(format string, args ...any) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.failures) < 50 {
		s.failures = append(s.failures, fmt.Sprintf(format, args...))
	} else {
		s.moreFailures++
	}
}

// checkRace judges the answers to one link followed from two instances at
// once: at most one may be 200; the other 410, 503 or a transport error.
func (s *soak) checkRace(statuses []int) {
	ok := 0
	for _, st := range statuses {
		switch st {
		case http.StatusOK:
			ok++
		case http.StatusGone, http.StatusServiceUnavailable, 0:
		default:
			s.fail("a raced link answered %d", st)
		}
	}
	if ok > 1 {
		s.fail("one link was redeemed twice (statuses %v)", statuses)
	}
}

// markRedeemed records that the link of ticket answered 200 on the named
// instance; a second 200 for the same link is a failure.
func (s *soak) markRedeemed(ticket, name string) {
	s.mu.Lock()
	twice := s.redeemed[ticket]
	s.redeemed[ticket] = true
	s.mu.Unlock()
	if twice {
		s.fail("a link was redeemed a second time on %s", name)
	}
}

// refusal accounts for a refused API request: 503 problem+json is the
// expected answer while the database is away, and only then.
func (s *soak) refusal(what, name string, status int, body []byte, err error) {
	if err != nil {
		s.otherErrors.Add(1)
		return
	}
	if status == http.StatusServiceUnavailable && strings.Contains(string(body), "urn:portal:problem:") {
		s.unavailable(name, what)
		return
	}
	s.fail("%s on %s: status %d %s", what, name, status, body)
}

// unavailable accounts for a 503: expected during the outage (and a little
// after, while dead pooled connections are found), a failure otherwise.
func (s *soak) unavailable(name, what string) {
	if !s.inOutage(time.Now()) {
		s.fail("%s on %s answered 503 outside the database outage", what, name)
		return
	}
	s.outage503.Add(1)
}

// inOutage reports whether t falls in the outage, its recovery included.
func (s *soak) inOutage(t time.Time) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.outageFrom.IsZero() || t.Before(s.outageFrom) {
		return false
	}
	return s.outageTo.IsZero() || t.Before(s.outageTo.Add(recoveryGrace))
}

// domainRefusal accounts for a domain launch that was not answered as it
// should have been: 503 domain-unavailable is the expected answer while
// the domain is away (nothing is written: the answer names no launch), and
// only then; any other 503 is the database's (unavailable).
func (s *soak) domainRefusal(what, name string, status int, body []byte, err error) {
	var problem struct {
		Type     string `json:"type"`
		LaunchID string `json:"launch_id"`
	}
	_ = json.Unmarshal(body, &problem)
	if err == nil && status == http.StatusServiceUnavailable && problem.Type == "urn:portal:problem:domain-unavailable" {
		switch {
		case !s.inFHIROutage(time.Now()):
			s.fail("%s on %s answered 503 domain-unavailable outside the FHIR outage: %s", what, name, body)
		case problem.LaunchID != "":
			s.fail("%s on %s answered 503 domain-unavailable and names launch %s: nothing should be written", what, name, problem.LaunchID)
		default:
			s.fhirOutage503.Add(1)
		}
		time.Sleep(20 * time.Millisecond) // as a client that honours Retry-After would, a little
		return
	}
	s.refusal(what, name, status, body, err)
}

// inFHIROutage reports whether t falls in the FHIR outage, its grace
// included.
func (s *soak) inFHIROutage(t time.Time) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.fhirFrom.IsZero() || t.Before(s.fhirFrom) {
		return false
	}
	return s.fhirTo.IsZero() || t.Before(s.fhirTo.Add(fhirGrace))
}

// domainCreated counts a domain launch answered as asked (a token, a link,
// a refusal), and whether it came once the FHIR outage was over; and, as
// countAfterOutage, once the database outage was.
func (s *soak) domainCreated() {
	s.mu.Lock()
	after := !s.fhirTo.IsZero() && time.Now().After(s.fhirTo.Add(fhirGrace))
	s.mu.Unlock()
	if after {
		s.domainAfterFHIROutage.Add(1)
	}
	s.countAfterOutage()
}

// countAfterOutage counts launches created once the outage is over.
func (s *soak) countAfterOutage() {
	s.mu.Lock()
	after := !s.outageTo.IsZero() && time.Now().After(s.outageTo.Add(recoveryGrace))
	s.mu.Unlock()
	if after {
		s.createdAfterOutage.Add(1)
	}
}

// readVerdicts reads the verifier's answers and judges each. A token
// signed with the revoked key is a failure if its redemption began after
// the revocation reached every instance; it may verify only while the
// verifier's cached JWKS (fetched before the revocation) can still hold the
// key, and may be refused only because its kid is no longer published.
func (s *soak) readVerdicts() {
	defer close(s.judged)
	for v := range s.verifier.verdicts {
		s.mu.Lock()
		tok := s.tokens[v.ID]
		revokedKid, revokedAt := s.revokedKid, s.revokedAt
		s.mu.Unlock()
		signedWithRevoked := revokedKid != "" && tok.kid == revokedKid
		effective := revokedAt.Add(revocationSlack)
		if signedWithRevoked && !revokedAt.IsZero() && tok.requested.After(effective) {
			s.fail("token %s was signed by %s with the revoked key %s %s after the revocation took effect",
				tok.jti, tok.instance, tok.kid, tok.requested.Sub(revokedAt).Round(time.Millisecond))
		}
		switch {
		case v.OK && signedWithRevoked && !revokedAt.IsZero() && tok.submitted.After(effective.Add(jwksMaxAge+500*time.Millisecond)):
			s.fail("token %s with the revoked key %s verified %s after the revocation: the key was still published",
				tok.jti, tok.kid, tok.submitted.Sub(revokedAt).Round(time.Millisecond))
		case v.OK:
			s.verified.Add(1)
			if tok.kind == kindKT {
				s.domainVerified.Add(1)
			}
		case signedWithRevoked && strings.Contains(v.Error, "not in the cached JWKS"):
			s.refusedExpected.Add(1) // signed just before the revocation, checked after it
		default:
			s.fail("token %s (kid %s, from %s) should have verified but did not: %s", tok.jti, tok.kid, tok.instance, v.Error)
		}
	}
}

// checkJWKS judges one JWKS answer of the named instance, asked for at
// asked (status 0 and err set for a transport error): each must answer
// 200, database or not, with a non-empty set, and none may still publish
// the revoked key once the revocation has reached it.
func (s *soak) checkJWKS(name string, asked time.Time, status int, body []byte, err error) {
	if err != nil {
		s.jwksFailures.Add(1)
		s.fail("JWKS of %s: %v", name, err)
		return
	}
	if status != http.StatusOK {
		s.jwksFailures.Add(1)
		s.fail("JWKS of %s answered %d", name, status)
		return
	}
	var set struct {
		Keys []struct {
			Kid string `json:"kid"`
		} `json:"keys"`
	}
	if err := json.Unmarshal(body, &set); err != nil || len(set.Keys) == 0 {
		s.fail("JWKS of %s is empty or not JSON", name)
		return
	}
	s.mu.Lock()
	revokedKid, revokedAt := s.revokedKid, s.revokedAt
	s.mu.Unlock()
	if revokedAt.IsZero() || !asked.After(revokedAt.Add(revocationSlack)) {
		return
	}
	for _, k := range set.Keys {
		if k.Kid == revokedKid {
			s.fail("JWKS of %s still publishes the revoked key %s %s after the revocation", name, revokedKid, asked.Sub(revokedAt).Round(time.Millisecond))
		}
	}
}

// checkDatabase compares what the clients saw with the audit trail.
func (s *soak) checkDatabase(ctx context.Context, dbURL string) {
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		s.fail("connect for the audit check: %v", err)
		return
	}
	defer conn.Close(ctx)
	var rows, redeemed, distinct int
	if err := conn.QueryRow(ctx, `SELECT count(*), count(redeemed_at), count(DISTINCT jti) FROM launches`).Scan(&rows, &redeemed, &distinct); err != nil {
		s.fail("audit check: %v", err)
		return
	}
	if redeemed != distinct {
		s.fail("%d redeemed launches but %d distinct jtis: a ticket was redeemed twice", redeemed, distinct)
	}
	s.mu.Lock()
	jtis := make([]string, 0, len(s.tokens))
	for _, t := range s.tokens {
		jtis = append(jtis, t.jti)
	}
	s.mu.Unlock()
	var audited int
	if err := conn.QueryRow(ctx, `SELECT count(*) FROM launches WHERE jti = ANY($1) AND redeemed_at IS NOT NULL`, jtis).Scan(&audited); err != nil {
		s.fail("audit check: %v", err)
		return
	}
	if audited != len(jtis) {
		s.fail("%d tokens reached the clients but only %d have their audit row", len(jtis), audited)
	}
	fmt.Printf("soak: audit trail: %d launch rows, %d redeemed, every one of the %d tokens received has its row: %v\n", rows, redeemed, len(jtis), audited == len(jtis))
}

// checkTotals applies the rules on the run as a whole: tokens were issued
// and verified, the outage was met by some request, and the service
// recovered from it.
func (s *soak) checkTotals() {
	s.mu.Lock()
	from := s.outageFrom
	s.mu.Unlock()
	if s.issued.Load() == 0 || s.verified.Load() == 0 {
		s.fail("no token was issued and verified")
	}
	if !from.IsZero() && s.outage503.Load() == 0 {
		s.fail("no request met the outage: it proved nothing")
	}
	if s.createdAfterOutage.Load() == 0 {
		s.fail("no launch was created after the outage: the service did not recover")
	}
	if s.retriedAfterOutage.Load() > 0 && s.afterOutageOK.Load()+s.lostInOutage.Load() == 0 {
		s.fail("no link that met the outage could be followed after it")
	}
	if s.domainClients == 0 {
		return
	}
	if s.domainIssued.Load() == 0 || s.domainVerified.Load() == 0 || s.domainForbidden.Load() == 0 || s.domainNoModule.Load() == 0 {
		s.fail("the domain launches did not give verified tokens and both kinds of refusal")
	}
	s.mu.Lock()
	fhirFrom := s.fhirFrom
	s.mu.Unlock()
	if !fhirFrom.IsZero() && s.fhirOutage503.Load() == 0 {
		s.fail("no domain launch met the FHIR outage: it proved nothing")
	}
	if !fhirFrom.IsZero() && s.domainAfterFHIROutage.Load() == 0 {
		s.fail("no domain launch was answered after the FHIR outage: the service did not recover")
	}
}
