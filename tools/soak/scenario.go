package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/http"
	"net/url"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/ehealth-nl/portal/internal/faults"
	"github.com/ehealth-nl/portal/tools/internal/instance"
)

// The scaled-down timings: publish lead ≥ max-age + max staleness
// (3s ≥ 1s + 2s), retire grace ≥ token lifetime + max-age + max staleness
// (15s ≥ 10s + 1s + 2s).
var scaledTimings = map[string]string{
	"PORTAL_JWKS_MAX_AGE":            "1s",
	"PORTAL_KEYRING_REFRESH":         "1s",
	"PORTAL_KEYRING_MAX_STALENESS":   "2s",
	"PORTAL_ROTATION_CHECK_INTERVAL": "250ms",
	"PORTAL_LAUNCH_TOKEN_TTL":        "10s",
	"PORTAL_TOKEN_IAT_BACKDATE":      "1s",
	"PORTAL_PUBLISH_LEAD":            "3s",
	"PORTAL_RETIRE_GRACE":            "15s",
	"PORTAL_ROTATION_PERIOD":         "8s",
	"PORTAL_TICKET_TTL":              "60s",
}

// The scenario's fixed values: the keyring refresh and JWKS max-age of
// scaledTimings as durations, and the issuer and module the tokens are for.
const (
	refreshInterval = time.Second
	jwksMaxAge      = time.Second
	clientID        = "portal-soak"
	audience        = "Device/soak-module"
)

// proxyTo starts a fault proxy in front of the database of dbURL and
// returns it with the connection string that goes through it.
func proxyTo(dbURL string) (*faults.Proxy, string, error) {
	u, _ := url.Parse(dbURL)
	target := u.Host
	if u.Port() == "" {
		target = net.JoinHostPort(u.Hostname(), "5432")
	}
	proxy, err := faults.NewProxy(target)
	if err != nil {
		return nil, "", err
	}
	viaProxy := *u
	viaProxy.Host = proxy.Addr()
	q := viaProxy.Query()
	q.Set("sslmode", "disable")
	viaProxy.RawQuery = q.Encode()
	return proxy, viaProxy.String(), nil
}

// The timings of the domain: each request to it is bounded by
// domainTimeout, and an AuditEvent whose delivery failed is tried again
// within a second (the shortest backoff cap), looked for every 200 ms.
var domainTimings = map[string]string{
	"PORTAL_DOMAIN_TIMEOUT":  domainTimeout.String(),
	"PORTAL_AUDIT_RETRY_MAX": "1s",
	"PORTAL_AUDIT_POLL":      "200ms",
}

// instanceEnv is the environment every instance runs with: the database
// through the proxy, the default issuer signing with ES256, the scaled
// timings and the domain's.
func instanceEnv(databaseURL string) map[string]string {
	env := map[string]string{
		"DATABASE_URL": databaseURL, "PORTAL_CLIENT_ID": clientID, "PORTAL_FHIR_BASE_URL": "https://fhir.example.org/fhir",
		"PORTAL_KEK": instance.NewKEK(), "PORTAL_SIGNING_ALG": "ES256", "PORTAL_ISSUER_PROFILE": "hti",
	}
	for _, timings := range []map[string]string{scaledTimings, domainTimings} {
		for k, v := range timings {
			env[k] = v
		}
	}
	return env
}

// instanceAddrs picks the three instances' listen addresses, so that the
// domain can be told the JWKS URL of the portal's client before they run.
func instanceAddrs() ([]string, error) {
	addrs := make([]string, 3)
	for i := range addrs {
		port, err := instance.FreePort()
		if err != nil {
			return nil, err
		}
		addrs[i] = "127.0.0.1:" + strconv.Itoa(port)
	}
	return addrs, nil
}

// startInstances starts three instances at once on the empty database, at
// the given addresses.
func (s *soak) startInstances(ctx context.Context, env map[string]string, addrs []string, work string) error {
	var wg sync.WaitGroup
	s.instances = make([]*instance.Process, 3)
	startErrs := make([]error, 3)
	for i := range s.instances {
		wg.Add(1)
		go func() {
			defer wg.Done()
			name := string(rune('a' + i))
			own := maps.Clone(env)
			own["PORTAL_LISTEN_ADDR"] = addrs[i]
			s.instances[i], startErrs[i] = instance.Start(ctx, s.bin, "portal-"+name, own, filepath.Join(work, "portal-"+name+".log"))
		}()
	}
	wg.Wait()
	return errors.Join(startErrs...)
}

