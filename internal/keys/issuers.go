package keys

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"strings"
	"time"
	"unicode"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/ehealth-nl/portal/internal/adminevents"
	"github.com/ehealth-nl/portal/internal/postgres"
	"github.com/ehealth-nl/portal/internal/weburl"
	"github.com/ehealth-nl/portal/pkg/hti"
)

// Issuer is a signing identity of the portal: the Koppeltaal client_id that
// goes into the JWT iss claim, the FHIR base URL that goes into the form's iss
// field, and how its keys are made and rotated.
type Issuer struct {
	Slug        string  // short name in URLs and commands, e.g. "default"
	ClientID    string  // JWT iss: the Koppeltaal client_id (docs/ARCHITECTURE.md, "The launch token")
	FHIRBaseURL string  // form field iss: the Koppeltaal FHIR base (docs/ARCHITECTURE.md, "Launch flow")
	Profile     Profile // koppeltaal, or hti for point-to-point modules
	// Device is the portal's own Device/<id> in the issuer's Koppeltaal
	// domain; empty for an issuer that is not in a domain.
	Device    string
	Alg       Algorithm // algorithm of new keys
	RSABits   int       // modulus size of new RSA keys
	Policy    Policy    // how its keys rotate
	IsDefault bool      // served at /.well-known/jwks.json
	CreatedAt time.Time // when the issuer was stored
	UpdatedAt time.Time // when its settings last changed
}

// auditState is what the admin trail records of an issuer.
func (is Issuer) auditState() map[string]any {
	return map[string]any{"slug": is.Slug, "client_id": is.ClientID, "fhir_base_url": is.FHIRBaseURL, "profile": string(is.Profile), "device": is.Device,
		"alg": string(is.Alg), "rsa_bits": is.RSABits, "rotation_period": is.Policy.RotationPeriod.String(),
		"publish_lead": is.Policy.PublishLead.String(), "retire_grace": is.Policy.RetireGrace.String(), "default": is.IsDefault}
}

// sameSettings reports whether two issuers have the same settings (times
// of creation and change aside).
func sameSettings(a, b Issuer) bool {
	a.CreatedAt, a.UpdatedAt, b.CreatedAt, b.UpdatedAt = time.Time{}, time.Time{}, time.Time{}, time.Time{}
	return a == b
}

// Profile says which verifiers an issuer's tokens are for, and so which
// algorithms it may sign with.
type Profile string

// The issuer profiles.
const (
	// ProfileKoppeltaal issuers sign for modules that verify through the
	// Koppeltaal domain's auth server, which accepts RS384, ES384 and RS512
	// only (docs/ARCHITECTURE.md, "Decisions").
	ProfileKoppeltaal Profile = "koppeltaal"
	// ProfileHTI issuers sign for plain HTI 2.0 modules that verify the
	// token themselves, point to point: any of the seven algorithms.
	ProfileHTI Profile = "hti"
)

// DefaultProfile is the profile of an issuer that names none.
const DefaultProfile = ProfileKoppeltaal

// ParseProfile returns the Profile named s, or an error naming the two.
func ParseProfile(s string) (Profile, error) {
	switch Profile(s) {
	case ProfileKoppeltaal, ProfileHTI:
		return Profile(s), nil
	}
	return "", fmt.Errorf("%q is not a profile (koppeltaal or hti)", s)
}

// KoppeltaalAlgorithms are the algorithms a Koppeltaal issuer may use: what
// the domain's auth server accepts (docs/ARCHITECTURE.md, "Decisions").
func KoppeltaalAlgorithms() []Algorithm { return []Algorithm{RS512, RS384, ES384} }

// Allows reports whether an issuer of the profile may sign with alg.
func (p Profile) Allows(alg Algorithm) bool {
	if p == ProfileHTI {
		_, err := ParseAlgorithm(string(alg))
		return err == nil
	}
	for _, a := range KoppeltaalAlgorithms() {
		if a == alg {
			return true
		}
	}
	return false
}

// Policy is an issuer's rotation schedule (docs/ARCHITECTURE.md, "Key lifecycle").
type Policy struct {
	// RotationPeriod is how long a key stays active before the next one takes over.
	RotationPeriod time.Duration
	// PublishLead is how long a next key is published before it may sign.
	PublishLead time.Duration
	// RetireGrace is how long a retired key stays published.
	RetireGrace time.Duration
}

