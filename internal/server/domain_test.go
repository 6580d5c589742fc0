package server

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ehealth-nl/portal/internal/adminevents"
	"github.com/ehealth-nl/portal/internal/faults"
	"github.com/ehealth-nl/portal/internal/fhirdomain"
	"github.com/ehealth-nl/portal/internal/keys"
	"github.com/ehealth-nl/portal/internal/launch"
	"github.com/ehealth-nl/portal/internal/metrics"
	"github.com/ehealth-nl/portal/internal/smart"
	"github.com/ehealth-nl/portal/internal/testdomain"
	"github.com/ehealth-nl/portal/pkg/hti"
)

// The issuer of the domain tests: it joined the test domain as client
// portal-kt, with its own Device there.
const (
	domainIssuer   = "kt"
	domainClientID = "portal-kt"
	domainDevice   = "Device/portal-kt"
	domainTimeout  = time.Second
	moduleAddress  = "https://module.example.org/kt/launch"
	testSite       = "portal.test.example"
)

// domainStack is what withDomain adds to a stack: the running test domain,
// the fault proxy in front of it, and the domain reader the launches use.
type domainStack struct {
	box    *testdomain.Domain
	proxy  *faults.Proxy
	reader *fhirdomain.Client
}

// withDomain starts a Koppeltaal test domain behind a fault proxy, adds the
// issuer kt that joined it (ES384, its JWKS registered for portal-kt), and
// makes the stack's launches read it. The domain holds domainFixtures.
func withDomain(out **domainStack) stackOption {
	return func(t testing.TB, s *stack, d *Deps) {
		t.Helper()
		ctx := adminevents.WithActor(operatorContext(), "cli:test@localhost")
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := ln.Addr().(*net.TCPAddr).Port
		_ = ln.Close()
		proxy, err := faults.NewProxy(fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(proxy.Close)
		box := testdomain.StartWith(t, testdomain.Options{Port: port, PublicOrigin: "http://" + proxy.Addr(),
			Clients: []testdomain.Client{{ID: domainClientID, JWKSURL: d.PublicURL + "/issuers/" + domainIssuer + "/jwks.json"}}})
		store := keys.NewStore(s.pool)
		is := keys.Issuer{Slug: domainIssuer, ClientID: domainClientID, FHIRBaseURL: box.FHIRBase, Profile: keys.ProfileKoppeltaal,
			Alg: keys.ES384, RSABits: 2048, Device: domainDevice,
			Policy: keys.Policy{RotationPeriod: 24 * time.Hour, PublishLead: time.Hour, RetireGrace: time.Hour}}
		if err := store.CreateIssuer(ctx, is, s.clock.Now()); err != nil {
			t.Fatal(err)
		}
		if _, err := s.rotator.EnsureKeys(ctx, domainIssuer); err != nil {
			t.Fatal(err)
		}
		if err := s.keyring.Refresh(ctx); err != nil {
			t.Fatal(err)
		}
		box.Seed(t, domainFixtures()...)
		reader := newDomainReader(t, s.keyring, d.Metrics)
		s.launches = launch.NewService(s.pool, s.registry, s.keyring, domainLaunchConfig(d.PublicURL, reader), s.clock.Now, d.Logger)
		d.Launches, d.Domain = s.launches, reader
		*out = &domainStack{box: box, proxy: proxy, reader: reader}
	}
}

func domainLaunchConfig(publicURL string, reader *fhirdomain.Client) launch.Config {
	return launch.Config{PublicURL: publicURL, TokenLifetime: 300 * time.Second, TicketLifetime: 120 * time.Second,
		IATBackdate: 5 * time.Second, Domain: reader, Site: testSite}
}

// newDomainReader is the domain reader as serve builds it: the SMART
// client signing with the keyring (on the real clock: the auth server
// checks the assertion's times), and the FHIR reads with its tokens.
func newDomainReader(t testing.TB, keyring *keys.Keyring, m *metrics.Metrics) *fhirdomain.Client {
	t.Helper()
	return newDomainReaderTTL(t, keyring, m, 0)
}

// newDomainReaderTTL is newDomainReader with a cache TTL (0: the default;
// negative: no cache).
func newDomainReaderTTL(t testing.TB, keyring *keys.Keyring, m *metrics.Metrics, ttl time.Duration) *fhirdomain.Client {
	t.Helper()
	tokens, err := smart.New(smart.Config{Signers: keyring, Timeout: domainTimeout,
		Observe: func(e smart.Event) { m.DomainToken(e.Issuer, string(e.Outcome)) }})
	if err != nil {
		t.Fatal(err)
	}
	reader, err := fhirdomain.New(fhirdomain.Config{
		BaseURL: func(issuer string) (string, bool) {
			is, err := keyring.Issuer(issuer)
			return is.FHIRBaseURL, err == nil
		},
		Tokens: tokens, Timeout: domainTimeout, CacheTTL: ttl,
		Observe:        func(r string, o fhirdomain.CacheOutcome) { m.DomainCache(r, string(o)) },
		ObserveRequest: func(r string, o fhirdomain.RequestOutcome) { m.DomainRequest(r, string(o)) },
	})
	if err != nil {
		t.Fatal(err)
	}
	return reader
}

// domainFixtures is the test domain's content: one module (Device/mod-1,
// its https Endpoint, ActivityDefinition/ad-1), patients, practitioners,
// related persons, a CareTeam, and a Task for each case.
func domainFixtures() []any {
	td := testdomain.Task
	return []any{
		testdomain.Patient("p-1"), testdomain.Patient("p-2"),
		testdomain.Practitioner("pr-owner"), testdomain.Practitioner("pr-team"), testdomain.Practitioner("pr-other"),
		testdomain.RelatedPerson("rp-1", "Patient/p-1", "true"),
		testdomain.RelatedPerson("rp-team", "Patient/p-1", ""),
		testdomain.RelatedPerson("rp-inactive", "Patient/p-1", "false"),
		testdomain.RelatedPerson("rp-other", "Patient/p-2", "true"),
		testdomain.CareTeam("ct-1", "active", "Patient/p-1", "Practitioner/pr-team", "RelatedPerson/rp-team", "RelatedPerson/rp-inactive", "RelatedPerson/rp-other"),
		testdomain.CareTeam("ct-off", "inactive", "Patient/p-1", "Practitioner/pr-team"),

		testdomain.Device("mod-1", "active", "module-1"),
		testdomain.Device("mod-off", "inactive", "module-off"),
		testdomain.Endpoint("ep-1", "active", "hti-smart-on-fhir", moduleAddress),
		testdomain.Endpoint("ep-off", "off", "hti-smart-on-fhir", moduleAddress),
		testdomain.Endpoint("ep-http", "active", "hti-smart-on-fhir", "http://module.example.org/launch"),
		testdomain.Endpoint("ep-query", "active", "hti-smart-on-fhir", "https://module.example.org/launch?launch=x"),
		testdomain.ActivityDefinition("ad-1", "active", "Device/mod-1", "ep-1"),
		testdomain.ActivityDefinition("ad-noep", "active", "Device/mod-1"),
		testdomain.ActivityDefinition("ad-epoff", "active", "Device/mod-1", "ep-off"),
		testdomain.ActivityDefinition("ad-http", "active", "Device/mod-1", "ep-http"),
		testdomain.ActivityDefinition("ad-query", "active", "Device/mod-1", "ep-query"),
		testdomain.ActivityDefinition("ad-nodev", "active", "", "ep-1"),
		testdomain.ActivityDefinition("ad-devoff", "active", "Device/mod-off", "ep-1"),
		testdomain.ActivityDefinition("ad-retired", "retired", "Device/mod-1", "ep-1"),

		td("t-patient", "ready", "order", "Patient/p-1", "Patient/p-1", "ActivityDefinition/ad-1"),
		td("t-owner", "in-progress", "plan", "Patient/p-1", "Practitioner/pr-owner", "ActivityDefinition/ad-1"),
		td("t-team", "ready", "proposal", "Patient/p-1", "CareTeam/ct-1", "ActivityDefinition/ad-1"),
		td("t-team-off", "ready", "order", "Patient/p-1", "CareTeam/ct-off", "ActivityDefinition/ad-1"),
		td("t-rp", "ready", "order", "Patient/p-1", "RelatedPerson/rp-1", "ActivityDefinition/ad-1"),
		td("t-other-patient", "ready", "order", "Patient/p-2", "Patient/p-1", "ActivityDefinition/ad-1"),
		td("t-done", "completed", "order", "Patient/p-1", "Patient/p-1", "ActivityDefinition/ad-1"),
		td("t-cancelled", "cancelled", "order", "Patient/p-1", "Patient/p-1", "ActivityDefinition/ad-1"),
		td("t-canonical", "ready", "order", "Patient/p-1", "Patient/p-1", "https://module.example/fhir/ActivityDefinition/ad-1"),

		td("t-noinst", "ready", "order", "Patient/p-1", "Patient/p-1", ""),
		td("t-noep", "ready", "order", "Patient/p-1", "Patient/p-1", "ActivityDefinition/ad-noep"),
		td("t-epoff", "ready", "order", "Patient/p-1", "Patient/p-1", "ActivityDefinition/ad-epoff"),
		td("t-http", "ready", "order", "Patient/p-1", "Patient/p-1", "ActivityDefinition/ad-http"),
		td("t-query", "ready", "order", "Patient/p-1", "Patient/p-1", "ActivityDefinition/ad-query"),
		td("t-nodev", "ready", "order", "Patient/p-1", "Patient/p-1", "ActivityDefinition/ad-nodev"),
		td("t-devoff", "ready", "order", "Patient/p-1", "Patient/p-1", "ActivityDefinition/ad-devoff"),
		td("t-retired", "ready", "order", "Patient/p-1", "Patient/p-1", "ActivityDefinition/ad-retired"),
		td("t-nodef", "ready", "order", "Patient/p-1", "Patient/p-1", "ActivityDefinition/missing"),

		// More rules: a Task without a patient, one for a Group, CareTeams
		// that are missing or for another patient, a module Device without
		// a client_id, two active definitions behind one canonical url.
		testdomain.CareTeam("ct-p2", "active", "Patient/p-2", "Practitioner/pr-team", "RelatedPerson/rp-1"),
		testdomain.Device("mod-noid", "active", ""),
		testdomain.ActivityDefinition("ad-noid", "active", "Device/mod-noid", "ep-1"),
		withURL(testdomain.ActivityDefinition("ad-dup-a", "active", "Device/mod-1", "ep-1"), dupDefinitionURL),
		withURL(testdomain.ActivityDefinition("ad-dup-b", "active", "Device/mod-1", "ep-1"), dupDefinitionURL),
		td("t-nopatient", "ready", "order", "", "Patient/p-1", "ActivityDefinition/ad-1"),
		td("t-group", "ready", "order", "Group/g-1", "Patient/p-1", "ActivityDefinition/ad-1"),
		td("t-team-missing", "ready", "order", "Patient/p-1", "CareTeam/ct-missing", "ActivityDefinition/ad-1"),
		td("t-team-p2", "ready", "order", "Patient/p-1", "CareTeam/ct-p2", "ActivityDefinition/ad-1"),
		td("t-noid", "ready", "order", "Patient/p-1", "Patient/p-1", "ActivityDefinition/ad-noid"),
		td("t-dup", "ready", "order", "Patient/p-1", "Patient/p-1", dupDefinitionURL),
	}
}

// dupDefinitionURL is the canonical url two active ActivityDefinitions of
// domainFixtures share.
const dupDefinitionURL = "https://module.example/fhir/ActivityDefinition/dup"

// withURL sets a fixture's canonical url.
func withURL(resource map[string]any, url string) map[string]any {
	resource["url"] = url
	return resource
}

// domainLaunch asks the stack for a launch token of the domain issuer.
func (s *stack) domainLaunch(t testing.TB, path string, req map[string]string) (int, []byte) {
	t.Helper()
	if _, ok := req["issuer"]; !ok {
		req["issuer"] = domainIssuer
	}
	b, _ := json.Marshal(req)
	status, _, body := s.apiCall(t, http.MethodPost, path, s.launchKey, "application/json", string(b))
	return status, body
}

func problemOf(t testing.TB, body []byte) Problem {
	t.Helper()
	var p Problem
	if err := json.Unmarshal(body, &p); err != nil {
		t.Fatalf("not a problem: %s", body)
	}
	return p
}

// domainRecords lists the audit trail of the domain issuer.
func (s *stack) domainRecords(t testing.TB, query string) []launch.Record {
	t.Helper()
	status, _, body := s.apiCall(t, http.MethodGet, "/api/v1/launches?issuer="+domainIssuer+query, s.adminKey, "", "")
	if status != http.StatusOK {
		t.Fatalf("list launches: %d %s", status, body)
	}
	var page launch.Page
	if err := json.Unmarshal(body, &page); err != nil {
		t.Fatal(err)
	}
	return page.Records
}

// TestDomainLaunch_EachRoleAllowed launches a Task given only task and user
// for each role and rule that allows it, verifies the token with the
// issuer's JWKS over HTTP, and checks every claim and form field against
// what the domain holds, and the launch record against what was read.
func TestDomainLaunch_EachRoleAllowed(t *testing.T) {
	var dom *domainStack
	s := newStack(t, testDB.Fresh(t), keys.ES256, withDomain(&dom))
	v, err := hti.NewVerifier(hti.VerifierConfig{JWKSURL: s.http.URL + "/issuers/kt/jwks.json", Issuer: domainClientID, Audience: "Device/mod-1"})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		task, user, intent, rule string
	}{
		{"t-patient", "Patient/p-1", "order", "owner"},
		{"t-canonical", "Patient/p-1", "order", "owner"},
		{"t-owner", "Practitioner/pr-owner", "plan", "owner"},
		{"t-team", "Practitioner/pr-team", "proposal", "careteam:ct-1"},
		{"t-rp", "RelatedPerson/rp-1", "order", "owner"},
		{"t-team", "RelatedPerson/rp-team", "proposal", "careteam:ct-1"},
	} {
		t.Run(tc.task+" "+tc.user, func(t *testing.T) {
			status, body := s.domainLaunch(t, "/api/v1/launch-tokens", map[string]string{"task": "Task/" + tc.task, "user": tc.user, "idp_hint": "digid"})
			if status != http.StatusCreated {
				t.Fatalf("%d %s", status, body)
			}
			var got issuedTokenBody
			if err := json.Unmarshal(body, &got); err != nil {
				t.Fatal(err)
			}
			claims, err := v.Verify(context.Background(), got.Token)
			if err != nil {
				t.Fatalf("the token does not verify: %v", err)
			}
			want := hti.Claims{Issuer: domainClientID, Audience: "Device/mod-1", Subject: tc.user, Resource: "Task/" + tc.task,
				Definition: "ActivityDefinition/ad-1", Intent: tc.intent, HTIVersion: hti.Version, IDPHint: "digid",
				JTI: claims.JTI, IssuedAt: claims.IssuedAt, ExpiresAt: claims.ExpiresAt}
			if tc.user != "Patient/p-1" {
				want.Patient = "Patient/p-1"
			}
			if *claims != want {
				t.Errorf("claims\n got %+v\nwant %+v", *claims, want)
			}
			if got.URL != moduleAddress || got.Method != "post" || got.Fields["iss"] != dom.box.FHIRBase || got.Fields["launch"] != got.Token || len(got.Fields) != 2 {
				t.Errorf("form: %s %s %v", got.URL, got.Method, got.Fields)
			}
			recs := s.domainRecords(t, "&task=Task/"+tc.task+"&user="+tc.user)
			if len(recs) != 1 {
				t.Fatalf("%d records", len(recs))
			}
			r := recs[0]
			if r.Source != "domain" || r.Outcome != "accepted" || r.Module != "Device/mod-1" || r.Audience != "Device/mod-1" ||
				r.Endpoint != "Endpoint/ep-1" || r.LaunchURL != moduleAddress || r.AuthorizedBy != tc.rule || r.Patient != "Patient/p-1" ||
				r.JTI != claims.JTI || r.RequestID == "" {
				t.Errorf("record %+v", r)
			}
			for _, typ := range []string{"Task", "ActivityDefinition", "Endpoint", "Device"} {
				if r.DomainVersions[typ] == "" {
					t.Errorf("record has no version of the %s read: %v", typ, r.DomainVersions)
				}
			}
			if strings.HasPrefix(tc.rule, "careteam:") && r.DomainVersions["CareTeam"] == "" {
				t.Errorf("record has no CareTeam version: %v", r.DomainVersions)
			}
		})
	}

	// A launch link for a domain Task redeems like any other; the module
	// registry plays no part.
	status, body := s.domainLaunch(t, "/api/v1/launches", map[string]string{"task": "Task/t-team", "user": "Practitioner/pr-team"})
	if status != http.StatusCreated {
		t.Fatalf("%d %s", status, body)
	}
	var created launch.Created
	_ = json.Unmarshal(body, &created)
	resp, page := redeem(t, created.LaunchURL, map[string]string{"Sec-Fetch-Site": "same-origin"})
	fields := formFields(t, page)
	if resp.StatusCode != http.StatusOK || fields["iss"] != dom.box.FHIRBase || !strings.Contains(string(page), moduleAddress) {
		t.Fatalf("redeem: %d %v", resp.StatusCode, fields)
	}
	claims, err := v.Verify(context.Background(), fields["launch"])
	if err != nil || claims.Subject != "Practitioner/pr-team" || claims.Patient != "Patient/p-1" || claims.Intent != "proposal" {
		t.Fatalf("redeemed token: %+v %v", claims, err)
	}
}

