package launch

import (
	"fmt"
	"strings"

	"github.com/ehealth-nl/portal/internal/keys"
	"github.com/ehealth-nl/portal/pkg/hti"
)

// Request asks for a launch: which task, launched by which user, and for a
// plain HTI issuer which module and which patient (docs/ARCHITECTURE.md,
// "Launch flow"; README.md, "HTTP surface": POST /api/v1/launches). For an
// issuer that joined a Koppeltaal domain the task and user suffice: the
// module, patient, definition and intent come from the domain, and any of
// them given must agree with it (docs/ARCHITECTURE.md, "Launching from a
// Task").
type Request struct {
	Module     string `json:"module,omitempty"`     // slug of a registered module (required for a plain HTI issuer)
	Task       string `json:"task"`                 // Task/<id> (required)
	User       string `json:"user"`                 // Patient, Practitioner or RelatedPerson/<id>: the sub (required)
	Patient    string `json:"patient,omitempty"`    // Patient/<id>: required unless the user is a Patient or the issuer is in a domain
	Definition string `json:"definition,omitempty"` // ActivityDefinition/<id>; the module's (or the Task's) by default
	Intent     string `json:"intent,omitempty"`     // a Task.intent code; plan (or the Task's) by default
	IDPHint    string `json:"idp_hint,omitempty"`   // passed through to the token
	Issuer     string `json:"issuer,omitempty"`     // the issuer to launch for, when the module does not say
}

// Validate applies the field rules of a launch request that hold for
// every issuer (docs/ARCHITECTURE.md, "The launch token"): the syntax of
// each reference and code, and that a patient launches only for
// themselves. What depends on the issuer (a module and a patient for a
// plain HTI issuer) is checked by the service.
func (r Request) Validate() error {
	var v ValidationError
	if r.Module != "" && !keys.ValidSlug(r.Module) {
		v.add("module", slugReason)
	}
	if r.Task == "" {
		v.add("task", "is required")
	} else if _, err := hti.ParseReference(r.Task, hti.TypeTask); err != nil {
		v.add("task", err.Error())
	}
	if r.User == "" {
		v.add("user", "is required")
	} else if u, err := hti.ParseReference(r.User, hti.UserTypes...); err != nil {
		v.add("user", err.Error())
	} else if r.Patient != "" && u.Type == hti.TypePatient && r.Patient != r.User {
		v.add("patient", fmt.Sprintf("%q differs from the launching patient %q: a patient launches only their own tasks", r.Patient, r.User))
	}
	if r.Patient != "" {
		if _, err := hti.ParseReference(r.Patient, hti.TypePatient); err != nil {
			v.add("patient", err.Error())
		}
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

// validateRegistry adds the rules of a launch with a hand-registered
// module (a plain HTI issuer): the module is named, and so is the patient
// unless the user is that patient.
func (r Request) validateRegistry(issuer string) error {
	var v ValidationError
	if r.Module == "" {
		v.add("module", fmt.Sprintf("is required: issuer %q has not joined a Koppeltaal domain (it has no device), so the module is not read from the Task", issuer))
	}
	if r.Patient == "" {
		if u, err := hti.ParseReference(r.User, hti.UserTypes...); err == nil && u.Type != hti.TypePatient {
			v.add("patient", "is required when the user is a "+u.Type)
		}
	}
	return v.orNil()
}
