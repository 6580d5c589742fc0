// Command soak runs three portal instances on one database with rotation
// timings scaled down to seconds (the rules of DESIGN 2.3 still hold), sends
// launches through all three, and has an independent verifier — a separate
// process that caches each JWKS exactly as long as Cache-Control allows and
// never fetches it early — check every token. Midway it forces a rotation
// through one instance, revokes the active key, and cuts the instances off
// from PostgreSQL (their connections killed, then no connection possible
// for a few seconds). It prints what happened and exits 1 on any failure:
// a token that should have verified but did not; a token signed with the
// revoked key after the revocation took effect, or still verifying once the
// verifier's cache could no longer hold it; a JWKS answer that is not 200
// or still lists the revoked key; a 503 outside the outage or anything else
// but 503 during it; no launch created, or no interrupted link followed,
// after it; a link redeemed twice (every tenth is followed from two
// instances at once); or a token without its audit row.
package main

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/ehealth-nl/portal/internal/faults"
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

// The scaled-down timings: publish lead ≥ max-age + refresh (3s ≥ 1s + 1s),
// retire grace ≥ token lifetime + max-age + refresh (15s ≥ 10s + 1s + 1s).
var scaledTimings = map[string]string{
	"PORTAL_JWKS_MAX_AGE":            "1s",
	"PORTAL_KEYRING_REFRESH":         "1s",
	"PORTAL_KEYRING_MAX_STALENESS":   "2s",
	"PORTAL_ROTATION_CHECK_INTERVAL": "250ms",
	"PORTAL_LAUNCH_TOKEN_TTL":        "10s",
	"PORTAL_PUBLISH_LEAD":            "3s",
	"PORTAL_RETIRE_GRACE":            "15s",
	"PORTAL_ROTATION_PERIOD":         "8s",
	"PORTAL_TICKET_TTL":              "60s",
}

const (
	refreshInterval = time.Second
	jwksMaxAge      = time.Second
	clientID        = "portal-soak"
	audience        = "Device/soak-module"
	// revocationSlack is how long after the revoke command returns the
	// revocation must have reached every instance: a notification, or at
	// worst one keyring poll, plus scheduling.
	revocationSlack = refreshInterval + time.Second
	// recoveryGrace is how long after the database is back requests may
	// still meet a dead pooled connection.
	recoveryGrace = 3 * time.Second
)

// soak is the state of one run.
type soak struct {
	bin       string
	instances []*instance.Process
	client    *http.Client
	launchKey string
	adminKey  string
	verifier  *verifierProcess

	mu         sync.Mutex
	tokens     []issuedToken
	failures   []string
	jtis       map[string]bool
	redeemed   map[string]bool // links that answered 200
	revokedKid string
	revokedAt  time.Time // when the revoke command returned
	outageFrom time.Time
	outageTo   time.Time

	issued, verified, refusedExpected, outage503, otherErrors atomic.Int64
	retriedAfterOutage, lostInOutage, afterOutageOK           atomic.Int64
	createdAfterOutage, racedLinks                            atomic.Int64
	jwksRequests, jwksFailures                                atomic.Int64
	judged                                                    chan struct{} // closed when every verdict is judged
}

type issuedToken struct {
	jti       string
	kid       string
	requested time.Time // when the redeem (or token) request started
	submitted time.Time // when it was handed to the verifier
	instance  string
}

func (s *soak) fail(format string, args ...any) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.failures) < 50 {
		s.failures = append(s.failures, fmt.Sprintf(format, args...))
	}
}

