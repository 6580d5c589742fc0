package fhirdomain

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/ehealth-nl/portal/internal/testdomain"
	"github.com/ehealth-nl/portal/pkg/hti"
	"github.com/samply/golang-fhir-models/fhir-models/fhir"
)

// The Task statuses of FHIR R4 (KT2_Task binds the same value set).
var taskStatuses = []string{"draft", "requested", "received", "accepted", "rejected", "ready", "cancelled",
	"in-progress", "on-hold", "failed", "completed", "entered-in-error"}

// ownedTask is a KT2 Task for patient, owned by owner ("" for none), that
// instantiates ad-1.
func ownedTask(id, status, owner, patient string) obj {
	return testdomain.Task(id, status, "order", patient, owner, "ActivityDefinition/ad-1")
}

// authzFixtures are KT2-shaped: two patients, three practitioners, four
// related persons (active, inactive, without active, of the other
// patient), three CareTeams (p-1's, p-2's, an inactive one), one Task per
// owner and rule, and every status for each kind of owner. The test clock
// is 2026-01-01T12:00:00Z (fixture.client): pr-2's participation ended
// the day before, pr-3's ends that day.
func authzFixtures() []any {
	rs := []any{
		testdomain.Patient("p-1"),
		testdomain.Patient("p-2"),
		testdomain.Practitioner("pr-1"),
		testdomain.Practitioner("pr-2"),
		testdomain.Practitioner("pr-3"),
		testdomain.RelatedPerson("rp-1", "Patient/p-1", "true"),
		testdomain.RelatedPerson("rp-off", "Patient/p-1", "false"),
		testdomain.RelatedPerson("rp-3", "Patient/p-1", ""),
		testdomain.RelatedPerson("rp-2", "Patient/p-2", "true"),
		testdomain.RelatedPerson("rp-rev", "Patient/p-1", "true"),
		testdomain.CareTeamWith("ct-1", "active", "Patient/p-1",
			testdomain.Participant("Practitioner/pr-1", "", ""),
			testdomain.Participant("Practitioner/pr-2", "2025-01-01", "2025-12-31"),
			testdomain.Participant("Practitioner/pr-3", "2025-06-01T00:00:00+02:00", "2026-01-01"),
			testdomain.Participant("RelatedPerson/rp-1", "", ""),
			testdomain.Participant("RelatedPerson/rp-off", "", "")),
		testdomain.CareTeamWith("ct-2", "active", "Patient/p-2", testdomain.Participant("RelatedPerson/rp-1", "", "")),
		testdomain.CareTeamWith("ct-off", "inactive", "Patient/p-1",
			testdomain.Participant("Practitioner/pr-1", "", ""), testdomain.Participant("RelatedPerson/rp-1", "", "")),
		testdomain.Device("module-1", "active", "module-1"),
		testdomain.Endpoint("ep-1", "active", ConnectionTypeHTI, "https://module.example/launch"),
		testdomain.ActivityDefinition("ad-1", "active", "Device/module-1", "ep-1"),
		ownedTask("t-patient", "ready", "Patient/p-1", "Patient/p-1"),
		ownedTask("t-patient-other", "ready", "Patient/p-1", "Patient/p-2"),
		ownedTask("t-pr1", "ready", "Practitioner/pr-1", "Patient/p-1"),
		ownedTask("t-ct1", "in-progress", "CareTeam/ct-1", "Patient/p-1"),
		ownedTask("t-ct2", "ready", "CareTeam/ct-2", "Patient/p-1"),
		ownedTask("t-ctoff", "ready", "CareTeam/ct-off", "Patient/p-1"),
		ownedTask("t-ctnope", "ready", "CareTeam/nope", "Patient/p-1"),
		ownedTask("t-rp1", "ready", "RelatedPerson/rp-1", "Patient/p-1"),
		ownedTask("t-rpoff", "ready", "RelatedPerson/rp-off", "Patient/p-1"),
		ownedTask("t-rp2", "ready", "RelatedPerson/rp-2", "Patient/p-1"),
		ownedTask("t-rp3", "ready", "RelatedPerson/rp-3", "Patient/p-1"),
		ownedTask("t-rprev", "ready", "RelatedPerson/rp-rev", "Patient/p-1"),
		ownedTask("t-noowner", "ready", "", "Patient/p-1"),
	}
	for kind, owner := range statusOwners {
		for _, s := range taskStatuses {
			rs = append(rs, ownedTask("st-"+kind+"-"+s, s, owner, "Patient/p-1"))
		}
	}
	return rs
}

