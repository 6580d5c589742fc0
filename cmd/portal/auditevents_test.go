package main

import (
	"encoding/json"

	"net"
	"net/http"
	"strings"
	"testing"

	"github.com/ehealth-nl/portal/internal/faults"
	"github.com/ehealth-nl/portal/internal/testdomain"
)

// TestCommands_AuditEvents runs "portal serve" for a default issuer in a
// Koppeltaal test domain, reached through an HTTP fault proxy, and follows
// one launch's AuditEvent with the commands: refused as invalid by the FHIR
// server (the proxy removes its type on the way), shown failed with the
// server's OperationOutcome by "audit-events list", sent again by
// "audit-events retry --all-failed" and delivered. Then an event still
// pending when its instance stops is delivered by the next instance to
// start.
func TestCommands_AuditEvents(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	_ = ln.Close()
	box := testdomain.StartWith(t, testdomain.Options{Clients: []testdomain.Client{
		{ID: "portal-kt", JWKSURL: "http://" + addr + "/issuers/default/jwks.json"}}})
	box.Seed(t, testdomain.Patient("p-1"), testdomain.Device("mod-1", "active", "module-1"),
		testdomain.Endpoint("ep-1", "active", "hti-smart-on-fhir", "https://module.example.org/launch"),
		testdomain.ActivityDefinition("ad-1", "active", "Device/mod-1", "ep-1"),
		testdomain.Task("t-1", "ready", "order", "Patient/p-1", "Patient/p-1", "ActivityDefinition/ad-1"))
	proxy, err := faults.NewHTTPProxy(strings.TrimSuffix(box.FHIRBase, "/fhir"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(proxy.Close)

	env := with(baseEnv(t, testDB.Fresh(t)), "PORTAL_LISTEN_ADDR", addr, "PORTAL_PUBLIC_URL", "http://"+addr,
		"PORTAL_CLIENT_ID", "portal-kt", "PORTAL_FHIR_BASE_URL", proxy.URL()+"/fhir", "PORTAL_ISSUER_PROFILE", "koppeltaal",
		"PORTAL_SIGNING_ALG", "ES384", "PORTAL_DEVICE", "Device/portal-kt", "PORTAL_AUDIT_POLL", "100ms",
		"PORTAL_AUDIT_RETRY_MAX", "1s", "PORTAL_AUDIT_SITE", "portal.example.nl")
	inst := startServe(t, env)
	key := strings.TrimSpace(mustRun(t, env, "apikeys", "create", "--name", "backend", "--scope", "launch"))
	launchToken := func() string {
		t.Helper()
		status, body := post(t, inst.URL+"/api/v1/launch-tokens", key, `{"task":"Task/t-1","user":"Patient/p-1"}`)
		if status != http.StatusCreated {
			t.Fatalf("launch token: %d %s", status, body)
		}
		var tok struct{ ID string }
		_ = json.Unmarshal(body, &tok)
		return tok.ID
	}
	listed := func(args ...string) string {
		return mustRun(t, env, append([]string{"audit-events", "list"}, args...)...)
	}

	proxy.CorruptPuts(func(event map[string]any) { delete(event, "type") })
	first := launchToken()
	waitFor(t, "the event to fail", func() bool { return strings.Contains(listed("--state", "failed"), first) })
	out := listed("--state", "failed")
	for _, want := range []string{"failed", "HTTP 400", "OperationOutcome: structure Missing required property (AuditEvent.type)", "AuditEvent.type"} {
		if !strings.Contains(out, want) {
			t.Errorf("audit-events list --state failed does not show %q:\n%s", want, out)
		}
	}
	if !strings.Contains(inst.Logs.String(), "audit event failed for good") {
		t.Error("no warning in the log")
	}

	proxy.CorruptPuts(nil)
	if out := mustRun(t, env, "audit-events", "retry", "--all-failed"); !strings.Contains(out, "1 failed audit events are pending again") {
		t.Fatalf("retry: %s", out)
	}
	waitFor(t, "the retried event to be delivered", func() bool { return strings.Contains(listed("--state", "delivered"), first) })
	var page struct {
		Events []struct {
			ID, State string
			Attempts  int
		}
	}
	if err := json.Unmarshal([]byte(listed("--launch", first, "--json")), &page); err != nil || len(page.Events) != 1 || page.Events[0].State != "delivered" {
		t.Fatalf("list --launch --json: %+v %v", page, err)
	}
	stored := box.Read(t, "AuditEvent/"+page.Events[0].ID)
	if src, _ := stored["source"].(map[string]any); src["site"] != "portal.example.nl" {
		t.Errorf("the domain holds %v", stored)
	}
	if _, err := runCommand(t, env, "audit-events", "retry", page.Events[0].ID); err == nil {
		t.Error("retry of a delivered event succeeded")
	}
	if _, err := runCommand(t, env, "audit-events", "list", "--state", "lost"); err == nil {
		t.Error("an unknown state was accepted")
	}

	// The domain's server is away: the next event stays pending, the
	// instance stops, and the one started after it delivers the event.
	proxy.RefusePuts(http.StatusServiceUnavailable)
	second := launchToken()
	waitFor(t, "a failed attempt", func() bool {
		return strings.Contains(listed("--state", "pending"), "HTTP 503")
	})
	if err := inst.stop(); err != nil {
		t.Fatal(err)
	}
	proxy.RefusePuts(0)
	startServe(t, env)
	waitFor(t, "the next instance to deliver it", func() bool { return strings.Contains(listed("--state", "delivered"), second) })
	if n := len(box.Search(t, "AuditEvent")); n != 2 {
		t.Errorf("%d AuditEvents in the domain, want 2", n)
	}
}
