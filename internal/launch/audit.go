package launch

import (
	"context"
	"time"

	"github.com/ehealth-nl/portal/internal/keys"
	"github.com/ehealth-nl/portal/internal/pagecursor"
	"github.com/ehealth-nl/portal/pkg/hti"
)

// Record is one launch in the audit trail: who asked, for which task, user,
// patient and module, the token's jti, when it was created and redeemed,
// and from where. It carries what a FHIR AuditEvent (DCM 110100 / 110120,
// trace id = jti) needs; it never holds a token or a ticket.
type Record struct {
	ID             string     `json:"id"`                         // the launch id (UUID)
	Kind           string     `json:"kind"`                       // "ticket" (a launch link) or "token" (handed to the backend): what was asked for
	Status         string     `json:"status"`                     // pending, redeemed, expired, issued or refused
	Issuer         string     `json:"issuer"`                     // slug of the issuer that signed
	ClientID       string     `json:"client_id,omitempty"`        // the token's iss, once signed
	Module         string     `json:"module,omitempty"`           // slug of the registered module, or for a domain launch the module's Device
	Audience       string     `json:"audience,omitempty"`         // the token's aud: the module's Device
	LaunchURL      string     `json:"launch_url,omitempty"`       // where the browser was sent
	Task           string     `json:"task"`                       // the token's resource
	User           string     `json:"user"`                       // the token's sub: who launched
	Patient        string     `json:"patient,omitempty"`          // the patient concerned (also when the user is that patient)
	Definition     string     `json:"definition,omitempty"`       // the token's definition
	Intent         string     `json:"intent,omitempty"`           // the token's intent
	IDPHint        string     `json:"idp_hint,omitempty"`         // the token's idp_hint
	CreatedBy      string     `json:"created_by"`                 // name of the API key that asked
	CreatedFrom    string     `json:"created_from,omitempty"`     // address the request came from
	CreatedAt      time.Time  `json:"created_at"`                 // when the launch was created
	ExpiresAt      *time.Time `json:"expires_at,omitempty"`       // when the launch link stopped working
	RedeemedAt     *time.Time `json:"redeemed_at,omitempty"`      // when the token was signed and sent
	ClientAddr     string     `json:"client_addr,omitempty"`      // address of the browser (or backend) that got the token
	UserAgent      string     `json:"user_agent,omitempty"`       // the browser's User-Agent, at most 512 bytes
	JTI            string     `json:"jti,omitempty"`              // the token's jti: the AuditEvent trace id
	Kid            string     `json:"kid,omitempty"`              // the key that signed the token
	TokenExpiresAt *time.Time `json:"token_expires_at,omitempty"` // the token's exp
	// Source is "registry" (a hand-registered module) or "domain" (resolved
	// from the Task in the issuer's Koppeltaal domain).
	Source string `json:"source"`
	// Outcome is "accepted" (a link or a token) or "refused" (the domain
	// did not allow it; nothing can be followed).
	Outcome       string `json:"outcome"`
	Refusal       string `json:"refusal,omitempty"`        // the rule that refused, e.g. careteam-not-member
	RefusalDetail string `json:"refusal_detail,omitempty"` // what was found, as FHIR references
	Endpoint      string `json:"endpoint,omitempty"`       // domain launch: the Endpoint/<id> launched
	AuthorizedBy  string `json:"authorized_by,omitempty"`  // domain launch: owner, or careteam:<id>
	// DomainVersions is the meta.versionId of each resource read from the
	// domain, by resource type (Task, ActivityDefinition, Endpoint, Device,
	// CareTeam, RelatedPerson).
	DomainVersions map[string]string `json:"domain_versions,omitempty"`
	RequestID      string            `json:"request_id,omitempty"` // X-Request-Id of the request that created it
}

// Filter selects audit records; empty fields do not filter.
type Filter struct {
	Task    string    // only this Task/<id>
	User    string    // only launches by this user
	Patient string    // only launches for this patient
	Module  string    // only this module
	Issuer  string    // only this issuer
	Outcome string    // only accepted or only refused launches
	From    time.Time // created at or after
	To      time.Time // created before
	Limit   int       // 1-500, default 50
	Cursor  string    // from Page.Next
}

// Page is one page of audit records, newest first.
type Page struct {
	Records []Record `json:"records"`        // newest first
	Next    string   `json:"next,omitempty"` // cursor of the next page; empty on the last
}

// Validate checks a filter's references and paging.
func (f *Filter) Validate() error {
	var v ValidationError
	check := func(field, value string, types ...string) {
		if value != "" {
			if _, err := hti.ParseReference(value, types...); err != nil {
				v.add(field, err.Error())
			}
		}
	}
	check("task", f.Task, hti.TypeTask)
	check("user", f.User, hti.UserTypes...)
	check("patient", f.Patient, hti.TypePatient)
	if f.Module != "" && !keys.ValidSlug(f.Module) {
		if _, err := hti.ParseReference(f.Module, hti.TypeDevice); err != nil {
			v.add("module", slugReason+", or a module's Device/<id> (for launches resolved from a domain)")
		}
	}
	if f.Outcome != "" && f.Outcome != "accepted" && f.Outcome != "refused" {
		v.add("outcome", "must be accepted or refused")
	}
	if f.Issuer != "" && !keys.ValidSlug(f.Issuer) {
		v.add("issuer", slugReason)
	}
	if !f.From.IsZero() && !f.To.IsZero() && !f.From.Before(f.To) {
		v.add("to", "must be after from")
	}
	switch {
	case f.Limit == 0:
		f.Limit = 50
	case f.Limit < 1 || f.Limit > 500:
		v.add("limit", "must be between 1 and 500")
	}
	if f.Cursor != "" {
		if _, _, err := pagecursor.Decode(f.Cursor); err != nil {
			v.add("cursor", "is not a cursor this service returned")
		}
	}
	return v.orNil()
}

// List returns a page of the audit trail, newest first.
func (s *Service) List(ctx context.Context, f Filter) (Page, error) {
	if err := f.Validate(); err != nil {
		return Page{}, err
	}
	var (
		cursorTime *time.Time
		cursorID   *string
	)
	if f.Cursor != "" {
		t, id, _ := pagecursor.Decode(f.Cursor)
		cursorTime, cursorID = &t, &id
	}
	records, err := s.store.list(ctx, f, cursorTime, cursorID)
	if err != nil {
		return Page{}, storageError("list launches", err)
	}
	now := s.now()
	for i := range records {
		r := &records[i]
		switch {
		case r.Outcome == "refused":
			r.Status = "refused"
		case r.Kind == "token":
			r.Status = "issued"
		case r.RedeemedAt != nil:
			r.Status = "redeemed"
		case r.ExpiresAt != nil && !now.Before(*r.ExpiresAt):
			r.Status = "expired"
		default:
			r.Status = "pending"
		}
	}
	page := Page{Records: records}
	if len(records) > f.Limit {
		page.Records = records[:f.Limit]
		last := page.Records[f.Limit-1]
		page.Next = pagecursor.Encode(last.CreatedAt, last.ID)
	}
	if page.Records == nil {
		page.Records = []Record{}
	}
	return page, nil
}
