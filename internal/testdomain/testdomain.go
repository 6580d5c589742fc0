// Package testdomain gives tests a Koppeltaal test domain in a box: the
// Node process testdomain/server.mjs, which serves an in-memory FHIR R4
// server (Medplum's fhir-router, validating every write) behind a SMART
// backend-services token endpoint (oidc-provider, client_credentials with
// private_key_jwt). Start runs one per call and stops it on cleanup;
// Launch and Close do the same outside a test (cmd/testdomain, the demo's
// domain). fixtures.go builds KT2-shaped resources to Seed. `make test` (or
// `npm ci` in testdomain/) installs its node_modules.
package testdomain

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v2/jwa"
	"github.com/lestrrat-go/jwx/v2/jwk"
	"github.com/lestrrat-go/jwx/v2/jwt"
)

// Client is a SMART backend-services client registered with the domain's
// token endpoint: it authenticates with a private_key_jwt assertion signed
// by a key in the JWKS at JWKSURL (fetched by the token endpoint when the
// client asks for a token; loopback URLs are allowed). The token endpoint
// keeps a fetched JWKS at least 60 s, so a key must be published before its
// first use.
type Client struct {
	ID      string
	JWKSURL string
}

// Options is what Launch needs to know.
type Options struct {
	// Clients are the clients the token endpoint knows, besides the
	// domain's own seeding client.
	Clients []Client
	// Log, when set, also gets the server's log (its stderr) as it is
	// written; the Domain keeps its own copy either way (TokenGrants).
	Log io.Writer
	// Port is the loopback port to listen on; 0 picks a free one.
	Port int
	// PublicOrigin, when set, is the origin (http://host:port) clients
	// reach the domain at, e.g. a fault-injecting proxy in front of Port:
	// the FHIR base, the token endpoint (as discovered, and as the
	// assertions' aud) and the access tokens' issuer are all under it.
	PublicOrigin string
}

// Domain is a running test domain.
type Domain struct {
	// FHIRBase is the FHIR server's base URL, http://127.0.0.1:P/fhir.
	FHIRBase string
	// TokenEndpoint is the token endpoint, http://127.0.0.1:P/oauth2/token;
	// client assertions must have exactly this as aud.
	TokenEndpoint string

	stderr *syncBuffer // the server's log: one JSON line per token request
	seeder jwk.Key

	mu            sync.Mutex
	seederToken   string
	seederExpires time.Time

	cmd       *exec.Cmd
	stdin     io.Closer     // the server stops when this closes
	done      chan struct{} // closed once the process has exited
	waitErr   error         // cmd.Wait's answer, set before done closes
	closeOnce sync.Once
	closeErr  error
}

// seederID is the domain's own privileged client, used by Seed. Its public
// key is registered inline, so it needs no JWKS server.
const seederID = "testdomain-seeder"

// Start runs a test domain that knows the given clients (and its own
// seeding client) and stops it when the test ends, logging the server's
// log if the test failed. It fails the test, never skips it, when node or
// testdomain/node_modules is missing.
func Start(t testing.TB, clients ...Client) *Domain {
	t.Helper()
	return StartWith(t, Options{Clients: clients})
}

// StartWith is Start with all of Launch's options (Log is the test's own
// copy: it is logged when the test fails).
func StartWith(t testing.TB, opts Options) *Domain {
	t.Helper()
	d, err := Launch(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := d.Close(); err != nil {
			t.Log(err)
		}
		if t.Failed() && d.stderr.Len() > 0 {
			t.Logf("testdomain stderr:\n%s", d.stderr.String())
		}
	})
	return d
}