// statusOwners are the owners of the status Tasks (st-<kind>-<status>).
var statusOwners = map[string]string{
	"patient": "Patient/p-1", "practitioner": "Practitioner/pr-1",
	"careteam": "CareTeam/ct-1", "relatedperson": "RelatedPerson/rp-1",
}

func seedAuthz(t *testing.T) *fixture {
	t.Helper()
	tokens, client := newSmartTokens(t, "portal-test")
	d := testdomain.Start(t, client)
	tokens.domain = d
	f := &fixture{domain: d, tokens: tokens, proxy: newRecorder(t, d.FHIRBase), versions: map[string]string{}, stored: map[string]obj{}}
	for _, r := range d.Seed(t, authzFixtures()...) {
		meta, _ := r["meta"].(map[string]any)
		f.versions[fmt.Sprint(r["resourceType"], "/", r["id"])] = fmt.Sprint(meta["versionId"])
	}
	return f
}

func ref(s string) hti.Reference {
	typ, id, _ := strings.Cut(s, "/")
	return hti.Reference{Type: typ, ID: id}
}

// authorize resolves taskID and authorises user for it, both against the
// domain.
func authorize(t *testing.T, c *Client, ctx context.Context, taskID, user string) (Authorization, error) {
	t.Helper()
	r, err := c.Resolve(context.Background(), issuer, taskID)
	if err != nil {
		t.Fatalf("resolve %s: %v", taskID, err)
	}
	return c.Authorize(ctx, issuer, r, ref(user))
}

// wantOutcome checks that err refuses by want ("" means allowed).
func wantOutcome(t *testing.T, name string, a Authorization, err error, want Refusal) {
	t.Helper()
	got, refusal := RefusalOf(err)
	switch {
	case want == "" && err != nil:
		t.Errorf("%s: refused: %v", name, err)
	case want != "" && (!refusal || got != want):
		t.Errorf("%s: %+v %v, want refusal %q", name, a, err, want)
	case refusal && errors.Is(err, ErrUnavailable):
		t.Errorf("%s: a refusal that is also unavailable: %v", name, err)
	}
}

