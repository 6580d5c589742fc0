package hti

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"
)

// Version is the hti-version claim of HTI 2.0.
const Version = "2.0"

// MaxLifetime is the longest a launch token may live (exp - iat).
const MaxLifetime = 300 * time.Second

// DefaultIntent is the intent of a launch that names none.
const DefaultIntent = "plan"

// Claims are the claims of an HTI 2.0 launch token as Koppeltaal 2.0 uses
// them; the portal issues nothing else, and other claims in a token are
// ignored (see ParseClaims). Optional claims are empty when absent.
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

// minJTIBits is the least capacity of a jti: room for 128 random bits, so
// two tokens never share one by chance.
const minJTIBits = 128

// jtiCapacity estimates how many bits a jti can carry from the smallest
// alphabet that contains it: 4 per digit for hex (all lower or all upper
// case, optionally with the dashes of a UUID, which carry nothing), 6 per
// character for base64url, and 6 per character, an upper bound, for
// anything else. It says what it counted.
func jtiCapacity(jti string) (bits int, what string) {
	digits := jti
	if isUUIDShaped(jti) {
		digits = strings.ReplaceAll(jti, "-", "")
	}
	switch {
	case digits != "" && (strings.Trim(digits, "0123456789abcdef") == "" || strings.Trim(digits, "0123456789ABCDEF") == ""):
		return 4 * len(digits), fmt.Sprintf("%d hex digits", len(digits))
	case strings.Trim(jti, base64URLAlphabet) == "":
		return 6 * len(jti), fmt.Sprintf("%d base64url characters", len(jti))
	default:
		n := utf8.RuneCountInString(jti)
		return 6 * n, fmt.Sprintf("%d characters", n)
	}
}

// base64URLAlphabet is the alphabet of base64url (RFC 4648 §5).
const base64URLAlphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"

// isUUIDShaped reports whether s has the dashes of a UUID's text form,
// 8-4-4-4-12 (RFC 9562 §4), around other characters.
func isUUIDShaped(s string) bool {
	if len(s) != 36 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if dash := i == 8 || i == 13 || i == 18 || i == 23; dash != (s[i] == '-') {
			return false
		}
	}
	return true
}

// ClaimError says which claim breaks which rule.
type ClaimError struct {
	Claim  string // the claim at fault
	Reason string // the rule it breaks
}

// Error names the claim and the rule it breaks.
func (e *ClaimError) Error() string { return "claim " + e.Claim + ": " + e.Reason }

// CheckReferences applies the reference and role rules of the launch token
// (docs/ARCHITECTURE.md, The launch token) to the claims that name FHIR
// resources: sub is a Patient, Practitioner or
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

// ErrMalformedClaims means the payload is not a JSON object of claims, or an
// HTI claim in it has the wrong JSON type (or, parsed strictly, it has a
// claim that is not an HTI claim).
var ErrMalformedClaims = errors.New("malformed claims")

// requiredClaims are the claims every launch token carries.
var requiredClaims = []string{"iss", "aud", "sub", "resource", "hti-version", "jti", "iat", "exp"}

// ParseClaims decodes a token payload: a JSON object without duplicate
// members in which every HTI claim present has its JSON type (a string, or
// a number for iat and exp) and the required claims are present. An aud
// given as an array is refused (Koppeltaal: aud is a single string).
// Other claims are ignored, as RFC 7519 §4 requires of claims not
// understood; ParseClaimsStrict refuses them. Claim names are matched
// exactly: "ISS" is another (unknown) claim, not iss.
func ParseClaims(payload []byte) (*Claims, error) { return parseClaims(payload, false) }

// ParseClaimsStrict is ParseClaims refusing, with ErrMalformedClaims, any
// claim that is not an HTI claim.
func ParseClaimsStrict(payload []byte) (*Claims, error) { return parseClaims(payload, true) }

func parseClaims(payload []byte, strict bool) (*Claims, error) {
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(payload, &raw); err != nil || raw == nil {
		return nil, fmt.Errorf("%w: not a JSON object", ErrMalformedClaims)
	}
	if name, dup := duplicateMember(payload); dup {
		// Verifiers disagree on which of two equal members wins; refuse both.
		return nil, fmt.Errorf("%w: claim %q appears twice", ErrMalformedClaims, name)
	}
	var c Claims
	fields := map[string]any{
		"iss": &c.Issuer, "aud": &c.Audience, "sub": &c.Subject, "resource": &c.Resource, "definition": &c.Definition,
		"patient": &c.Patient, "intent": &c.Intent, "hti-version": &c.HTIVersion, "idp_hint": &c.IDPHint, "jti": &c.JTI,
		"iat": &c.IssuedAt, "exp": &c.ExpiresAt,
	}
	for name, value := range raw {
		field, known := fields[name]
		if !known {
			if strict {
				return nil, fmt.Errorf("%w: unexpected claim %q", ErrMalformedClaims, name)
			}
			continue
		}
		v := bytes.TrimSpace(value)
		if _, isString := field.(*string); isString {
			if len(v) == 0 || v[0] != '"' {
				return nil, fmt.Errorf("%w: claim %q must be a string", ErrMalformedClaims, name)
			}
		} else if len(v) == 0 || (v[0] != '-' && (v[0] < '0' || v[0] > '9')) {
			return nil, fmt.Errorf("%w: claim %q must be a number", ErrMalformedClaims, name)
		}
		if err := json.Unmarshal(v, field); err != nil {
			return nil, fmt.Errorf("%w: claim %q: %v", ErrMalformedClaims, name, err)
		}
	}
	for _, required := range requiredClaims {
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
