// Package testdomain gives tests a Koppeltaal test domain in a box: the
// Node process testdomain/server.mjs, which serves an in-memory FHIR R4
// server (Medplum's fhir-router, validating every write) behind a SMART
// backend-services token endpoint (oidc-provider, client_credentials with
// private_key_jwt). Start runs one per call and stops it on cleanup. It is
// used by tests only; `make test` (or `npm ci` in testdomain/) installs its
// node_modules.
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

// Domain is a running test domain.
type Domain struct {
	// FHIRBase is the FHIR server's base URL, http://127.0.0.1:P/fhir.
	FHIRBase string
	// TokenEndpoint is the token endpoint, http://127.0.0.1:P/oauth2/token;
	// client assertions must have exactly this as aud.
	TokenEndpoint string

	stderr      *syncBuffer // the server's log: one JSON line per refused token request
	seeder      jwk.Key
	seederToken string
	mu          sync.Mutex
}

// seederID is the domain's own privileged client, used by Seed. Its public
// key is registered inline, so it needs no JWKS server.
const seederID = "testdomain-seeder"

// Start runs a test domain that knows the given clients (and its own
// seeding client) and stops it when the test ends. It fails the test, never
// skips it, when node or testdomain/node_modules is missing.
func Start(t testing.TB, clients ...Client) *Domain {
	t.Helper()
	dir, err := projectDir()
	if err != nil {
		t.Fatalf("testdomain: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "node_modules")); err != nil {
		t.Fatalf("testdomain: %s/node_modules is missing: run `make test`, or `npm ci` in testdomain/", dir)
	}
	node, err := exec.LookPath("node")
	if err != nil {
		t.Fatalf("testdomain: node not found (Node.js 20.19 or later is needed): %v", err)
	}

	seeder, seederPublic, err := newKey("seeder")
	if err != nil {
		t.Fatalf("testdomain: %v", err)
	}
	type clientConfig struct {
		ID      string  `json:"client_id"`
		JWKSURL string  `json:"jwks_uri,omitempty"`
		JWKS    jwk.Set `json:"jwks,omitempty"`
	}
	cfg := struct {
		Clients []clientConfig `json:"clients"`
	}{}
	for _, c := range clients {
		cfg.Clients = append(cfg.Clients, clientConfig{ID: c.ID, JWKSURL: c.JWKSURL})
	}
	cfg.Clients = append(cfg.Clients, clientConfig{ID: seederID, JWKS: seederPublic})
	raw, err := json.Marshal(cfg)
	if err != nil {
		t.Fatalf("testdomain: %v", err)
	}
	cfgPath := filepath.Join(t.TempDir(), "testdomain.json")
	if err := os.WriteFile(cfgPath, raw, 0o600); err != nil {
		t.Fatalf("testdomain: %v", err)
	}

	cmd := exec.Command(node, filepath.Join(dir, "server.mjs"), cfgPath)
	cmd.Dir = dir
	stderr := new(syncBuffer)
	cmd.Stderr = stderr
	stdin, err := cmd.StdinPipe() // the server stops when this closes
	if err != nil {
		t.Fatalf("testdomain: %v", err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatalf("testdomain: %v", err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("testdomain: start node: %v", err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		_ = stdin.Close()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
		if t.Failed() && stderr.Len() > 0 {
			t.Logf("testdomain stderr:\n%s", stderr.String())
		}
	})

	lines := make(chan string, 1)
	go func() {
		r := bufio.NewReader(stdout)
		line, _ := r.ReadString('\n')
		lines <- line
		_, _ = io.Copy(io.Discard, r)
	}()
	var line string
	select {
	case line = <-lines:
	case <-done:
		t.Fatalf("testdomain: server.mjs exited before listening:\n%s", stderr.String())
	case <-time.After(60 * time.Second):
		t.Fatalf("testdomain: server.mjs did not report its address within 60 s:\n%s", stderr.String())
	}
	var addr struct{ FHIR, Token string }
	if err := json.Unmarshal([]byte(line), &addr); err != nil || addr.FHIR == "" || addr.Token == "" {
		t.Fatalf("testdomain: server.mjs printed %q, not its addresses (%v):\n%s", line, err, stderr.String())
	}
	return &Domain{FHIRBase: addr.FHIR, TokenEndpoint: addr.Token, stderr: stderr, seeder: seeder}
}

// Seed stores resources through the FHIR API as the domain's own client:
// PUT for one with an id (which keeps it), POST otherwise. It returns what
// the server stored (with id and meta) and fails the test on any refusal.
func (d *Domain) Seed(t testing.TB, resources ...any) []map[string]any {
	t.Helper()
	d.mu.Lock()
	if d.seederToken == "" {
		token, err := d.token(d.seeder, seederID, "system/*.write")
		if err != nil {
			d.mu.Unlock()
			t.Fatalf("testdomain: seeding client token: %v", err)
		}
		d.seederToken = token // 300 s; a test seeds well within that
	}
	token := d.seederToken
	d.mu.Unlock()
	var stored []map[string]any
	for _, r := range resources {
		body, err := json.Marshal(r)
		if err != nil {
			t.Fatalf("testdomain: seed: %v", err)
		}
		var head struct{ ResourceType, ID string }
		if err := json.Unmarshal(body, &head); err != nil || head.ResourceType == "" {
			t.Fatalf("testdomain: seed: not a FHIR resource: %s", body)
		}
		method, target := http.MethodPost, d.FHIRBase+"/"+head.ResourceType
		if head.ID != "" {
			method, target = http.MethodPut, target+"/"+url.PathEscape(head.ID)
		}
		status, got, err := d.do(method, target, token, body)
		if err != nil {
			t.Fatalf("testdomain: seed %s %s: %v", method, target, err)
		}
		if status != http.StatusOK && status != http.StatusCreated {
			t.Fatalf("testdomain: seed %s %s: %d %s", method, target, status, got)
		}
		var m map[string]any
		if err := json.Unmarshal(got, &m); err != nil {
			t.Fatalf("testdomain: seed %s %s: %v", method, target, err)
		}
		stored = append(stored, m)
	}
	return stored
}

// do sends one FHIR request with a Bearer token and returns the status and
// body.
func (d *Domain) do(method, target, token string, body []byte) (int, []byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
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
	now := time.Now()
	assertion, err := clientAssertion(key, clientID, d.TokenEndpoint, randomID(), now, now.Add(time.Minute))
	if err != nil {
		return "", err
	}
	status, body, err := postToken(d.TokenEndpoint, assertion, scope)
	if err != nil {
		return "", err
	}
	var tr struct {
		AccessToken string `json:"access_token"`
	}
	if status != http.StatusOK || json.Unmarshal(body, &tr) != nil || tr.AccessToken == "" {
		return "", fmt.Errorf("token endpoint answered %d %s", status, body)
	}
	return tr.AccessToken, nil
}

// postToken posts a client_credentials request and returns the status and
// body.
func postToken(endpoint, assertion, scope string) (int, []byte, error) {
	form := url.Values{
		"grant_type":            {"client_credentials"},
		"client_assertion_type": {"urn:ietf:params:oauth:client-assertion-type:jwt-bearer"},
		"client_assertion":      {assertion},
	}
	if scope != "" {
		form.Set("scope", scope)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
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
