// Command soak runs three portal instances on one database with rotation
// timings scaled down to seconds (the timing rules of docs/ARCHITECTURE.md,
// "Key lifecycle" still hold), sends launches through all three, and has
// an independent verifier — a separate process that caches each JWKS
// exactly as long as Cache-Control allows and never fetches it early —
// check every token. Beside the default issuer's plain HTI launches, a
// second issuer that joined a Koppeltaal test domain (internal/testdomain,
// behind a fault proxy) launches the domain's Tasks, and reports each start
// and refusal with an AuditEvent (TOP-KT-011) that every instance delivers
// from the outbox. Early on it forces a rotation through one instance and
// revokes the active key; midway it cuts the instances off from the domain
// (then black-holes it), and later from PostgreSQL (their connections
// killed, then no connection possible for a few seconds). It prints what
// happened and exits 1 on any failure:
// a token that should have verified but did not; a token signed with the
// revoked key after the revocation took effect, or still verifying once the
// verifier's cache could no longer hold it; a JWKS answer that is not 200
// or still lists the revoked key; a 503 outside the outage or anything else
// but 503 during it; a 503 domain-unavailable outside the FHIR outage, or a
// link made before it that could not be followed during it; no launch
// created, or no interrupted link followed, after an outage; a link
// redeemed twice (every tenth is followed from two instances at once); a
// token without its audit row; or, once the load has stopped and the
// outbox has drained (at most a minute), a domain launch without its
// AuditEvent in the domain (lost), one with two (a duplicate), an event in
// the domain no launch accounts for, an event that failed, or one still
// pending and not in the domain.
//
// The files: main.go (flags and the run from start to verdict),
// scenario.go (the instances and the timeline of a forced rotation, a
// revocation, a FHIR outage and a database outage), domain.go (the test
// domain, its content and the soak's own client of it), load.go (the
// launch clients and the JWKS poller), checks.go (what is verified and the
// pass/fail rules), auditevents.go (the AuditEvents against the audit
// trail), report.go (what is printed) and verifier.go (the independent
// verifier).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ehealth-nl/portal/tools/internal/instance"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "verifier" {
		if err := runVerifier(os.Args[2:]); err != nil {
			fmt.Fprintln(os.Stderr, "verifier:", err)
			os.Exit(1)
		}
		return
	}
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "soak: FAIL:", err)
		os.Exit(1)
	}
}

// soak is the state of one run: the instances and the clients' keys, what
// the load saw (tokens, redeemed links, counters), the moments of the
// revocation and the outage the checks judge against, and the failures.
type soak struct {
	bin       string
	instances []*instance.Process
	client    *http.Client
	launchKey string
	adminKey  string
	verifier  *verifierProcess
	domain    *domain
	// domainClients is how many clients launch the domain's Tasks; with
	// none, the domain launches are not required.
	domainClients int

	mu              sync.Mutex
	tokens          []issuedToken
	failures        []string
	moreFailures    int // beyond the 50 kept
	jtis            map[string]bool
	redeemed        map[string]bool // links that answered 200
	refusedLaunches []string        // the launch ids of the domain's refusals
	revokedKid      string
	revokedAt       time.Time // when the revoke command returned
	outageFrom      time.Time
	outageTo        time.Time
	fhirFrom        time.Time
	fhirTo          time.Time

	issued, verified, refusedExpected, outage503, otherErrors atomic.Int64
	retriedAfterOutage, lostInOutage, afterOutageOK           atomic.Int64
	createdAfterOutage, racedLinks                            atomic.Int64
	jwksRequests, jwksFailures                                atomic.Int64
	domainIssued, domainVerified, domainForbidden             atomic.Int64
	domainNoModule, fhirOutage503, stashFollowed              atomic.Int64
	domainAfterFHIROutage                                     atomic.Int64
	judged                                                    chan struct{} // closed when every verdict is judged
}

// issuedToken is a token a client received, as the checks need it: its
// jti and kid, its kind (kindHTI, kindKT), when it was asked for and handed
// to the verifier, and which instance signed it.
type issuedToken struct {
	jti       string
	kid       string
	kind      string
	requested time.Time // when the redeem (or token) request started
	submitted time.Time // when it was handed to the verifier
	instance  string
}

// run sets up the database, the instances and the verifier, runs the load
// and the timeline for the given duration, and judges the result.
func run() error {
	duration := flag.Duration("duration", 60*time.Second, "how long launches run")
	clients := flag.Int("clients", 6, "concurrent launch clients")
	domainClients := flag.Int("domain-clients", 2, "concurrent clients launching the test domain's Tasks")
	flag.Parse()
	admin := os.Getenv("PORTAL_SOAK_DATABASE_URL")
	if admin == "" {
		return errors.New("set PORTAL_SOAK_DATABASE_URL (make soak finds or starts PostgreSQL and sets it)")
	}
	ctx := context.Background()
	work, err := os.MkdirTemp("", "portal-soak-")
	if err != nil {
		return err
	}
	if os.Getenv("PORTAL_SOAK_KEEP") == "" {
		defer os.RemoveAll(work)
	} else {
		fmt.Println("soak: keeping the instances' logs in", work)
	}
	repo, _ := os.Getwd()
	s := &soak{domainClients: *domainClients, client: &http.Client{Timeout: 15 * time.Second, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}, jtis: map[string]bool{}, redeemed: map[string]bool{}}
	if s.bin, err = instance.Build(ctx, repo, work); err != nil {
		return err
	}
	db, err := instance.CreateDatabase(ctx, admin, "portal_soak")
	if err != nil {
		return err
	}
	defer func() { _ = db.Drop(context.Background()) }()
	proxy, viaProxy, err := proxyTo(db.URL)
	if err != nil {
		return err
	}
	defer proxy.Close()

	// The domain starts first (Node takes a moment), told where the
	// instances will publish the domain issuer's JWKS.
	addrs, err := instanceAddrs()
	if err != nil {
		return err
	}
	if s.domain, err = startDomain(ctx, "http://"+addrs[0]+"/issuers/"+domainIssuer+"/jwks.json", filepath.Join(work, "testdomain.log")); err != nil {
		return err
	}
	defer s.domain.close()
	if err := s.domain.seed(ctx); err != nil {
		return err
	}
	if err := s.startInstances(ctx, instanceEnv(viaProxy), addrs, work); err != nil {
		return err
	}
	defer s.stopInstances()
	cli := s.instances[0].Env
	cli["DATABASE_URL"] = db.URL // commands go straight to the database
	if err := s.provision(ctx, cli); err != nil {
		return err
	}
	if s.verifier, err = startVerifier(s.jwksURLs("/.well-known/jwks.json"), s.jwksURLs("/issuers/"+domainIssuer+"/jwks.json")); err != nil {
		return err
	}
	defer s.verifier.stop()
	s.judged = make(chan struct{})
	go s.readVerdicts()

	s.printSetup(*clients, *domainClients, *duration)

	loadCtx, stopLoad := context.WithTimeout(ctx, *duration)
	defer stopLoad()
	load := s.startLoad(loadCtx, *clients, *domainClients)
	s.timeline(ctx, *duration, cli, admin, proxy, db.Name)
	load.Wait()
	loadStopped := time.Now()
	s.verifier.closeInput()
	s.verifier.wait()
	<-s.judged

	s.checkDatabase(ctx, db.URL)
	audit := s.checkAuditEvents(ctx, db.URL, loadStopped)
	s.printSummary(work)
	printAuditEvents(audit)
	s.checkTotals()
	return s.outcome()
}