func run() error {
	duration := flag.Duration("duration", 60*time.Second, "how long launches run")
	clients := flag.Int("clients", 6, "concurrent launch clients")
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
	s := &soak{client: &http.Client{Timeout: 15 * time.Second, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}, jtis: map[string]bool{}, redeemed: map[string]bool{}}
	if s.bin, err = instance.Build(ctx, repo, work); err != nil {
		return err
	}
	db, err := instance.CreateDatabase(ctx, admin, "portal_soak")
	if err != nil {
		return err
	}
	defer func() { _ = db.Drop(context.Background()) }()
	u, _ := url.Parse(db.URL)
	target := u.Host
	if u.Port() == "" {
		target = net.JoinHostPort(u.Hostname(), "5432")
	}
	proxy, err := faults.NewProxy(target)
	if err != nil {
		return err
	}
	defer proxy.Close()
	viaProxy := *u
	viaProxy.Host = proxy.Addr()
	q := viaProxy.Query()
	q.Set("sslmode", "disable")
	viaProxy.RawQuery = q.Encode()

	env := map[string]string{
		"DATABASE_URL": viaProxy.String(), "PORTAL_CLIENT_ID": clientID, "PORTAL_FHIR_BASE_URL": "https://fhir.example.org/fhir",
		"PORTAL_KEK": instance.NewKEK(), "PORTAL_SIGNING_ALG": "ES256", "PORTAL_ISSUER_PROFILE": "hti",
	}
	for k, v := range scaledTimings {
		env[k] = v
	}
	// Three instances start at once on an empty database.
	var wg sync.WaitGroup
	s.instances = make([]*instance.Process, 3)
	startErrs := make([]error, 3)
	for i := range s.instances {
		wg.Add(1)
		go func() {
			defer wg.Done()
			name := string(rune('a' + i))
			s.instances[i], startErrs[i] = instance.Start(ctx, s.bin, "portal-"+name, env, filepath.Join(work, "portal-"+name+".log"))
		}()
	}
	wg.Wait()
	if err := errors.Join(startErrs...); err != nil {
		return err
	}
	defer func() {
		for _, p := range s.instances {
			if p != nil {
				_ = p.Stop()
			}
		}
	}()
	cli := s.instances[0].Env
	cli["DATABASE_URL"] = db.URL // commands go straight to the database
	if s.launchKey, err = instance.Command(ctx, s.bin, cli, "apikeys", "create", "--name", "soak-backend", "--scope", "launch"); err != nil {
		return err
	}
	if s.adminKey, err = instance.Command(ctx, s.bin, cli, "apikeys", "create", "--name", "soak-operator", "--scope", "admin"); err != nil {
		return err
	}
	if _, err := instance.Command(ctx, s.bin, cli, "modules", "add", "soak", "--launch-url", "https://module.example.org/launch", "--audience", audience); err != nil {
		return err
	}
	var jwksURLs []string
	for _, p := range s.instances {
		jwksURLs = append(jwksURLs, p.URL+"/.well-known/jwks.json")
	}
	if s.verifier, err = startVerifier(strings.Join(jwksURLs, ",")); err != nil {
		return err
	}
	defer s.verifier.stop()
	s.judged = make(chan struct{})
	go s.readVerdicts()

	fmt.Printf("soak: 3 instances (%s), ES256, rotation every %s, publish lead %s, retire grace %s, JWKS max-age %s, token lifetime %s; %d clients for %s\n",
		strings.Join(instanceURLs(s.instances), ", "), scaledTimings["PORTAL_ROTATION_PERIOD"], scaledTimings["PORTAL_PUBLISH_LEAD"],
		scaledTimings["PORTAL_RETIRE_GRACE"], scaledTimings["PORTAL_JWKS_MAX_AGE"], scaledTimings["PORTAL_LAUNCH_TOKEN_TTL"], *clients, *duration)

	loadCtx, stopLoad := context.WithTimeout(ctx, *duration)
	defer stopLoad()
	var load sync.WaitGroup
	for i := 0; i < *clients; i++ {
		load.Add(1)
		go func() { defer load.Done(); s.launchLoop(loadCtx, i) }()
	}
	load.Add(1)
	go func() { defer load.Done(); s.watchJWKS(loadCtx) }()

	start := time.Now()
	at := func(frac float64) { time.Sleep(time.Until(start.Add(time.Duration(float64(*duration) * frac)))) }
	at(0.25)
	s.forceRotation(ctx)
	at(0.45)
	if err := s.revokeActive(ctx, cli); err != nil {
		s.fail("revocation: %v", err)
	}
	at(0.6)
	s.databaseOutage(ctx, admin, proxy, db.Name)
	load.Wait()
	s.verifier.closeInput()
	s.verifier.wait()
	<-s.judged

	s.checkDatabase(ctx, db.URL)
	return s.report(work)
}