// TimingLimits are the service-wide durations every rotation policy must
// respect: how long verifiers may cache a JWKS, how stale an instance's
// keyring may be before it stops signing, and how long a token lives.
type TimingLimits struct {
	JWKSMaxAge    time.Duration // Cache-Control max-age of the JWKS
	MaxStaleness  time.Duration // how long an instance's keyring may lag the database
	TokenLifetime time.Duration // exp - iat of every token
}

// PolicyError says which policy field breaks which rule.
type PolicyError struct {
	Field  string // "rotation_period", "publish_lead" or "retire_grace"
	Reason string // the rule it breaks, with the numbers
}

// Error names the policy field and the rule it breaks.
func (e *PolicyError) Error() string { return e.Field + ": " + e.Reason }

// Validate checks the timing rules of docs/ARCHITECTURE.md, "Key
// lifecycle" against the service limits. An instance may lag the database
// by up to the maximum staleness (it stops signing after that), so the
// rules use it rather than the refresh interval.
func (p Policy) Validate(l TimingLimits) error {
	// A verifier that fetched the JWKS just before a next key appeared, from
	// an instance that had not seen it yet, must find it by the time the key
	// signs.
	if minLead := l.JWKSMaxAge + l.MaxStaleness; p.PublishLead < minLead {
		return &PolicyError{"publish_lead", fmt.Sprintf("%s is shorter than JWKS max-age + keyring max staleness (%s + %s = %s): a verifier could meet a token before it can see its key", p.PublishLead, l.JWKSMaxAge, l.MaxStaleness, minLead)}
	}
	// Every token signed by a key must stay verifiable until it expires,
	// including tokens an instance signs before it notices the rotation.
	if minGrace := l.TokenLifetime + l.JWKSMaxAge + l.MaxStaleness; p.RetireGrace < minGrace {
		return &PolicyError{"retire_grace", fmt.Sprintf("%s is shorter than token lifetime + JWKS max-age + keyring max staleness (%s + %s + %s = %s): tokens could outlive their key in the JWKS", p.RetireGrace, l.TokenLifetime, l.JWKSMaxAge, l.MaxStaleness, minGrace)}
	}
	if p.RotationPeriod <= 0 {
		return &PolicyError{"rotation_period", "must be positive"}
	}
	// The next key is created when the current one activates; a period shorter
	// than the lead would silently stretch to the lead.
	if p.RotationPeriod < p.PublishLead {
		return &PolicyError{"rotation_period", fmt.Sprintf("%s is shorter than the publish lead %s: keys could not rotate that often", p.RotationPeriod, p.PublishLead)}
	}
	return nil
}

// IssuerError says which issuer field is invalid and why.
type IssuerError struct {
	Field  string // "slug", "client_id", "fhir_base_url", "profile", "alg", "rsa_bits" or a policy field
	Reason string // the rule it breaks
}

// Error names the issuer field and the rule it breaks.
func (e *IssuerError) Error() string { return e.Field + ": " + e.Reason }

