// Package auditevent builds the FHIR AuditEvent that Koppeltaal requires
// of the application that launches a module (TOP-KT-011, profile
// KT2AuditEvent): an Application Start (DCM 110100 / 110120) with the
// portal as launcher, the module as destination, the Task, the user and the
// patient as entities, and the token's jti as trace id.
//
// An event is built from a Launch, which holds what a launch record (see
// "Audit trail" in docs/ARCHITECTURE.md) holds plus what the request knew,
// so it can be rebuilt later and sent again. Its id is derived from the
// launch (see Launch.ID): the event is written with PUT AuditEvent/<id>, so
// a retry after a lost answer replaces the event instead of adding one.
//
// Build refuses what the profile or FHIR would refuse, so a bad event is a
// bug caught in tests, not a 400 from the domain; Validate checks the JSON
// of an event against the same rules.
package auditevent

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/ehealth-nl/portal/pkg/hti"
)

// Profile is the canonical URL of the KT2AuditEvent profile, the event's
// meta.profile.
const Profile = "http://koppeltaal.nl/fhir/StructureDefinition/KT2AuditEvent"

// The Koppeltaal tracing extensions of KT2AuditEvent (TOP-KT-011), each a
// valueId.
const (
	ExtensionTraceID       = "http://koppeltaal.nl/fhir/StructureDefinition/trace-id"
	ExtensionRequestID     = "http://koppeltaal.nl/fhir/StructureDefinition/request-id"
	ExtensionCorrelationID = "http://koppeltaal.nl/fhir/StructureDefinition/correlation-id"
)

// Code systems the event uses.
const (
	SystemDICOM         = "http://dicom.nema.org/resources/ontology/DCM"
	SystemResourceTypes = "http://hl7.org/fhir/resource-types"
	SystemObjectRole    = "http://terminology.hl7.org/CodeSystem/object-role"
)

// Outcome is AuditEvent.outcome: how the launch ended.
type Outcome string

// The outcomes of a launch. The profile's fourth code, 12 (major failure),
// is not one a launch ends with.
const (
	OutcomeSuccess        Outcome = "0" // the module was launched
	OutcomeMinorFailure   Outcome = "4" // refused as expected, e.g. not authorised
	OutcomeSeriousFailure Outcome = "8" // failed unexpectedly
)

// kind names the outcome in the event's identity.
func (o Outcome) kind() (string, bool) {
	switch o {
	case OutcomeSuccess:
		return "start", true
	case OutcomeMinorFailure:
		return "refused", true
	case OutcomeSeriousFailure:
		return "failed", true
	}
	return "", false
}

// Launch is what one launch's AuditEvent is built from. The first block
// comes from the launch record (launch.Record), the rest from the portal's
// configuration and the request that launched or was refused.
type Launch struct {
	LaunchID string // the launch's id (launch.Record.ID): part of the event's identity
	JTI      string // the token's jti, the trace id; may be empty when no token was signed (outcome 4 or 8)
	Task     string // Task/<id> (launch.Record.Task)
	// TaskVersion is the Task's meta.versionId when the launch knew it;
	// the entity then names that version, Task/<id>/_history/<v>.
	TaskVersion     string
	User            string    // Patient/, Practitioner/ or RelatedPerson/<id> (launch.Record.User)
	Patient         string    // Patient/<id>; may equal User or be empty when the user is the patient
	Module          string    // the module's Device/<id> (launch.Record.Audience)
	EndpointAddress string    // the module's Endpoint.address (launch.Record.LaunchURL)
	Recorded        time.Time // when the launch happened (launch.Record.RedeemedAt, or CreatedAt for a token)

	Portal        string  // the portal's own Device/<id>: launcher and observer
	Site          string  // the domain name of the portal, source.site
	RequestID     string  // X-Request-Id of the launching request, a FHIR id; part of the event's identity
	CorrelationID string  // id of the request that triggered it, a FHIR id; optional
	Outcome       Outcome // how the launch ended
	OutcomeDesc   string  // why it failed; required for 4 and 8, refused for 0
}

// ValidID reports whether s follows the FHIR id rule, which valueId and
// Resource.id follow: 1 to 64 letters, digits, '-' or '.'. It is also the
// rule of the request ids the portal keeps, since they become the valueIds
// of its events.
func ValidID(s string) bool {
	if len(s) < 1 || len(s) > 64 {
		return false
	}
	for _, c := range []byte(s) {
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '.') {
			return false
		}
	}
	return true
}

// maxTextLength caps site and outcomeDesc; they are short texts, not logs.
const maxTextLength = 1024

// Error is a Launch or an event that breaks a rule of TOP-KT-011, the
// KT2AuditEvent profile or FHIR.
type Error struct {
	Field  string // the Launch field or the element of the event
	Reason string
}

