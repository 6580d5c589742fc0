package auditevent_test

import (
	"encoding/json"
	"errors"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/ehealth-nl/portal/internal/auditevent"
)

// practitionerLaunch is a successful launch by a practitioner for a
// patient, with every optional field set.
func practitionerLaunch() auditevent.Launch {
	return auditevent.Launch{
		LaunchID:        "0b8f5b8e-3f4c-4d3e-9a53-6f7a0e3d2c11",
		JTI:             "5f0c3a9e8d7b6a5f4e3d2c1b0a998877",
		Task:            "Task/task-1",
		TaskVersion:     "3",
		User:            "Practitioner/prac-1",
		Patient:         "Patient/pat-1",
		Module:          "Device/module-1",
		EndpointAddress: "https://module.example/launch?a=1&b=2",
		Recorded:        time.Date(2026, 3, 4, 5, 6, 7, 891234567, time.FixedZone("CET", 3600)),
		Portal:          "Device/portal",
		Site:            "portal.example.nl",
		RequestID:       "req-1",
		CorrelationID:   "corr-1",
		Outcome:         auditevent.OutcomeSuccess,
	}
}

// TestBuildShape pins the whole event of one launch, byte for byte: the
// shape TOP-KT-011 asks for, written the same way every time.
func TestBuildShape(t *testing.T) {
	l := practitionerLaunch()
	raw, err := auditevent.Build(l)
	if err != nil {
		t.Fatal(err)
	}
	id, err := l.ID()
	if err != nil {
		t.Fatal(err)
	}
	want := `{"resourceType":"AuditEvent","id":"` + id + `",` +
		`"meta":{"profile":["http://koppeltaal.nl/fhir/StructureDefinition/KT2AuditEvent"]},` +
		`"extension":[{"url":"http://koppeltaal.nl/fhir/StructureDefinition/trace-id","valueId":"5f0c3a9e8d7b6a5f4e3d2c1b0a998877"},` +
		`{"url":"http://koppeltaal.nl/fhir/StructureDefinition/request-id","valueId":"req-1"},` +
		`{"url":"http://koppeltaal.nl/fhir/StructureDefinition/correlation-id","valueId":"corr-1"}],` +
		`"type":{"system":"http://dicom.nema.org/resources/ontology/DCM","code":"110100","display":"Application Activity"},` +
		`"subtype":[{"system":"http://dicom.nema.org/resources/ontology/DCM","code":"110120","display":"Application Start"}],` +
		`"action":"E","recorded":"2026-03-04T04:06:07.891Z","outcome":"0",` +
		`"agent":[{"type":{"coding":[{"system":"http://dicom.nema.org/resources/ontology/DCM","code":"110151","display":"Application Launcher"}]},` +
		`"who":{"reference":"Device/portal","type":"Device"},"requestor":true},` +
		`{"type":{"coding":[{"system":"http://dicom.nema.org/resources/ontology/DCM","code":"110152","display":"Destination Role ID"}]},` +
		`"who":{"reference":"Device/module-1","type":"Device"},"requestor":false,` +
		`"network":{"address":"https://module.example/launch?a=1&b=2","type":"5"}}],` +
		`"source":{"site":"portal.example.nl","observer":{"reference":"Device/portal","type":"Device"}},` +
		`"entity":[{"what":{"reference":"Task/task-1/_history/3","type":"Task"},"type":{"system":"http://hl7.org/fhir/resource-types","code":"Task"}},` +
		`{"what":{"reference":"Practitioner/prac-1","type":"Practitioner"},"role":{"system":"http://terminology.hl7.org/CodeSystem/object-role","code":"15"}},` +
		`{"what":{"reference":"Patient/pat-1","type":"Patient"},"role":{"system":"http://terminology.hl7.org/CodeSystem/object-role","code":"1"}}]}`
	if string(raw) != want {
		t.Fatalf("Build:\n got %s\nwant %s", raw, want)
	}
	again, err := auditevent.Build(l)
	if err != nil || string(again) != string(raw) {
		t.Fatalf("a second Build of the same launch differs: %s %v", again, err)
	}
}