func instanceURLs(ps []*instance.Process) []string {
	var out []string
	for _, p := range ps {
		out = append(out, p.URL)
	}
	return out
}

var launchField = regexp.MustCompile(`name="launch" value="([^"]+)"`)

// launchLoop creates launches through one instance and redeems them
// through the next, as a load balancer would spread them. Every tenth link
// is followed from two instances at once: exactly one may get the token.
// Links whose redemption met the outage are followed again after it.
func (s *soak) launchLoop(ctx context.Context, worker int) {
	var pending []string
	for n := worker; ctx.Err() == nil; n++ {
		creator := s.instances[n%3]
		redeemer := s.instances[(n+1)%3]
		if len(pending) > 0 && !s.inOutage(time.Now()) {
			link := pending[0]
			pending = pending[1:]
			s.retriedAfterOutage.Add(1)
			if !s.redeem(link, redeemer, true) {
				pending = append(pending, link)
			}
			continue
		}
		if n%5 == 0 {
			s.directToken(creator)
			continue
		}
		status, body, err := s.post(creator.URL+"/api/v1/launches", s.launchKey, `{"module":"soak","task":"Task/soak","user":"Practitioner/dr","patient":"Patient/p"}`)
		if err != nil || status != http.StatusCreated {
			s.refusal("create launch", creator.Name, status, body, err)
			continue
		}
		s.countAfterOutage()
		var created struct {
			LaunchURL string `json:"launch_url"`
		}
		if err := json.Unmarshal(body, &created); err != nil {
			s.fail("create launch answer: %v", err)
			continue
		}
		link := strings.Replace(created.LaunchURL, creator.URL, redeemer.URL, 1)
		if n%10 == 1 {
			s.race(link, redeemer, s.instances[(n+2)%3])
			continue
		}
		if !s.redeem(link, redeemer, false) {
			pending = append(pending, link)
		}
	}
	// The load has stopped; the links left over must still work.
	for _, link := range pending {
		s.retriedAfterOutage.Add(1)
		if !s.redeem(link, s.instances[worker%3], true) {
			s.fail("a link whose redemption met the outage could not be followed after it")
		}
	}
}

// race follows one link from two instances at the same moment.
func (s *soak) race(link string, a, b *instance.Process) {
	s.racedLinks.Add(1)
	var wg sync.WaitGroup
	statuses := make([]int, 2)
	for i, p := range []*instance.Process{a, b} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			statuses[i] = s.follow(strings.Replace(link, a.URL, p.URL, 1), p)
		}()
	}
	wg.Wait()
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

// follow gets a link once and accounts for the answer; it returns the
// status (0 for a transport error).
func (s *soak) follow(link string, p *instance.Process) int {
	requested := time.Now()
	resp, err := s.client.Get(link)
	if err != nil {
		s.otherErrors.Add(1)
		return 0
	}
	page, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusOK:
		m := launchField.FindSubmatch(page)
		if m == nil {
			s.fail("launch page of %s without a token", p.Name)
			return resp.StatusCode
		}
		ticket := link[strings.LastIndex(link, "/")+1:]
		s.mu.Lock()
		twice := s.redeemed[ticket]
		s.redeemed[ticket] = true
		s.mu.Unlock()
		if twice {
			s.fail("a link was redeemed a second time on %s", p.Name)
		}
		s.submit(string(m[1]), requested, p.Name)
	case http.StatusServiceUnavailable:
		s.unavailable(p.Name, "redeem")
	}
	return resp.StatusCode
}

