package fhirdomain

import (
	"context"
	"errors"
	"fmt"
)

// ErrUnavailable means the domain's FHIR server could not answer usefully:
// a connection error, a timeout, a 5xx, 429, a 401 that a fresh token did
// not cure, a 403, or a body that is not the FHIR JSON asked for (too big,
// not JSON, another resourceType). Nothing is known about the Task; the
// HTTP layer answers 503 and the user may try again.
var ErrUnavailable = errors.New("FHIR domain unavailable")

// ErrTooLarge marks a response bigger than Config.MaxBodyBytes. It always
// comes wrapped together with ErrUnavailable.
var ErrTooLarge = errors.New("FHIR response too large")

// Reason says which Koppeltaal rule a Task's launch chain breaks. The
// values are stable: logs and the HTTP layer's problem details use them.
type Reason string

// The reasons a launch chain is not resolvable (KT2 profiles: KT2Task,
// KT2ActivityDefinition, KT2Endpoint, KT2Device; TOP-KT-007 for the
// launch). See docs/ARCHITECTURE.md for how the HTTP layer answers them.
const (
	// ReasonTaskNotFound: GET Task/<id> answered 404 or 410.
	ReasonTaskNotFound Reason = "task-not-found"
	// ReasonTaskNoPatient: the Task has no for reference to a Patient.
	ReasonTaskNoPatient Reason = "task-no-patient"
	// ReasonNoInstantiates: the Task has no
	// http://vzvz.nl/fhir/StructureDefinition/instantiates extension with
	// a valueCanonical or valueReference.
	ReasonNoInstantiates Reason = "no-instantiates"
	// ReasonBadReference: a reference in the chain is not a relative
	// <Type>/<id> of the expected type (pkg/hti reference rules).
	ReasonBadReference Reason = "bad-reference"
	// ReasonDefinitionNotFound: no ActivityDefinition has that id or
	// canonical url (and version).
	ReasonDefinitionNotFound Reason = "definition-not-found"
	// ReasonDefinitionNotActive: the ActivityDefinition's status is not
	// active (draft, retired, unknown).
	ReasonDefinitionNotActive Reason = "definition-not-active"
	// ReasonDefinitionAmbiguous: a canonical url without version matches
	// more than one active ActivityDefinition.
	ReasonDefinitionAmbiguous Reason = "definition-ambiguous"
	// ReasonNoEndpoint: none of the ActivityDefinition's
	// KT2EndpointExtension Endpoints is active with connectionType
	// hti-smart-on-fhir.
	ReasonNoEndpoint Reason = "no-endpoint"
	// ReasonEndpointNotHTTPS: the matching Endpoint's address is not an
	// https URL (plain http only on a loopback host, internal/weburl).
	ReasonEndpointNotHTTPS Reason = "endpoint-not-https"
	// ReasonNoDevice: the ActivityDefinition has no resource-origin
	// extension, or the Device it names does not exist.
	ReasonNoDevice Reason = "no-device"
	// ReasonDeviceInactive: the resource-origin Device's status is not
	// active.
	ReasonDeviceInactive Reason = "device-inactive"
	// ReasonDeviceNoClientID: the Device has no identifier in the
	// koppeltaal-client-id naming system.
	ReasonDeviceNoClientID Reason = "device-no-client-id"
)

// NotResolvableError means the domain answered, and what it holds breaks a
// Koppeltaal rule: no launch is possible until the domain's data changes.
// The HTTP layer answers 422 (or 403, by Reason).
type NotResolvableError struct {
	Reason   Reason // the rule broken
	Resource string // the resource that breaks it, e.g. "ActivityDefinition/ad-1"
	Detail   string // for logs: what was found instead
}

func (e *NotResolvableError) Error() string {
	msg := "not resolvable: " + string(e.Reason)
	if e.Resource != "" {
		msg += " (" + e.Resource + ")"
	}
	if e.Detail != "" {
		msg += ": " + e.Detail
	}
	return msg
}

// ReasonOf returns the Reason of a NotResolvableError anywhere in err's
// chain.
func ReasonOf(err error) (Reason, bool) {
	var nr *NotResolvableError
	if errors.As(err, &nr) {
		return nr.Reason, true
	}
	return "", false
}

func notResolvable(reason Reason, resource, format string, args ...any) error {
	return &NotResolvableError{Reason: reason, Resource: resource, Detail: fmt.Sprintf(format, args...)}
}

// unavailable wraps err with ErrUnavailable (keeping err in the chain)
// unless the caller's own context was cancelled: the user went away, which
// is no outage of the domain.
func unavailable(op string, err error) error {
	if errors.Is(err, context.Canceled) {
		return fmt.Errorf("%s: %w", op, err)
	}
	return fmt.Errorf("%s: %w: %w", op, ErrUnavailable, err)
}