func TestAuthorize(t *testing.T) {
	f := seedAuthz(t)
	v := f.versions

	t.Run("each role allowed and refused by each rule", func(t *testing.T) {
		c, _, _ := f.client(t, nil)
		for _, tc := range []struct {
			rule, user, task string
			want             Refusal               // "" for allowed
			allowed          string                // the Authorization's Rule when allowed
			versions         AuthorizationVersions // when allowed
		}{
			{rule: "patient: owner", user: "Patient/p-1", task: "t-patient", allowed: RuleOwner},
			{rule: "patient: another's Task", user: "Patient/p-2", task: "t-patient", want: RefusedNotOwner},
			{rule: "patient: a practitioner's Task", user: "Patient/p-1", task: "t-pr1", want: RefusedNotOwner},
			{rule: "patient: no CareTeam rule for patients", user: "Patient/p-1", task: "t-ct1", want: RefusedNotOwner},
			{rule: "patient: owns it, Task.for another patient", user: "Patient/p-1", task: "t-patient-other", want: RefusedTaskOtherPatient},

			{rule: "practitioner: owner", user: "Practitioner/pr-1", task: "t-pr1", allowed: RuleOwner},
			{rule: "practitioner: careteam participant", user: "Practitioner/pr-1", task: "t-ct1", allowed: "careteam:ct-1",
				versions: AuthorizationVersions{CareTeam: v["CareTeam/ct-1"]}},
			{rule: "practitioner: careteam participant, period ending today", user: "Practitioner/pr-3", task: "t-ct1", allowed: "careteam:ct-1",
				versions: AuthorizationVersions{CareTeam: v["CareTeam/ct-1"]}},
			{rule: "practitioner: careteam participant whose period ended", user: "Practitioner/pr-2", task: "t-ct1", want: RefusedCareTeamNotMember},
			{rule: "practitioner: careteam without them", user: "Practitioner/pr-1", task: "t-ct2", want: RefusedCareTeamNotMember},
			{rule: "practitioner: inactive careteam", user: "Practitioner/pr-1", task: "t-ctoff", want: RefusedCareTeamInactive},
			{rule: "practitioner: missing careteam", user: "Practitioner/pr-1", task: "t-ctnope", want: RefusedCareTeamNotFound},
			{rule: "practitioner: another practitioner's Task", user: "Practitioner/pr-2", task: "t-pr1", want: RefusedNotOwner},
			{rule: "practitioner: a related person's Task", user: "Practitioner/pr-1", task: "t-rp1", want: RefusedNotOwner},
			{rule: "practitioner: a Task without owner", user: "Practitioner/pr-1", task: "t-noowner", want: RefusedNotOwner},

			{rule: "related person: owner", user: "RelatedPerson/rp-1", task: "t-rp1", allowed: RuleOwner,
				versions: AuthorizationVersions{RelatedPerson: v["RelatedPerson/rp-1"]}},
			{rule: "related person: owner, active absent", user: "RelatedPerson/rp-3", task: "t-rp3", allowed: RuleOwner,
				versions: AuthorizationVersions{RelatedPerson: v["RelatedPerson/rp-3"]}},
			{rule: "related person: careteam participant, subject their patient", user: "RelatedPerson/rp-1", task: "t-ct1", allowed: "careteam:ct-1",
				versions: AuthorizationVersions{CareTeam: v["CareTeam/ct-1"], RelatedPerson: v["RelatedPerson/rp-1"]}},
			{rule: "related person: inactive owner", user: "RelatedPerson/rp-off", task: "t-rpoff", want: RefusedRelatedPersonInactive},
			{rule: "related person: inactive careteam participant", user: "RelatedPerson/rp-off", task: "t-ct1", want: RefusedRelatedPersonInactive},
			{rule: "related person: of another patient than Task.for", user: "RelatedPerson/rp-2", task: "t-rp2", want: RefusedRelatedPersonOtherPatient},
			{rule: "related person: careteam of another patient", user: "RelatedPerson/rp-1", task: "t-ct2", want: RefusedCareTeamOtherPatient},
			{rule: "related person: careteam without them", user: "RelatedPerson/rp-3", task: "t-ct1", want: RefusedCareTeamNotMember},
			{rule: "related person: inactive careteam", user: "RelatedPerson/rp-1", task: "t-ctoff", want: RefusedCareTeamInactive},
			{rule: "related person: missing related person", user: "RelatedPerson/nope", task: "t-ct1", want: RefusedRelatedPersonNotFound},
			{rule: "related person: a practitioner's Task", user: "RelatedPerson/rp-1", task: "t-pr1", want: RefusedNotOwner},
			{rule: "related person: the patient's own Task", user: "RelatedPerson/rp-1", task: "t-patient", want: RefusedNotOwner},

			{rule: "user type: Device", user: "Device/module-1", task: "t-patient", want: RefusedUserType},
			{rule: "user type: Organization", user: "Organization/o-1", task: "t-pr1", want: RefusedUserType},
			{rule: "user type: none", user: "", task: "t-patient", want: RefusedUserType},
		} {
			a, err := authorize(t, c, context.Background(), tc.task, tc.user)
			wantOutcome(t, tc.rule, a, err, tc.want)
			if err != nil || tc.want != "" {
				continue
			}
			wantCT := ""
			if id, ok := strings.CutPrefix(tc.allowed, RuleCareTeam); ok {
				wantCT = "CareTeam/" + id
			}
			want := Authorization{User: tc.user, Task: "Task/" + tc.task, Patient: "Patient/p-1", Rule: tc.allowed, CareTeam: wantCT, Versions: tc.versions}
			if a != want {
				t.Errorf("%s:\n got %+v\nwant %+v", tc.rule, a, want)
			}
		}
	})

	t.Run("task status, for each kind of owner", func(t *testing.T) {
		users := map[string]string{"patient": "Patient/p-1", "practitioner": "Practitioner/pr-1",
			"careteam": "Practitioner/pr-1", "relatedperson": "RelatedPerson/rp-1"}
		for _, readyOnly := range []bool{false, true} {
			c, _, _ := f.client(t, func(cfg *Config) { cfg.ReadyTasksOnly = readyOnly })
			for kind := range statusOwners {
				for _, s := range taskStatuses {
					var want Refusal
					switch s {
					case "ready", "in-progress":
					case "requested", "received", "accepted":
						if readyOnly {
							want = RefusedTaskStatus
						}
					case "completed":
						want = RefusedTaskCompleted
					default:
						want = RefusedTaskStatus
					}
					a, err := authorize(t, c, context.Background(), "st-"+kind+"-"+s, users[kind])
					wantOutcome(t, fmt.Sprintf("%s %s (ReadyTasksOnly %v)", kind, s, readyOnly), a, err, want)
				}
			}
		}
	})

	t.Run("participant periods are judged by the client's clock", func(t *testing.T) {
		c, clk, _ := f.client(t, nil)
		r, err := c.Resolve(context.Background(), issuer, "t-ct1")
		if err != nil {
			t.Fatal(err)
		}
		// pr-3: from 2025-06-01T00:00:00+02:00 up to and including 2026-01-01.
		for _, tc := range []struct {
			now  time.Time
			want Refusal
		}{
			{time.Date(2025, 5, 31, 21, 59, 59, 0, time.UTC), RefusedCareTeamNotMember},
			{time.Date(2025, 5, 31, 22, 0, 0, 0, time.UTC), ""},
			{time.Date(2026, 1, 1, 23, 59, 59, 0, time.UTC), ""},
			{time.Date(2026, 1, 2, 0, 0, 0, 0, time.UTC), RefusedCareTeamNotMember},
		} {
			clk.mu.Lock()
			clk.now = tc.now
			clk.mu.Unlock()
			a, err := c.Authorize(context.Background(), issuer, r, ref("Practitioner/pr-3"))
			wantOutcome(t, "careteam period at "+tc.now.Format(time.RFC3339), a, err, tc.want)
		}
	})

	t.Run("only the user and the owning CareTeam are read, with the request path's headers", func(t *testing.T) {
		c, _, _ := f.client(t, nil)
		if _, err := authorize(t, c, traced("authz-1"), "t-ct1", "RelatedPerson/rp-1"); err != nil {
			t.Fatal(err)
		}
		reqs := f.proxy.with("authz-1")
		if got := paths(reqs); len(reqs) != 2 || got["RelatedPerson/rp-1"] != 1 || got["CareTeam/ct-1"] != 1 {
			t.Fatalf("requests: %v", got)
		}
		for _, q := range reqs {
			h := q.Header
			if h.Get("Accept") != "application/fhir+json" || h.Get("X-Correlation-Id") != "corr-authz-1" ||
				h.Get("X-Trace-Id") != "trace-authz-1" || !strings.HasPrefix(h.Get("Authorization"), "Bearer ey") || q.Status != 200 {
				t.Errorf("%s: %d %v", q.Path, q.Status, h)
			}
		}
		for user, task := range map[string]string{"Patient/p-1": "t-patient", "Practitioner/pr-1": "t-pr1", "Device/module-1": "t-ct1", "Practitioner/pr-2": "t-rp1"} {
			id := "authz-none-" + task
			_, _ = authorize(t, c, traced(id), task, user)
			if got := paths(f.proxy.with(id)); len(got) != 0 {
				t.Errorf("%s for %s read %v; nothing needs reading", user, task, got)
			}
		}
		f.proxy.mu.Lock()
		defer f.proxy.mu.Unlock()
		for _, q := range f.proxy.reqs {
			if strings.HasPrefix(q.Path, "CareTeam?") || strings.HasPrefix(q.Path, "RelatedPerson?") {
				t.Errorf("a search: %s", q.Path)
			}
		}
	})

	t.Run("revoking a related person counts from the next launch", func(t *testing.T) {
		c, _, _ := f.client(t, nil)
		a, err := authorize(t, c, context.Background(), "t-rprev", "RelatedPerson/rp-rev")
		wantOutcome(t, "before", a, err, "")
		f.domain.Seed(t, testdomain.RelatedPerson("rp-rev", "Patient/p-1", "false"))
		a, err = authorize(t, c, context.Background(), "t-rprev", "RelatedPerson/rp-rev")
		wantOutcome(t, "after active false", a, err, RefusedRelatedPersonInactive)
	})
}

