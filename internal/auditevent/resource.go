package auditevent

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"time"

	"github.com/ehealth-nl/portal/pkg/hti"
)

// The JSON of the event. Only the elements TOP-KT-011 uses exist here, so
// what KT2AuditEvent forbids (purposeOfEvent, agent.name, agent.altId,
// agent.policy, entity.detail, ...) cannot be written, and Validate, which
// decodes into these types refusing unknown members, refuses it.
type (
	auditEvent struct {
		ResourceType string      `json:"resourceType"`
		ID           string      `json:"id"`
		Meta         meta        `json:"meta"`
		Extension    []extension `json:"extension,omitempty"`
		Type         coding      `json:"type"`
		Subtype      []coding    `json:"subtype"`
		Action       string      `json:"action"`
		Recorded     string      `json:"recorded"`
		Outcome      string      `json:"outcome"`
		OutcomeDesc  string      `json:"outcomeDesc,omitempty"`
		Agent        []agent     `json:"agent"`
		Source       source      `json:"source"`
		Entity       []entity    `json:"entity"`
	}
	meta struct {
		Profile []string `json:"profile"`
	}
	extension struct {
		URL     string `json:"url"`
		ValueID string `json:"valueId"`
	}
	coding struct {
		System  string `json:"system"`
		Code    string `json:"code"`
		Display string `json:"display,omitempty"`
	}
	codeableConcept struct {
		Coding []coding `json:"coding"`
	}
	reference struct {
		Reference string `json:"reference"`
		Type      string `json:"type"`
	}
	agent struct {
		Type      codeableConcept `json:"type"`
		Who       reference       `json:"who"`
		Requestor bool            `json:"requestor"`
		Network   *network        `json:"network,omitempty"`
	}
	network struct {
		Address string `json:"address"`
		Type    string `json:"type"`
	}
	source struct {
		Site     string    `json:"site"`
		Observer reference `json:"observer"`
	}
	entity struct {
		What reference `json:"what"`
		Type *coding   `json:"type,omitempty"`
		Role *coding   `json:"role,omitempty"`
	}
)

// networkURI is AuditEvent.agent.network.type 5, a URI: the module's
// Endpoint.address.
const networkURI = "5"

// Validate checks the JSON of a launch's AuditEvent against TOP-KT-011 and
// the KT2AuditEvent profile before it is sent: no member the profile
// forbids or this event does not use (resource-origin among them), FHIR ids
// in id and every valueId, the fixed type, subtype and action, the portal
// as requesting launcher and observer and the module as destination (both
// Devices, the only agents), a versioned or plain Task entity and the
// people as entities with their object roles, one Patient among them, and
// an outcomeDesc exactly when the outcome is 4 or 8. It returns all the
// rules broken, each an *Error.
func Validate(raw []byte) error {
	var e auditEvent
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&e); err != nil {
		return &Error{Field: "AuditEvent", Reason: "not an AuditEvent this package writes: " + err.Error()}
	}
	if dec.More() {
		return &Error{Field: "AuditEvent", Reason: "data after the resource"}
	}
	// encoding/json matches member names without regard to case and takes
	// an empty string as an absent one; FHIR does neither. What was read
	// must write back as the same JSON value.
	var got, written any
	back, err := marshal(e)
	if err == nil {
		err = json.Unmarshal(raw, &got)
	}
	if err == nil {
		err = json.Unmarshal(back, &written)
	}
	if err != nil || !reflect.DeepEqual(got, written) {
		return &Error{Field: "AuditEvent", Reason: "members differ from the elements' names (case), or are empty or null"}
	}

	var errs []error
	bad := func(field, format string, args ...any) {
		errs = append(errs, &Error{Field: field, Reason: fmt.Sprintf(format, args...)})
	}
	if e.ResourceType != "AuditEvent" {
		bad("resourceType", "is %q, not AuditEvent", e.ResourceType)
	}
	if !ValidID(e.ID) {
		bad("id", "%q is not a FHIR id", e.ID)
	}
	if len(e.Meta.Profile) != 1 || e.Meta.Profile[0] != Profile {
		bad("meta.profile", "is %q, want [%s]", e.Meta.Profile, Profile)
	}

	seen := map[string]bool{}
	for i, x := range e.Extension {
		field := fmt.Sprintf("extension[%d]", i)
		switch x.URL {
		case ExtensionTraceID, ExtensionRequestID, ExtensionCorrelationID:
		default:
			bad(field, "%q is not trace-id, request-id or correlation-id", x.URL)
		}
		if seen[x.URL] {
			bad(field, "%s appears twice", x.URL)
		}
		seen[x.URL] = true
		if !ValidID(x.ValueID) {
			bad(field+".valueId", "%q is not a FHIR id (1-64 letters, digits, '-' or '.')", x.ValueID)
		}
	}

	if e.Type != (coding{System: SystemDICOM, Code: "110100", Display: "Application Activity"}) {
		bad("type", "is %+v, not DCM 110100 Application Activity", e.Type)
	}
	if len(e.Subtype) != 1 || e.Subtype[0] != (coding{System: SystemDICOM, Code: "110120", Display: "Application Start"}) {
		bad("subtype", "is %+v, not DCM 110120 Application Start", e.Subtype)
	}
	if e.Action != "E" {
		bad("action", "is %q, not E", e.Action)
	}
	if _, err := time.Parse(time.RFC3339Nano, e.Recorded); err != nil {
		bad("recorded", "%q is not a FHIR instant", e.Recorded)
	}
	switch Outcome(e.Outcome) {
	case OutcomeSuccess:
		if !seen[ExtensionTraceID] {
			bad("extension", "a successful launch needs its trace-id (the jti)")
		}
		if e.OutcomeDesc != "" {
			bad("outcomeDesc", "is for a refused or failed launch")
		}
	case OutcomeMinorFailure, OutcomeSeriousFailure:
		if strings.TrimSpace(e.OutcomeDesc) == "" {
			bad("outcomeDesc", "is required when the outcome is %q", e.Outcome)
		}
	default:
		bad("outcome", "%q is not 0, 4 or 8", e.Outcome)
	}

	started := Outcome(e.Outcome) == OutcomeSuccess
	validateAgents(e, started, bad)
	validateEntities(e.Entity, started, bad)
	return errors.Join(errs...)
}

