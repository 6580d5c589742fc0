// Package launch is the launch flow of the portal: the module registry,
// launch requests and their rules (docs/ARCHITECTURE.md, "The launch
// token"), one-time launch links (tickets), signing the HTI token when a
// link is followed, the form that carries it to the module
// (docs/ARCHITECTURE.md, "The launch form"), and the audit trail
// (docs/ARCHITECTURE.md, "Launch flow").
package launch

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"slices"
	"strings"
	"time"
	"unicode/utf16"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/ehealth-nl/portal/internal/fhirdomain"
	"github.com/ehealth-nl/portal/internal/keys"
	"github.com/ehealth-nl/portal/pkg/hti"
)

// Signers is what the service needs of the keyring: the active signer of
// an issuer and the issuer's settings, both from memory, and a reload from
// the database when a signer turns out to be no longer usable there.
type Signers interface {
	Signer(issuer string) (*keys.Signer, error)
	ActiveSigners() []*keys.Signer
	Issuer(slug string) (keys.Issuer, error)
	Refresh(ctx context.Context) error
}

// Config holds the service's timings, the public URL of launch links and
// the reader of Koppeltaal domains.
type Config struct {
	PublicURL      string        // launch links are PublicURL + "/launch/" + ticket
	TokenLifetime  time.Duration // exp - iat of every token, at most 300 s
	TicketLifetime time.Duration // how long a launch link may be followed
	// IATBackdate is how far iat is set before the moment of signing, for
	// verifiers whose clock is a little behind (they allow no skew).
	IATBackdate time.Duration
	// Domain reads the Koppeltaal domain of issuers that joined one (they
	// have a Device); launches for such an issuer fail without it.
	Domain Domain
	// Site is the source.site of the AuditEvents of domain launches: the
	// portal's domain name (TOP-KT-011).
	Site string
	// Reported, if set, is called after a launch's AuditEvent was written
	// to the outbox, to wake the delivery worker. It must not block.
	Reported func()
}

// Service creates launches, redeems launch links and lists the audit trail.
type Service struct {
	store   *Store
	modules *moduleMemory
	signers Signers
	cfg     Config
	now     func() time.Time
	log     *slog.Logger
}

// NewService returns a launch service. It reads modules from the source
// through a memory of its own (moduleMemory): every statement that writes
// a launch checks the module it copied is still registered so.
func NewService(pool *pgxpool.Pool, modules ModuleSource, signers Signers, cfg Config, clock func() time.Time, logger *slog.Logger) *Service {
	return &Service{store: NewStore(pool), modules: newModuleMemory(modules), signers: signers, cfg: cfg, now: clock, log: logger}
}

// Caller is who asked for a launch: the API key's name, the issuers it may
// launch for, and the address the request came from.
type Caller struct {
	Name    string   // the API key's name
	Addr    string   // the client address of the request
	Issuers []string // slugs of the issuers the key may launch for; empty means any
	// RequestID is the request's X-Request-Id: kept in the launch record and
	// sent to the domain with every read (TOP-KT-011 trace headers).
	RequestID string
	// CorrelationID is the X-Correlation-Id the caller sent, if any: the
	// request that led to this one; sent on to the domain.
	CorrelationID string
	// KeyID is the API key the request was authenticated with, perhaps
	// from a memory of keys found valid a little earlier: the statement
	// that writes the launch stores nothing if it has been revoked since
	// (ErrCallerRevoked). Empty for a caller without a key (the demo page).
	KeyID string
}

// Browser is who followed a launch link.
type Browser struct {
	Addr      string // the client address of the request
	UserAgent string // the browser's User-Agent header
	// RequestID is the request's X-Request-Id: the request-id of a domain
	// launch's AuditEvent (TOP-KT-011).
	RequestID string
}

// Created is the answer to a launch request: a one-time link.
type Created struct {
	ID        string    `json:"id"`         // the launch id
	LaunchURL string    `json:"launch_url"` // the one-time link to send the browser to
	ExpiresAt time.Time `json:"expires_at"` // when the link stops working
}

// Field is one form field (or query parameter) sent to the module.
type Field struct {
	Name  string // iss, launch or token
	Value string // the FHIR base URL or the token
}