// Launch runs a test domain that knows cfg.Clients (and its own seeding
// client) until Close; ctx bounds the start only. Like Start it finds
// testdomain/server.mjs in the module root above the working directory, so
// it must run inside the repository, and it needs node and
// testdomain/node_modules.
func Launch(ctx context.Context, cfg Options) (*Domain, error) {
	dir, err := projectDir()
	if err != nil {
		return nil, fmt.Errorf("testdomain: %w", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "node_modules")); err != nil {
		return nil, fmt.Errorf("testdomain: %s/node_modules is missing: run `make test`, or `npm ci` in testdomain/", dir)
	}
	node, err := exec.LookPath("node")
	if err != nil {
		return nil, fmt.Errorf("testdomain: node not found (Node.js 20.19 or later is needed): %w", err)
	}

	seeder, seederPublic, err := newKey("seeder")
	if err != nil {
		return nil, fmt.Errorf("testdomain: %w", err)
	}
	type clientConfig struct {
		ID      string  `json:"client_id"`
		JWKSURL string  `json:"jwks_uri,omitempty"`
		JWKS    jwk.Set `json:"jwks,omitempty"`
	}
	conf := struct {
		Port         int            `json:"port,omitempty"`
		PublicOrigin string         `json:"public_origin,omitempty"`
		Clients      []clientConfig `json:"clients"`
	}{Port: cfg.Port, PublicOrigin: cfg.PublicOrigin}
	for _, c := range cfg.Clients {
		conf.Clients = append(conf.Clients, clientConfig{ID: c.ID, JWKSURL: c.JWKSURL})
	}
	conf.Clients = append(conf.Clients, clientConfig{ID: seederID, JWKS: seederPublic})
	raw, err := json.Marshal(conf)
	if err != nil {
		return nil, fmt.Errorf("testdomain: %w", err)
	}

	cmd := exec.Command(node, filepath.Join(dir, "server.mjs"))
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "TESTDOMAIN_CONFIG="+string(raw)) // the last one counts
	stderr := new(syncBuffer)
	cmd.Stderr = stderr
	if cfg.Log != nil {
		cmd.Stderr = io.MultiWriter(stderr, cfg.Log)
	}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, fmt.Errorf("testdomain: %w", err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, fmt.Errorf("testdomain: %w", err)
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("testdomain: start node: %w", err)
	}
	d := &Domain{stderr: stderr, seeder: seeder, cmd: cmd, stdin: stdin, done: make(chan struct{})}
	go func() { d.waitErr = cmd.Wait(); close(d.done) }()

	lines := make(chan string, 1)
	go func() {
		r := bufio.NewReader(stdout)
		line, _ := r.ReadString('\n')
		lines <- line
		_, _ = io.Copy(io.Discard, r)
	}()
	fail := func(format string, args ...any) (*Domain, error) {
		_ = d.Close()
		return nil, fmt.Errorf(format, args...)
	}
	var line string
	select {
	case line = <-lines:
	case <-d.done:
		return fail("testdomain: server.mjs exited before listening:\n%s", stderr.String())
	case <-ctx.Done():
		return fail("testdomain: start: %w", ctx.Err())
	case <-time.After(60 * time.Second):
		return fail("testdomain: server.mjs did not report its address within 60 s:\n%s", stderr.String())
	}
	var addr struct{ FHIR, Token string }
	if err := json.Unmarshal([]byte(line), &addr); err != nil || addr.FHIR == "" || addr.Token == "" {
		return fail("testdomain: server.mjs printed %q, not its addresses (%v):\n%s", line, err, stderr.String())
	}
	d.FHIRBase, d.TokenEndpoint = addr.FHIR, addr.Token
	return d, nil
}

// Close stops the server: it closes the server's stdin, which ends it, and
// kills it if it has not ended within 5 s. It returns an error when it had
// to kill it or the server had failed; later calls return the same.
func (d *Domain) Close() error {
	d.closeOnce.Do(func() {
		_ = d.stdin.Close()
		select {
		case <-d.done:
			if d.waitErr != nil {
				d.closeErr = fmt.Errorf("testdomain: server.mjs: %w", d.waitErr)
			}
		case <-time.After(5 * time.Second):
			_ = d.cmd.Process.Kill()
			<-d.done
			d.closeErr = errors.New("testdomain: server.mjs did not stop within 5 s of its stdin closing; killed it")
		}
	})
	return d.closeErr
}

// Seed stores resources through the FHIR API as the domain's own client:
// PUT for one with an id (which keeps it), POST otherwise. It returns what
// the server stored (with id and meta) and fails the test on any refusal.
func (d *Domain) Seed(t testing.TB, resources ...any) []map[string]any {
	t.Helper()
	stored, err := d.SeedResources(context.Background(), resources...)
	if err != nil {
		t.Fatal(err)
	}
	return stored
}

