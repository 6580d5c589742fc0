package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"path/filepath"
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

// instanceEnv is the environment every instance runs with: the database
// through the proxy, one issuer signing with ES256, the scaled timings.
func instanceEnv(databaseURL string) map[string]string {
	env := map[string]string{
		"DATABASE_URL": databaseURL, "PORTAL_CLIENT_ID": clientID, "PORTAL_FHIR_BASE_URL": "https://fhir.example.org/fhir",
		"PORTAL_KEK": instance.NewKEK(), "PORTAL_SIGNING_ALG": "ES256", "PORTAL_ISSUER_PROFILE": "hti",
	}
	for k, v := range scaledTimings {
		env[k] = v
	}
	return env
}

// startInstances starts three instances at once on the empty database.
func (s *soak) startInstances(ctx context.Context, env map[string]string, work string) error {
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
// (launch scope) and an operator (admin scope), and the module.
func (s *soak) provision(ctx context.Context, cli map[string]string) error {
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
	return nil
}

// jwksURLs is every instance's JWKS URL, comma-separated, as the verifier
// takes them.
func (s *soak) jwksURLs() string {
	var urls []string
	for _, p := range s.instances {
		urls = append(urls, p.URL+"/.well-known/jwks.json")
	}
	return strings.Join(urls, ",")
}

// timeline runs the events while the load runs: a forced rotation as soon
// as one is allowed, the revocation of the active key as soon as the key
// that takes over has been published for the lead, then the database
// outage at 60% of the duration.
func (s *soak) timeline(ctx context.Context, duration time.Duration, cli map[string]string, admin string, proxy *faults.Proxy, dbName string) {
	start := time.Now()
	at := func(frac float64) { time.Sleep(time.Until(start.Add(time.Duration(float64(duration) * frac)))) }
	s.forceRotation(ctx)
	if err := s.revokeActive(ctx, cli); err != nil {
		s.fail("revocation: %v", err)
	}
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