// Form is how the browser goes to the module: the URL, the method, and the
// fields, one of which carries the token.
type Form struct {
	LaunchID string  // the launch this form carries
	Module   string  // slug of the module
	JTI      string  // the token's jti
	Kid      string  // the key that signed the token
	URL      string  // the module's launch URL
	Method   Method  // post or get
	Fields   []Field // the fields, in order
}

// RedirectURL is the launch URL with the fields as query parameters, for
// modules launched with method get.
func (f Form) RedirectURL() string {
	u, err := url.Parse(f.URL)
	if err != nil {
		return f.URL
	}
	q := u.Query()
	for _, fl := range f.Fields {
		q.Set(fl.Name, fl.Value)
	}
	u.RawQuery = q.Encode()
	return u.String()
}

// FieldMap returns the fields by name.
func (f Form) FieldMap() map[string]string {
	m := make(map[string]string, len(f.Fields))
	for _, fl := range f.Fields {
		m[fl.Name] = fl.Value
	}
	return m
}

// IssuedToken is the answer to a direct token request, for portals that
// build the form themselves.
type IssuedToken struct {
	ID        string    // the launch id
	Token     string    // the signed HTI token
	JTI       string    // its jti
	ExpiresAt time.Time // its exp
	Form      Form      // how to send it to the module
}

// spec is a validated launch, everything needed to sign its token.
type spec struct {
	issuer     string
	module     Module
	task       string
	user       string
	patient    string // always the patient concerned, also when user is that patient
	definition string
	intent     string
	idpHint    string
	// Launches resolved from a Koppeltaal domain (docs/ARCHITECTURE.md,
	// "Launching from a Task"):
	domain       bool              // the module, patient, definition and intent came from the domain
	endpoint     string            // the Endpoint/<id> of the launch URL
	authorizedBy string            // owner, or careteam:<id>
	versions     map[string]string // meta.versionId by resource type
}

// source is the launch record's source column.
func (sp spec) source() string {
	if sp.domain {
		return "domain"
	}
	return "registry"
}

// resolve validates a request and builds its launch: from a registered
// module for a plain HTI issuer, from the Task in the issuer's Koppeltaal
// domain for an issuer with a Device. The issuer is the named module's,
// else the one the request names, else the only one the caller's key may
// launch for, else the default; the caller's key must allow it. A launch
// the domain does not allow returns a refusal with what was resolved.
func (s *Service) resolve(ctx context.Context, req Request, by Caller) (spec, *Refusal, error) {
	if err := req.Validate(); err != nil {
		return spec{}, nil, err
	}
	var named *Module
	slug, field := req.Issuer, "issuer"
	if req.Module != "" {
		m, err := s.modules.Module(ctx, req.Module)
		if err == nil && s.inDomain(m.Issuer) {
			// A launch from a Task is not checked against the registry when it
			// is written (sqlModuleStillCurrent): the module it names is read
			// afresh, so that the contradiction checks see it as it is now.
			m, err = s.modules.fresh(ctx, req.Module)
		}
		if errors.Is(err, ErrModuleNotFound) {
			return spec{}, nil, &ValidationError{Fields: []FieldError{{"module", fmt.Sprintf("no module is registered as %q", req.Module)}}}
		}
		if err != nil {
			return spec{}, nil, err
		}
		// A module is registered in the Koppeltaal domain of one issuer (its
		// client_id); a token for it under another issuer's name would mix
		// two domains, so the request may only name the module's own issuer.
		if req.Issuer != "" && req.Issuer != m.Issuer {
			return spec{}, nil, &ValidationError{Fields: []FieldError{{"issuer", fmt.Sprintf("module %q is registered for issuer %q, not %q", m.Slug, m.Issuer, req.Issuer)}}}
		}
		named, slug, field = &m, m.Issuer, "module"
	} else if slug == "" && len(by.Issuers) == 1 {
		slug = by.Issuers[0]
	}
	is, err := s.signers.Issuer(slug)
	if errors.Is(err, keys.ErrUnknownIssuer) {
		reason := fmt.Sprintf("issuer %q is not known to this instance", slug)
		if named != nil {
			reason = fmt.Sprintf("module %q names issuer %q, which this instance does not know", named.Slug, slug)
		}
		return spec{}, nil, &ValidationError{Fields: []FieldError{{field, reason}}}
	}
	if err != nil {
		return spec{}, nil, err
	}
	// A key limited to issuers launches only under their client_ids: one
	// portal's backend must not mint tokens in another portal's domain.
	if len(by.Issuers) > 0 && !slices.Contains(by.Issuers, is.Slug) {
		reason := fmt.Sprintf("this API key may launch only for issuers %s, not for issuer %q", quoteList(by.Issuers), is.Slug)
		if named != nil {
			reason = fmt.Sprintf("this API key may launch only for issuers %s; module %q is registered for issuer %q",
				quoteList(by.Issuers), named.Slug, is.Slug)
		}
		return spec{}, nil, &ValidationError{Fields: []FieldError{{field, reason}}}
	}
	if is.Device != "" {
		return s.resolveDomain(ctx, req, is, named)
	}
	if err := req.validateRegistry(is.Slug); err != nil {
		return spec{}, nil, err
	}
	if named.Issuer != is.Slug { // the default issuer, while the module is another's
		return spec{}, nil, &ValidationError{Fields: []FieldError{{"module", fmt.Sprintf("module %q is registered for issuer %q", named.Slug, named.Issuer)}}}
	}
	sp := spec{issuer: is.Slug, module: *named, task: req.Task, user: req.User, patient: req.Patient,
		definition: req.Definition, intent: req.Intent, idpHint: req.IDPHint}
	if sp.patient == "" {
		sp.patient = req.User // a patient launching their own task
	}
	if sp.definition == "" {
		sp.definition = named.DefaultDefinition
	}
	if sp.intent == "" {
		sp.intent = hti.DefaultIntent
	}
	return sp, nil, nil
}

