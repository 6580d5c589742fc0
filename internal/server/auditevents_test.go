package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ehealth-nl/portal/internal/auditevent"
	"github.com/ehealth-nl/portal/internal/auditoutbox"
	"github.com/ehealth-nl/portal/internal/faults"
	"github.com/ehealth-nl/portal/internal/fhirdomain"
	"github.com/ehealth-nl/portal/internal/keys"
	"github.com/ehealth-nl/portal/internal/launch"
	"github.com/ehealth-nl/portal/internal/metrics"
	"github.com/ehealth-nl/portal/internal/smart"
)

// auditStack is what withAudit adds: the delivery worker of the stack's
// instance and its outbox.
type auditStack struct {
	worker *auditoutbox.Worker
	store  *auditoutbox.Store
	stop   func() // stops the worker and waits for it
}

// withAudit runs an AuditEvent delivery worker, as serve does, sending
// through the domain reader of withDomain (which must come first), with
// short polls and backoffs; the stack's launches wake it.
func withAudit(dom **domainStack, out **auditStack) stackOption {
	return func(t testing.TB, s *stack, d *Deps) {
		t.Helper()
		a := startWorkerObserved(t, s, (*dom).reader, "instance-1", d.Metrics)
		cfg := domainLaunchConfig(d.PublicURL, (*dom).reader)
		cfg.Reported = a.worker.Wake
		s.launches = launch.NewService(s.pool, s.registry, s.keyring, cfg, s.clock.Now, d.Logger)
		d.Launches = s.launches
		d.AuditEvents = a.store
		*out = a
	}
}

// startWorker starts a delivery worker on the stack's database that sends
// with sender.
func startWorker(t testing.TB, s *stack, sender auditoutbox.Sender, instance string) *auditStack {
	t.Helper()
	return startWorkerObserved(t, s, sender, instance, nil)
}

// startWorkerObserved is startWorker reporting to m, as serve does.
func startWorkerObserved(t testing.TB, s *stack, sender auditoutbox.Sender, instance string, m *metrics.Metrics) *auditStack {
	t.Helper()
	cfg := auditoutbox.Config{Sender: sender, Instance: instance, Poll: 50 * time.Millisecond,
		Lease: 3 * domainTimeout, RetryBase: 50 * time.Millisecond, RetryMax: 400 * time.Millisecond, Clock: s.clock.Now,
		Log: slog.New(slog.NewJSONHandler(s.logs, nil))}
	if m != nil {
		cfg.Observe = m.AuditDelivery
		cfg.ObserveStats = func(st auditoutbox.Stats) { m.AuditOutbox(st.Pending, st.Failed, st.OldestPending) }
	}
	w, err := auditoutbox.NewWorker(s.pool, cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); w.Run(ctx) }()
	var once sync.Once
	stop := func() { once.Do(func() { cancel(); wg.Wait() }) }
	t.Cleanup(stop)
	return &auditStack{worker: w, store: auditoutbox.NewStore(s.pool), stop: stop}
}