// TestDomainLaunch_RefusedByEachRule: a user the domain does not allow is a
// 403 naming the rule, and a Task that leads to no launchable module a 422
// naming its rule; each writes one refused launch record and no link.
func TestDomainLaunch_RefusedByEachRule(t *testing.T) {
	var dom *domainStack
	s := newStack(t, testDB.Fresh(t), keys.ES256, withDomain(&dom))
	for _, tc := range []struct {
		task, user string
		status     int
		rule       string
	}{
		{"t-patient", "Patient/p-2", 403, "not-owner"},
		{"t-other-patient", "Patient/p-1", 403, "task-other-patient"},
		{"t-owner", "Practitioner/pr-other", 403, "not-owner"},
		{"t-team", "Practitioner/pr-other", 403, "careteam-not-member"},
		{"t-team-off", "Practitioner/pr-team", 403, "careteam-inactive"},
		{"t-rp", "RelatedPerson/rp-team", 403, "not-owner"},
		{"t-team", "RelatedPerson/rp-inactive", 403, "related-person-inactive"},
		{"t-team", "RelatedPerson/rp-other", 403, "related-person-other-patient"},
		{"t-team", "RelatedPerson/rp-missing", 403, "related-person-not-found"},
		{"t-done", "Patient/p-1", 403, "task-completed"},
		{"t-cancelled", "Patient/p-1", 403, "task-status"},
		{"t-missing", "Patient/p-1", 422, "task-not-found"},
		{"t-noinst", "Patient/p-1", 422, "no-instantiates"},
		{"t-nodef", "Patient/p-1", 422, "definition-not-found"},
		{"t-retired", "Patient/p-1", 422, "definition-not-active"},
		{"t-noep", "Patient/p-1", 422, "no-endpoint"},
		{"t-epoff", "Patient/p-1", 422, "no-endpoint"},
		{"t-http", "Patient/p-1", 422, "endpoint-not-https"},
		{"t-query", "Patient/p-1", 422, "endpoint-address"},
		{"t-nodev", "Patient/p-1", 422, "no-device"},
		{"t-devoff", "Patient/p-1", 422, "device-inactive"},
		{"t-nopatient", "Patient/p-1", 422, "task-no-patient"},
		{"t-group", "Patient/p-1", 422, "bad-reference"},
		{"t-team-missing", "Practitioner/pr-team", 403, "careteam-not-found"},
		// A related person's CareTeam must be for their patient (a
		// practitioner's need not: TOP-KT-013 asks only membership).
		{"t-team-p2", "RelatedPerson/rp-1", 403, "careteam-other-patient"},
		{"t-noid", "Patient/p-1", 422, "device-no-client-id"},
		{"t-dup", "Patient/p-1", 422, "definition-ambiguous"},
	} {
		for _, path := range []string{"/api/v1/launches", "/api/v1/launch-tokens"} {
			t.Run(tc.task+" "+tc.user+" "+path, func(t *testing.T) {
				before := countRows(t, s, "launches")
				status, body := s.domainLaunch(t, path, map[string]string{"task": "Task/" + tc.task, "user": tc.user})
				p := problemOf(t, body)
				kind := map[int]string{403: "launch-refused", 422: "task-not-launchable"}[tc.status]
				if status != tc.status || problemKind(&p) != kind || p.Refusal != tc.rule || p.LaunchID == "" || len(p.Errors) != 1 {
					t.Fatalf("%d %s, want %d %s %s", status, body, tc.status, kind, tc.rule)
				}
				if field := map[int]string{403: "user", 422: "task"}[tc.status]; p.Errors[0].Field != field {
					t.Errorf("error names %q, want %q", p.Errors[0].Field, field)
				}
				if after := countRows(t, s, "launches"); after != before+1 {
					t.Fatalf("%d launch rows written, want 1", after-before)
				}
				recs := s.domainRecords(t, "&outcome=refused&task=Task/"+tc.task+"&user="+tc.user)
				if len(recs) == 0 || recs[0].ID != p.LaunchID || recs[0].Status != "refused" || recs[0].Refusal != tc.rule ||
					recs[0].JTI != "" || recs[0].ExpiresAt != nil || recs[0].RefusalDetail == "" {
					t.Fatalf("refused record %+v", recs)
				}
			})
		}
	}
	if n := countRowsWhere(t, s, "launches", "ticket_hash IS NOT NULL OR jti IS NOT NULL"); n != 0 {
		t.Errorf("%d refused launches have a ticket or a token", n)
	}
}

