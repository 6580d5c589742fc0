package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/ehealth-nl/portal/tools/internal/instance"
)

// printSetup prints the instances, the timings and the load of the run.
func (s *soak) printSetup(clients, domainClients int, duration time.Duration) {
	fmt.Printf("soak: 3 instances (%s), ES256, rotation every %s, publish lead %s, retire grace %s, JWKS max-age %s, token lifetime %s; %d clients for %s\n",
		strings.Join(instanceURLs(s.instances), ", "), scaledTimings["PORTAL_ROTATION_PERIOD"], scaledTimings["PORTAL_PUBLISH_LEAD"],
		scaledTimings["PORTAL_RETIRE_GRACE"], scaledTimings["PORTAL_JWKS_MAX_AGE"], scaledTimings["PORTAL_LAUNCH_TOKEN_TTL"], clients, duration)
	fmt.Printf("soak: Koppeltaal test domain at %s (through a fault proxy); issuer %s (ES384, %s) launches its Tasks from %d more clients; domain timeout %s, AuditEvent retries at most %s apart\n",
		s.domain.box.FHIRBase, domainIssuer, domainDevice, domainClients, domainTimings["PORTAL_DOMAIN_TIMEOUT"], domainTimings["PORTAL_AUDIT_RETRY_MAX"])
}

// instanceURLs lists the instances' base URLs.
func instanceURLs(ps []*instance.Process) []string {
	var out []string
	for _, p := range ps {
		out = append(out, p.URL)
	}
	return out
}

// printSummary prints the counts of the run and what the instances logged
// during the outage.
func (s *soak) printSummary(work string) {
	fmt.Printf("soak: tokens issued %d, verified %d, refused as expected (signed with the revoked key before it took effect) %d\n",
		s.issued.Load(), s.verified.Load(), s.refusedExpected.Load())
	fmt.Printf("soak: database outage: %d requests answered 503 (none outside the outage), %d links retried after it (%d then succeeded, %d found used: committed before the cut, no token sent), %d launches created after it, %d transport errors\n",
		s.outage503.Load(), s.retriedAfterOutage.Load(), s.afterOutageOK.Load(), s.lostInOutage.Load(), s.createdAfterOutage.Load(), s.otherErrors.Load())
	s.mu.Lock()
	redemptions := len(s.redeemed)
	s.mu.Unlock()
	fmt.Printf("soak: %d links followed from two instances at once; %d links redeemed in all, each once\n", s.racedLinks.Load(), redemptions)
	fmt.Printf("soak: JWKS polled %d times during the run, %d answers not 200\n", s.jwksRequests.Load(), s.jwksFailures.Load())
	fmt.Printf("soak: domain launches: %d tokens received (handed out or from redeemed links), %d verified; %d refused as expected (%d 403 launch-refused, %d 422 task-not-launchable)\n",
		s.domainIssued.Load(), s.domainVerified.Load(), s.domainForbidden.Load()+s.domainNoModule.Load(), s.domainForbidden.Load(), s.domainNoModule.Load())
	fmt.Printf("soak: FHIR outage: %d domain launches answered 503 domain-unavailable (expected: nothing written; none outside the outage), %d of %d links made before it followed during it, %d domain launches answered after it\n",
		s.fhirOutage503.Load(), s.stashFollowed.Load(), stashedLinks, s.domainAfterFHIROutage.Load())
	s.mu.Lock()
	from, to := s.outageFrom, s.outageTo
	fhirFrom, fhirTo := s.fhirFrom, s.fhirTo
	s.mu.Unlock()
	fmt.Println("soak: what the instances logged during the outage (warnings and errors, first lines):")
	for _, p := range s.instances {
		for _, line := range logLines(filepath.Join(work, p.Name+".log"), from.Add(-100*time.Millisecond), to.Add(2*time.Second), 4) {
			fmt.Printf("  %s: %s\n", p.Name, line)
		}
	}
	fmt.Println("soak: what the instances logged during the FHIR outage (warnings and errors, first lines):")
	for _, p := range s.instances {
		for _, line := range logLines(filepath.Join(work, p.Name+".log"), fhirFrom.Add(-100*time.Millisecond), fhirTo.Add(fhirGrace), 2) {
			fmt.Printf("  %s: %s\n", p.Name, line)
		}
	}
}

// outcome prints the failures, sorted, or PASS; it returns an error when
// there were failures.
func (s *soak) outcome() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.failures) > 0 {
		sort.Strings(s.failures)
		for _, f := range s.failures {
			fmt.Println("soak: failure:", f)
		}
		if s.moreFailures > 0 {
			fmt.Printf("soak: and %d failures more\n", s.moreFailures)
		}
		return fmt.Errorf("%d failures", len(s.failures)+s.moreFailures)
	}
	fmt.Println("soak: PASS")
	return nil
}

// logLines returns up to n warning or error lines logged between from and to.
func logLines(path string, from, to time.Time, n int) []string {
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() && len(out) < n {
		var rec struct {
			Time  time.Time `json:"time"`
			Level string    `json:"level"`
		}
		if json.Unmarshal(sc.Bytes(), &rec) != nil || rec.Time.Before(from) || rec.Time.After(to) || (rec.Level != "WARN" && rec.Level != "ERROR") {
			continue
		}
		line := sc.Text()
		if len(line) > 300 {
			line = line[:300] + "…"
		}
		out = append(out, line)
	}
	return out
}