// TestAuthorizeUnavailable: a stopped domain is ErrUnavailable, never a
// refusal, wherever Authorize has to read.
func TestAuthorizeUnavailable(t *testing.T) {
	tokens, client := newSmartTokens(t, "portal-test")
	var c *Client
	res := map[string]Resolution{}
	t.Run("domain up", func(t *testing.T) {
		d := testdomain.Start(t, client)
		tokens.domain = d
		d.Seed(t, authzFixtures()...)
		var err error
		if c, err = New(Config{BaseURL: func(string) (string, bool) { return d.FHIRBase, true }, Tokens: tokens}); err != nil {
			t.Fatal(err)
		}
		for _, id := range []string{"t-ct1", "t-rp1", "t-patient"} {
			if res[id], err = c.Resolve(context.Background(), issuer, id); err != nil {
				t.Fatal(err)
			}
		}
	}) // the domain stops with this subtest
	if c == nil {
		t.FailNow()
	}
	for _, tc := range []struct{ user, task string }{
		{"Practitioner/pr-1", "t-ct1"},  // reads the CareTeam
		{"RelatedPerson/rp-1", "t-rp1"}, // reads the RelatedPerson
		{"RelatedPerson/rp-1", "t-ct1"},
	} {
		_, err := c.Authorize(context.Background(), issuer, res[tc.task], ref(tc.user))
		if _, refusal := RefusalOf(err); !errors.Is(err, ErrUnavailable) || refusal {
			t.Errorf("%s for %s on a stopped domain: %v", tc.user, tc.task, err)
		}
	}
	// Nothing to read: the Task as resolved decides.
	if _, err := c.Authorize(context.Background(), issuer, res["t-patient"], ref("Patient/p-1")); err != nil {
		t.Errorf("a patient's own Task: %v", err)
	}
}

