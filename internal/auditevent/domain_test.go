package auditevent_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/ehealth-nl/portal/internal/auditevent"
	"github.com/ehealth-nl/portal/internal/launch"
	"github.com/ehealth-nl/portal/internal/testdomain"
	"github.com/lestrrat-go/jwx/v2/jwa"
	"github.com/lestrrat-go/jwx/v2/jwk"
	"github.com/lestrrat-go/jwx/v2/jwt"
)

// fhirClient talks to the test domain's FHIR server with an access token
// it got as a SMART backend-services client.
type fhirClient struct {
	base, token string
}

// newFHIRClient starts a test domain that knows one client, whose ES384 key
// is published on a loopback JWKS server, and gets that client an access
// token with a private_key_jwt assertion, as the portal will.
func newFHIRClient(t *testing.T) *fhirClient {
	t.Helper()
	raw, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	key, err := jwk.FromRaw(raw)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range map[string]any{jwk.KeyIDKey: "audit-1", jwk.AlgorithmKey: jwa.ES384, jwk.KeyUsageKey: "sig"} {
		if err := key.Set(k, v); err != nil {
			t.Fatal(err)
		}
	}
	public, err := key.PublicKey()
	if err != nil {
		t.Fatal(err)
	}
	set := jwk.NewSet()
	if err := set.AddKey(public); err != nil {
		t.Fatal(err)
	}
	jwks := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(set)
	}))
	t.Cleanup(jwks.Close)
	const clientID = "portal-audit"
	d := testdomain.Start(t, testdomain.Client{ID: clientID, JWKSURL: jwks.URL})

	now := time.Now()
	tok, err := jwt.NewBuilder().Issuer(clientID).Subject(clientID).Audience([]string{d.TokenEndpoint}).
		JwtID(randomHex(16)).IssuedAt(now).Expiration(now.Add(time.Minute)).Build()
	if err != nil {
		t.Fatal(err)
	}
	tok.Options().Enable(jwt.FlattenAudience) // the domain wants aud as one string
	assertion, err := jwt.Sign(tok, jwt.WithKey(jwa.ES384, key))
	if err != nil {
		t.Fatal(err)
	}
	form := url.Values{
		"grant_type":            {"client_credentials"},
		"client_assertion_type": {"urn:ietf:params:oauth:client-assertion-type:jwt-bearer"},
		"client_assertion":      {string(assertion)},
		"scope":                 {"system/AuditEvent.cruds"},
	}
	resp, err := http.PostForm(d.TokenEndpoint, form)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var tr struct {
		AccessToken string `json:"access_token"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&tr); err != nil || resp.StatusCode != http.StatusOK || tr.AccessToken == "" {
		t.Fatalf("token endpoint: %d %v", resp.StatusCode, err)
	}
	return &fhirClient{base: d.FHIRBase, token: tr.AccessToken}
}

// do sends one FHIR request and returns the status and the body.
func (c *fhirClient) do(t *testing.T, method, path string, body []byte) (int, []byte) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Accept", "application/fhir+json")
	req.Header.Set("Authorization", "Bearer "+c.token)
	if body != nil {
		req.Header.Set("Content-Type", "application/fhir+json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	got, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, got
}

// put writes an event with PUT AuditEvent/<its id>.
func (c *fhirClient) put(t *testing.T, raw []byte) (int, []byte) {
	t.Helper()
	var head struct{ ID string }
	if err := json.Unmarshal(raw, &head); err != nil || head.ID == "" {
		t.Fatalf("no id in %s", raw)
	}
	return c.do(t, http.MethodPut, "/AuditEvent/"+head.ID, raw)
}

// storedEvent is what the test reads back of an AuditEvent.
type storedEvent struct {
	ID   string
	Meta struct {
		Profile   []string
		VersionID string
	}
	Extension []struct {
		URL     string
		ValueID string
	}
	Type        struct{ System, Code string }
	Subtype     []struct{ System, Code string }
	Action      string
	Recorded    string
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

// extension returns the valueId of the extension with the url, or "".
func (e *storedEvent) extension(url string) string {
	for _, x := range e.Extension {
		if x.URL == url {
			return x.ValueID
		}
	}
	return ""
}

// TestDomain writes the events of five launches to the test domain, whose
// FHIR server validates every resource, reads each back field by field,
// and shows that a second delivery of an event leaves one resource.
func TestDomain(t *testing.T) {
	c := newFHIRClient(t)
	recorded := time.Date(2026, 5, 6, 7, 8, 9, 123000000, time.UTC)
	base := func(user, patient string) auditevent.Launch {
		// Built from a launch record, as a later delivery would rebuild it.
		r := launch.Record{
			ID: "6a1d8c52-2a5b-4c0e-9b9e-1f0e7c3b2a01", Kind: "ticket", Status: "redeemed",
			Module: "module-1", Audience: "Device/module-1", LaunchURL: "https://module.example/launch",
			Task: "Task/task-1", User: user, Patient: patient, JTI: randomHex(16), RedeemedAt: &recorded,
		}
		return auditevent.Launch{
			LaunchID: r.ID, JTI: r.JTI, Task: r.Task, User: r.User, Patient: r.Patient,
			Module: r.Audience, EndpointAddress: r.LaunchURL, Recorded: *r.RedeemedAt,
			Portal: "Device/portal", Site: "portal.example.nl",
			RequestID: randomHex(8), CorrelationID: "corr-" + randomHex(4), Outcome: auditevent.OutcomeSuccess,
		}
	}
	type person struct{ reference, role string }
	cases := []struct {
		name   string
		launch auditevent.Launch
		people []person
	}{
		{"patient", base("Patient/pat-1", "Patient/pat-1"), []person{{"Patient/pat-1", "1"}}},
		{"practitioner", base("Practitioner/prac-1", "Patient/pat-1"), []person{{"Practitioner/prac-1", "15"}, {"Patient/pat-1", "1"}}},
		{"related person", base("RelatedPerson/rp-1", "Patient/pat-1"), []person{{"RelatedPerson/rp-1", "6"}, {"Patient/pat-1", "1"}}},
		{"refused", base("Practitioner/prac-2", "Patient/pat-1"), []person{{"Practitioner/prac-2", "15"}, {"Patient/pat-1", "1"}}},
		{"failed", base("Patient/pat-2", ""), []person{{"Patient/pat-2", "1"}}},
	}
	cases[0].launch.TaskVersion = "2" // a versioned Task reference is accepted
	cases[3].launch.Outcome, cases[3].launch.OutcomeDesc = auditevent.OutcomeMinorFailure, "not authorised for this task"
	cases[4].launch.Outcome, cases[4].launch.OutcomeDesc = auditevent.OutcomeSeriousFailure, "signing key unavailable"
	cases[4].launch.JTI = "" // failed before a token was signed

	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			l := tc.launch
			raw, err := auditevent.Build(l)
			if err != nil {
				t.Fatal(err)
			}
			id, _ := l.ID()
			// An update-as-create: 201 from most servers, 200 from this one.
			if status, body := c.put(t, raw); status != http.StatusCreated && status != http.StatusOK {
				t.Fatalf("PUT: %d %s", status, body)
			}
			status, body := c.do(t, http.MethodGet, "/AuditEvent/"+id, nil)
			var got storedEvent
			if status != http.StatusOK || json.Unmarshal(body, &got) != nil {
				t.Fatalf("read: %d %s", status, body)
			}
			check := func(what string, got, want any) {
				t.Helper()
				if got != want {
					t.Errorf("%s = %v, want %v", what, got, want)
				}
			}
			check("id", got.ID, id)
			check("meta.profile", strings.Join(got.Meta.Profile, " "), auditevent.Profile)
			check("trace-id", got.extension(auditevent.ExtensionTraceID), l.JTI)
			check("request-id", got.extension(auditevent.ExtensionRequestID), l.RequestID)
			check("correlation-id", got.extension(auditevent.ExtensionCorrelationID), l.CorrelationID)
			check("type", got.Type.System+"#"+got.Type.Code, auditevent.SystemDICOM+"#110100")
			check("subtypes", len(got.Subtype), 1)
			check("subtype", got.Subtype[0].System+"#"+got.Subtype[0].Code, auditevent.SystemDICOM+"#110120")
			check("action", got.Action, "E")
			check("recorded", got.Recorded, "2026-05-06T07:08:09.123Z")
			check("outcome", got.Outcome, string(l.Outcome))
			check("outcomeDesc", got.OutcomeDesc, l.OutcomeDesc)
			if len(got.Agent) != 2 {
				t.Fatalf("agents: %+v", got.Agent)
			}
			launcher, destination := got.Agent[0], got.Agent[1]
			check("launcher type", launcher.Type.Coding[0].Code, "110151")
			check("launcher", launcher.Who.Reference+" "+launcher.Who.Type, "Device/portal Device")
			check("launcher requestor", launcher.Requestor, true)
			check("destination type", destination.Type.Coding[0].Code, "110152")
			check("destination", destination.Who.Reference+" "+destination.Who.Type, "Device/module-1 Device")
			check("destination requestor", destination.Requestor, false)
			if destination.Network == nil {
				t.Fatal("destination has no network")
			}
			check("destination network", destination.Network.Address+" "+destination.Network.Type, "https://module.example/launch 5")
			check("source.site", got.Source.Site, "portal.example.nl")
			check("source.observer", got.Source.Observer.Reference, "Device/portal")
			if len(got.Entity) != 1+len(tc.people) {
				t.Fatalf("entities: %+v, want the Task and %v", got.Entity, tc.people)
			}
			task := "Task/task-1"
			if l.TaskVersion != "" {
				task += "/_history/" + l.TaskVersion
			}
			check("task entity", got.Entity[0].What.Reference, task)
			check("task entity type", got.Entity[0].Type.System+"#"+got.Entity[0].Type.Code, auditevent.SystemResourceTypes+"#Task")
			for i, p := range tc.people {
				e := got.Entity[i+1]
				check("person entity", e.What.Reference, p.reference)
				check("person role", e.Role.System+"#"+e.Role.Code, auditevent.SystemObjectRole+"#"+p.role)
			}

			// A second delivery (the answer to the first was lost) updates
			// the same resource: the search finds one.
			again, err := auditevent.Build(l)
			if err != nil {
				t.Fatal(err)
			}
			if status, body := c.put(t, again); status != http.StatusOK {
				t.Fatalf("second PUT: %d %s, want 200", status, body)
			}
			status, body = c.do(t, http.MethodGet, "/AuditEvent?_id="+id, nil)
			var bundle struct {
				Entry []struct{ Resource struct{ ID string } }
			}
			if status != http.StatusOK || json.Unmarshal(body, &bundle) != nil {
				t.Fatalf("search: %d %s", status, body)
			}
			if len(bundle.Entry) != 1 || bundle.Entry[0].Resource.ID != id {
				t.Fatalf("after two PUTs the search finds %+v, want the one event %s", bundle.Entry, id)
			}
			status, body = c.do(t, http.MethodGet, "/AuditEvent/"+id+"/_history", nil)
			if status != http.StatusOK || json.Unmarshal(body, &bundle) != nil || len(bundle.Entry) != 2 {
				t.Fatalf("history: %d %s, want the two versions of one event", status, body)
			}
		})
	}

	// The events are distinct resources: five launches, five events.
	status, body := c.do(t, http.MethodGet, "/AuditEvent?_count=100", nil)
	var all struct{ Entry []json.RawMessage }
	if status != http.StatusOK || json.Unmarshal(body, &all) != nil || len(all.Entry) != len(cases) {
		t.Fatalf("all events: %d, %d entries, want %d: %s", status, len(all.Entry), len(cases), body)
	}

	t.Run("a valueId with _ is refused by Build and by the server", func(t *testing.T) {
		l := base("Patient/pat-3", "")
		l.JTI = "has_underscore"
		if raw, err := auditevent.Build(l); err == nil {
			t.Fatalf("Build accepted a jti with _: %s", raw)
		}
		l.JTI = "hasunderscore"
		raw, err := auditevent.Build(l)
		if err != nil {
			t.Fatal(err)
		}
		bad := bytes.Replace(raw, []byte(`"valueId":"hasunderscore"`), []byte(`"valueId":"has_underscore"`), 1)
		if bytes.Equal(bad, raw) {
			t.Fatal("the jti is not in the event")
		}
		if err := auditevent.Validate(bad); err == nil {
			t.Error("Validate accepted a valueId with _")
		}
		status, body := c.put(t, bad)
		var oo struct {
			ResourceType string
			Issue        []struct{ Severity string }
		}
		if status != http.StatusBadRequest || json.Unmarshal(body, &oo) != nil || oo.ResourceType != "OperationOutcome" ||
			len(oo.Issue) == 0 || oo.Issue[0].Severity != "error" {
			t.Fatalf("PUT with valueId has_underscore: %d %s, want 400 with an OperationOutcome", status, body)
		}
		// The same event without the _ is accepted: the server refused the
		// id, nothing else.
		if status, body := c.put(t, raw); status != http.StatusCreated && status != http.StatusOK {
			t.Fatalf("the event with a valid jti: %d %s", status, body)
		}
	})
}

// randomHex is n random bytes in hex.
func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