// inDomain reports whether the issuer slug names an issuer in a
// Koppeltaal domain (it has a Device), as this instance knows it.
func (s *Service) inDomain(slug string) bool {
	is, err := s.signers.Issuer(slug)
	return err == nil && is.Device != ""
}

// prepare resolves a request as launch id, with the trace headers of the
// domain reads set (TOP-KT-011: X-Request-Id and X-Correlation-Id from the
// caller, X-Trace-Id the launch id), and writes the refused launch record
// when the domain does not allow it.
func (s *Service) prepare(ctx context.Context, id, kind string, req Request, by Caller, now time.Time) (spec, error) {
	correlation := by.CorrelationID
	if correlation == "" {
		correlation = by.RequestID
	}
	ctx = fhirdomain.WithTrace(ctx, fhirdomain.Trace{RequestID: by.RequestID, CorrelationID: correlation, TraceID: id})
	sp, refusal, err := s.resolve(ctx, req, by)
	if err != nil || refusal == nil {
		return sp, err
	}
	stored, err := s.store.insert(ctx, newLaunch{id: id, kind: kind, sp: sp, by: by, createdAt: now, refusal: refusal, site: s.cfg.Site})
	if err != nil {
		return spec{}, storageError("store refused launch", err)
	}
	if !stored {
		return spec{}, s.whyNotStored(ctx, by, sp, false)
	}
	s.reported()
	return spec{}, &RefusedError{LaunchID: id, Refusal: *refusal}
}

// reported wakes the AuditEvent delivery, if any (Config.Reported).
func (s *Service) reported() {
	if s.cfg.Reported != nil {
		s.cfg.Reported()
	}
}

// quoteList renders slugs as "a", "b" for messages.
func quoteList(slugs []string) string {
	q := make([]string, len(slugs))
	for i, s := range slugs {
		q[i] = fmt.Sprintf("%q", s)
	}
	return strings.Join(q, ", ")
}

// reloadKeys reloads this instance's keys from the database and reports
// whether a new snapshot is in use: also when it came with problems of
// some issuer (*keys.RefreshProblems), which need not concern this launch.
func (s *Service) reloadKeys(ctx context.Context) bool {
	err := s.signers.Refresh(ctx)
	var problems *keys.RefreshProblems
	return err == nil || errors.As(err, &problems)
}