// redeem follows a launch link; it reports false when the link should be
// tried again (the database was away).
func (s *soak) redeem(link string, p *instance.Process, retry bool) bool {
	switch status := s.follow(link, p); {
	case status == http.StatusOK:
		if retry {
			s.afterOutageOK.Add(1)
		}
		return true
	case status == http.StatusServiceUnavailable || status == 0:
		return false
	case status == http.StatusGone && retry:
		// The redemption committed but its answer was lost with the
		// connection, and the link could not be given back: it is used and
		// no token was sent. Not twice.
		s.lostInOutage.Add(1)
		return true
	default:
		s.fail("redeem on %s: status %d", p.Name, status)
		return true
	}
}

func (s *soak) directToken(p *instance.Process) {
	requested := time.Now()
	status, body, err := s.post(p.URL+"/api/v1/launch-tokens", s.launchKey, `{"module":"soak","task":"Task/soak","user":"Patient/p"}`)
	if err != nil || status != http.StatusCreated {
		s.refusal("launch token", p.Name, status, body, err)
		return
	}
	s.countAfterOutage()
	var issued struct{ Token string }
	if err := json.Unmarshal(body, &issued); err != nil {
		s.fail("launch token answer: %v", err)
		return
	}
	s.submit(issued.Token, requested, p.Name)
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

// countAfterOutage counts launches created once the outage is over.
func (s *soak) countAfterOutage() {
	s.mu.Lock()
	after := !s.outageTo.IsZero() && time.Now().After(s.outageTo.Add(recoveryGrace))
	s.mu.Unlock()
	if after {
		s.createdAfterOutage.Add(1)
	}
}

func (s *soak) post(u, key, body string) (int, []byte, error) {
	req, _ := http.NewRequest(http.MethodPost, u, strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+key)
	resp, err := s.client.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b, nil
}

// submit records a token and hands it to the independent verifier.
func (s *soak) submit(token string, requested time.Time, instanceName string) {
	parts := strings.Split(token, ".")
	var hdr struct{ Kid string }
	var claims struct{ JTI string }
	if len(parts) == 3 {
		h, _ := base64.RawURLEncoding.DecodeString(parts[0])
		c, _ := base64.RawURLEncoding.DecodeString(parts[1])
		_ = json.Unmarshal(h, &hdr)
		_ = json.Unmarshal(c, &claims)
	}
	s.mu.Lock()
	if s.jtis[claims.JTI] {
		s.mu.Unlock()
		s.fail("jti %s issued twice", claims.JTI)
		return
	}
	s.jtis[claims.JTI] = true
	id := len(s.tokens)
	s.tokens = append(s.tokens, issuedToken{jti: claims.JTI, kid: hdr.Kid, requested: requested, submitted: time.Now(), instance: instanceName})
	s.mu.Unlock()
	s.issued.Add(1)
	s.verifier.send(id, token)
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
		case signedWithRevoked && strings.Contains(v.Error, "not in the cached JWKS"):
			s.refusedExpected.Add(1) // signed just before the revocation, checked after it
		default:
			s.fail("token %s (kid %s, from %s) should have verified but did not: %s", tok.jti, tok.kid, tok.instance, v.Error)
		}
	}
}