func countRowsWhere(t testing.TB, s *stack, table, where string) int {
	t.Helper()
	var n int
	if err := s.pool.QueryRow(context.Background(), "SELECT count(*) FROM "+table+" WHERE "+where).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// TestDomainLaunch_ContradictingFieldsAreRefused: fields the request need
// not give, given with another value than the domain's, are 422 naming the
// field; nothing is written.
func TestDomainLaunch_ContradictingFieldsAreRefused(t *testing.T) {
	var dom *domainStack
	s := newStack(t, testDB.Fresh(t), keys.ES256, withDomain(&dom))
	ctx := adminevents.WithActor(operatorContext(), "cli:test@localhost")
	if _, _, err := s.registry.Put(ctx, launch.Module{Slug: "other", Issuer: domainIssuer, LaunchURL: testModuleURL, Audience: "Device/other",
		Method: launch.MethodPost, Fields: launch.FieldsKoppeltaal}, s.clock.Now()); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.registry.Put(ctx, launch.Module{Slug: "mod-1", Issuer: domainIssuer, LaunchURL: testModuleURL, Audience: "Device/mod-1",
		Method: launch.MethodPost, Fields: launch.FieldsKoppeltaal}, s.clock.Now()); err != nil {
		t.Fatal(err)
	}
	before := countRows(t, s, "launches")
	for field, req := range map[string]map[string]string{
		"module":     {"module": "other"},
		"patient":    {"patient": "Patient/p-2"},
		"definition": {"definition": "ActivityDefinition/ad-noep"},
		"intent":     {"intent": "plan"},
	} {
		req["task"], req["user"] = "Task/t-team", "Practitioner/pr-team"
		status, body := s.domainLaunch(t, "/api/v1/launch-tokens", req)
		p := problemOf(t, body)
		if status != http.StatusUnprocessableEntity || problemKind(&p) != "invalid-request" || len(p.Errors) != 1 || p.Errors[0].Field != field {
			t.Errorf("%s: %d %s", field, status, body)
		}
	}
	if after := countRows(t, s, "launches"); after != before {
		t.Errorf("%d launch rows written", after-before)
	}
	// Fields that agree with the domain are accepted, a module included.
	status, body := s.domainLaunch(t, "/api/v1/launch-tokens", map[string]string{"module": "mod-1", "task": "Task/t-team",
		"user": "Practitioner/pr-team", "patient": "Patient/p-1", "definition": "ActivityDefinition/ad-1", "intent": "proposal"})
	if status != http.StatusCreated {
		t.Errorf("agreeing fields: %d %s", status, body)
	}
	// The service now remembers mod-1; registered anew under another
	// Device, it contradicts the domain on the very next launch.
	if _, _, err := s.registry.Put(ctx, launch.Module{Slug: "mod-1", Issuer: domainIssuer, LaunchURL: testModuleURL, Audience: "Device/mod-1-moved",
		Method: launch.MethodPost, Fields: launch.FieldsKoppeltaal}, s.clock.Now()); err != nil {
		t.Fatal(err)
	}
	before = countRows(t, s, "launches")
	status, body = s.domainLaunch(t, "/api/v1/launch-tokens", map[string]string{"module": "mod-1", "task": "Task/t-team",
		"user": "Practitioner/pr-team"})
	if p := problemOf(t, body); status != http.StatusUnprocessableEntity || len(p.Errors) != 1 || p.Errors[0].Field != "module" {
		t.Errorf("module re-registered under another Device: %d %s, want 422 naming module", status, body)
	}
	if after := countRows(t, s, "launches"); after != before {
		t.Errorf("%d launch rows written for the contradicting module", after-before)
	}
}

// TestDomainLaunch_DomainDownOrSlow: with the domain cut off or silent,
// launch creation answers 503 domain-unavailable with Retry-After and
// writes nothing, while the JWKS, /healthz and plain HTI launches work and
// /readyz says degraded; once the domain is back, launches work again
// without a restart.
func TestDomainLaunch_DomainDownOrSlow(t *testing.T) {
	var dom *domainStack
	s := newStack(t, testDB.Fresh(t), keys.ES256, withDomain(&dom))
	s.registerTestModule(t)
	launchOK := func(t *testing.T) {
		t.Helper()
		status, body := s.domainLaunch(t, "/api/v1/launch-tokens", map[string]string{"task": "Task/t-patient", "user": "Patient/p-1"})
		if status != http.StatusCreated {
			t.Fatalf("launch: %d %s", status, body)
		}
	}
	launchOK(t)
	for _, fault := range []struct {
		name  string
		start func()
	}{
		// After a rotation the cached access token is not used any more: the
		// token request meets the cut first.
		{"cut, token endpoint", func() { rotate(t, s, domainIssuer); dom.proxy.Cut() }},
		// With the token cached, the FHIR read meets the silence, and the
		// timeout ends it.
		{"black hole, FHIR read", dom.proxy.BlackHole},
	} {
		t.Run(fault.name, func(t *testing.T) {
			fault.start()
			before := countRows(t, s, "launches")
			for _, path := range []string{"/api/v1/launches", "/api/v1/launch-tokens"} {
				b, _ := json.Marshal(map[string]string{"issuer": domainIssuer, "task": "Task/t-patient", "user": "Patient/p-1"})
				status, h, body := s.apiCall(t, http.MethodPost, path, s.launchKey, "application/json", string(b))
				p := problemOf(t, body)
				if status != http.StatusServiceUnavailable || problemKind(&p) != "domain-unavailable" || h.Get("Retry-After") == "" {
					t.Errorf("%s: %d %s", path, status, body)
				}
			}
			if after := countRows(t, s, "launches"); after != before {
				t.Errorf("%d launch rows written during the outage", after-before)
			}
			if resp, _ := get(t, s.http.URL+"/issuers/kt/jwks.json", nil); resp.StatusCode != http.StatusOK {
				t.Errorf("JWKS during the outage: %d", resp.StatusCode)
			}
			if resp, _ := get(t, s.http.URL+"/healthz", nil); resp.StatusCode != http.StatusOK {
				t.Errorf("healthz during the outage: %d", resp.StatusCode)
			}
			s.createLaunch(t, map[string]string{"module": "diary", "task": "Task/1", "user": "Patient/1"})
			resp, body := get(t, s.http.URL+"/readyz", nil)
			var ready probeStatus
			_ = json.Unmarshal(body, &ready)
			if resp.StatusCode != http.StatusOK || ready.Status != "degraded" || ready.Domains[domainIssuer].State != fhirdomain.Unreachable {
				t.Errorf("readyz during the outage: %d %s", resp.StatusCode, body)
			}
			if err := dom.proxy.Restore(); err != nil {
				t.Fatal(err)
			}
			launchOK(t)
			resp, body = get(t, s.http.URL+"/readyz", nil)
			_ = json.Unmarshal(body, &ready)
			if resp.StatusCode != http.StatusOK || ready.Status != "ready" || ready.Domains[domainIssuer].State != fhirdomain.Reachable {
				t.Errorf("readyz after the outage: %d %s", resp.StatusCode, body)
			}
		})
	}
}

// TestDomainLaunch_TokenEndpointRefusesTheAssertion: a domain that does not
// know the portal's client refuses its assertion; launches answer 503
// domain-client-refused and write nothing.
func TestDomainLaunch_TokenEndpointRefusesTheAssertion(t *testing.T) {
	var dom *domainStack
	s := newStack(t, testDB.Fresh(t), keys.ES256, withDomain(&dom))
	unregisterDomainClient(t, s)
	before := countRows(t, s, "launches")
	status, h, body := s.apiCall(t, http.MethodPost, "/api/v1/launches", s.launchKey, "application/json",
		`{"issuer":"kt","task":"Task/t-patient","user":"Patient/p-1"}`)
	p := problemOf(t, body)
	if status != http.StatusServiceUnavailable || problemKind(&p) != "domain-client-refused" || h.Get("Retry-After") == "" {
		t.Fatalf("%d %s", status, body)
	}
	if after := countRows(t, s, "launches"); after != before {
		t.Errorf("%d rows written", after-before)
	}
	if logs := s.logs.String(); strings.Contains(logs, "eyJ") {
		t.Errorf("a JWT reached the log:\n%s", logs)
	}
}

// TestDomainLaunch_OneTokenForABurst: 50 launches at once, on a cold
// cache, make one token request at the domain's auth server.
func TestDomainLaunch_OneTokenForABurst(t *testing.T) {
	var dom *domainStack
	s := newStack(t, testDB.Fresh(t), keys.ES256, withDomain(&dom))
	var wg sync.WaitGroup
	statuses := make([]int, 50)
	for i := range statuses {
		wg.Add(1)
		go func() {
			defer wg.Done()
			statuses[i], _ = s.domainLaunch(t, "/api/v1/launch-tokens", map[string]string{"task": "Task/t-team", "user": "Practitioner/pr-team"})
		}()
	}
	wg.Wait()
	for i, st := range statuses {
		if st != http.StatusCreated {
			t.Fatalf("launch %d: %d", i, st)
		}
	}
	grants := dom.box.WaitTokenGrants(domainClientID, 2, 2*time.Second) // waits for a second that must not come
	if len(grants) != 1 {
		t.Errorf("%d token grants for a burst of 50 launches, want 1: %+v", len(grants), grants)
	}
	if got := countRowsWhere(t, s, "launches", "source = 'domain' AND outcome = 'accepted'"); got != 50 {
		t.Errorf("%d launch records, want 50", got)
	}
}

// TestDomainLaunch_KeyRotationBetweenLaunches: after a rotation the next
// launch authenticates to the domain with an assertion signed by the new
// key, which the auth server verifies from the JWKS it fetched before (the
// key was published ahead of use).
func TestDomainLaunch_KeyRotationBetweenLaunches(t *testing.T) {
	var dom *domainStack
	s := newStack(t, testDB.Fresh(t), keys.ES256, withDomain(&dom))
	first, err := s.keyring.Signer(domainIssuer)
	if err != nil {
		t.Fatal(err)
	}
	if st, body := s.domainLaunch(t, "/api/v1/launch-tokens", map[string]string{"task": "Task/t-patient", "user": "Patient/p-1"}); st != http.StatusCreated {
		t.Fatalf("first launch: %d %s", st, body)
	}
	rotate(t, s, domainIssuer)
	second, err := s.keyring.Signer(domainIssuer)
	if err != nil || second.Kid == first.Kid {
		t.Fatalf("no new active key: %v", err)
	}
	if st, body := s.domainLaunch(t, "/api/v1/launch-tokens", map[string]string{"task": "Task/t-patient", "user": "Patient/p-1"}); st != http.StatusCreated {
		t.Fatalf("launch after the rotation: %d %s", st, body)
	}
	grants := dom.box.WaitTokenGrants(domainClientID, 2, 5*time.Second)
	if len(grants) != 2 || grants[0].Kid != first.Kid || grants[1].Kid != second.Kid || grants[1].Alg != "ES384" {
		t.Fatalf("grants %+v, want one with %s then one with %s", grants, first.Kid, second.Kid)
	}
}

// unregisterDomainClient gives the domain issuer a client_id the test
// domain does not know, so that its token endpoint refuses the assertions.
func unregisterDomainClient(t testing.TB, s *stack) {
	t.Helper()
	ctx := adminevents.WithActor(operatorContext(), "cli:test@localhost")
	is, err := s.keyring.Issuer(domainIssuer)
	if err != nil {
		t.Fatal(err)
	}
	is.ClientID = "portal-unregistered"
	if err := keys.NewStore(s.pool).UpdateIssuer(ctx, is, s.clock.Now()); err != nil {
		t.Fatal(err)
	}
	if err := s.keyring.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
}

// rotate makes the issuer's next key active, and the stack's keyring see it.
func rotate(t testing.TB, s *stack, issuer string) {
	t.Helper()
	ctx := adminevents.WithActor(operatorContext(), "cli:test@localhost")
	if _, err := s.rotator.Rotate(ctx, issuer, true); err != nil {
		t.Fatal(err)
	}
	if err := s.keyring.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestDomainLaunch_TwoInstances: two instances on one database and one
// domain; a link made at one redeems at the other, each fetches its own
// access token.
func TestDomainLaunch_TwoInstances(t *testing.T) {
	var dom *domainStack
	url := testDB.Fresh(t)
	a := newStack(t, url, keys.ES256, withDomain(&dom))
	b := a.secondInstance(t)
	for _, s := range []*stack{a, b} {
		if st, body := s.domainLaunch(t, "/api/v1/launch-tokens", map[string]string{"task": "Task/t-rp", "user": "RelatedPerson/rp-1"}); st != http.StatusCreated {
			t.Fatalf("%s: %d %s", s.http.URL, st, body)
		}
	}
	status, body := a.domainLaunch(t, "/api/v1/launches", map[string]string{"task": "Task/t-rp", "user": "RelatedPerson/rp-1"})
	if status != http.StatusCreated {
		t.Fatalf("%d %s", status, body)
	}
	var created launch.Created
	_ = json.Unmarshal(body, &created)
	link := strings.Replace(created.LaunchURL, a.http.URL, b.http.URL, 1)
	resp, page := redeem(t, link, map[string]string{"Sec-Fetch-Site": "same-origin"})
	if resp.StatusCode != http.StatusOK || formFields(t, page)["iss"] != dom.box.FHIRBase {
		t.Fatalf("redeem at the second instance: %d", resp.StatusCode)
	}
	if grants := dom.box.WaitTokenGrants(domainClientID, 2, 5*time.Second); len(grants) != 2 {
		t.Errorf("%d token grants, want one per instance", len(grants))
	}
}

// secondInstance is another portal instance on the stack's database: its
// own keyring, domain reader, launch service and HTTP server.
func (s *stack) secondInstance(t testing.TB) *stack {
	t.Helper()
	ctx := operatorContext()
	logger := slog.New(slog.NewJSONHandler(s.logs, &slog.HandlerOptions{Level: slog.LevelInfo}))
	store := keys.NewStore(s.pool)
	b := *s
	b.keyring = keys.NewKeyring(store, s.sealer, s.clock.Now, logger)
	if err := b.keyring.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	m := metrics.New(b.keyring, s.pool, s.clock.Now)
	reader := newDomainReader(t, b.keyring, m)
	srv := httptest.NewUnstartedServer(nil)
	publicURL := "http://" + srv.Listener.Addr().String()
	b.launches = launch.NewService(s.pool, s.registry, b.keyring, domainLaunchConfig(publicURL, reader), s.clock.Now, logger)
	handler, err := NewServer(Deps{Keyring: b.keyring, Database: s.pool, Launches: b.launches, Modules: s.registry, APIKeys: s.apikeys,
		KeyAdmin: testKeyAdmin{store, s.rotator}, AdminEvents: adminevents.NewStore(s.pool), Domain: reader, DefaultIssuer: "default",
		Logger: logger, Clock: s.clock.Now, PublicURL: publicURL, JWKSMaxAge: 60 * time.Second, Metrics: m})
	if err != nil {
		t.Fatal(err)
	}
	srv.Config.Handler = handler
	srv.Start()
	t.Cleanup(srv.Close)
	b.http = srv
	return &b
}

// BenchmarkDomainLaunch measures POST /api/v1/launch-tokens for a Task in
// the test domain (a practitioner through a CareTeam: Task, CareTeam and
// the module's three resources), with the ActivityDefinition, Endpoint and
// Device cache warm and with it off (every launch reads all five).
func BenchmarkDomainLaunch(b *testing.B) {
	var dom *domainStack
	s := newStack(b, testDB.Fresh(b), keys.ES256, withDomain(&dom))
	cold := newDomainReaderTTL(b, s.keyring, metrics.New(nil, nil, time.Now), -1)
	for _, bc := range []struct {
		name   string
		reader *fhirdomain.Client
	}{{"warm cache", dom.reader}, {"no cache", cold}} {
		s.launches = launch.NewService(s.pool, s.registry, s.keyring, domainLaunchConfig(s.http.URL, bc.reader), s.clock.Now, slog.New(slog.DiscardHandler))
		handler, err := NewServer(Deps{Keyring: s.keyring, Database: s.pool, Launches: s.launches, Modules: s.registry, APIKeys: s.apikeys,
			KeyAdmin: testKeyAdmin{keys.NewStore(s.pool), s.rotator}, AdminEvents: adminevents.NewStore(s.pool), DefaultIssuer: "default",
			Logger: slog.New(slog.DiscardHandler), Clock: s.clock.Now, PublicURL: s.http.URL, JWKSMaxAge: 60 * time.Second})
		if err != nil {
			b.Fatal(err)
		}
		s.http.Config.Handler = handler
		b.Run(bc.name, func(b *testing.B) {
			for b.Loop() {
				if st, body := s.domainLaunch(b, "/api/v1/launch-tokens", map[string]string{"task": "Task/t-team", "user": "Practitioner/pr-team"}); st != http.StatusCreated {
					b.Fatalf("%d %s", st, body)
				}
			}
		})
	}
}

// TestDomainLaunch_IssuerSelection: a key limited to the domain issuer
// launches from a Task without naming it; a key limited to another issuer
// asking for the domain issuer is a 422 naming issuer, before any domain
// read, with nothing written.
func TestDomainLaunch_IssuerSelection(t *testing.T) {
	var dom *domainStack
	s := newStack(t, testDB.Fresh(t), keys.ES256, withDomain(&dom))
	ctx := adminevents.WithActor(operatorContext(), "cli:test@localhost")
	_, onlyKT, err := s.apikeys.Create(ctx, "kt-backend", "launch", s.clock.Now(), domainIssuer)
	if err != nil {
		t.Fatal(err)
	}
	_, onlyDefault, err := s.apikeys.Create(ctx, "default-backend", "launch", s.clock.Now(), "default")
	if err != nil {
		t.Fatal(err)
	}
	body := `{"task":"Task/t-patient","user":"Patient/p-1"}`
	if status, _, b := s.apiCall(t, http.MethodPost, "/api/v1/launch-tokens", onlyKT, "application/json", body); status != http.StatusCreated {
		t.Fatalf("key limited to kt, no issuer named: %d %s", status, b)
	}
	before := countRows(t, s, "launches")
	grants := len(dom.box.TokenGrants(domainClientID))
	status, _, b := s.apiCall(t, http.MethodPost, "/api/v1/launch-tokens", onlyDefault, "application/json",
		`{"issuer":"kt","task":"Task/t-patient","user":"Patient/p-1"}`)
	p := problemOf(t, b)
	if status != http.StatusUnprocessableEntity || len(p.Errors) != 1 || p.Errors[0].Field != "issuer" {
		t.Fatalf("key limited to default asking for kt: %d %s", status, b)
	}
	// Without an issuer, that key's only issuer is the plain default one,
	// which needs a module.
	status, _, b = s.apiCall(t, http.MethodPost, "/api/v1/launch-tokens", onlyDefault, "application/json", body)
	if p := problemOf(t, b); status != http.StatusUnprocessableEntity || p.Errors[0].Field != "module" {
		t.Fatalf("key limited to default, no module: %d %s", status, b)
	}
	if after := countRows(t, s, "launches"); after != before {
		t.Errorf("%d rows written", after-before)
	}
	if n := len(dom.box.TokenGrants(domainClientID)); n != grants {
		t.Errorf("the domain was asked for a token for a refused key")
	}
}