var slugPattern = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,62}$`)

// ValidSlug reports whether s can name an issuer (or a module): lower-case
// letters, digits and dashes, at most 63 characters.
func ValidSlug(s string) bool { return slugPattern.MatchString(s) }

// Validate checks every field of the issuer, including its policy.
func (is Issuer) Validate(l TimingLimits) error {
	if !ValidSlug(is.Slug) {
		return &IssuerError{"slug", fmt.Sprintf("%q must be 1-63 lower-case letters, digits or dashes, starting with a letter or digit", is.Slug)}
	}
	if err := ValidateClientID(is.ClientID); err != nil {
		return &IssuerError{"client_id", err.Error()}
	}
	if err := ValidateFHIRBaseURL(is.FHIRBaseURL); err != nil {
		return &IssuerError{"fhir_base_url", err.Error()}
	}
	if _, err := ParseProfile(string(is.Profile)); err != nil {
		return &IssuerError{"profile", err.Error()}
	}
	if is.Device != "" {
		// The portal's own Device in the domain: the AuditEvents' launcher
		// and observer (TOP-KT-011). Only a koppeltaal issuer joins a domain.
		if _, err := hti.ParseReference(is.Device, hti.TypeDevice); err != nil {
			return &IssuerError{"device", err.Error()}
		}
		if is.Profile != ProfileKoppeltaal {
			return &IssuerError{"device", fmt.Sprintf("only a koppeltaal issuer joins a Koppeltaal domain; issuer %q is profile %s", is.Slug, is.Profile)}
		}
	}
	if _, err := ParseAlgorithm(string(is.Alg)); err != nil {
		return &IssuerError{"alg", err.Error()}
	}
	if !is.Profile.Allows(is.Alg) {
		return &IssuerError{"alg", fmt.Sprintf("%s is not accepted by the Koppeltaal auth server (RS384, ES384 or RS512); an issuer for plain HTI modules verifying tokens themselves may use it with profile hti", is.Alg)}
	}
	if !ValidRSABits(is.RSABits) {
		return &IssuerError{"rsa_bits", fmt.Sprintf("%d is not 2048, 3072 or 4096", is.RSABits)}
	}
	if err := is.Policy.Validate(l); err != nil {
		var pe *PolicyError
		if errors.As(err, &pe) {
			return &IssuerError{pe.Field, pe.Reason}
		}
		return err
	}
	return nil
}

// ValidateClientID checks a Koppeltaal client_id: a non-empty string of
// printable characters without spaces (it is compared byte for byte by
// verifiers), at most 255 characters.
func ValidateClientID(s string) error {
	if s == "" {
		return errors.New("must not be empty")
	}
	if len(s) > 255 {
		return errors.New("must be at most 255 characters")
	}
	for _, r := range s {
		if unicode.IsSpace(r) || !unicode.IsPrint(r) {
			return fmt.Errorf("%q must not contain spaces or control characters", s)
		}
	}
	return nil
}

// ValidateFHIRBaseURL checks the FHIR base URL of a Koppeltaal domain with
// the rules of a module's URL: absolute https (plain http only on a
// loopback host), no user info, no query or fragment. Modules forward it to
// the auth server, which compares it as a string with its own FHIR base
// (docs/ARCHITECTURE.md, "Launch flow").
func ValidateFHIRBaseURL(s string) error {
	u, err := url.Parse(s)
	if err != nil || !u.IsAbs() || u.Host == "" || u.Opaque != "" {
		return fmt.Errorf("%q must be an absolute URL such as https://fhir.example.org/fhir", s)
	}
	if u.User != nil {
		return fmt.Errorf("%q must not contain user info", s)
	}
	if u.RawQuery != "" || u.ForceQuery || u.Fragment != "" || strings.ContainsAny(s, " \t\r\n#") {
		return fmt.Errorf("%q must not have a query, fragment or spaces", s)
	}
	switch {
	case u.Scheme == "https":
	case u.Scheme == "http" && weburl.IsLoopbackHost(u.Hostname()):
	default:
		return fmt.Errorf("%q must use https (plain http only on a loopback host)", s)
	}
	return nil
}

// ErrIssuerNotFound means no issuer has the given slug.
var ErrIssuerNotFound = errors.New("issuer not found")

// ErrIssuerExists means an issuer with that slug or client_id already exists.
var ErrIssuerExists = errors.New("issuer already exists")

const issuerColumns = `slug, client_id, fhir_base_url, profile, signing_alg, rsa_key_bits,
	rotation_period_ms, publish_lead_ms, retire_grace_ms, is_default, created_at, updated_at, coalesce(device, '')`

func scanIssuer(row pgx.Row) (Issuer, error) {
	var (
		is                  Issuer
		alg, profile        string
		period, lead, grace int64
	)
	err := row.Scan(&is.Slug, &is.ClientID, &is.FHIRBaseURL, &profile, &alg, &is.RSABits,
		&period, &lead, &grace, &is.IsDefault, &is.CreatedAt, &is.UpdatedAt, &is.Device)
	if err != nil {
		return Issuer{}, err
	}
	is.Alg, is.Profile = Algorithm(alg), Profile(profile)
	is.Policy = Policy{
		RotationPeriod: time.Duration(period) * time.Millisecond,
		PublishLead:    time.Duration(lead) * time.Millisecond,
		RetireGrace:    time.Duration(grace) * time.Millisecond,
	}
	is.CreatedAt, is.UpdatedAt = is.CreatedAt.UTC(), is.UpdatedAt.UTC()
	return is, nil
}

// issuerConfigLock serialises changes to the issuers table between
// instances that start at the same time (advisory lock key pair).
const issuerConfigLock = `SELECT pg_advisory_xact_lock(1886351988, 0)`

const sqlClearOtherDefault = `UPDATE issuers SET is_default = false, updated_at = $2 WHERE is_default AND slug <> $1`

const sqlUpsertDefaultIssuer = `
INSERT INTO issuers (slug, client_id, fhir_base_url, signing_alg, rsa_key_bits,
	rotation_period_ms, publish_lead_ms, retire_grace_ms, is_default, created_at, updated_at, profile, device)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, true, $9, $9, $10, $11)