// TestBuildPeople checks the entities per role: a patient launching their
// own task is one Patient entity (named as patient or not), a related
// person is role 6, and without a known version the Task is plain.
func TestBuildPeople(t *testing.T) {
	for _, c := range []struct {
		name, user, patient string
		want                []string // reference and role of each person
	}{
		{"patient, patient given", "Patient/pat-1", "Patient/pat-1", []string{"Patient/pat-1 1"}},
		{"patient, patient empty", "Patient/pat-1", "", []string{"Patient/pat-1 1"}},
		{"related person", "RelatedPerson/rp-1", "Patient/pat-1", []string{"RelatedPerson/rp-1 6", "Patient/pat-1 1"}},
		{"practitioner", "Practitioner/prac-1", "Patient/pat-1", []string{"Practitioner/prac-1 15", "Patient/pat-1 1"}},
	} {
		l := practitionerLaunch()
		l.User, l.Patient, l.TaskVersion = c.user, c.patient, ""
		raw, err := auditevent.Build(l)
		if err != nil {
			t.Errorf("%s: %v", c.name, err)
			continue
		}
		var e struct {
			Entity []struct {
				What struct{ Reference string }
				Role *struct{ Code string }
			}
		}
		if err := json.Unmarshal(raw, &e); err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, x := range e.Entity[1:] {
			got = append(got, x.What.Reference+" "+x.Role.Code)
		}
		if e.Entity[0].What.Reference != "Task/task-1" || strings.Join(got, ", ") != strings.Join(c.want, ", ") {
			t.Errorf("%s: entities %s %v, want Task/task-1 %v", c.name, e.Entity[0].What.Reference, got, c.want)
		}
	}
}