// issuedAt is the iat of a token signed at now: whole seconds, backdated
// by the configured allowance. Verifiers in the domain allow no clock skew
// (the Koppeltaal auth server refuses an iat one second ahead of its
// clock), so a small backdate keeps a token valid on a verifier whose clock
// is slightly behind ours; exp is iat + the token lifetime, so exp - iat
// never exceeds it.
func (s *Service) issuedAt(now time.Time) time.Time {
	return now.Truncate(time.Second).Add(-s.cfg.IATBackdate)
}

// sign builds the claims of docs/ARCHITECTURE.md, "The launch token" and
// signs them with the issuer's active key at time now.
func (s *Service) sign(sp spec, now time.Time) (token string, claims hti.Claims, signer *keys.Signer, err error) {
	signer, err = s.signers.Signer(sp.issuer)
	if err != nil {
		return "", hti.Claims{}, nil, err
	}
	token, claims, err = s.signWith(signer, sp, now, newJTI())
	return token, claims, signer, err
}

// signWith signs the claims of sp at time now with the given signer and jti.
func (s *Service) signWith(signer *keys.Signer, sp spec, now time.Time, jti string) (string, hti.Claims, error) {
	iat := s.issuedAt(now)
	claims := hti.Claims{
		Issuer:     signer.Issuer.ClientID,
		Audience:   sp.module.Audience, // TOP-KT-007: a single string, the module's Device
		Subject:    sp.user,
		Resource:   sp.task,
		Definition: sp.definition,
		Intent:     sp.intent,
		HTIVersion: hti.Version,
		IDPHint:    sp.idpHint,
		JTI:        jti,
		IssuedAt:   iat.Unix(),
		ExpiresAt:  iat.Add(s.cfg.TokenLifetime).Unix(),
	}
	if sp.patient != sp.user {
		claims.Patient = sp.patient // omitted when sub is the patient
	}
	if err := claims.CheckReferences(); err != nil {
		return "", hti.Claims{}, fmt.Errorf("launch claims: %w", err) // a bug: requests are validated
	}
	payload, err := json.Marshal(claims)
	if err != nil {
		return "", hti.Claims{}, err
	}
	payload = asciiJSON(payload)
	raw, err := signer.Sign(payload)
	if err != nil {
		return "", hti.Claims{}, err
	}
	return string(raw), claims, nil
}

// form builds what the browser sends to the module (docs/ARCHITECTURE.md,
// "The launch form"). Note the two meanings of iss: the form field is the
// FHIR base URL of the domain, the JWT claim is the client_id.
func form(launchID string, sp spec, issuer keys.Issuer, token, jti, kid string) Form {
	f := Form{LaunchID: launchID, Module: sp.module.Slug, JTI: jti, Kid: kid, URL: sp.module.LaunchURL, Method: sp.module.Method}
	switch sp.module.Fields {
	case FieldsHTI:
		f.Fields = []Field{{"token", token}}
	case FieldsAll:
		f.Fields = []Field{{"iss", issuer.FHIRBaseURL}, {"launch", token}, {"token", token}}
	default:
		f.Fields = []Field{{"iss", issuer.FHIRBaseURL}, {"launch", token}}
	}
	return f
}

// Create validates a request and stores a launch with a one-time link; the
// launch row is the audit record and is written in the same statement as
// the ticket. No token exists yet: it is signed when the link is followed.
func (s *Service) Create(ctx context.Context, req Request, by Caller) (Created, error) {
	id := newLaunchID()
	for retried := false; ; retried = true {
		sp, err := s.prepare(ctx, id, "ticket", req, by, s.now().UTC())
		if err != nil {
			return Created{}, err
		}
		now := s.now().UTC()
		ticket, hash := newTicket()
		expires := now.Add(s.cfg.TicketLifetime)
		stored, err := s.store.insert(ctx, newLaunch{id: id, kind: "ticket", sp: sp, by: by, createdAt: now, ticketHash: hash, expiresAt: expires})
		if err != nil {
			return Created{}, storageError("store launch", err)
		}
		if stored {
			return Created{ID: id, LaunchURL: s.cfg.PublicURL + "/launch/" + ticket, ExpiresAt: expires}, nil
		}
		if err := s.whyNotStored(ctx, by, sp, retried); err != nil {
			return Created{}, err
		}
	}
}