// Error says which field or element broke which rule.
func (e *Error) Error() string { return "auditevent: " + e.Field + ": " + e.Reason }

// Validate checks a launch against the rules the event must follow:
// references of the right types, ids that are FHIR ids (a jti or request
// id that is not one is refused, never altered: a changed id would no
// longer match the token or the logs), a patient user launching only for
// themselves, and an outcome description exactly when the launch failed.
func (l *Launch) Validate() error {
	var errs []error
	bad := func(field, format string, args ...any) {
		errs = append(errs, &Error{Field: field, Reason: fmt.Sprintf(format, args...)})
	}
	ref := func(field, value string, types ...string) hti.Reference {
		r, err := hti.ParseReference(value, types...)
		if err != nil {
			bad(field, "%v", err)
		}
		return r
	}
	id := func(field, value string, required bool) {
		switch {
		case value == "" && required:
			bad(field, "is required")
		case value != "" && !ValidID(value):
			bad(field, "%q is not a FHIR id (1-64 letters, digits, '-' or '.')", value)
		}
	}
	text := func(field, value string) {
		switch {
		case !utf8.ValidString(value):
			bad(field, "is not valid UTF-8")
		case len(value) > maxTextLength:
			bad(field, "is longer than %d bytes", maxTextLength)
		case strings.TrimSpace(value) != value:
			bad(field, "has leading or trailing white space")
		case strings.IndexFunc(value, func(r rune) bool { return unicode.IsControl(r) && r != '\n' }) >= 0:
			bad(field, "holds a control character")
		}
	}

	id("LaunchID", l.LaunchID, true)
	ref("Task", l.Task, hti.TypeTask)
	id("TaskVersion", l.TaskVersion, false)
	user := ref("User", l.User, hti.UserTypes...)
	// A refused or failed launch may have stopped before the patient, the
	// module or its Endpoint was known; a started one knows all three.
	started := l.Outcome == OutcomeSuccess
	if l.Patient != "" {
		patient := ref("Patient", l.Patient, hti.TypePatient)
		// A patient starts only their own Tasks; a refusal may be of exactly
		// that (task-other-patient), and names both.
		if started && user.Type == hti.TypePatient && patient.ID != "" && patient != user {
			bad("Patient", "%s is not the launching patient %s: a patient launches only their own tasks", l.Patient, l.User)
		}
	} else if started && user.Type != "" && user.Type != hti.TypePatient {
		bad("Patient", "is required when a %s launches", user.Type)
	}
	portal := ref("Portal", l.Portal, hti.TypeDevice)
	if l.Module != "" || started {
		module := ref("Module", l.Module, hti.TypeDevice)
		if module.ID != "" && module == portal {
			bad("Module", "is the portal's own Device %s", l.Portal)
		}
	}
	if l.EndpointAddress != "" || started {
		if u, err := url.Parse(l.EndpointAddress); err != nil || !u.IsAbs() || u.Host == "" {
			bad("EndpointAddress", "%q is not an absolute URL", l.EndpointAddress)
		} else if l.Module == "" {
			bad("EndpointAddress", "is the address of a module, and Module is empty")
		}
	}
	if l.Site == "" {
		bad("Site", "is required")
	}
	text("Site", l.Site)
	if l.Recorded.IsZero() {
		bad("Recorded", "is required")
	}
	id("RequestID", l.RequestID, false)
	id("CorrelationID", l.CorrelationID, false)
	if _, ok := l.Outcome.kind(); !ok {
		bad("Outcome", "%q is not 0, 4 or 8", l.Outcome)
	}
	switch {
	case l.Outcome == OutcomeSuccess:
		id("JTI", l.JTI, true)
		if l.OutcomeDesc != "" {
			bad("OutcomeDesc", "is for a refused or failed launch, not a successful one")
		}
	default:
		id("JTI", l.JTI, false)
		if l.OutcomeDesc == "" {
			bad("OutcomeDesc", "is required when the outcome is %q", l.Outcome)
		}
		text("OutcomeDesc", l.OutcomeDesc)
	}
	return errors.Join(errs...)
}

// ID is the event's resource id: the name-based UUID (version 5, RFC 9562)
// of the launch id, the kind of outcome and the request id. Building the
// same launch again, to retry a delivery whose answer was lost, gives the
// same id, so PUT AuditEvent/<id> replaces the event instead of adding a
// second. A launch succeeds at most once, but may be refused more than
// once (a link opened after it expired, twice): the request id keeps those
// events apart. It reports an error when the launch does not validate.
func (l *Launch) ID() (string, error) {
	if err := l.Validate(); err != nil {
		return "", err
	}
	return EventID(l.LaunchID, l.Outcome, l.RequestID)
}