ON CONFLICT (slug) DO UPDATE SET
	client_id = EXCLUDED.client_id,
	profile = EXCLUDED.profile,
	device = EXCLUDED.device,
	fhir_base_url = EXCLUDED.fhir_base_url,
	signing_alg = EXCLUDED.signing_alg,
	rsa_key_bits = EXCLUDED.rsa_key_bits,
	rotation_period_ms = EXCLUDED.rotation_period_ms,
	publish_lead_ms = EXCLUDED.publish_lead_ms,
	retire_grace_ms = EXCLUDED.retire_grace_ms,
	is_default = true,
	updated_at = CASE WHEN (issuers.client_id, issuers.fhir_base_url, issuers.signing_alg, issuers.rsa_key_bits,
			issuers.rotation_period_ms, issuers.publish_lead_ms, issuers.retire_grace_ms, issuers.is_default, issuers.profile, issuers.device)
		IS DISTINCT FROM (EXCLUDED.client_id, EXCLUDED.fhir_base_url, EXCLUDED.signing_alg, EXCLUDED.rsa_key_bits,
			EXCLUDED.rotation_period_ms, EXCLUDED.publish_lead_ms, EXCLUDED.retire_grace_ms, true, EXCLUDED.profile, EXCLUDED.device)
		THEN EXCLUDED.updated_at ELSE issuers.updated_at END`

const sqlInsertIssuer = `
INSERT INTO issuers (slug, client_id, fhir_base_url, signing_alg, rsa_key_bits,
	rotation_period_ms, publish_lead_ms, retire_grace_ms, is_default, created_at, updated_at, profile, device)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, false, $9, $9, $10, $11)`

const sqlUpdateIssuer = `
UPDATE issuers SET client_id = $2, fhir_base_url = $3, signing_alg = $4, rsa_key_bits = $5,
	rotation_period_ms = $6, publish_lead_ms = $7, retire_grace_ms = $8, updated_at = $9, profile = $10, device = $11