// TestID checks the identity: a UUIDv5, the same for the same launch, and
// different when the launch, the kind of outcome or the request differs.
func TestID(t *testing.T) {
	id := func(change func(*auditevent.Launch)) string {
		l := practitionerLaunch()
		change(&l)
		s, err := l.ID()
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	base := id(func(*auditevent.Launch) {})
	if !regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-5[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`).MatchString(base) {
		t.Fatalf("id %q is not a UUIDv5", base)
	}
	// What is not part of the identity: rebuilding with another time or
	// description replaces the event rather than adding one.
	if got := id(func(l *auditevent.Launch) { l.Recorded = l.Recorded.Add(time.Hour); l.Site = "other.example" }); got != base {
		t.Errorf("the id depends on the time or site: %s, %s", got, base)
	}
	seen := map[string]string{base: "base"}
	for name, change := range map[string]func(*auditevent.Launch){
		"launch":  func(l *auditevent.Launch) { l.LaunchID = "another-launch" },
		"request": func(l *auditevent.Launch) { l.RequestID = "req-2" },
		"no request id": func(l *auditevent.Launch) {
			l.RequestID = ""
		},
		"refused": func(l *auditevent.Launch) {
			l.Outcome, l.OutcomeDesc = auditevent.OutcomeMinorFailure, "not authorised"
		},
		"failed": func(l *auditevent.Launch) {
			l.Outcome, l.OutcomeDesc = auditevent.OutcomeSeriousFailure, "database down"
		},
	} {
		got := id(change)
		if other, dup := seen[got]; dup {
			t.Errorf("%s and %s have the same id %s", name, other, got)
		}
		seen[got] = name
	}
}

// TestLaunchRefused checks that Build refuses each broken launch, naming
// the field, instead of writing an event the domain would refuse or that
// breaks TOP-KT-011.
func TestLaunchRefused(t *testing.T) {
	for _, c := range []struct {
		field  string
		change func(*auditevent.Launch)
	}{
		{"JTI", func(l *auditevent.Launch) { l.JTI = "has_underscore" }},
		{"JTI", func(l *auditevent.Launch) { l.JTI = "" }},
		{"JTI", func(l *auditevent.Launch) { l.JTI = strings.Repeat("a", 65) }},
		{"RequestID", func(l *auditevent.Launch) { l.RequestID = "req_1" }},
		{"RequestID", func(l *auditevent.Launch) { l.RequestID = "a/b:c" }},
		{"CorrelationID", func(l *auditevent.Launch) { l.CorrelationID = "x y" }},
		{"LaunchID", func(l *auditevent.Launch) { l.LaunchID = "" }},
		{"Task", func(l *auditevent.Launch) { l.Task = "Task/t-1/_history/2" }},
		{"Task", func(l *auditevent.Launch) { l.Task = "Patient/t-1" }},
		{"TaskVersion", func(l *auditevent.Launch) { l.TaskVersion = "v_1" }},
		{"User", func(l *auditevent.Launch) { l.User = "Device/d-1" }},
		{"Patient", func(l *auditevent.Launch) { l.User, l.Patient = "Patient/pat-1", "Patient/pat-2" }},
		{"Patient", func(l *auditevent.Launch) { l.Patient = "" }},
		{"Patient", func(l *auditevent.Launch) { l.Patient = "Practitioner/p" }},
		{"Module", func(l *auditevent.Launch) { l.Module = "Patient/pat-1" }},
		{"Module", func(l *auditevent.Launch) { l.Module = l.Portal }},
		{"Portal", func(l *auditevent.Launch) { l.Portal = "" }},
		{"EndpointAddress", func(l *auditevent.Launch) { l.EndpointAddress = "/launch" }},
		{"Site", func(l *auditevent.Launch) { l.Site = "" }},
		{"Site", func(l *auditevent.Launch) { l.Site = " portal " }},
		{"Recorded", func(l *auditevent.Launch) { l.Recorded = time.Time{} }},
		{"Outcome", func(l *auditevent.Launch) { l.Outcome, l.OutcomeDesc = "12", "major" }},
		{"Outcome", func(l *auditevent.Launch) { l.Outcome = "" }},
		{"OutcomeDesc", func(l *auditevent.Launch) { l.OutcomeDesc = "all fine" }},
		{"OutcomeDesc", func(l *auditevent.Launch) { l.Outcome = auditevent.OutcomeMinorFailure }},
		{"OutcomeDesc", func(l *auditevent.Launch) {
			l.Outcome, l.OutcomeDesc = auditevent.OutcomeSeriousFailure, "bell\a"
		}},
	} {
		l := practitionerLaunch()
		c.change(&l)
		raw, err := auditevent.Build(l)
		var e *auditevent.Error
		if !errors.As(err, &e) || !strings.Contains(err.Error(), "auditevent: "+c.field+": ") {
			t.Errorf("%s: Build gave %s, %v; want an error about %s", c.field, raw, err, c.field)
		}
	}
	// A refused launch may have no jti: no token was signed.
	l := practitionerLaunch()
	l.JTI, l.Outcome, l.OutcomeDesc = "", auditevent.OutcomeMinorFailure, "not authorised"
	if raw, err := auditevent.Build(l); err != nil || strings.Contains(string(raw), "trace-id") {
		t.Errorf("refused launch without jti: %s %v", raw, err)
	}
	// A started launch needs its module, its Endpoint and its patient.
	for _, change := range []func(*auditevent.Launch){
		func(l *auditevent.Launch) { l.Module, l.EndpointAddress = "", "" },
		func(l *auditevent.Launch) { l.EndpointAddress = "" },
	} {
		l := practitionerLaunch()
		change(&l)
		if raw, err := auditevent.Build(l); err == nil {
			t.Errorf("a started launch without its module or Endpoint built: %s", raw)
		}
	}
}

// TestRefusalShapes: a refusal may stop before the module or the patient
// is known, or be of a patient asking for another patient's Task; its
// event then names what is known, and still validates.
func TestRefusalShapes(t *testing.T) {
	for _, c := range []struct {
		name     string
		change   func(*auditevent.Launch)
		agents   int
		entities []string
	}{
		{"no module", func(l *auditevent.Launch) { l.Module, l.EndpointAddress = "", "" }, 1,
			[]string{"Task/task-1/_history/3", "Practitioner/prac-1", "Patient/pat-1"}},
		{"module without Endpoint", func(l *auditevent.Launch) { l.EndpointAddress = "" }, 2,
			[]string{"Task/task-1/_history/3", "Practitioner/prac-1", "Patient/pat-1"}},
		{"no patient", func(l *auditevent.Launch) { l.Patient = "" }, 2,
			[]string{"Task/task-1/_history/3", "Practitioner/prac-1"}},
		{"another patient's Task", func(l *auditevent.Launch) { l.User, l.Patient = "Patient/pat-2", "Patient/pat-1" }, 2,
			[]string{"Task/task-1/_history/3", "Patient/pat-2", "Patient/pat-1"}},
	} {
		l := practitionerLaunch()
		l.JTI, l.Outcome, l.OutcomeDesc = "", auditevent.OutcomeMinorFailure, "launch refused: rule"
		c.change(&l)
		raw, err := auditevent.Build(l)
		if err != nil {
			t.Errorf("%s: %v", c.name, err)
			continue
		}
		var e struct {
			Agent []struct {
				Network *struct{ Address string }
			}
			Entity []struct{ What struct{ Reference string } }
		}
		_ = json.Unmarshal(raw, &e)
		var got []string
		for _, en := range e.Entity {
			got = append(got, en.What.Reference)
		}
		if len(e.Agent) != c.agents || strings.Join(got, " ") != strings.Join(c.entities, " ") {
			t.Errorf("%s: %d agents, entities %v; want %d, %v", c.name, len(e.Agent), got, c.agents, c.entities)
		}
		if c.name == "module without Endpoint" && e.Agent[1].Network != nil {
			t.Errorf("%s: a network without an address", c.name)
		}
	}
	// An address needs the module it is the address of.
	l := practitionerLaunch()
	l.JTI, l.Outcome, l.OutcomeDesc, l.Module = "", auditevent.OutcomeMinorFailure, "refused", ""
	if raw, err := auditevent.Build(l); err == nil {
		t.Errorf("an Endpoint address without a module built: %s", raw)
	}
}

// TestValidate checks that Validate refuses what KT2AuditEvent forbids or
// TOP-KT-011 rules out, in JSON that did not come from Build.
func TestValidate(t *testing.T) {
	raw, err := auditevent.Build(practitionerLaunch())
	if err != nil {
		t.Fatal(err)
	}
	if err := auditevent.Validate(raw); err != nil {
		t.Fatalf("Validate refuses Build's event: %v", err)
	}
	type event = map[string]any
	at := func(e event, path ...any) event {
		var cur any = e
		for _, p := range path {
			switch p := p.(type) {
			case string:
				cur = cur.(map[string]any)[p]
			case int:
				cur = cur.([]any)[p]
			}
		}
		return cur.(map[string]any)
	}
	for _, c := range []struct {
		name, want string
		change     func(event)
	}{
		{"purposeOfEvent", "unknown field", func(e event) { e["purposeOfEvent"] = []any{map[string]any{"text": "care"}} }},
		{"agent.name", "unknown field", func(e event) { at(e, "agent", 0)["name"] = "Portal" }},
		{"agent.altId", "unknown field", func(e event) { at(e, "agent", 0)["altId"] = "p" }},
		{"agent.policy", "unknown field", func(e event) { at(e, "agent", 0)["policy"] = []any{"urn:x"} }},
		{"entity.detail", "unknown field", func(e event) {
			at(e, "entity", 0)["detail"] = []any{map[string]any{"type": "x", "valueString": "y"}}
		}},
		{"resource-origin", "extension[3]", func(e event) {
			e["extension"] = append(e["extension"].([]any), map[string]any{
				"url": "http://koppeltaal.nl/fhir/StructureDefinition/resource-origin", "valueId": "x"})
		}},
		{"valueId with _", "extension[0].valueId", func(e event) { at(e, "extension", 0)["valueId"] = "has_underscore" }},
		{"trace-id twice", "appears twice", func(e event) {
			e["extension"] = append(e["extension"].([]any), at(e, "extension", 0))
		}},
		{"no trace-id", "trace-id", func(e event) { e["extension"] = e["extension"].([]any)[1:] }},
		{"a person as agent", "agent[1].who", func(e event) {
			at(e, "agent", 1)["who"] = map[string]any{"reference": "Practitioner/prac-1", "type": "Practitioner"}
		}},
		{"observer not the launcher", "source.observer", func(e event) {
			at(e, "source")["observer"] = map[string]any{"reference": "Device/other", "type": "Device"}
		}},
		{"two requestors", "agent[1].requestor", func(e event) { at(e, "agent", 1)["requestor"] = true }},
		{"network type", "agent[1].network", func(e event) { at(e, "agent", 1, "network")["type"] = "2" }},
		{"wrong role", "entity[1].role", func(e event) { at(e, "entity", 1, "role")["code"] = "1" }},
		{"two patients", "2 patients", func(e event) {
			at(e, "entity", 1)["what"] = map[string]any{"reference": "Patient/pat-2", "type": "Patient"}
			at(e, "entity", 1, "role")["code"] = "1"
		}},
		{"the patient twice", "named twice", func(e event) {
			at(e, "entity", 1)["what"] = at(e, "entity", 2, "what")
			at(e, "entity", 1)["role"] = at(e, "entity", 2, "role")
		}},
		{"bad task version", "entity[0].what", func(e event) { at(e, "entity", 0, "what")["reference"] = "Task/t/_history/" }},
		{"outcome 4 without description", "outcomeDesc", func(e event) { e["outcome"] = "4" }},
		{"outcome 12", "outcome", func(e event) { e["outcome"] = "12" }},
		{"other type", "type", func(e event) { at(e, "type")["code"] = "110114" }},
		{"other profile", "meta.profile", func(e event) { at(e, "meta")["profile"] = []any{"http://example.org/x"} }},
		{"bad id", "id", func(e event) { e["id"] = "a_b" }},
		{"member name in another case", "case", func(e event) { e["Outcome"] = e["outcome"]; delete(e, "outcome") }},
		{"empty display", "empty", func(e event) { at(e, "type")["display"] = "" }},
		{"null outcomeDesc", "null", func(e event) { e["outcomeDesc"] = nil }},
		{"recorded without zone", "recorded", func(e event) { e["recorded"] = "2026-01-01T00:00:00" }},
	} {
		var e event
		if err := json.Unmarshal(raw, &e); err != nil {
			t.Fatal(err)
		}
		c.change(e)
		changed, _ := json.Marshal(e)
		err := auditevent.Validate(changed)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: Validate gave %v; want an error about %q", c.name, err, c.want)
		}
	}
	if err := auditevent.Validate(append(raw[:len(raw):len(raw)], []byte(" {}")...)); err == nil {
		t.Error("Validate accepted data after the event")
	}
}