// stopInstances stops every instance that started.
func (s *soak) stopInstances() {
	for _, p := range s.instances {
		if p != nil {
			_ = p.Stop()
		}
	}
}

// provision makes, with the command line, the API keys of a backend
// (launch scope) and an operator (admin scope), the module, and the domain
// issuer (koppeltaal, ES384, its Device in the domain, its FHIR server
// through the fault proxy; a rotation period longer than the run), and
// waits until every instance publishes the domain issuer's key: the
// domain's token endpoint fetches that JWKS once and keeps it a minute.
func (s *soak) provision(ctx context.Context, cli map[string]string) error {
	if _, err := instance.Command(ctx, s.bin, cli, "issuers", "add", "--slug", domainIssuer, "--client-id", domainClientID,
		"--fhir-base-url", s.domain.box.FHIRBase, "--profile", "koppeltaal", "--device", domainDevice, "--alg", "ES384",
		"--rotation-period", "24h", "--publish-lead", "1h", "--retire-grace", "1h"); err != nil {
		return err
	}
	var err error
	if s.launchKey, err = instance.Command(ctx, s.bin, cli, "apikeys", "create", "--name", "soak-backend", "--scope", "launch"); err != nil {
		return err
	}
	if s.adminKey, err = instance.Command(ctx, s.bin, cli, "apikeys", "create", "--name", "soak-operator", "--scope", "admin"); err != nil {
		return err
	}
	if _, err := instance.Command(ctx, s.bin, cli, "modules", "add", "soak", "--launch-url", "https://module.example.org/launch", "--audience", audience); err != nil {
		return err
	}
	for _, p := range s.instances {
		if err := waitForKeys(ctx, p.URL+"/issuers/"+domainIssuer+"/jwks.json"); err != nil {
			return fmt.Errorf("%s: %w", p.Name, err)
		}
	}
	return nil
}