// watchJWKS asks every instance for its JWKS every 20 ms: each must answer
// 200, database or not, and none may still publish the revoked key once the
// revocation has reached it.
func (s *soak) watchJWKS(ctx context.Context) {
	c := &http.Client{Timeout: 2 * time.Second}
	for ctx.Err() == nil {
		for _, p := range s.instances {
			s.jwksRequests.Add(1)
			asked := time.Now()
			resp, err := c.Get(p.URL + "/.well-known/jwks.json")
			if err != nil {
				s.jwksFailures.Add(1)
				s.fail("JWKS of %s: %v", p.Name, err)
				continue
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				s.jwksFailures.Add(1)
				s.fail("JWKS of %s answered %d", p.Name, resp.StatusCode)
				continue
			}
			var set struct {
				Keys []struct {
					Kid string `json:"kid"`
				} `json:"keys"`
			}
			if err := json.Unmarshal(body, &set); err != nil || len(set.Keys) == 0 {
				s.fail("JWKS of %s is empty or not JSON", p.Name)
				continue
			}
			s.mu.Lock()
			revokedKid, revokedAt := s.revokedKid, s.revokedAt
			s.mu.Unlock()
			if revokedAt.IsZero() || !asked.After(revokedAt.Add(revocationSlack)) {
				continue
			}
			for _, k := range set.Keys {
				if k.Kid == revokedKid {
					s.fail("JWKS of %s still publishes the revoked key %s %s after the revocation", p.Name, revokedKid, asked.Sub(revokedAt).Round(time.Millisecond))
				}
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// forceRotation rotates through the second instance's admin API, as an
// operator would, waiting for the next key's publish lead if needed.
func (s *soak) forceRotation(ctx context.Context) {
	p := s.instances[1]
	for attempt := 0; attempt < 20; attempt++ {
		status, body, err := s.post(p.URL+"/api/v1/keys/rotate", s.adminKey, `{}`)
		if err == nil && status == http.StatusOK {
			fmt.Printf("soak: %s forced rotation through %s: %s\n", time.Now().Format("15:04:05.000"), p.Name, body)
			return
		}
		if err == nil && status == http.StatusConflict {
			time.Sleep(500 * time.Millisecond) // next key younger than the lead
			continue
		}
		s.fail("forced rotation through %s: %d %s %v", p.Name, status, body, err)
		return
	}
	s.fail("forced rotation through %s refused 20 times", p.Name)
}

// revokeActive revokes the active key with the command line, at a moment
// when the next key (which takes over at once) has been published for the
// lead, so verifiers already know it.
func (s *soak) revokeActive(ctx context.Context, env map[string]string) error {
	for attempt := 0; attempt < 100; attempt++ {
		out, err := instance.Command(ctx, s.bin, env, "keys", "list", "--json")
		if err != nil {
			return err
		}
		var list []struct {
			Kid       string    `json:"kid"`
			State     string    `json:"state"`
			CreatedAt time.Time `json:"created_at"`
		}
		if err := json.Unmarshal([]byte(out), &list); err != nil {
			return err
		}
		var active string
		var nextAge time.Duration
		for _, k := range list {
			switch k.State {
			case "active":
				active = k.Kid
			case "next":
				nextAge = time.Since(k.CreatedAt)
			}
		}
		if active != "" && nextAge >= 4*time.Second && nextAge < 6*time.Second {
			s.mu.Lock()
			s.revokedKid = active
			s.mu.Unlock()
			if _, err := instance.Command(ctx, s.bin, env, "keys", "revoke", active); err != nil {
				return err
			}
			s.mu.Lock()
			s.revokedAt = time.Now()
			s.mu.Unlock()
			fmt.Printf("soak: %s revoked the active key %s\n", s.revokedAt.Format("15:04:05.000"), active)
			return nil
		}
		time.Sleep(200 * time.Millisecond)
	}
	return errors.New("no moment with a next key old enough to take over")
}

// databaseOutage kills every connection of the instances, then refuses
// connections for four seconds.
func (s *soak) databaseOutage(ctx context.Context, admin string, proxy *faults.Proxy, dbName string) {
	conn, err := pgx.Connect(ctx, admin)
	if err != nil {
		s.fail("connect to kill connections: %v", err)
		return
	}
	defer conn.Close(ctx)
	s.mu.Lock()
	s.outageFrom = time.Now()
	s.mu.Unlock()
	var killed int
	_ = conn.QueryRow(ctx, `SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()`, dbName).Scan(&killed)
	proxy.Cut()
	fmt.Printf("soak: %s database outage: %d connections killed, no new connection for 4s\n", time.Now().Format("15:04:05.000"), killed)
	time.Sleep(4 * time.Second)
	if err := proxy.Restore(); err != nil {
		s.fail("restore the database: %v", err)
	}
	s.mu.Lock()
	s.outageTo = time.Now()
	s.mu.Unlock()
	fmt.Printf("soak: %s database back\n", time.Now().Format("15:04:05.000"))
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

func (s *soak) report(work string) error {
	fmt.Printf("soak: tokens issued %d, verified %d, refused as expected (signed with the revoked key before it took effect) %d\n",
		s.issued.Load(), s.verified.Load(), s.refusedExpected.Load())
	fmt.Printf("soak: database outage: %d requests answered 503 (none outside the outage), %d links retried after it (%d then succeeded, %d found used: committed before the cut, no token sent), %d launches created after it, %d transport errors\n",
		s.outage503.Load(), s.retriedAfterOutage.Load(), s.afterOutageOK.Load(), s.lostInOutage.Load(), s.createdAfterOutage.Load(), s.otherErrors.Load())
	s.mu.Lock()
	redemptions := len(s.redeemed)
	s.mu.Unlock()
	fmt.Printf("soak: %d links followed from two instances at once; %d links redeemed in all, each once\n", s.racedLinks.Load(), redemptions)
	fmt.Printf("soak: JWKS polled %d times during the run, %d answers not 200\n", s.jwksRequests.Load(), s.jwksFailures.Load())
	s.mu.Lock()
	from, to := s.outageFrom, s.outageTo
	s.mu.Unlock()
	fmt.Println("soak: what the instances logged during the outage (warnings and errors, first lines):")
	for _, p := range s.instances {
		for _, line := range logLines(filepath.Join(work, p.Name+".log"), from.Add(-100*time.Millisecond), to.Add(2*time.Second), 4) {
			fmt.Printf("  %s: %s\n", p.Name, line)
		}
	}
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
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.failures) > 0 {
		sort.Strings(s.failures)
		for _, f := range s.failures {
			fmt.Println("soak: failure:", f)
		}
		return fmt.Errorf("%d failures", len(s.failures))
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

// verifierProcess is the independent verifier, run as a child process:
// tokens go in on its stdin, verdicts come out on its stdout.
type verifierProcess struct {
	cmd      *exec.Cmd
	in       io.WriteCloser
	inMu     sync.Mutex
	verdicts chan verdict
	done     chan struct{}
}

type verdict struct {
	ID    int    `json:"id"`
	OK    bool   `json:"ok"`
	Error string `json:"error,omitempty"`
}

func startVerifier(jwksURLs string) (*verifierProcess, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(self, "verifier", "--jwks", jwksURLs, "--issuer", clientID, "--audience", audience)
	in, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	v := &verifierProcess{cmd: cmd, in: in, verdicts: make(chan verdict, 1024), done: make(chan struct{})}
	go func() {
		defer close(v.done)
		defer close(v.verdicts)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			var vd verdict
			if json.Unmarshal(sc.Bytes(), &vd) == nil {
				v.verdicts <- vd
			}
		}
	}()
	return v, nil
}

func (v *verifierProcess) send(id int, token string) {
	v.inMu.Lock()
	defer v.inMu.Unlock()
	fmt.Fprintf(v.in, "%d %s\n", id, token)
}

func (v *verifierProcess) closeInput() {
	v.inMu.Lock()
	defer v.inMu.Unlock()
	_ = v.in.Close()
}

func (v *verifierProcess) wait() { <-v.done; _ = v.cmd.Wait() }

func (v *verifierProcess) stop() { _ = v.cmd.Process.Kill() }
