package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ehealth-nl/portal/internal/fhirdomain"
	"github.com/ehealth-nl/portal/internal/testdomain"
	"github.com/ehealth-nl/portal/pkg/hti"
)

const launchURL = "http://127.0.0.1:8080/demo/module/launch"

// TestRun runs the command as make would: it writes the settings, says it
// is ready, serves the domain, and stops it when its stdin closes.
func TestRun(t *testing.T) {
	envFile := filepath.Join(t.TempDir(), "demo.env")
	stdin, closeStdin := io.Pipe()
	var stdout, stderr lockedBuffer
	done := make(chan error, 1)
	go func() {
		done <- run(context.Background(), []string{"-client-id", "portal-demo", "-jwks-url", "http://127.0.0.1:1/jwks.json",
			"-module-launch-url", launchURL, "-env-file", envFile}, stdin, &stdout, &stderr)
	}()
	var env map[string]string
	deadline := time.Now().Add(60 * time.Second)
	for env == nil {
		select {
		case err := <-done:
			t.Fatalf("ended before writing %s: %v\n%s", envFile, err, stderr.String())
		case <-time.After(50 * time.Millisecond):
		}
		if raw, err := os.ReadFile(envFile); err == nil {
			env = map[string]string{}
			for line := range strings.Lines(string(raw)) {
				k, v, _ := strings.Cut(strings.TrimSuffix(line, "\n"), "=")
				env[k] = v
			}
		} else if time.Now().After(deadline) {
			t.Fatalf("no %s within 60 s:\n%s", envFile, stderr.String())
		}
	}
	base := env["PORTAL_FHIR_BASE_URL"]
	if len(env) != 3 || !strings.HasPrefix(base, "http://127.0.0.1:") || !strings.HasSuffix(base, "/fhir") ||
		env["PORTAL_DEVICE"] != "Device/demo-portal" ||
		env["DEMO_TASKS"] != "Task/demo-task-patient,Task/demo-task-team,Task/demo-task-done" || stdout.String() != "" {
		t.Fatalf("settings %v, stdout %q", env, stdout.String())
	}
	waitFor(t, &stderr, "test domain ready\n")
	resp, err := http.Get(base + "/.well-known/smart-configuration")
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("the domain does not answer: %v %v", resp, err)
	}
	resp.Body.Close()

	_ = closeStdin.Close()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("run: %v\n%s", err, stderr.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("still running 10 s after its stdin closed")
	}
	if resp, err := http.Get(base + "/.well-known/smart-configuration"); err == nil {
		resp.Body.Close()
		t.Fatal("the domain still answers after the command ended")
	}
}

// TestRunFlags: the three flags are required.
func TestRunFlags(t *testing.T) {
	var stderr lockedBuffer
	err := run(context.Background(), []string{"-client-id", "p"}, strings.NewReader(""), io.Discard, &stderr)
	if err == nil || !strings.Contains(stderr.String(), "-module-launch-url") {
		t.Fatalf("%v\n%s", err, stderr.String())
	}
}

// TestScenario: the portal's own resolver and authorisation (fhirdomain)
// accept the demo's Tasks for the users the demo means, and refuse the
// completed one.
func TestScenario(t *testing.T) {
	client := testdomain.NewBackendClient(t, "portal-demo")
	d := testdomain.Start(t, client.Client)
	tokens := &tokens{client: client, domain: d}
	d.Seed(t, scenario("portal-demo", launchURL)...)
	c, err := fhirdomain.New(fhirdomain.Config{BaseURL: func(string) (string, bool) { return d.FHIRBase, true }, Tokens: tokens})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if got := d.Read(t, "Device/demo-portal")["identifier"]; fmt.Sprint(got) != "[map[system:"+fhirdomain.ClientIDSystem+" value:portal-demo]]" {
		t.Errorf("Device/demo-portal identifier: %v", got)
	}
	for _, tc := range []struct {
		task, user string
		want       fhirdomain.Refusal // "" for allowed
	}{
		{"demo-task-patient", "Patient/demo-patient", ""},
		{"demo-task-team", "Practitioner/demo-practitioner", ""},
		{"demo-task-team", "RelatedPerson/demo-relative", ""},
		{"demo-task-done", "Patient/demo-patient", fhirdomain.RefusedTaskCompleted},
	} {
		r, err := c.Resolve(ctx, "demo", tc.task)
		if err != nil {
			t.Fatalf("resolve %s: %v", tc.task, err)
		}
		if r.LaunchURL != launchURL || r.ClientID != "demo-module" || r.Aud != "Device/demo-module" || r.Patient != "Patient/demo-patient" {
			t.Errorf("resolve %s: %+v", tc.task, r)
		}
		typ, id, _ := strings.Cut(tc.user, "/")
		_, err = c.Authorize(ctx, "demo", r, hti.Reference{Type: typ, ID: id})
		if got, refused := fhirdomain.RefusalOf(err); (tc.want == "" && err != nil) || (tc.want != "" && (!refused || got != tc.want)) {
			t.Errorf("%s for %s: %v, want refusal %q", tc.task, tc.user, err, tc.want)
		}
	}
}

// tokens gives fhirdomain the access tokens of a test's own backend client.
type tokens struct {
	client *testdomain.BackendClient
	domain *testdomain.Domain
}

func (s *tokens) Token(ctx context.Context, _ string) (string, error) {
	return s.client.Token(ctx, s.domain, "system/*.read")
}

func (s *tokens) Invalidate(string, string) {}

// lockedBuffer is a bytes.Buffer for the command's output, written by the
// server's log copier and the command at once.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// waitFor waits up to 5 s for want in b.
func waitFor(t *testing.T, b *lockedBuffer, want string) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); !strings.Contains(b.String(), want); {
		if time.Now().After(deadline) {
			t.Fatalf("no %q in:\n%s", want, b.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
}
