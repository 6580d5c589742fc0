package launch

import (
	"context"
	"errors"
	"fmt"

	"github.com/ehealth-nl/portal/internal/fhirdomain"
	"github.com/ehealth-nl/portal/internal/keys"
	"github.com/ehealth-nl/portal/pkg/hti"
)

// Domain reads the Koppeltaal domain of the issuers that joined one (an
// issuer with a Device): *fhirdomain.Client is one. Resolve walks Task →
// ActivityDefinition → Endpoint → Device (TOP-KT-007, the KT2 profiles);
// Authorize applies who may launch (TOP-KT-013, the KT2 RelatedPerson
// rules).
type Domain interface {
	Resolve(ctx context.Context, issuer, taskID string) (fhirdomain.Resolution, error)
	Authorize(ctx context.Context, issuer string, r fhirdomain.Resolution, user hti.Reference) (fhirdomain.Authorization, error)
}

var _ Domain = (*fhirdomain.Client)(nil)

// ErrDomainUnavailable means the issuer's Koppeltaal domain (its FHIR
// server or token endpoint) could not answer: nothing was written, and the
// request may be retried. It is fhirdomain.ErrUnavailable.
var ErrDomainUnavailable = fhirdomain.ErrUnavailable

// Stage says at which step the domain refused a launch.
type Stage string

// The stages of a refusal.
const (
	// StageResolution: the Task does not lead to a module that can be
	// launched (fhirdomain.Reason: no instantiates extension, no active
	// https hti-smart-on-fhir Endpoint, no active Device, ...).
	StageResolution Stage = "resolution"
	// StageAuthorization: the user may not launch this Task
	// (fhirdomain.Refusal: not the owner, not in the owning CareTeam, the
	// Task's status, ...).
	StageAuthorization Stage = "authorization"
)

// Refusal is why the domain did not allow a launch.
type Refusal struct {
	Stage  Stage  // resolution or authorization
	Rule   string // the fhirdomain Reason or Refusal, e.g. endpoint-not-https, careteam-not-member
	Detail string // what was found, as FHIR references; no personal data
}

// RefusedError means the domain did not allow the launch: a launch record
// with outcome "refused" was written (LaunchID), and no link or token
// exists. The HTTP layer answers 403 for StageAuthorization and 422 for
// StageResolution.
type RefusedError struct {
	LaunchID string
	Refusal
}

func (e *RefusedError) Error() string {
	return fmt.Sprintf("launch %s refused (%s): %s: %s", e.LaunchID, e.Stage, e.Rule, e.Detail)
}

// Field is the request field the refusal is about: task for a Task that
// leads nowhere, user for a user who may not start it.
func (e *RefusedError) Field() string {
	if e.Stage == StageAuthorization {
		return "user"
	}
	return "task"
}

// errNoDomain is the configuration mistake of a domain issuer on a service
// without a Domain.
var errNoDomain = errors.New("launch: the issuer has joined a Koppeltaal domain, but this service has no domain reader")

