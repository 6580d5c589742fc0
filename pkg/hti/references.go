// Package hti holds the HTI 2.0 launch token as Koppeltaal 2.0 uses it: the
// typed claims, the FHIR reference rules they follow, and a Verifier that
// checks a token the way a careful module does. Module providers may import
// it; the portal builds its tokens from the same Claims type.
package hti

import (
	"errors"
	"fmt"
	"regexp"
	"strings"
)

// FHIR resource types that appear in launch tokens.
const (
	TypePatient            = "Patient"
	TypePractitioner       = "Practitioner"
	TypeRelatedPerson      = "RelatedPerson"
	TypeTask               = "Task"
	TypeActivityDefinition = "ActivityDefinition"
	TypeDevice             = "Device"
)

// idPattern is the FHIR id rule: 1 to 64 of letters, digits, '-' and '.'.
var idPattern = regexp.MustCompile(`^[A-Za-z0-9\-.]{1,64}$`)

// Reference is a relative FHIR reference, "<ResourceType>/<id>".
type Reference struct {
	Type string // the FHIR resource type, e.g. Task
	ID   string // the logical id
}

// String is the relative reference, "<ResourceType>/<id>".
func (r Reference) String() string { return r.Type + "/" + r.ID }

// ParseReference parses a relative reference of one of the allowed types.
// It rejects absolute URLs, versioned references (_history), whitespace,
// ids that break the FHIR id rule, ids made only of dots ("." and "..",
// which are path steps in a URL) and other resource types, with an error
// that says which rule was broken.
func ParseReference(s string, allowed ...string) (Reference, error) {
	if s == "" {
		return Reference{}, errors.New("is empty")
	}
	want := strings.Join(allowed, ", ")
	if len(allowed) == 1 {
		want = allowed[0]
	}
	if strings.ContainsAny(s, " \t\r\n") {
		return Reference{}, fmt.Errorf("%q contains whitespace; want %s/<id>", s, want)
	}
	if strings.Contains(s, "://") || strings.HasPrefix(s, "urn:") {
		return Reference{}, fmt.Errorf("%q is absolute; want a relative reference %s/<id>", s, want)
	}
	if strings.Contains(s, "/_history") {
		return Reference{}, fmt.Errorf("%q is a versioned reference; want %s/<id> without _history", s, want)
	}
	typ, id, ok := strings.Cut(s, "/")
	if !ok || strings.Contains(id, "/") {
		return Reference{}, fmt.Errorf("%q is not of the form %s/<id>", s, want)
	}
	found := false
	for _, a := range allowed {
		found = found || typ == a
	}
	if !found {
		return Reference{}, fmt.Errorf("%q has resource type %q; want %s", s, typ, want)
	}
	if !idPattern.MatchString(id) {
		if len(id) > 64 {
			return Reference{}, fmt.Errorf("%q has an id of %d characters; FHIR ids have at most 64", s, len(id))
		}
		return Reference{}, fmt.Errorf("%q has an invalid id; FHIR ids are 1-64 letters, digits, '-' or '.'", s)
	}
	if strings.Trim(id, ".") == "" {
		// A legal FHIR id, but a module that builds {fhir}/{type}/{id}
		// would request a dot segment (RFC 3986 §5.2.4), or something that
		// looks like one, instead of a resource.
		return Reference{}, fmt.Errorf("%q has an id of only dots; want %s/<id> with a letter, digit or '-' in the id", s, want)
	}
	return Reference{Type: typ, ID: id}, nil
}

// UserTypes are the resource types that may launch a module (the sub claim).
var UserTypes = []string{TypePatient, TypePractitioner, TypeRelatedPerson}

// TaskIntents are the FHIR Task.intent codes an intent claim may carry.
var TaskIntents = []string{"unknown", "proposal", "plan", "order", "original-order", "reflex-order", "filler-order", "instance-order", "option"}

// ValidIntent reports whether s is a FHIR Task.intent code.
func ValidIntent(s string) bool {
	for _, i := range TaskIntents {
		if s == i {
			return true
		}
	}
	return false
}

// ValidateIDPHint checks an idp_hint: a logical identifier of 1 to 255
// ASCII letters, digits and '.', '-', '_', ':', '/'. The set is narrow on
// purpose: the Koppeltaal reference auth server decodes token payloads a
// second time with the standard base64 alphabet and fails (500) on some
// values with '?' or '~', and an identifier needs no more.
func ValidateIDPHint(s string) error {
	const allowed = "1-255 ASCII letters, digits, '.', '-', '_', ':' or '/'"
	if s == "" {
		return errors.New("is empty; want " + allowed)
	}
	if len(s) > 255 {
		return fmt.Errorf("is %d bytes long; want %s", len(s), allowed)
	}
	for i, r := range s {
		if !('A' <= r && r <= 'Z' || 'a' <= r && r <= 'z' || '0' <= r && r <= '9' || strings.ContainsRune(".-_:/", r)) {
			return fmt.Errorf("%q has %q at offset %d; want %s", s, r, i, allowed)
		}
	}
	return nil
}