// whyNotStored is called when the statement that writes a launch stored
// nothing: the caller's API key was revoked (ErrCallerRevoked), or the
// module the launch was resolved with changed. In that case the module is
// forgotten, and nil means resolve once more from the registry; after a
// retry the answer is ErrUnavailable (it keeps changing: try again).
func (s *Service) whyNotStored(ctx context.Context, by Caller, sp spec, retried bool) error {
	valid, err := s.store.callerValid(ctx, by.KeyID)
	switch {
	case err != nil:
		return storageError("check API key", err)
	case !valid:
		return ErrCallerRevoked
	case sp.domain || retried:
		return fmt.Errorf("store launch: module %q changed while the launch was made: %w", sp.module.Slug, ErrUnavailable)
	}
	s.modules.forget(sp.module.Slug)
	return nil
}

// IssueToken validates a request, signs its token at once and records the
// launch, for portals that post the form themselves.
func (s *Service) IssueToken(ctx context.Context, req Request, by Caller) (IssuedToken, error) {
	id := newLaunchID()
	sp, err := s.prepare(ctx, id, "token", req, by, s.now().UTC())
	if err != nil {
		return IssuedToken{}, err
	}
	now := s.now().UTC()
	var (
		token  string
		claims hti.Claims
		signer *keys.Signer
	)
	for attempt := 0; ; attempt++ {
		token, claims, signer, err = s.sign(sp, now)
		if err != nil {
			return IssuedToken{}, err
		}
		stored, err := s.store.insertSigned(ctx, newLaunch{id: id, kind: "token", sp: sp, by: by, createdAt: now, site: s.cfg.Site,
			clientID: claims.Issuer, jti: claims.JTI, kid: signer.Kid, tokenExpiresAt: time.Unix(claims.ExpiresAt, 0).UTC()})
		if err != nil {
			// The token is never handed out without its audit record.
			return IssuedToken{}, storageError("store launch", err)
		}
		if stored {
			break
		}
		// Nothing was stored: the caller's API key was revoked, the module
		// changed, or the signing key is no longer usable in the database
		// (a revocation this instance has not heard of). Once, forget the
		// module, reload the keys, resolve and sign again.
		valid, err := s.store.callerValid(ctx, by.KeyID)
		if err != nil {
			return IssuedToken{}, storageError("check API key", err)
		}
		if !valid {
			return IssuedToken{}, ErrCallerRevoked
		}
		if attempt > 0 || !s.reloadKeys(ctx) {
			return IssuedToken{}, fmt.Errorf("issue token: key %s of issuer %q is no longer usable: %w", signer.Kid, sp.issuer, keys.ErrNoActiveKey)
		}
		if !sp.domain {
			s.modules.forget(sp.module.Slug)
			if sp, err = s.prepare(ctx, id, "token", req, by, now); err != nil {
				return IssuedToken{}, err
			}
		}
	}
	if sp.domain {
		s.reported()
	}
	exp := time.Unix(claims.ExpiresAt, 0).UTC()
	return IssuedToken{ID: id, Token: token, JTI: claims.JTI, ExpiresAt: exp, Form: form(id, sp, signer.Issuer, token, claims.JTI, signer.Kid)}, nil
}