// SeedResources is Seed outside a test: it stores resources in order (PUT
// for one with an id, POST otherwise) and returns what the server stored,
// or the first refusal as an error, with what it had stored before it.
func (d *Domain) SeedResources(ctx context.Context, resources ...any) ([]map[string]any, error) {
	token, err := d.seederAccess(ctx)
	if err != nil {
		return nil, err
	}
	var stored []map[string]any
	for _, r := range resources {
		body, err := json.Marshal(r)
		if err != nil {
			return stored, fmt.Errorf("testdomain: seed: %w", err)
		}
		var head struct{ ResourceType, ID string }
		if err := json.Unmarshal(body, &head); err != nil || head.ResourceType == "" {
			return stored, fmt.Errorf("testdomain: seed: not a FHIR resource: %s", body)
		}
		method, target := http.MethodPost, d.FHIRBase+"/"+head.ResourceType
		if head.ID != "" {
			method, target = http.MethodPut, target+"/"+url.PathEscape(head.ID)
		}
		status, got, err := d.send(ctx, method, target, token, body)
		if err != nil {
			return stored, fmt.Errorf("testdomain: seed %s %s: %w", method, target, err)
		}
		if status != http.StatusOK && status != http.StatusCreated {
			return stored, fmt.Errorf("testdomain: seed %s %s: %d %s", method, target, status, got)
		}
		var m map[string]any
		if err := json.Unmarshal(got, &m); err != nil {
			return stored, fmt.Errorf("testdomain: seed %s %s: %w", method, target, err)
		}
		stored = append(stored, m)
	}
	return stored, nil
}