// TestCovers: the FHIR dateTime precisions a participant period may use,
// each end included at its precision (the test domain validates periods,
// so one it cannot hold is tested here).
func TestCovers(t *testing.T) {
	ams, err := time.LoadLocation("Europe/Amsterdam")
	if err != nil {
		ams = time.FixedZone("CET", 3600)
	}
	now := time.Date(2026, 3, 15, 10, 30, 0, 0, ams)
	p := func(start, end string) *fhir.Period {
		var per fhir.Period
		if start != "" {
			per.Start = &start
		}
		if end != "" {
			per.End = &end
		}
		return &per
	}
	for _, tc := range []struct {
		name    string
		period  *fhir.Period
		want    bool
		wantErr bool
	}{
		{"no period", nil, true, false},
		{"empty period", p("", ""), true, false},
		{"end year", p("", "2026"), true, false},
		{"end last year", p("", "2025"), false, false},
		{"end month", p("", "2026-03"), true, false},
		{"end last month", p("", "2026-02"), false, false},
		{"end today, a date in the clock's zone", p("", "2026-03-15"), true, false},
		{"end yesterday", p("", "2026-03-14"), false, false},
		{"start tomorrow", p("2026-03-16", ""), false, false},
		{"start today", p("2026-03-15", ""), true, false},
		{"end at this instant", p("", "2026-03-15T09:30:00Z"), true, false},
		{"end a moment ago", p("", "2026-03-15T10:29:59.999+01:00"), false, false},
		{"start in a moment", p("2026-03-15T10:30:00.001+01:00", ""), false, false},
		{"a time without zone", p("", "2026-03-15T10:30:00"), false, true},
		{"not a date", p("yesterday", ""), false, true},
	} {
		got, err := covers(tc.period, now)
		if got != tc.want || (err != nil) != tc.wantErr {
			t.Errorf("%s: %v %v, want %v (error %v)", tc.name, got, err, tc.want, tc.wantErr)
		}
	}
}