WHERE slug = $1`

const sqlSelectIssuer = `SELECT ` + issuerColumns + ` FROM issuers WHERE slug = $1`

const sqlSelectIssuers = `SELECT ` + issuerColumns + ` FROM issuers ORDER BY is_default DESC, slug`

func issuerArgs(is Issuer, now time.Time) []any {
	return []any{is.Slug, is.ClientID, is.FHIRBaseURL, string(is.Alg), is.RSABits,
		is.Policy.RotationPeriod.Milliseconds(), is.Policy.PublishLead.Milliseconds(),
		is.Policy.RetireGrace.Milliseconds(), now.UTC(), string(is.Profile), nullableDevice(is.Device)}
}

// nullableDevice stores an issuer without a Device as NULL.
func nullableDevice(d string) *string {
	if d == "" {
		return nil
	}
	return &d
}

// UpsertDefaultIssuer creates or updates the default issuer from the
// service configuration, and makes it the only default one. Several
// instances may call it at once. A change of settings is recorded as an
// admin event (issuer.configure) of the context's actor, in the same
// transaction; starting with unchanged settings records nothing.
func (s *Store) UpsertDefaultIssuer(ctx context.Context, is Issuer, now time.Time) error {
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, issuerConfigLock); err != nil {
			return err
		}
		before, err := scanIssuer(tx.QueryRow(ctx, sqlSelectIssuer, is.Slug))
		existed := err == nil
		if err != nil && !errors.Is(err, pgx.ErrNoRows) {
			return err
		}
		// Another issuer that was the default until now stops being it: a
		// change of its own, recorded as such.
		rows, err := tx.Query(ctx, `SELECT `+issuerColumns+` FROM issuers WHERE is_default AND slug <> $1 FOR UPDATE`, is.Slug)
		if err != nil {
			return err
		}
		demoted, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Issuer, error) { return scanIssuer(r) })
		if err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, sqlClearOtherDefault, is.Slug, now.UTC()); err != nil {
			return err
		}
		for _, old := range demoted {
			after := old
			after.IsDefault = false
			if err := adminevents.Record(ctx, tx, now, adminevents.Change{Action: adminevents.IssuerConfig, Target: "issuer:" + old.Slug,
				Before: old.auditState(), After: after.auditState()}); err != nil {
				return err
			}
		}
		if _, err := tx.Exec(ctx, sqlUpsertDefaultIssuer, issuerArgs(is, now)...); err != nil {
			return translateIssuerError(err)
		}
		after, err := scanIssuer(tx.QueryRow(ctx, sqlSelectIssuer, is.Slug))
		if err != nil {
			return err
		}
		if existed && sameSettings(before, after) {
			return notifyChange(ctx, tx, is.Slug)
		}
		change := adminevents.Change{Action: adminevents.IssuerConfig, Target: "issuer:" + is.Slug, After: after.auditState()}
		if existed {
			change.Before = before.auditState()
		}
		if err := adminevents.Record(ctx, tx, now, change); err != nil {
			return err
		}
		return notifyChange(ctx, tx, is.Slug)
	})
	return storeError(fmt.Sprintf("configure default issuer %q", is.Slug), err)
}

// notifyChange tells every instance to reload the issuer (delivered at commit).
func notifyChange(ctx context.Context, tx pgx.Tx, slug string) error {
	_, err := tx.Exec(ctx, `SELECT pg_notify($1, $2)`, NotifyChannel, slug)
	return err
}

// CreateIssuer stores a new, non-default issuer, with its admin event
// (issuer.add) in the same transaction; the context must carry the actor.
func (s *Store) CreateIssuer(ctx context.Context, is Issuer, now time.Time) error {
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, sqlInsertIssuer, issuerArgs(is, now)...); err != nil {
			return translateIssuerError(err)
		}
		stored, err := scanIssuer(tx.QueryRow(ctx, sqlSelectIssuer, is.Slug))
		if err != nil {
			return err
		}
		if err := adminevents.Record(ctx, tx, now, adminevents.Change{Action: adminevents.IssuerAdd, Target: "issuer:" + is.Slug, After: stored.auditState()}); err != nil {
			return err
		}
		return notifyChange(ctx, tx, is.Slug)
	})
	return storeError(fmt.Sprintf("create issuer %q", is.Slug), err)
}

// UpdateIssuer replaces the settings of an existing issuer, with its admin
// event (issuer.update, before and after) in the same transaction; the
// context must carry the actor. Keys already made keep their algorithm;
// the rotator replaces the next key when it no longer matches.
func (s *Store) UpdateIssuer(ctx context.Context, is Issuer, now time.Time) error {
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		before, err := scanIssuer(tx.QueryRow(ctx, sqlSelectIssuer+` FOR UPDATE`, is.Slug))
		if errors.Is(err, pgx.ErrNoRows) {
			return ErrIssuerNotFound
		}
		if err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, sqlUpdateIssuer, issuerArgs(is, now)...); err != nil {
			return translateIssuerError(err)
		}
		after, err := scanIssuer(tx.QueryRow(ctx, sqlSelectIssuer, is.Slug))
		if err != nil {
			return err
		}
		if sameSettings(before, after) {
			return nil // nothing changed: no event, no notification
		}
		if err := adminevents.Record(ctx, tx, now, adminevents.Change{Action: adminevents.IssuerUpdate, Target: "issuer:" + is.Slug,
			Before: before.auditState(), After: after.auditState()}); err != nil {
			return err
		}
		return notifyChange(ctx, tx, is.Slug)
	})
	return storeError(fmt.Sprintf("update issuer %q", is.Slug), err)
}

// storeError classifies an error of a store transaction: the domain's own
// errors (ErrIssuerExists, ErrIssuerNotFound, adminevents.ErrNoActor) keep
// their identity, database errors go through postgres.Error.
func storeError(op string, err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, ErrIssuerExists), errors.Is(err, ErrIssuerNotFound), errors.Is(err, adminevents.ErrNoActor):
		return fmt.Errorf("%s: %w", op, err)
	}
	return postgres.Error(op, err)
}

// Issuer returns the issuer with the given slug.
func (s *Store) Issuer(ctx context.Context, slug string) (Issuer, error) {
	is, err := scanIssuer(s.pool.QueryRow(ctx, sqlSelectIssuer, slug))
	if errors.Is(err, pgx.ErrNoRows) {
		return Issuer{}, fmt.Errorf("issuer %q: %w", slug, ErrIssuerNotFound)
	}
	if err != nil {
		return Issuer{}, postgres.Error(fmt.Sprintf("read issuer %q", slug), err)
	}
	return is, nil
}

// Issuers returns every issuer, the default one first.
func (s *Store) Issuers(ctx context.Context) ([]Issuer, error) {
	rows, err := s.pool.Query(ctx, sqlSelectIssuers)
	if err != nil {
		return nil, postgres.Error("list issuers", err)
	}
	list, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Issuer, error) { return scanIssuer(r) })
	if err != nil {
		return nil, postgres.Error("list issuers", err)
	}
	return list, nil
}

func translateIssuerError(err error) error {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "23505" {
		return fmt.Errorf("%w (%s)", ErrIssuerExists, pgErr.ConstraintName)
	}
	return err
}
