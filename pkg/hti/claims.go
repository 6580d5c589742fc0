package hti

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// Version is the hti-version claim of HTI 2.0.
const Version = "2.0"

// MaxLifetime is the longest a launch token may live (exp - iat).
const MaxLifetime = 300 * time.Second

// DefaultIntent is the intent of a launch that names none.
const DefaultIntent = "plan"

// Claims are the claims of an HTI 2.0 launch token as Koppeltaal 2.0 uses
// them; nothing else is issued or accepted. Optional claims are empty when
// absent.
type Claims struct {
	Issuer     string `json:"iss"`                  // the portal's Koppeltaal client_id
	Audience   string `json:"aud"`                  // the module's Device reference, one string
	Subject    string `json:"sub"`                  // Patient/x, Practitioner/y or RelatedPerson/z
	Resource   string `json:"resource"`             // Task/<id>
	Definition string `json:"definition,omitempty"` // ActivityDefinition/<id>
	Patient    string `json:"patient,omitempty"`    // Patient/<id>; absent when sub is that patient
	Intent     string `json:"intent,omitempty"`     // a Task.intent code, "plan" by default
	HTIVersion string `json:"hti-version"`          // always "2.0"
	IDPHint    string `json:"idp_hint,omitempty"`   // logical IdP identifier, passed through
	JTI        string `json:"jti"`                  // ≥128 random bits, unique per token
	IssuedAt   int64  `json:"iat"`                  // seconds since the epoch
	ExpiresAt  int64  `json:"exp"`                  // iat + lifetime, lifetime ≤ 300 s
}

// ClaimError says which claim breaks which rule.
type ClaimError struct {
	Claim  string // the claim at fault
	Reason string // the rule it breaks
}

// Error names the claim and the rule it breaks.
func (e *ClaimError) Error() string { return "claim " + e.Claim + ": " + e.Reason }

// CheckReferences applies the reference and role rules of DESIGN 1.1 to
// the claims that name FHIR resources: sub is a Patient, Practitioner or
// RelatedPerson; resource a Task; definition an ActivityDefinition; aud a
// Device; patient a Patient, required unless sub is a Patient, and absent
// when it would repeat sub.
func (c *Claims) CheckReferences() error {
	if _, err := ParseReference(c.Audience, TypeDevice); err != nil {
		return &ClaimError{"aud", err.Error()}
	}
	sub, err := ParseReference(c.Subject, UserTypes...)
	if err != nil {
		return &ClaimError{"sub", err.Error()}
	}
	if _, err := ParseReference(c.Resource, TypeTask); err != nil {
		return &ClaimError{"resource", err.Error()}
	}
	if c.Definition != "" {
		if _, err := ParseReference(c.Definition, TypeActivityDefinition); err != nil {
			return &ClaimError{"definition", err.Error()}
		}
	}
	switch {
	case c.Patient != "":
		if _, err := ParseReference(c.Patient, TypePatient); err != nil {
			return &ClaimError{"patient", err.Error()}
		}
		if sub.Type == TypePatient {
			return &ClaimError{"patient", "must be absent when sub is a Patient"}
		}
	case sub.Type != TypePatient:
		return &ClaimError{"patient", "is required when sub is a " + sub.Type}
	}
	if c.Intent != "" && !ValidIntent(c.Intent) {
		return &ClaimError{"intent", fmt.Sprintf("%q is not a FHIR Task.intent code", c.Intent)}
	}
	if c.IDPHint != "" {
		if err := ValidateIDPHint(c.IDPHint); err != nil {
			return &ClaimError{"idp_hint", err.Error()}
		}
	}
	return nil
}

// claimKinds says, for every claim a token may carry, whether it is a string
// (true) or a number (false).
var claimKinds = map[string]bool{
	"iss": true, "aud": true, "sub": true, "resource": true, "definition": true, "patient": true,
	"intent": true, "hti-version": true, "idp_hint": true, "jti": true, "iat": false, "exp": false,
}

// ErrMalformedClaims means the payload is not a JSON object of known claims
// with the right types.
var ErrMalformedClaims = errors.New("malformed claims")

// ParseClaims decodes a token payload strictly: a JSON object whose members
// are known HTI claims of the right JSON type. An aud given as an array is
// refused (Koppeltaal: aud is a single string), as is any unknown claim.
func ParseClaims(payload []byte) (*Claims, error) {
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(payload, &raw); err != nil {
		return nil, fmt.Errorf("%w: not a JSON object", ErrMalformedClaims)
	}
	if name, dup := duplicateMember(payload); dup {
		// Verifiers disagree on which of two equal members wins; refuse both.
		return nil, fmt.Errorf("%w: claim %q appears twice", ErrMalformedClaims, name)
	}
	for name, value := range raw {
		isString, known := claimKinds[name]
		if !known {
			return nil, fmt.Errorf("%w: unexpected claim %q", ErrMalformedClaims, name)
		}
		v := bytes.TrimSpace(value)
		if isString && (len(v) == 0 || v[0] != '"') {
			return nil, fmt.Errorf("%w: claim %q must be a string", ErrMalformedClaims, name)
		}
		if !isString && (len(v) == 0 || (v[0] != '-' && (v[0] < '0' || v[0] > '9'))) {
			return nil, fmt.Errorf("%w: claim %q must be a number", ErrMalformedClaims, name)
		}
	}
	var c Claims
	dec := json.NewDecoder(bytes.NewReader(payload))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformedClaims, err)
	}
	for _, required := range []string{"iss", "aud", "sub", "resource", "hti-version", "jti", "iat", "exp"} {
		if _, ok := raw[required]; !ok {
			return nil, &ClaimError{required, "is required"}
		}
	}
	return &c, nil
}

// duplicateMember reports a member name that occurs twice at the top level
// of a JSON object (which json.Unmarshal has already accepted).
func duplicateMember(object []byte) (string, bool) {
	dec := json.NewDecoder(bytes.NewReader(object))
	if _, err := dec.Token(); err != nil { // {
		return "", false
	}
	seen := map[string]bool{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return "", false
		}
		name, _ := tok.(string)
		if seen[name] {
			return name, true
		}
		seen[name] = true
		var skip json.RawMessage
		if err := dec.Decode(&skip); err != nil {
			return "", false
		}
	}
	return "", false
}
