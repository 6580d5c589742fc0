package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ehealth-nl/portal/internal/pgtest"
)

var testDB *pgtest.Package

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m, "cmd", &testDB)) }

func newKEKBase64(t testing.TB) string {
	t.Helper()
	k := make([]byte, 32)
	if _, err := rand.Read(k); err != nil {
		t.Fatal(err)
	}
	return base64.StdEncoding.EncodeToString(k)
}

// baseEnv is a valid production-like environment on a database.
func baseEnv(t testing.TB, databaseURL string) map[string]string {
	return map[string]string{
		"DATABASE_URL":          databaseURL,
		"PORTAL_LISTEN_ADDR":    "127.0.0.1:0",
		"PORTAL_PUBLIC_URL":     "http://127.0.0.1",
		"PORTAL_CLIENT_ID":      "portal-test",
		"PORTAL_FHIR_BASE_URL":  "https://fhir.example.org/fhir",
		"PORTAL_KEK":            newKEKBase64(t),
		"PORTAL_SIGNING_ALG":    "ES256",  // fast key generation; RS512 is covered in the packages
		"PORTAL_ISSUER_PROFILE": "hti",    // ES256 is not a Koppeltaal algorithm
		"PORTAL_METRICS_ADDR":   "public", // several instances run at once
	}
}

func with(env map[string]string, kv ...string) map[string]string {
	out := map[string]string{}
	for k, v := range env {
		out[k] = v
	}
	for i := 0; i+1 < len(kv); i += 2 {
		if kv[i+1] == "" {
			delete(out, kv[i])
		} else {
			out[kv[i]] = kv[i+1]
		}
	}
	return out
}

// logBuffer collects a command's log lines and reports the address the
// server listens on.
type logBuffer struct {
	mu        sync.Mutex
	buf       bytes.Buffer
	listening chan string
	partial   []byte
}

func newLogBuffer() *logBuffer { return &logBuffer{listening: make(chan string, 1)} }

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.buf.Write(p)
	l.partial = append(l.partial, p...)
	for {
		i := bytes.IndexByte(l.partial, '\n')
		if i < 0 {
			break
		}
		line := l.partial[:i]
		l.partial = l.partial[i+1:]
		var rec struct {
			Msg  string `json:"msg"`
			Addr string `json:"addr"`
		}
		if json.Unmarshal(line, &rec) == nil && rec.Msg == "listening" {
			select {
			case l.listening <- rec.Addr:
			default:
			}
		}
	}
	return len(p), nil
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// instance is one running "portal serve".
type instance struct {
	URL  string
	Logs *logBuffer
	stop func() error
}

// startServe runs "portal serve" in-process and waits until it listens.
func startServe(t testing.TB, env map[string]string, args ...string) *instance {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	logs := newLogBuffer()
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, append([]string{"portal", "serve"}, args...), func(k string) string { return env[k] }, io.Discard, logs)
	}()
	select {
	case addr := <-logs.listening:
		var once sync.Once
		var stopErr error
		stop := func() error {
			once.Do(func() { cancel(); stopErr = <-done })
			return stopErr
		}
		t.Cleanup(func() {
			if err := stop(); err != nil {
				t.Errorf("serve ended with %v", err)
			}
		})
		return &instance{URL: "http://" + addr, Logs: logs, stop: stop}
	case err := <-done:
		cancel()
		t.Fatalf("serve stopped before listening: %v\nlogs:\n%s", err, logs)
	case <-time.After(60 * time.Second):
		cancel()
		t.Fatalf("serve did not start listening\nlogs:\n%s", logs)
	}
	return nil
}

// startServeErr runs "portal serve" expecting it to fail at start-up.
func startServeErr(t testing.TB, env map[string]string) (logs string, err error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	buf := newLogBuffer()
	err = run(ctx, []string{"portal", "serve"}, func(k string) string { return env[k] }, io.Discard, buf)
	select {
	case <-buf.listening:
		t.Fatalf("serve started listening; want a start-up failure")
	default:
	}
	return buf.String(), err
}

// runCommand runs one CLI command and returns its standard output.
func runCommand(t testing.TB, env map[string]string, args ...string) (string, error) {
	t.Helper()
	var out bytes.Buffer
	err := run(context.Background(), append([]string{"portal"}, args...), func(k string) string { return env[k] }, &out, io.Discard)
	return out.String(), err
}

func mustRun(t testing.TB, env map[string]string, args ...string) string {
	t.Helper()
	out, err := runCommand(t, env, args...)
	if err != nil {
		t.Fatalf("portal %s: %v", strings.Join(args, " "), err)
	}
	return out
}

func httpGet(t testing.TB, url string) (int, http.Header, []byte) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, resp.Header, body
}

func jwksKids(t testing.TB, url string) []string {
	t.Helper()
	status, _, body := httpGet(t, url)
	if status != 200 {
		t.Fatalf("GET %s: %d %s", url, status, body)
	}
	var doc struct {
		Keys []struct {
			Kid string `json:"kid"`
		} `json:"keys"`
	}
	if err := json.Unmarshal(body, &doc); err != nil {
		t.Fatal(err)
	}
	var kids []string
	for _, k := range doc.Keys {
		kids = append(kids, k.Kid)
	}
	return kids
}

// keyStates reads "keys list --json" into kid → state.
func keyStates(t testing.TB, env map[string]string, issuerArgs ...string) map[string]string {
	t.Helper()
	out := mustRun(t, env, append([]string{"keys", "list", "--json"}, issuerArgs...)...)
	var list []struct {
		Kid   string `json:"kid"`
		State string `json:"state"`
	}
	if err := json.Unmarshal([]byte(out), &list); err != nil {
		t.Fatalf("keys list --json: %v\n%s", err, out)
	}
	states := map[string]string{}
	for _, k := range list {
		states[k.Kid] = k.State
	}
	return states
}

func kidIn(states map[string]string, state string) string {
	for kid, s := range states {
		if s == state {
			return kid
		}
	}
	return ""
}

// waitFor polls cond until it holds; the deadline only guards against a
// hang, it is not a performance assertion.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("gave up waiting: %s", what)
		}
		time.Sleep(25 * time.Millisecond)
	}
}