// validateAgents checks the agents and the source: the portal launches and
// observes, the module is the destination, both Devices. A refused or
// failed launch (started false) may name no destination: it can stop
// before the module is known; a destination it names has its address when
// known.
func validateAgents(e auditEvent, started bool, bad func(field, format string, args ...any)) {
	device := func(field string, r reference) {
		if _, err := hti.ParseReference(r.Reference, hti.TypeDevice); err != nil || r.Type != hti.TypeDevice {
			bad(field, "%+v is not a Device reference: agents and the observer are Devices (KT2AuditEvent)", r)
		}
	}
	if len(e.Agent) != 2 && (started || len(e.Agent) != 1) {
		bad("agent", "has %d agents, want the launcher and the destination", len(e.Agent))
		return
	}
	launcher := e.Agent[0]
	for i, want := range []struct {
		code, display string
		requestor     bool
	}{{"110151", "Application Launcher", true}, {"110152", "Destination Role ID", false}}[:len(e.Agent)] {
		a := e.Agent[i]
		field := fmt.Sprintf("agent[%d]", i)
		if len(a.Type.Coding) != 1 || a.Type.Coding[0] != (coding{System: SystemDICOM, Code: want.code, Display: want.display}) {
			bad(field+".type", "is %+v, not DCM %s %s", a.Type.Coding, want.code, want.display)
		}
		if a.Requestor != want.requestor {
			bad(field+".requestor", "is %t", a.Requestor)
		}
		device(field+".who", a.Who)
	}
	if launcher.Network != nil {
		bad("agent[0].network", "is the destination's, not the launcher's")
	}
	if len(e.Agent) == 2 {
		destination := e.Agent[1]
		if n := destination.Network; (n == nil && started) || (n != nil && (n.Address == "" || n.Type != networkURI)) {
			bad("agent[1].network", "%+v is not the module's Endpoint.address with type 5 (URI)", n)
		}
		if launcher.Who == destination.Who {
			bad("agent[1].who", "is the launcher %s", launcher.Who.Reference)
		}
	}
	if strings.TrimSpace(e.Source.Site) == "" {
		bad("source.site", "is required: the portal's domain name")
	}
	device("source.observer", e.Source.Observer)
	if e.Source.Observer != launcher.Who {
		bad("source.observer", "%s is not the launcher %s", e.Source.Observer.Reference, launcher.Who.Reference)
	}
}

// validateEntities checks the entities: the Task first, then the user and
// the patient with their object roles (1 Patient, 6 RelatedPerson, 15
// Practitioner; TOP-KT-011), exactly one Patient and nobody twice. A
// refused or failed launch (started false) may name no patient (the Task
// may have none), or two: a patient refused a Task of another patient.
func validateEntities(entities []entity, started bool, bad func(field, format string, args ...any)) {
	if len(entities) < 2 || len(entities) > 3 {
		bad("entity", "has %d entities, want the Task, the user and the patient (one when the user is the patient)", len(entities))
		return
	}
	task := entities[0]
	if task.Role != nil || task.Type == nil || *task.Type != (coding{System: SystemResourceTypes, Code: hti.TypeTask}) {
		bad("entity[0]", "is not the Task: type resource-types#Task and no role")
	}
	if err := checkTaskReference(task.What); err != nil {
		bad("entity[0].what", "%v", err)
	}
	patients := 0
	seen := map[string]bool{}
	for i, p := range entities[1:] {
		field := fmt.Sprintf("entity[%d]", i+1)
		r, err := hti.ParseReference(p.What.Reference, hti.UserTypes...)
		if err != nil {
			bad(field+".what", "%v", err)
			continue
		}
		if p.What.Type != r.Type {
			bad(field+".what.type", "is %q, not %q", p.What.Type, r.Type)
		}
		if p.Type != nil || p.Role == nil || *p.Role != (coding{System: SystemObjectRole, Code: objectRole(r.Type)}) {
			bad(field+".role", "is %+v, want object-role %s for a %s", p.Role, objectRole(r.Type), r.Type)
		}
		if seen[r.String()] {
			bad(field, "%s is named twice", r)
		}
		seen[r.String()] = true
		if r.Type == hti.TypePatient {
			patients++
		}
	}
	if (started && patients != 1) || patients > 2 || (patients == 0 && len(entities) == 3) {
		bad("entity", "names %d patients, want one", patients)
	}
}

// checkTaskReference accepts Task/<id> and the versioned
// Task/<id>/_history/<version>.
func checkTaskReference(r reference) error {
	base, version, versioned := strings.Cut(r.Reference, "/_history/")
	if _, err := hti.ParseReference(base, hti.TypeTask); err != nil {
		return err
	}
	if versioned && !ValidID(version) {
		return fmt.Errorf("%q has a version that is not a FHIR id", r.Reference)
	}
	if r.Type != hti.TypeTask {
		return fmt.Errorf("type is %q, not Task", r.Type)
	}
	return nil
}
