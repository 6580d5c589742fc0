package launch

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/ehealth-nl/portal/internal/keys"
	"github.com/ehealth-nl/portal/pkg/hti"
)

// Request asks for a launch: which module, for which task, launched by
// which user, for which patient (DESIGN 2.4, issue: POST /api/v1/launches).
type Request struct {
	Module     string `json:"module"`               // slug of a registered module (required)
	Task       string `json:"task"`                 // Task/<id> (required)
	User       string `json:"user"`                 // Patient, Practitioner or RelatedPerson/<id>: the sub (required)
	Patient    string `json:"patient,omitempty"`    // Patient/<id>: required unless the user is a Patient
	Definition string `json:"definition,omitempty"` // ActivityDefinition/<id>; the module's by default
	Intent     string `json:"intent,omitempty"`     // a Task.intent code; plan by default
	IDPHint    string `json:"idp_hint,omitempty"`   // passed through to the token
	Issuer     string `json:"issuer,omitempty"`     // the module's issuer, when named
}

// MalformedError means the body is not a JSON object of the known fields
// with string values: a 400, naming the field where one is to blame.
type MalformedError struct {
	Field  string // "body" when no single field is to blame
	Reason string // what is wrong with it
	Err    error  // what reading the body failed with, if it did
}

// Error says which field is malformed and how.
func (e *MalformedError) Error() string { return "malformed request: " + e.Field + ": " + e.Reason }

// Unwrap returns the read error, so the HTTP layer can tell a body over the
// size limit (413) from one that is merely unreadable.
func (e *MalformedError) Unwrap() error { return e.Err }

// MaxRequestBytes is the largest request body accepted.
const MaxRequestBytes = 16 << 10

// DecodeRequest reads a launch request strictly: one JSON object, known
// fields only, every value a string (or null), nothing after it.
func DecodeRequest(body io.Reader) (Request, error) {
	var r Request
	data, err := io.ReadAll(io.LimitReader(body, MaxRequestBytes+1))
	if err != nil {
		return r, &MalformedError{Field: "body", Reason: "could not be read", Err: err}
	}
	if len(data) > MaxRequestBytes {
		return r, &MalformedError{Field: "body", Reason: fmt.Sprintf("is over %d bytes", MaxRequestBytes)}
	}
	trimmed := bytes.TrimSpace(data)
	if len(trimmed) == 0 || trimmed[0] != '{' {
		return r, &MalformedError{Field: "body", Reason: "must be a JSON object"}
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&r); err != nil {
		return Request{}, decodeProblem(err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return Request{}, &MalformedError{Field: "body", Reason: "has data after the JSON object"}
	}
	return r, nil
}

// decodeProblem names the field a json decoding error is about.
func decodeProblem(err error) error {
	var (
		syntax  *json.SyntaxError
		typeErr *json.UnmarshalTypeError
	)
	switch {
	case errors.As(err, &syntax):
		return &MalformedError{Field: "body", Reason: fmt.Sprintf("is not valid JSON (at byte %d)", syntax.Offset)}
	case errors.As(err, &typeErr):
		field := typeErr.Field
		if field == "" {
			field = "body"
		}
		return &MalformedError{Field: field, Reason: "must be a string"}
	case errors.Is(err, io.ErrUnexpectedEOF):
		return &MalformedError{Field: "body", Reason: "is truncated JSON"}
	}
	if name, ok := strings.CutPrefix(err.Error(), "json: unknown field "); ok {
		if name = strings.Trim(name, `"`); name == "" {
			return &MalformedError{Field: "body", Reason: "has a member with an empty name"}
		}
		return &MalformedError{Field: name, Reason: "is not a known field"}
	}
	return &MalformedError{Field: "body", Reason: "is not a valid launch request"}
}

// Validate applies the field rules of a launch request (DESIGN 1.1): the
// references and the role table. Whether the module and issuer exist is
// checked by the service.
func (r Request) Validate() error {
	var v ValidationError
	switch {
	case r.Module == "":
		v.add("module", "is required")
	case !keys.ValidSlug(r.Module):
		v.add("module", slugReason)
	}
	if r.Task == "" {
		v.add("task", "is required")
	} else if _, err := hti.ParseReference(r.Task, hti.TypeTask); err != nil {
		v.add("task", err.Error())
	}
	var user hti.Reference
	if r.User == "" {
		v.add("user", "is required")
	} else if u, err := hti.ParseReference(r.User, hti.UserTypes...); err != nil {
		v.add("user", err.Error())
	} else {
		user = u
	}
	if r.Patient != "" {
		if _, err := hti.ParseReference(r.Patient, hti.TypePatient); err != nil {
			v.add("patient", err.Error())
		} else if user.Type == hti.TypePatient && r.Patient != r.User {
			v.add("patient", fmt.Sprintf("%q differs from the launching patient %q: a patient launches only their own tasks", r.Patient, r.User))
		}
	} else if user.Type == hti.TypePractitioner || user.Type == hti.TypeRelatedPerson {
		v.add("patient", "is required when the user is a "+user.Type)
	}
	if r.Definition != "" {
		if _, err := hti.ParseReference(r.Definition, hti.TypeActivityDefinition); err != nil {
			v.add("definition", err.Error())
		}
	}
	if r.Intent != "" && !hti.ValidIntent(r.Intent) {
		v.add("intent", fmt.Sprintf("%q is not a FHIR Task.intent code (%s)", r.Intent, strings.Join(hti.TaskIntents, ", ")))
	}
	if r.IDPHint != "" {
		if err := hti.ValidateIDPHint(r.IDPHint); err != nil {
			v.add("idp_hint", err.Error())
		}
	}
	if r.Issuer != "" && !keys.ValidSlug(r.Issuer) {
		v.add("issuer", slugReason)
	}
	return v.orNil()
}