// Read returns the resource at ref ("Type/id", or any path below the FHIR
// base) as the server holds it, read as the domain's own client, so a test
// can check what was written there. Anything but 200 fails the test.
func (d *Domain) Read(t testing.TB, ref string) map[string]any {
	t.Helper()
	var m map[string]any
	if err := d.getJSON(ref, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

// Search runs a FHIR search, query being the part after the FHIR base
// ("Task?owner=Device/d-1"), as the domain's own client and returns the
// matches in the server's order. The in-memory server answers one page,
// without next links, of 20 by default: unless the query has a _count,
// Search asks for up to 1000 and fails the test if there are more, so
// what it returns is all the server holds. Anything but 200 fails the test.
func (d *Domain) Search(t testing.TB, query string) []map[string]any {
	t.Helper()
	q := query
	path, params, _ := strings.Cut(q, "?")
	values, err := url.ParseQuery(params)
	if err != nil {
		t.Fatalf("testdomain: search %s: %v", query, err)
	}
	all := !values.Has("_count")
	if all {
		q = path + "?" + strings.TrimPrefix(params+"&_count=1000", "&")
	}
	var b struct {
		ResourceType string
		Total        *int
		Entry        []struct{ Resource map[string]any }
	}
	if err := d.getJSON(q, &b); err != nil {
		t.Fatal(err)
	}
	if b.ResourceType != "Bundle" {
		t.Fatalf("testdomain: search %s: answered a %s, not a Bundle", query, b.ResourceType)
	}
	if all && b.Total != nil && *b.Total > len(b.Entry) {
		t.Fatalf("testdomain: search %s: %d matches, more than Search returns (%d)", query, *b.Total, len(b.Entry))
	}
	out := make([]map[string]any, 0, len(b.Entry))
	for _, e := range b.Entry {
		out = append(out, e.Resource)
	}
	return out
}

// getJSON GETs target, a path below the FHIR base, as the seeding client
// and decodes a 200 answer into v.
func (d *Domain) getJSON(target string, v any) error {
	ctx := context.Background()
	token, err := d.seederAccess(ctx)
	if err != nil {
		return err
	}
	target = d.FHIRBase + "/" + strings.TrimPrefix(target, "/")
	status, body, err := d.send(ctx, http.MethodGet, target, token, nil)
	if err != nil {
		return fmt.Errorf("testdomain: GET %s: %w", target, err)
	}
	if status != http.StatusOK {
		return fmt.Errorf("testdomain: GET %s: %d %s", target, status, body)
	}
	if err := json.Unmarshal(body, v); err != nil {
		return fmt.Errorf("testdomain: GET %s: %w", target, err)
	}
	return nil
}

// seederAccess returns the seeding client's access token, getting a new one
// when the kept one expires within a minute (they last 300 s; the demo's
// domain runs longer).
func (d *Domain) seederAccess(ctx context.Context) (string, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.seederToken != "" && time.Until(d.seederExpires) > time.Minute {
		return d.seederToken, nil
	}
	token, lifetime, err := d.fetchToken(ctx, d.seeder, seederID, "system/*.read system/*.write")
	if err != nil {
		return "", fmt.Errorf("testdomain: seeding client token: %w", err)
	}
	d.seederToken, d.seederExpires = token, time.Now().Add(lifetime)
	return token, nil
}

// do sends one FHIR request with a Bearer token and returns the status and
// body.
func (d *Domain) do(method, target, token string, body []byte) (int, []byte, error) {
	return d.send(context.Background(), method, target, token, body)
}

// send is do within ctx, and at most 30 s.
func (d *Domain) send(ctx context.Context, method, target, token string, body []byte) (int, []byte, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, target, rd)
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("Accept", "application/fhir+json")
	if body != nil {
		req.Header.Set("Content-Type", "application/fhir+json")
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	got, err := io.ReadAll(resp.Body)
	return resp.StatusCode, got, err
}

// token gets an access token with client_credentials, authenticating with a
// fresh private_key_jwt assertion (60 s lifetime).
func (d *Domain) token(key jwk.Key, clientID, scope string) (string, error) {
	token, _, err := d.fetchToken(context.Background(), key, clientID, scope)
	return token, err
}

// fetchToken is token within ctx; it also returns the token's lifetime
// (expires_in).
func (d *Domain) fetchToken(ctx context.Context, key jwk.Key, clientID, scope string) (string, time.Duration, error) {
	now := time.Now()
	assertion, err := clientAssertion(key, clientID, d.TokenEndpoint, randomID(), now, now.Add(time.Minute))
	if err != nil {
		return "", 0, err
	}
	status, body, err := postTokenContext(ctx, d.TokenEndpoint, assertion, scope)
	if err != nil {
		return "", 0, err
	}
	var tr struct {
		AccessToken string `json:"access_token"`
		ExpiresIn   int    `json:"expires_in"`
	}
	if status != http.StatusOK || json.Unmarshal(body, &tr) != nil || tr.AccessToken == "" {
		return "", 0, fmt.Errorf("token endpoint answered %d %s", status, body)
	}
	return tr.AccessToken, time.Duration(tr.ExpiresIn) * time.Second, nil
}

// postToken posts a client_credentials request and returns the status and
// body.
func postToken(endpoint, assertion, scope string) (int, []byte, error) {
	return postTokenContext(context.Background(), endpoint, assertion, scope)
}

// postTokenContext is postToken within ctx, and at most 30 s.
func postTokenContext(ctx context.Context, endpoint, assertion, scope string) (int, []byte, error) {
	form := url.Values{
		"grant_type":            {"client_credentials"},
		"client_assertion_type": {"urn:ietf:params:oauth:client-assertion-type:jwt-bearer"},
		"client_assertion":      {assertion},
	}
	if scope != "" {
		form.Set("scope", scope)
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, endpoint, strings.NewReader(form.Encode()))
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, body, err
}

// clientAssertion signs a private_key_jwt client assertion with ES384:
// iss = sub = clientID, aud = the token endpoint (a string, not an array).
func clientAssertion(key jwk.Key, clientID, aud, jti string, iat, exp time.Time) (string, error) {
	tok, err := jwt.NewBuilder().
		Issuer(clientID).Subject(clientID).Audience([]string{aud}).
		JwtID(jti).IssuedAt(iat).Expiration(exp).Build()
	if err != nil {
		return "", err
	}
	tok.Options().Enable(jwt.FlattenAudience) // jwx writes a one-element array otherwise
	signed, err := jwt.Sign(tok, jwt.WithKey(jwa.ES384, key))
	return string(signed), err
}

// newKey makes an ES384 private key with the given kid and the public JWKS
// that holds it.
func newKey(kid string) (jwk.Key, jwk.Set, error) {
	raw, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	key, err := jwk.FromRaw(raw)
	if err != nil {
		return nil, nil, err
	}
	for k, v := range map[string]any{jwk.KeyIDKey: kid, jwk.AlgorithmKey: jwa.ES384, jwk.KeyUsageKey: "sig"} {
		if err := key.Set(k, v); err != nil {
			return nil, nil, err
		}
	}
	pub, err := key.PublicKey()
	if err != nil {
		return nil, nil, err
	}
	set := jwk.NewSet()
	if err := set.AddKey(pub); err != nil {
		return nil, nil, err
	}
	return key, set, nil
}

func randomID() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	return fmt.Sprintf("%x", b)
}

// projectDir finds testdomain/ (with server.mjs) in the module root above
// the working directory, which go test sets to the package's directory.
func projectDir() (string, error) {
	wd, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for dir := wd; ; dir = filepath.Dir(dir) {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			td := filepath.Join(dir, "testdomain")
			if _, err := os.Stat(filepath.Join(td, "server.mjs")); err != nil {
				return "", fmt.Errorf("no testdomain/server.mjs in the module root %s", dir)
			}
			return td, nil
		}
		if filepath.Dir(dir) == dir {
			return "", errors.New("no go.mod above " + wd)
		}
	}
}

// syncBuffer is a bytes.Buffer safe for the process's writes and the
// test's reads.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// Len is the number of bytes written so far.
func (s *syncBuffer) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Len()
}