// Redeem follows a launch link: exactly once, even when many requests
// arrive together, it claims the ticket and records who followed it from
// where, signs a fresh token at this moment, and returns the form for the
// browser. A link that was used or has expired is refused; on any failure
// the link stays as it was.
func (s *Service) Redeem(ctx context.Context, ticket string, b Browser) (Form, error) {
	if !plausibleTicket(ticket) {
		return Form{}, ErrTicketNotFound
	}
	hash := hashTicket(ticket)
	now := s.now().UTC()
	jti := newJTI()
	var (
		sp      spec
		id, kid string
		signers []*keys.Signer
	)
	for attempt := 0; ; attempt++ {
		signers = s.signers.ActiveSigners()
		var err error
		id, sp, kid, err = s.store.claim(ctx, claimRequest{hash: hash, now: now, site: s.cfg.Site, browser: b, jti: jti,
			tokenExpiresAt: s.issuedAt(now).Add(s.cfg.TokenLifetime), signers: signers})
		if errors.Is(err, pgx.ErrNoRows) {
			id, err := s.ticketState(ctx, hash, now)
			if err != nil {
				return Form{LaunchID: id}, err
			}
			// The link is usable, yet the claim matched nothing: this
			// instance's signer for the issuer is no longer usable in the
			// database (a revocation it has not heard of), or it has none.
			// Reload the keys once and try again; the link stays valid.
			if attempt == 0 && s.reloadKeys(ctx) {
				continue
			}
			return Form{LaunchID: id}, fmt.Errorf("redeem launch %s: %w", id, keys.ErrNoActiveKey)
		}
		if err != nil {
			// The claim may have committed before its answer was lost: give the
			// ticket back, since no token left.
			if uerr := s.unclaim(ctx, hash, jti); uerr != nil {
				s.log.Warn("could not give back a launch link after a failed redemption; it may show as used", "err", uerr)
			}
			return Form{}, storageError("redeem launch", err)
		}
		break
	}
	var signer *keys.Signer
	for _, sg := range signers {
		if sg.Kid == kid {
			signer = sg
		}
	}
	token, claims, err := s.signWith(signer, sp, now, jti)
	if err != nil {
		// Give the ticket back; the browser may try again.
		if uerr := s.unclaim(ctx, hash, jti); uerr != nil {
			s.log.Warn("could not give back a launch link after signing failed; it may show as used", "launch_id", id, "err", uerr)
		}
		return Form{LaunchID: id}, err
	}
	if sp.domain {
		s.reported()
	}
	return form(id, sp, signer.Issuer, token, claims.JTI, signer.Kid), nil
}

// unclaim undoes a claim made with jti, if it happened, within a bounded
// time even when the request's context has ended.
func (s *Service) unclaim(ctx context.Context, hash []byte, jti string) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
	defer cancel()
	if err := s.store.unclaim(ctx, hash, jti); err != nil {
		return storageError("give back launch link", err)
	}
	return nil
}

// Inspect tells whether a launch link can be followed now, without
// changing anything: nil, or ErrTicketNotFound, ErrTicketUsed,
// ErrTicketExpired or ErrModuleChanged. GET /launch/{ticket} uses it, so
// that a link previewer or a prefetch never spends a link.
func (s *Service) Inspect(ctx context.Context, ticket string) (launchID string, err error) {
	if !plausibleTicket(ticket) {
		return "", ErrTicketNotFound
	}
	return s.ticketState(ctx, hashTicket(ticket), s.now().UTC())
}

// ticketState reads a ticket's launch and says why it cannot be redeemed,
// or nil when it can.
func (s *Service) ticketState(ctx context.Context, hash []byte, now time.Time) (string, error) {
	id, redeemed, expires, current, err := s.store.ticketState(ctx, hash)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return "", ErrTicketNotFound
	case err != nil:
		return "", storageError("read launch link", err)
	case redeemed:
		return id, ErrTicketUsed
	case !now.Before(expires):
		return id, ErrTicketExpired
	case !current:
		return id, ErrModuleChanged
	}
	return id, nil
}

// truncate makes s valid UTF-8 (a browser may send any bytes) and cuts it
// to at most n bytes on a character boundary.
func truncate(s string, n int) string {
	s = strings.ToValidUTF8(s, "\uFFFD")
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}

// asciiJSON escapes every non-ASCII character of a JSON text as \uXXXX
// (a surrogate pair above U+FFFF), which leaves its meaning unchanged
// (RFC 8259 §7). The Koppeltaal auth server decodes token payloads a second
// time as ASCII and answers 500 on anything else.
func asciiJSON(b []byte) []byte {
	ascii := true
	for _, c := range b {
		if c >= utf8.RuneSelf {
			ascii = false
			break
		}
	}
	if ascii {
		return b
	}
	out := make([]byte, 0, len(b)+16)
	for _, r := range string(b) {
		if r < utf8.RuneSelf {
			out = append(out, byte(r))
			continue
		}
		if r > 0xFFFF {
			hi, lo := utf16.EncodeRune(r)
			out = fmt.Appendf(out, `\u%04x\u%04x`, hi, lo)
			continue
		}
		out = fmt.Appendf(out, `\u%04x`, r)
	}
	return out
}