// waitForOutbox waits until no event is pending and returns the counts
// by state.
func waitForOutbox(t testing.TB, s *stack, timeout time.Duration) map[string]int {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		counts := map[string]int{}
		rows, err := s.pool.Query(context.Background(), `SELECT state, count(*) FROM audit_events GROUP BY state`)
		if err != nil {
			t.Fatal(err)
		}
		for rows.Next() {
			var state string
			var n int
			if err := rows.Scan(&state, &n); err != nil {
				t.Fatal(err)
			}
			counts[state] = n
		}
		rows.Close()
		if counts["pending"] == 0 || time.Now().After(deadline) {
			return counts
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// apiCallWith is apiCall with extra request headers.
func (s *stack) apiCallWith(t testing.TB, method, path, key, body string, header map[string]string) (int, http.Header, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, s.http.URL+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+key)
	req.Header.Set("Content-Type", "application/json")
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := noRedirects.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, b
}

// wantEvent is what one launch's AuditEvent must say.
type wantEvent struct {
	launchID, outcome, requestID, correlationID, jti string
	task, taskVersion, user, patient                 string
	module                                           bool // the module is known: a destination agent with its address
	recorded                                         time.Time
	desc                                             string // part of outcomeDesc, for a refusal
}

// checkEvent compares an AuditEvent as the FHIR server holds it with what
// the launch says, element by element.
func checkEvent(t *testing.T, got map[string]any, w wantEvent) {
	t.Helper()
	id, err := auditevent.EventID(w.launchID, auditevent.Outcome(w.outcome), w.requestID)
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := json.Marshal(got)
	var e struct {
		ID   string
		Meta struct {
			Profile []string
		}
		Extension   []struct{ URL, ValueID string }
		Type        struct{ System, Code string }
		Subtype     []struct{ System, Code string }
		Action      string
		Recorded    time.Time
		Outcome     string
		OutcomeDesc string
		Agent       []struct {
			Type struct {
				Coding []struct{ System, Code string }
			}
			Who       struct{ Reference, Type string }
			Requestor bool
			Network   *struct{ Address, Type string }
		}
		Source struct {
			Site     string
			Observer struct{ Reference, Type string }
		}
		Entity []struct {
			What struct{ Reference, Type string }
			Type *struct{ System, Code string }
			Role *struct{ System, Code string }
		}
	}
	if err := json.Unmarshal(raw, &e); err != nil {
		t.Fatal(err)
	}
	bad := func(format string, args ...any) {
		t.Errorf("event of launch %s: "+format, append([]any{w.launchID}, args...)...)
	}
	if e.ID != id {
		bad("id %s, want %s", e.ID, id)
	}
	if len(e.Meta.Profile) != 1 || e.Meta.Profile[0] != auditevent.Profile {
		bad("profile %v", e.Meta.Profile)
	}
	ext := map[string]string{}
	for _, x := range e.Extension {
		ext[x.URL] = x.ValueID
	}
	wantExt := map[string]string{}
	for url, v := range map[string]string{auditevent.ExtensionTraceID: w.jti, auditevent.ExtensionRequestID: w.requestID,
		auditevent.ExtensionCorrelationID: w.correlationID} {
		if v != "" {
			wantExt[url] = v
		}
	}
	if fmt.Sprint(ext) != fmt.Sprint(wantExt) {
		bad("extensions %v, want %v", ext, wantExt)
	}
	if e.Type.Code != "110100" || e.Type.System != auditevent.SystemDICOM || len(e.Subtype) != 1 || e.Subtype[0].Code != "110120" || e.Action != "E" {
		bad("type %+v subtype %+v action %s", e.Type, e.Subtype, e.Action)
	}
	if !e.Recorded.Equal(w.recorded.Truncate(time.Millisecond)) {
		bad("recorded %s, want %s", e.Recorded, w.recorded)
	}
	if e.Outcome != w.outcome {
		bad("outcome %s, want %s", e.Outcome, w.outcome)
	}
	if (w.desc == "") != (e.OutcomeDesc == "") || !strings.Contains(e.OutcomeDesc, w.desc) {
		bad("outcomeDesc %q, want one with %q", e.OutcomeDesc, w.desc)
	}
	wantAgents := 1
	if w.module {
		wantAgents = 2
	}
	if len(e.Agent) != wantAgents {
		bad("%d agents, want %d", len(e.Agent), wantAgents)
	} else {
		if a := e.Agent[0]; a.Who.Reference != domainDevice || a.Who.Type != "Device" || !a.Requestor || a.Type.Coding[0].Code != "110151" || a.Network != nil {
			bad("launcher %+v", a)
		}
		if w.module {
			if a := e.Agent[1]; a.Who.Reference != "Device/mod-1" || a.Requestor || a.Type.Coding[0].Code != "110152" ||
				a.Network == nil || a.Network.Address != moduleAddress || a.Network.Type != "5" {
				bad("destination %+v", a)
			}
		}
	}
	if e.Source.Site != testSite || e.Source.Observer.Reference != domainDevice {
		bad("source %+v", e.Source)
	}
	task := w.task
	if w.taskVersion != "" {
		task += "/_history/" + w.taskVersion
	}
	entities := []string{task + " Task -"}
	role := map[string]string{"Patient": "1", "RelatedPerson": "6", "Practitioner": "15"}
	for _, ref := range []string{w.user, w.patient} {
		if ref != "" && (ref != w.user || len(entities) == 1) && !(ref == w.patient && ref == w.user) {
			typ, _, _ := strings.Cut(ref, "/")
			entities = append(entities, ref+" - "+role[typ])
		}
	}
	var gotEntities []string
	for _, en := range e.Entity {
		s := en.What.Reference
		if en.Type != nil {
			s += " " + en.Type.Code
		} else {
			s += " -"
		}
		if en.Role != nil {
			s += " " + en.Role.Code
		} else {
			s += " -"
		}
		gotEntities = append(gotEntities, s)
	}
	if fmt.Sprint(gotEntities) != fmt.Sprint(entities) {
		bad("entities %v, want %v", gotEntities, entities)
	}
}

// TestAuditEvents_EachLaunchReportedOnce: a token handed out, a redeemed
// link (for each role) and a refusal at each stage each give exactly one
// AuditEvent in the domain's FHIR server, which validated it, with every
// element as the launch record says; a link not followed gives none.
func TestAuditEvents_EachLaunchReportedOnce(t *testing.T) {
	var dom *domainStack
	var audit *auditStack
	s := newStack(t, testDB.Fresh(t), keys.ES256, withDomain(&dom), withAudit(&dom, &audit))

	var want []wantEvent
	record := func(launchID string) launch.Record {
		for _, r := range s.domainRecords(t, "") {
			if r.ID == launchID {
				return r
			}
		}
		t.Fatalf("no record of launch %s", launchID)
		return launch.Record{}
	}
	// A token handed out, with the caller's correlation id.
	status, _, body := s.apiCallWith(t, http.MethodPost, "/api/v1/launch-tokens", s.launchKey,
		`{"issuer":"kt","task":"Task/t-patient","user":"Patient/p-1"}`, map[string]string{"X-Request-Id": "req-token-1", "X-Correlation-Id": "portal-page-7"})
	if status != http.StatusCreated {
		t.Fatalf("%d %s", status, body)
	}
	var tok issuedTokenBody
	_ = json.Unmarshal(body, &tok)
	r := record(tok.ID)
	want = append(want, wantEvent{launchID: r.ID, outcome: "0", requestID: "req-token-1", correlationID: "portal-page-7", jti: r.JTI,
		task: "Task/t-patient", taskVersion: r.DomainVersions["Task"], user: "Patient/p-1", module: true, recorded: r.CreatedAt})

	// Links redeemed, for a practitioner, a related person and a care team
	// member: request id the redemption's, correlation id the request that
	// made the link.
	for i, tc := range []struct{ task, user string }{
		{"t-owner", "Practitioner/pr-owner"}, {"t-rp", "RelatedPerson/rp-1"}, {"t-team", "Practitioner/pr-team"},
	} {
		createID := fmt.Sprintf("req-create-%d", i)
		status, _, body := s.apiCallWith(t, http.MethodPost, "/api/v1/launches", s.launchKey,
			fmt.Sprintf(`{"issuer":"kt","task":"Task/%s","user":%q}`, tc.task, tc.user), map[string]string{"X-Request-Id": createID})
		if status != http.StatusCreated {
			t.Fatalf("%d %s", status, body)
		}
		var created launch.Created
		_ = json.Unmarshal(body, &created)
		redeemID := fmt.Sprintf("req-redeem-%d", i)
		if resp, _ := redeem(t, created.LaunchURL, map[string]string{"Sec-Fetch-Site": "same-origin", "X-Request-Id": redeemID}); resp.StatusCode != http.StatusOK {
			t.Fatalf("redeem %s: %d", tc.task, resp.StatusCode)
		}
		r := record(created.ID)
		want = append(want, wantEvent{launchID: r.ID, outcome: "0", requestID: redeemID, correlationID: createID, jti: r.JTI,
			task: "Task/" + tc.task, taskVersion: r.DomainVersions["Task"], user: tc.user, patient: "Patient/p-1", module: true,
			recorded: *r.RedeemedAt})
	}
	// A link not followed: no event (no module was started).
	notFollowed := s.createLaunch(t, map[string]string{"issuer": "kt", "task": "Task/t-patient", "user": "Patient/p-1"})
	_ = notFollowed

	// Refused by authorization (4): the module is known. Refused at
	// resolution (8): the Task leads to no module.
	for _, tc := range []struct {
		task, user, outcome, rule string
		module                    bool
	}{
		{"t-owner", "Practitioner/pr-other", "4", "not-owner", true},
		{"t-nodef", "Patient/p-1", "8", "definition-not-found", false},
		{"t-team", "Practitioner/pr-owner", "4", "careteam-not-member", true},
		{"t-other-patient", "Patient/p-1", "4", "task-other-patient", true},
	} {
		reqID := "req-refused-" + tc.rule
		status, _, body := s.apiCallWith(t, http.MethodPost, "/api/v1/launch-tokens", s.launchKey,
			fmt.Sprintf(`{"issuer":"kt","task":"Task/%s","user":%q}`, tc.task, tc.user), map[string]string{"X-Request-Id": reqID})
		p := problemOf(t, body)
		if status/100 != 4 || p.LaunchID == "" {
			t.Fatalf("%s: %d %s", tc.rule, status, body)
		}
		r := record(p.LaunchID)
		w := wantEvent{launchID: r.ID, outcome: tc.outcome, requestID: reqID, task: "Task/" + tc.task, taskVersion: r.DomainVersions["Task"],
			user: tc.user, module: tc.module, recorded: r.CreatedAt, desc: tc.rule}
		if r.Patient != "" && r.Patient != tc.user {
			w.patient = r.Patient
		}
		want = append(want, w)
	}

	counts := waitForOutbox(t, s, 20*time.Second)
	if counts["delivered"] != len(want) || counts["pending"] != 0 || counts["failed"] != 0 {
		t.Fatalf("outbox %v, want %d delivered", counts, len(want))
	}
	events := dom.box.Search(t, "AuditEvent")
	if len(events) != len(want) {
		t.Fatalf("%d AuditEvents in the domain, want %d", len(events), len(want))
	}
	byID := map[string]map[string]any{}
	for _, e := range events {
		byID[e["id"].(string)] = e
	}
	for _, w := range want {
		id, _ := auditevent.EventID(w.launchID, auditevent.Outcome(w.outcome), w.requestID)
		got, ok := byID[id]
		if !ok {
			t.Errorf("no AuditEvent %s for launch %s (outcome %s)", id, w.launchID, w.outcome)
			continue
		}
		checkEvent(t, got, w)
		if n := historyLength(t, dom, id); n != 1 {
			t.Errorf("AuditEvent %s has %d versions: it was written more than once", id, n)
		}
	}
}

// historyLength is how many versions the domain holds of an AuditEvent:
// one per PUT that reached it.
func historyLength(t testing.TB, dom *domainStack, id string) int {
	t.Helper()
	entries, _ := dom.box.Read(t, "AuditEvent/"+id+"/_history")["entry"].([]any)
	return len(entries)
}

// newFHIRFaults puts an HTTP fault proxy in front of the test domain's
// FHIR server (fhirBase), for a worker's writes; FHIR base of the proxy
// is its URL + "/fhir".
func newFHIRFaults(t testing.TB, fhirBase string) *faults.HTTPProxy {
	t.Helper()
	p, err := faults.NewHTTPProxy(strings.TrimSuffix(fhirBase, "/fhir"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	return p
}

// senderVia is a domain client of the stack's keyring that writes through
// the FHIR base base instead of the issuer's.
func senderVia(t testing.TB, s *stack, base string) *fhirdomain.Client {
	t.Helper()
	tokens, err := smart.New(smart.Config{Signers: s.keyring, Timeout: domainTimeout})
	if err != nil {
		t.Fatal(err)
	}
	c, err := fhirdomain.New(fhirdomain.Config{BaseURL: func(string) (string, bool) { return base, true }, Tokens: tokens, Timeout: domainTimeout})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// issueTokens hands out n launch tokens of the domain issuer and returns
// their launch ids.
func issueTokens(t testing.TB, s *stack, n int) []string {
	t.Helper()
	ids := make([]string, 0, n)
	for range n {
		status, body := s.domainLaunch(t, "/api/v1/launch-tokens", map[string]string{"task": "Task/t-patient", "user": "Patient/p-1"})
		if status != http.StatusCreated {
			t.Fatalf("%d %s", status, body)
		}
		var tok issuedTokenBody
		_ = json.Unmarshal(body, &tok)
		ids = append(ids, tok.ID)
	}
	return ids
}

// eventsInDomain counts the AuditEvents the domain holds, by id.
func eventsInDomain(t testing.TB, dom *domainStack) map[string]int {
	t.Helper()
	n := map[string]int{}
	for _, e := range dom.box.Search(t, "AuditEvent") {
		n[e["id"].(string)]++
	}
	return n
}

// TestAuditEvents_OutageDelaysDeliveryNotLaunches: while the domain is cut
// off and then black-holed, links made before redeem as usual and their
// events wait, retried with backoff; once it is back every event arrives,
// exactly one AuditEvent per launch.
func TestAuditEvents_OutageDelaysDeliveryNotLaunches(t *testing.T) {
	var dom *domainStack
	var audit *auditStack
	s := newStack(t, testDB.Fresh(t), keys.ES256, withDomain(&dom), withAudit(&dom, &audit))
	var links []string
	for range 6 {
		links = append(links, s.createLaunch(t, map[string]string{"issuer": "kt", "task": "Task/t-team", "user": "Practitioner/pr-team"}))
	}
	dom.proxy.Cut()
	for i, link := range links {
		if i == 3 {
			dom.proxy.BlackHole()
		}
		if resp, _ := redeem(t, link, map[string]string{"Sec-Fetch-Site": "same-origin"}); resp.StatusCode != http.StatusOK {
			t.Fatalf("redeem during the outage: %d", resp.StatusCode)
		}
	}
	// A launch that needs the domain is refused for now, and writes
	// nothing: no launch, no event.
	before := countRows(t, s, "audit_events")
	if status, body := s.domainLaunch(t, "/api/v1/launch-tokens", map[string]string{"task": "Task/t-patient", "user": "Patient/p-1"}); status != http.StatusServiceUnavailable {
		t.Fatalf("launch during the outage: %d %s", status, body)
	}
	if after := countRows(t, s, "audit_events"); after != before {
		t.Errorf("a launch refused for the outage wrote %d events", after-before)
	}
	// The worker keeps trying, and keeps them pending.
	deadline := time.Now().Add(10 * time.Second)
	for countRowsWhere(t, s, "audit_events", "state = 'pending' AND attempts >= 2") < len(links) && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if n := countRowsWhere(t, s, "audit_events", "state = 'pending' AND attempts >= 2 AND last_error IS NOT NULL"); n != len(links) {
		t.Fatalf("%d of %d events pending with two failed attempts during the outage", n, len(links))
	}
	if err := dom.proxy.Restore(); err != nil {
		t.Fatal(err)
	}
	counts := waitForOutbox(t, s, 30*time.Second)
	if counts["delivered"] != len(links) {
		t.Fatalf("after the outage: %v, want %d delivered", counts, len(links))
	}
	inDomain := eventsInDomain(t, dom)
	if len(inDomain) != len(links) {
		t.Errorf("%d AuditEvents in the domain, want %d (one per launch)", len(inDomain), len(links))
	}
	for id, n := range inDomain {
		if n != 1 {
			t.Errorf("AuditEvent %s is there %d times", id, n)
		}
	}
}

// TestAuditEvents_LostAnswerMakesNoDuplicate: the server stores an event
// and its answer is lost; the worker sends it again under the same id, so
// the domain holds one AuditEvent (in two versions), not two.
func TestAuditEvents_LostAnswerMakesNoDuplicate(t *testing.T) {
	var dom *domainStack
	s := newStack(t, testDB.Fresh(t), keys.ES256, withDomain(&dom))
	proxy := newFHIRFaults(t, dom.box.FHIRBase)
	proxy.LoseAnswers(2)
	ids := issueTokens(t, s, 3)
	startWorker(t, s, senderVia(t, s, proxy.URL()+"/fhir"), "instance-1")
	if counts := waitForOutbox(t, s, 20*time.Second); counts["delivered"] != len(ids) {
		t.Fatalf("outbox %v", counts)
	}
	if lost := proxy.Lost(); len(lost) != 2 {
		t.Fatalf("%d answers lost, want 2", len(lost))
	}
	inDomain := eventsInDomain(t, dom)
	if len(inDomain) != len(ids) {
		t.Fatalf("%d AuditEvents for %d launches: %v", len(inDomain), len(ids), inDomain)
	}
	versions := 0
	for id := range inDomain {
		versions += historyLength(t, dom, id)
	}
	if versions != len(ids)+2 {
		t.Errorf("%d versions in all, want %d: each lost answer was followed by one PUT of the same id", versions, len(ids)+2)
	}
}

// TestAuditEvents_InvalidEventFails: an event the FHIR server refuses as
// invalid (here: its type removed on the way) ends failed, with the
// server's OperationOutcome in the outbox and the API, and a warning in
// the log; a retry after the cause is gone delivers it.
func TestAuditEvents_InvalidEventFails(t *testing.T) {
	var dom *domainStack
	s := newStack(t, testDB.Fresh(t), keys.ES256, withDomain(&dom))
	proxy := newFHIRFaults(t, dom.box.FHIRBase)
	proxy.CorruptPuts(func(e map[string]any) { delete(e, "type") })
	ids := issueTokens(t, s, 1)
	w := startWorker(t, s, senderVia(t, s, proxy.URL()+"/fhir"), "instance-1")
	counts := waitForOutbox(t, s, 20*time.Second)
	if counts["failed"] != 1 {
		t.Fatalf("outbox %v, want one failed", counts)
	}
	status, _, body := s.apiCall(t, http.MethodGet, "/api/v1/audit-events?state=failed", s.adminKey, "", "")
	var page auditoutbox.Page
	if err := json.Unmarshal(body, &page); status != http.StatusOK || err != nil || len(page.Events) != 1 {
		t.Fatalf("%d %s", status, body)
	}
	e := page.Events[0]
	var oo struct {
		ResourceType string
		Issue        []struct{ Severity, Code string }
	}
	_ = json.Unmarshal(e.OperationOutcome, &oo)
	if e.LaunchID != ids[0] || e.LastStatus != http.StatusBadRequest || e.Attempts != 1 || e.FailedAt == nil ||
		oo.ResourceType != "OperationOutcome" || len(oo.Issue) == 0 || oo.Issue[0].Severity != "error" || !strings.Contains(e.LastError, "type") {
		t.Fatalf("failed event %+v, outcome %s", e, e.OperationOutcome)
	}
	if !strings.Contains(s.logs.String(), `"msg":"audit event failed for good`) {
		t.Error("no warning in the log")
	}
	// Failed is for good: nothing more is sent.
	time.Sleep(300 * time.Millisecond)
	if n := countRowsWhere(t, s, "audit_events", "state = 'failed' AND attempts = 1"); n != 1 {
		t.Errorf("a failed event was attempted again")
	}
	proxy.CorruptPuts(nil)
	if err := w.store.Retry(context.Background(), e.ID, s.clock.Now()); err != nil {
		t.Fatal(err)
	}
	if err := w.store.Retry(context.Background(), e.ID, s.clock.Now()); !errors.Is(err, auditoutbox.ErrNotFailed) {
		t.Errorf("retry of a pending event: %v", err)
	}
	w.worker.Wake()
	if counts := waitForOutbox(t, s, 20*time.Second); counts["delivered"] != 1 {
		t.Fatalf("after the retry: %v", counts)
	}
	if len(eventsInDomain(t, dom)) != 1 {
		t.Error("the retried event is not in the domain")
	}
}

// TestAuditEvents_DeadInstanceLeavesNothingBehind: events written while no
// worker ran (an instance killed right after its launches) are delivered
// by the next worker to start; an event a worker took and then died with
// (its lease not released) is delivered by another once the lease ends.
func TestAuditEvents_DeadInstanceLeavesNothingBehind(t *testing.T) {
	var dom *domainStack
	s := newStack(t, testDB.Fresh(t), keys.ES256, withDomain(&dom))
	ids := issueTokens(t, s, 4)
	// A worker took two and died before it could say how they went: their
	// lease runs for a minute.
	lease := time.Minute
	tag, err := s.pool.Exec(context.Background(), `UPDATE audit_events SET next_attempt_at = $1, leased_by = 'serve:dead:1',
		attempts = attempts + 1 WHERE launch_id = ANY($2::uuid[])`, s.clock.Now().Add(lease), ids[:2])
	if err != nil || tag.RowsAffected() != 2 {
		t.Fatalf("lease: %v %v", err, tag)
	}
	startWorker(t, s, dom.reader, "instance-2")
	deadline := time.Now().Add(20 * time.Second)
	for countRowsWhere(t, s, "audit_events", "state = 'delivered'") < 2 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if n := countRowsWhere(t, s, "audit_events", "state = 'delivered' AND leased_by = 'instance-2'"); n != 2 {
		t.Fatalf("%d of the events no worker held delivered, want 2", n)
	}
	time.Sleep(200 * time.Millisecond)
	if n := countRowsWhere(t, s, "audit_events", "state = 'pending' AND leased_by = 'serve:dead:1'"); n != 2 {
		t.Fatalf("%d events still leased by the dead worker, want 2: a lease must hold until it ends", n)
	}
	s.clock.Advance(lease)
	if counts := waitForOutbox(t, s, 20*time.Second); counts["delivered"] != len(ids) {
		t.Fatalf("after the lease: %v", counts)
	}
	if len(eventsInDomain(t, dom)) != len(ids) {
		t.Error("not every event is in the domain")
	}
}

// TestAuditEvents_ThreeInstancesDeliverEachOnce: three workers start
// together on an outbox of 40 events; each event is sent once (one version
// in the domain), whoever takes it.
func TestAuditEvents_ThreeInstancesDeliverEachOnce(t *testing.T) {
	var dom *domainStack
	s := newStack(t, testDB.Fresh(t), keys.ES256, withDomain(&dom))
	ids := issueTokens(t, s, 40)
	b, c := s.secondInstance(t), s.secondInstance(t)
	for i, inst := range []*stack{s, b, c} {
		startWorker(t, inst, newDomainReader(t, inst.keyring, metrics.New(nil, nil, time.Now)), fmt.Sprintf("instance-%d", i+1))
	}
	if counts := waitForOutbox(t, s, 30*time.Second); counts["delivered"] != len(ids) {
		t.Fatalf("outbox %v", counts)
	}
	inDomain := eventsInDomain(t, dom)
	if len(inDomain) != len(ids) {
		t.Fatalf("%d AuditEvents for %d launches", len(inDomain), len(ids))
	}
	for id := range inDomain {
		if n := historyLength(t, dom, id); n != 1 {
			t.Errorf("AuditEvent %s was written %d times", id, n)
		}
	}
	rows, err := s.pool.Query(context.Background(), `SELECT leased_by, count(*) FROM audit_events GROUP BY leased_by ORDER BY 1`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	for rows.Next() {
		var by string
		var n int
		_ = rows.Scan(&by, &n)
		t.Logf("%s delivered %d", by, n)
	}
}

// TestAuditEvents_PruneOnlyDelivered: pruning deletes delivered events
// older than the cutoff, and never a pending or failed one, however old;
// the launch records stay.
func TestAuditEvents_PruneOnlyDelivered(t *testing.T) {
	var dom *domainStack
	s := newStack(t, testDB.Fresh(t), keys.ES256, withDomain(&dom))
	ids := issueTokens(t, s, 4)
	ctx := context.Background()
	old := s.clock.Now().Add(-48 * time.Hour)
	for _, q := range []struct {
		sql string
		id  string
	}{
		{`UPDATE audit_events SET state = 'delivered', delivered_at = $2 WHERE launch_id = $1`, ids[0]},
		{`UPDATE audit_events SET state = 'delivered', delivered_at = $2::timestamptz + interval '47 hours' WHERE launch_id = $1`, ids[1]},
		{`UPDATE audit_events SET state = 'failed', failed_at = $2, created_at = $2 WHERE launch_id = $1`, ids[2]},
		{`UPDATE audit_events SET created_at = $2 WHERE launch_id = $1`, ids[3]},
	} {
		if _, err := s.pool.Exec(ctx, q.sql, q.id, old); err != nil {
			t.Fatal(err)
		}
	}
	n, err := auditoutbox.NewStore(s.pool).Prune(ctx, s.clock.Now().Add(-24*time.Hour), 1)
	if err != nil || n != 1 {
		t.Fatalf("pruned %d, %v; want the one delivered two days ago", n, err)
	}
	if countRowsWhere(t, s, "audit_events", fmt.Sprintf("launch_id = '%s'", ids[0])) != 0 || countRows(t, s, "audit_events") != 3 {
		t.Error("pruned the wrong events")
	}
	if countRows(t, s, "launches") != len(ids) {
		t.Error("a launch record went with its event")
	}
}