// waitForKeys waits until the JWKS at u lists a key.
func waitForKeys(ctx context.Context, u string) error {
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := http.Get(u)
		if err == nil {
			var set struct{ Keys []json.RawMessage }
			err = json.NewDecoder(resp.Body).Decode(&set)
			resp.Body.Close()
			if err == nil && resp.StatusCode == http.StatusOK && len(set.Keys) > 0 {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s lists no key after 10s (%v)", u, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// jwksURLs is every instance's JWKS URL at path, comma-separated, as the
// verifier takes them.
func (s *soak) jwksURLs(path string) string {
	var urls []string
	for _, p := range s.instances {
		urls = append(urls, p.URL+path)
	}
	return strings.Join(urls, ",")
}

// timeline runs the events while the load runs: a forced rotation as soon
// as one is allowed, the revocation of the active key as soon as the key
// that takes over has been published for the lead, then at fractions of
// the duration the FHIR outage at 30% and the database outage at 60%.
func (s *soak) timeline(ctx context.Context, duration time.Duration, cli map[string]string, admin string, proxy *faults.Proxy, dbName string) {
	start := time.Now()
	at := func(frac float64) { time.Sleep(time.Until(start.Add(time.Duration(float64(duration) * frac)))) }
	s.forceRotation(ctx)
	if err := s.revokeActive(ctx, cli); err != nil {
		s.fail("revocation: %v", err)
	}
	at(0.3)
	s.fhirOutage()
	at(0.6)
	s.databaseOutage(ctx, admin, proxy, dbName)
}

// forceRotation rotates through the second instance's admin API, as an
// operator would, as soon as the first next key has been published for the
// lead. It cannot wait longer: a forced rotation is refused while a key
// retired by the previous rotation is still published, and with a retire
// grace (15s) longer than the rotation period (8s) one always is once the
// first scheduled rotation has happened.
func (s *soak) forceRotation(ctx context.Context) {
	p := s.instances[1]
	var last string
	for attempt := 0; attempt < 40; attempt++ {
		status, body, err := s.post(p.URL+"/api/v1/keys/rotate", s.adminKey, `{}`)
		if err == nil && status == http.StatusOK {
			fmt.Printf("soak: %s forced rotation through %s: %s\n", time.Now().Format("15:04:05.000"), p.Name, bytes.TrimSpace(body))
			return
		}
		if err == nil && status == http.StatusConflict {
			last = string(body)
			time.Sleep(250 * time.Millisecond) // next key younger than the lead
			continue
		}
		s.fail("forced rotation through %s: %d %s %v", p.Name, status, body, err)
		return
	}
	s.fail("forced rotation through %s refused for 10s; last: %s", p.Name, last)
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

// The FHIR outage: how long the domain is cut off (connections reset,
// none accepted), then black-holed (bytes held, so requests hang until
// PORTAL_DOMAIN_TIMEOUT ends them), and how many domain links are made
// just before it to be redeemed during it.
const (
	fhirCut       = 3 * time.Second
	fhirBlackHole = 2 * time.Second
	stashedLinks  = 30
)

// fhirOutage cuts the instances off from the test domain, then
// black-holes it, then lets it through again. Launches of the domain
// issuer answer 503 domain-unavailable meanwhile and write nothing;
// AuditEvents wait in the outbox. A redemption does not read the domain:
// links made just before the outage are followed during it, half while it
// is cut and half while it is black-holed, and each must give its token.
func (s *soak) fhirOutage() {
	links := s.stashDomainLinks()
	proxy := s.domain.proxy
	s.mu.Lock()
	s.fhirFrom = time.Now()
	s.mu.Unlock()
	proxy.Cut()
	fmt.Printf("soak: %s FHIR outage: the domain cut off for %s (%d links made just before it to follow during it)\n",
		time.Now().Format("15:04:05.000"), fhirCut, len(links))
	half := len(links) / 2
	time.Sleep(fhirCut / 3)
	s.followStashed(links[:half])
	time.Sleep(time.Until(s.fhirFrom.Add(fhirCut)))
	if err := proxy.Restore(); err != nil {
		s.fail("restore the domain: %v", err)
	}
	proxy.BlackHole()
	fmt.Printf("soak: %s FHIR outage: the domain black-holed for %s\n", time.Now().Format("15:04:05.000"), fhirBlackHole)
	time.Sleep(fhirBlackHole / 3)
	s.followStashed(links[half:])
	time.Sleep(time.Until(s.fhirFrom.Add(fhirCut + fhirBlackHole)))
	if err := proxy.Restore(); err != nil {
		s.fail("restore the domain: %v", err)
	}
	s.mu.Lock()
	s.fhirTo = time.Now()
	s.mu.Unlock()
	fmt.Printf("soak: %s domain back\n", time.Now().Format("15:04:05.000"))
}

// stashDomainLinks makes domain launch links through each instance in
// turn, each to be followed through the next one.
func (s *soak) stashDomainLinks() []stashedLink {
	var links []stashedLink
	for i := 0; i < stashedLinks; i++ {
		creator, redeemer := s.instances[i%3], s.instances[(i+1)%3]
		status, body, err := s.post(creator.URL+"/api/v1/launches", s.launchKey, domainLink)
		var created struct {
			LaunchURL string `json:"launch_url"`
		}
		if err != nil || status != http.StatusCreated || json.Unmarshal(body, &created) != nil {
			s.fail("a domain link to follow during the FHIR outage, through %s: %d %s %v", creator.Name, status, body, err)
			continue
		}
		links = append(links, stashedLink{strings.Replace(created.LaunchURL, creator.URL, redeemer.URL, 1), redeemer})
	}
	return links
}

// stashedLink is a domain link made before the FHIR outage and the
// instance to follow it through.
type stashedLink struct {
	link string
	p    *instance.Process
}

// followStashed follows links during the FHIR outage; each must answer 200
// with a token (which the verifier checks like any other).
func (s *soak) followStashed(links []stashedLink) {
	for _, l := range links {
		if status := s.follow(l.link, l.p, kindKT); status != http.StatusOK {
			s.fail("a domain link made before the FHIR outage answered %d on %s during it: redemption must not need the domain", status, l.p.Name)
			continue
		}
		s.stashFollowed.Add(1)
	}
}