// EventID is Launch.ID from its three parts, for a launch whose other
// fields are not at hand (an outbox listing): the event id of the launch
// launchID that ended with outcome o in the request requestID.
func EventID(launchID string, o Outcome, requestID string) (string, error) {
	kind, ok := o.kind()
	if !ok || !ValidID(launchID) || (requestID != "" && !ValidID(requestID)) {
		return "", &Error{Field: "LaunchID", Reason: fmt.Sprintf("no event id for launch %q, outcome %q, request %q", launchID, o, requestID)}
	}
	// Every part is a FHIR id or empty, so none holds the separator.
	return uuidV5(namespace, "launch/"+launchID+"/"+kind+"/"+requestID)
}

// Build returns the AuditEvent of a launch as FHIR JSON (TOP-KT-011,
// KT2AuditEvent). The same launch always gives the same bytes.
func Build(l Launch) ([]byte, error) {
	id, err := l.ID()
	if err != nil {
		return nil, err
	}
	e := auditEvent{
		ResourceType: "AuditEvent",
		ID:           id,
		Meta:         meta{Profile: []string{Profile}},
		Type:         coding{System: SystemDICOM, Code: "110100", Display: "Application Activity"},
		Subtype:      []coding{{System: SystemDICOM, Code: "110120", Display: "Application Start"}},
		Action:       "E",
		Recorded:     formatInstant(l.Recorded),
		Outcome:      string(l.Outcome),
		OutcomeDesc:  l.OutcomeDesc,
		Agent: []agent{{
			Type:      codeableConcept{Coding: []coding{{System: SystemDICOM, Code: "110151", Display: "Application Launcher"}}},
			Who:       reference{Reference: l.Portal, Type: hti.TypeDevice},
			Requestor: true,
		}},
		Source: source{Site: l.Site, Observer: reference{Reference: l.Portal, Type: hti.TypeDevice}},
	}
	// The module is the destination once known (a refusal may come before).
	if l.Module != "" {
		dest := agent{
			Type:      codeableConcept{Coding: []coding{{System: SystemDICOM, Code: "110152", Display: "Destination Role ID"}}},
			Who:       reference{Reference: l.Module, Type: hti.TypeDevice},
			Requestor: false,
		}
		if l.EndpointAddress != "" {
			dest.Network = &network{Address: l.EndpointAddress, Type: networkURI}
		}
		e.Agent = append(e.Agent, dest)
	}
	for _, x := range []struct{ url, value string }{
		{ExtensionTraceID, l.JTI},
		{ExtensionRequestID, l.RequestID},
		{ExtensionCorrelationID, l.CorrelationID},
	} {
		if x.value != "" {
			e.Extension = append(e.Extension, extension{URL: x.url, ValueID: x.value})
		}
	}

	// The Task names its version when known: FHIR R4 asks that
	// AuditEvent.entity.what be version specific, and the module changes
	// the Task (its status) right after the launch.
	task := l.Task
	if l.TaskVersion != "" {
		task += "/_history/" + l.TaskVersion
	}
	e.Entity = append(e.Entity, entity{
		What: reference{Reference: task, Type: hti.TypeTask},
		Type: &coding{System: SystemResourceTypes, Code: hti.TypeTask},
	})
	// People are entities, never agents (KT2AuditEvent: agent.who only
	// Device), with their object role. A patient launching their own task
	// is one Patient entity.
	user, _ := hti.ParseReference(l.User, hti.UserTypes...)
	e.Entity = append(e.Entity, personEntity(user))
	if l.Patient != "" && l.Patient != user.String() {
		patient, _ := hti.ParseReference(l.Patient, hti.TypePatient)
		e.Entity = append(e.Entity, personEntity(patient))
	}

	raw, err := marshal(e)
	if err != nil {
		return nil, err
	}
	if err := Validate(raw); err != nil {
		return nil, fmt.Errorf("auditevent: built an invalid event (a bug): %w", err)
	}
	return raw, nil
}

// objectRole is the object-role code of a person a launch names
// (TOP-KT-011), or "" for another resource type.
func objectRole(resourceType string) string {
	switch resourceType {
	case hti.TypePatient:
		return "1"
	case hti.TypeRelatedPerson:
		return "6"
	case hti.TypePractitioner:
		return "15"
	}
	return ""
}

// personEntity is the entity of a Patient, RelatedPerson or Practitioner.
func personEntity(r hti.Reference) entity {
	return entity{
		What: reference{Reference: r.String(), Type: r.Type},
		Role: &coding{System: SystemObjectRole, Code: objectRole(r.Type)},
	}
}

// formatInstant writes a FHIR instant in UTC with milliseconds, the
// precision FHIR servers keep.
func formatInstant(t time.Time) string {
	return t.UTC().Truncate(time.Millisecond).Format("2006-01-02T15:04:05.000Z")
}

// marshal writes compact JSON without HTML escaping (so an & in a URL stays
// an &).
func marshal(v any) ([]byte, error) {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(b.Bytes(), []byte("\n")), nil
}
