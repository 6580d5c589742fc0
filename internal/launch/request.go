package launch

import (
	"fmt"
	"strings"

	"github.com/ehealth-nl/portal/internal/keys"
	"github.com/ehealth-nl/portal/pkg/hti"
)

// Request asks for a launch: which module, for which task, launched by
// which user, for which patient (docs/ARCHITECTURE.md, "Launch flow";
// README.md, "HTTP surface": POST /api/v1/launches).
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

// Validate applies the field rules of a launch request
// (docs/ARCHITECTURE.md, "The launch token"): the references and the role
// table. Whether the module and issuer exist is checked by the service.
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