// resolveDomain builds the launch of a domain issuer from its Task
// (docs/ARCHITECTURE.md, "Launching from a Task"): the domain says which
// module (its Device is aud, its Endpoint's address the launch URL), which
// patient (Task.for), definition and intent; fields of the request that
// say otherwise are refused, naming the field, before anything is
// written. A launch the domain does not allow comes back as a refusal
// (with what was resolved so far in the spec), a domain that cannot answer
// as ErrDomainUnavailable.
func (s *Service) resolveDomain(ctx context.Context, req Request, is keys.Issuer, named *Module) (spec, *Refusal, error) {
	if s.cfg.Domain == nil {
		return spec{}, nil, errNoDomain
	}
	task, _ := hti.ParseReference(req.Task, hti.TypeTask) // Validate checked both
	user, _ := hti.ParseReference(req.User, hti.UserTypes...)
	sp := spec{issuer: is.Slug, task: task.String(), user: user.String(), idpHint: req.IDPHint, domain: true}

	res, err := s.cfg.Domain.Resolve(ctx, is.Slug, task.ID)
	if reason, ok := fhirdomain.ReasonOf(err); ok {
		return sp, &Refusal{Stage: StageResolution, Rule: string(reason), Detail: detailOf(err)}, nil
	}
	if err != nil {
		return spec{}, nil, err
	}
	sp.patient, sp.definition, sp.intent, sp.endpoint = res.Patient, res.Definition, res.Intent, res.Endpoint
	// The Endpoint's address meets the rule of a registered module's launch
	// URL (docs/ARCHITECTURE.md, "The launch form"): the token goes there.
	launchURL, err := checkLaunchURL(res.LaunchURL, false)
	if err != nil {
		return sp, &Refusal{Stage: StageResolution, Rule: "endpoint-address", Detail: fmt.Sprintf("%s: address %v", res.Endpoint, err)}, nil
	}
	sp.module = Module{Slug: res.Aud, Issuer: is.Slug, LaunchURL: launchURL, Audience: res.Aud, Method: MethodPost, Fields: FieldsKoppeltaal}
	sp.versions = versions(map[string]string{hti.TypeTask: res.Versions.Task, hti.TypeActivityDefinition: res.Versions.ActivityDefinition,
		"Endpoint": res.Versions.Endpoint, hti.TypeDevice: res.Versions.Device})

	var v ValidationError
	if named != nil && named.Audience != res.Aud {
		v.add("module", fmt.Sprintf("module %q is %s, but %s is launched by %s (the resource-origin of %s)", named.Slug, named.Audience, sp.task, res.Aud, res.Definition))
	}
	if req.Patient != "" && req.Patient != res.Patient {
		v.add("patient", fmt.Sprintf("%s is for %s, not %s", sp.task, res.Patient, req.Patient))
	}
	if req.Definition != "" && req.Definition != res.Definition {
		v.add("definition", fmt.Sprintf("%s instantiates %s, not %s", sp.task, res.Definition, req.Definition))
	}
	if req.Intent != "" && req.Intent != res.Intent {
		v.add("intent", fmt.Sprintf("%s has intent %q, not %q", sp.task, res.Intent, req.Intent))
	}
	if err := v.orNil(); err != nil {
		return spec{}, nil, err
	}
	if !hti.ValidIntent(res.Intent) {
		return sp, &Refusal{Stage: StageResolution, Rule: "task-intent", Detail: fmt.Sprintf("%s has intent %q", sp.task, res.Intent)}, nil
	}

	auth, err := s.cfg.Domain.Authorize(ctx, is.Slug, res, user)
	if rule, ok := fhirdomain.RefusalOf(err); ok {
		return sp, &Refusal{Stage: StageAuthorization, Rule: string(rule), Detail: detailOf(err)}, nil
	}
	if err != nil {
		return spec{}, nil, err
	}
	sp.authorizedBy = auth.Rule
	sp.versions = versions(map[string]string{hti.TypeTask: res.Versions.Task, hti.TypeActivityDefinition: res.Versions.ActivityDefinition,
		"Endpoint": res.Versions.Endpoint, hti.TypeDevice: res.Versions.Device,
		"CareTeam": auth.Versions.CareTeam, hti.TypeRelatedPerson: auth.Versions.RelatedPerson})
	return sp, nil, nil
}

// versions drops the resources that were not read, or had no version.
func versions(m map[string]string) map[string]string {
	for k, v := range m {
		if v == "" {
			delete(m, k)
		}
	}
	return m
}

// detailOf is the detail of a refusal from the domain: what was found.
func detailOf(err error) string {
	var nr *fhirdomain.NotResolvableError
	if errors.As(err, &nr) {
		if nr.Resource != "" {
			return nr.Resource + ": " + nr.Detail
		}
		return nr.Detail
	}
	var re *fhirdomain.RefusedError
	if errors.As(err, &re) {
		return re.Detail
	}
	return err.Error()
}
