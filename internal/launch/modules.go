package launch

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/ehealth-nl/portal/internal/adminevents"
	"github.com/ehealth-nl/portal/internal/keys"
	"github.com/ehealth-nl/portal/internal/weburl"
	"github.com/ehealth-nl/portal/pkg/hti"
)

// Method is how the browser is sent to a module.
type Method string

// The launch methods (docs/ARCHITECTURE.md, "The launch form").
const (
	// MethodPost is an auto-submitting HTML form post (the default).
	MethodPost Method = "post"
	// MethodGet is a redirect with the fields as query parameters, for
	// modules registered with launch type "redirect".
	MethodGet Method = "get"
)

// FieldSet is which form fields a module receives.
type FieldSet string

// The field sets (docs/ARCHITECTURE.md, "The launch form").
const (
	// FieldsKoppeltaal sends iss (the FHIR base URL) and launch (the token).
	FieldsKoppeltaal FieldSet = "koppeltaal"
	// FieldsHTI sends token, the field generic HTI modules read.
	FieldsHTI FieldSet = "hti"
	// FieldsAll sends iss, launch and token.
	FieldsAll FieldSet = "all"
)

// Module is an eHealth module the portal can launch.
type Module struct {
	Slug              string    `json:"slug"`                         // short name used in launch requests
	Issuer            string    `json:"issuer"`                       // slug of the issuer whose Koppeltaal domain the module is in
	LaunchURL         string    `json:"launch_url"`                   // Endpoint.address: where the browser is sent
	Audience          string    `json:"audience"`                     // Device/<id>: the token's aud
	DefaultDefinition string    `json:"default_definition,omitempty"` // ActivityDefinition/<id>
	Method            Method    `json:"method"`                       // post (form) or get (redirect)
	Fields            FieldSet  `json:"fields"`                       // which form fields the module receives
	CreatedAt         time.Time `json:"created_at"`                   // when the module was registered
	UpdatedAt         time.Time `json:"updated_at"`                   // when it last changed
}

const slugReason = "must be 1-63 lower-case letters, digits or dashes, starting with a letter or digit"

// Validate checks a module; allowHTTP permits plain-http launch URLs on
// public hosts (development only). Defaults are filled in for method and
// fields.
func (m *Module) Validate(allowHTTP bool) error {
	var v ValidationError
	if !keys.ValidSlug(m.Slug) {
		v.add("slug", slugReason)
	}
	if m.Issuer == "" {
		v.add("issuer", "is required")
	} else if !keys.ValidSlug(m.Issuer) {
		v.add("issuer", slugReason)
	}
	if normalized, err := checkLaunchURL(m.LaunchURL, allowHTTP); err != nil {
		v.add("launch_url", err.Error())
	} else {
		m.LaunchURL = normalized
	}
	if _, err := hti.ParseReference(m.Audience, hti.TypeDevice); err != nil {
		v.add("audience", err.Error())
	}
	if m.DefaultDefinition != "" {
		if _, err := hti.ParseReference(m.DefaultDefinition, hti.TypeActivityDefinition); err != nil {
			v.add("default_definition", err.Error())
		}
	}
	switch m.Method {
	case "":
		m.Method = MethodPost
	case MethodPost, MethodGet:
	default:
		v.add("method", fmt.Sprintf("%q must be post or get", m.Method))
	}
	switch m.Fields {
	case "":
		m.Fields = FieldsKoppeltaal
	case FieldsKoppeltaal, FieldsHTI, FieldsAll:
	default:
		v.add("fields", fmt.Sprintf("%q must be koppeltaal, hti or all", m.Fields))
	}
	return v.orNil()
}

// hostPattern is a DNS name or an IPv4 address; IPv6 literals are checked
// separately. Nothing else may reach the CSP built from the launch URL.
var hostPattern = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9.-]{0,252})$`)

// MaxLaunchURLLength caps a module's launch URL. The URL is stored, put in
// the launch page's form action and CSP, and for get modules extended with
// a token of about a kilobyte as a query: 2048 characters keeps the whole
// redirect within what browsers and proxies reliably carry (about 8 KB).
const MaxLaunchURLLength = 2048

// formFieldNames are the names the launch form sends (docs/ARCHITECTURE.md,
// The launch form); a launch URL whose query already holds one would make
// the module see two values, or a value the portal did not send.
var formFieldNames = []string{"iss", "launch", "token"}

// checkLaunchURL applies the launch URL rule: absolute https, or plain http
// for loopback hosts or when the operator allows it for development. The
// token travels in this request, so it must not cross a network in clear.
// It returns the URL with its scheme and host in lower case.
func checkLaunchURL(s string, allowHTTP bool) (string, error) {
	if s == "" {
		return "", errors.New("is required")
	}
	if len(s) > MaxLaunchURLLength {
		return "", fmt.Errorf("is %d characters; at most %d", len(s), MaxLaunchURLLength)
	}
	u, err := url.Parse(s)
	if err != nil || !u.IsAbs() || u.Host == "" || u.Opaque != "" {
		return "", fmt.Errorf("%q must be an absolute https URL", s)
	}
	if u.User != nil || u.Fragment != "" || strings.ContainsAny(s, " \t\r\n") {
		return "", fmt.Errorf("%q must not contain user info, a fragment or whitespace", s)
	}
	host := u.Hostname()
	if ip := net.ParseIP(host); ip == nil && !hostPattern.MatchString(host) {
		return "", fmt.Errorf("%q has an invalid host name", s)
	}
	if strings.HasSuffix(host, ".") {
		return "", fmt.Errorf("%q has a host name with a trailing dot; write it without", s)
	}
	if numericHost(host) && !canonicalIPv4(host) {
		// 2130706433, 0x7f.1, 017700000001 and 127.1 all mean 127.0.0.1 to
		// some resolvers: a reviewer must see the address that is used.
		return "", fmt.Errorf("%q has a numeric host that is not a dotted-quad IPv4 address such as 192.0.2.10", s)
	}
	if port := u.Port(); port != "" {
		if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
			return "", fmt.Errorf("%q has an invalid port", s)
		}
	}
	for name := range u.Query() {
		for _, field := range formFieldNames {
			if strings.EqualFold(name, field) {
				return "", fmt.Errorf("%q has a query parameter %q, a name the launch form sends itself", s, name)
			}
		}
	}
	u.Scheme, u.Host = strings.ToLower(u.Scheme), strings.ToLower(u.Host)
	switch u.Scheme {
	case "https":
	case "http":
		if !allowHTTP && !weburl.IsLoopbackHost(host) {
			return "", fmt.Errorf("%q uses plain http on a public host; the launch token would travel unencrypted (use https, or set PORTAL_ALLOW_HTTP_MODULES=true for development)", s)
		}
	default:
		return "", fmt.Errorf("%q must use https", s)
	}
	return u.String(), nil
}

// numericHost reports whether a host name's last label is not a DNS label
// a top-level domain can have (all digits, or a 0x hexadecimal number):
// then the host is an IPv4 address in some notation.
func numericHost(host string) bool {
	last := host[strings.LastIndex(host, ".")+1:]
	if strings.HasPrefix(strings.ToLower(last), "0x") {
		return true
	}
	for _, r := range last {
		if r < '0' || r > '9' {
			return false
		}
	}
	return last != ""
}

// canonicalIPv4 reports whether host is four decimal octets without
// leading zeros, the one notation every resolver reads the same way.
func canonicalIPv4(host string) bool {
	parts := strings.Split(host, ".")
	if len(parts) != 4 {
		return false
	}
	for _, p := range parts {
		n, err := strconv.Atoi(p)
		if err != nil || n < 0 || n > 255 || strconv.Itoa(n) != p {
			return false
		}
	}
	return true
}

// moduleCheckField names the field behind each check constraint of modules.
var moduleCheckField = map[string]string{
	"modules_slug_check": "slug", "modules_launch_url_check": "launch_url", "modules_audience_check": "audience",
	"modules_default_definition_check": "default_definition", "modules_method_check": "method", "modules_fields_check": "fields",
}

// ErrModuleNotFound means no module has the given slug.
var ErrModuleNotFound = errors.New("module not found")

// ModuleSource is where the launch service finds a module by slug. The
// registry implements it; a resolver that reads Task, ActivityDefinition
// and Endpoint from the Koppeltaal FHIR server can replace it later.
type ModuleSource interface {
	Module(ctx context.Context, slug string) (Module, error)
}

// Registry keeps the modules in PostgreSQL.
type Registry struct {
	pool      *pgxpool.Pool
	allowHTTP bool
}

// NewRegistry returns a module registry; allowHTTP permits plain-http
// launch URLs on public hosts (development only).
func NewRegistry(pool *pgxpool.Pool, allowHTTP bool) *Registry {
	return &Registry{pool: pool, allowHTTP: allowHTTP}
}

const moduleColumns = `slug, issuer, launch_url, audience, coalesce(default_definition, ''), method, fields, created_at, updated_at`

func scanModule(row pgx.Row) (Module, error) {
	var m Module
	var method, fields string
	err := row.Scan(&m.Slug, &m.Issuer, &m.LaunchURL, &m.Audience, &m.DefaultDefinition, &method, &fields, &m.CreatedAt, &m.UpdatedAt)
	m.Method, m.Fields = Method(method), FieldSet(fields)
	m.CreatedAt, m.UpdatedAt = m.CreatedAt.UTC(), m.UpdatedAt.UTC()
	return m, err
}

// Module returns the module with the given slug.
func (r *Registry) Module(ctx context.Context, slug string) (Module, error) {
	m, err := scanModule(r.pool.QueryRow(ctx, sqlSelectModule, slug))
	if errors.Is(err, pgx.ErrNoRows) {
		return Module{}, fmt.Errorf("module %q: %w", slug, ErrModuleNotFound)
	}
	if err != nil {
		return Module{}, storageError("read module "+slug, err)
	}
	return m, nil
}

// Modules lists every module by slug.
func (r *Registry) Modules(ctx context.Context) ([]Module, error) {
	var all []Module
	after := ""
	for {
		page, next, err := r.ModulesPage(ctx, after, 500)
		if err != nil {
			return nil, err
		}
		all = append(all, page...)
		if next == "" {
			return all, nil
		}
		after = next
	}
}

// ModulesPage lists at most limit modules by slug, after the slug given
// (none: from the start), and the slug to continue after, empty on the
// last page.
func (r *Registry) ModulesPage(ctx context.Context, after string, limit int) ([]Module, string, error) {
	rows, err := r.pool.Query(ctx, `SELECT `+moduleColumns+` FROM modules WHERE slug > $1 ORDER BY slug LIMIT $2`, after, limit+1)
	if err != nil {
		return nil, "", storageError("list modules", err)
	}
	list, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (Module, error) { return scanModule(row) })
	if err != nil {
		return nil, "", storageError("list modules", err)
	}
	if len(list) > limit {
		list = list[:limit]
		return list, list[limit-1].Slug, nil
	}
	return list, "", nil
}

// Put validates and stores a module, creating or replacing it; it reports
// whether the module is new. The change and its admin event (before and
// after) are written in one transaction; the context must carry the actor
// (adminevents.WithActor).
func (r *Registry) Put(ctx context.Context, m Module, now time.Time) (Module, bool, error) {
	if err := m.Validate(r.allowHTTP); err != nil {
		return Module{}, false, err
	}
	if _, ok := adminevents.ActorFrom(ctx); !ok {
		return Module{}, false, fmt.Errorf("store module %s: %w", m.Slug, adminevents.ErrNoActor)
	}
	var def *string
	if m.DefaultDefinition != "" {
		def = &m.DefaultDefinition
	}
	var (
		stored  Module
		created bool
	)
	err := pgx.BeginFunc(ctx, r.pool, func(tx pgx.Tx) error {
		before, err := scanModule(tx.QueryRow(ctx, sqlSelectModule+` FOR UPDATE`, m.Slug))
		created = errors.Is(err, pgx.ErrNoRows)
		if err != nil && !created {
			return err
		}
		if !created && sameModule(before, m) {
			stored = before // nothing changes: no write, no event
			return nil
		}
		if _, err := tx.Exec(ctx, sqlUpsertModule, m.Slug, m.Issuer, m.LaunchURL, m.Audience, def, string(m.Method), string(m.Fields), now.UTC()); err != nil {
			return err
		}
		if stored, err = scanModule(tx.QueryRow(ctx, sqlSelectModule, m.Slug)); err != nil {
			return err
		}
		change := adminevents.Change{Action: adminevents.ModulePut, Target: "module:" + m.Slug, After: stored}
		if !created {
			change.Before = before
		}
		return adminevents.Record(ctx, tx, now, change)
	})
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "23503" { // foreign key: no such issuer
		var v ValidationError
		v.add("issuer", fmt.Sprintf("no issuer is named %q", m.Issuer))
		return Module{}, false, &v
	}
	if errors.As(err, &pgErr) && pgErr.Code == "23514" && moduleCheckField[pgErr.ConstraintName] != "" { // a check the validation above should have caught
		var v ValidationError
		v.add(moduleCheckField[pgErr.ConstraintName], "is not accepted by the database ("+pgErr.ConstraintName+")")
		return Module{}, false, &v
	}
	if err != nil {
		return Module{}, false, storageError("store module "+m.Slug, err)
	}
	return stored, created, nil
}

// sameModule reports whether two modules launch the same way (times of
// creation and change aside).
func sameModule(a, b Module) bool {
	return a.Slug == b.Slug && a.Issuer == b.Issuer && a.LaunchURL == b.LaunchURL && a.Audience == b.Audience &&
		a.DefaultDefinition == b.DefaultDefinition && a.Method == b.Method && a.Fields == b.Fields
}

const sqlSelectModule = `SELECT ` + moduleColumns + ` FROM modules WHERE slug = $1`

const sqlUpsertModule = `
INSERT INTO modules (slug, issuer, launch_url, audience, default_definition, method, fields, created_at, updated_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8)
ON CONFLICT (slug) DO UPDATE SET issuer = EXCLUDED.issuer, launch_url = EXCLUDED.launch_url, audience = EXCLUDED.audience,
	default_definition = EXCLUDED.default_definition, method = EXCLUDED.method, fields = EXCLUDED.fields, updated_at = EXCLUDED.updated_at`

// Delete removes a module, with its admin event, in one transaction; the
// context must carry the actor. Launch records keep what they launched.
func (r *Registry) Delete(ctx context.Context, slug string, now time.Time) error {
	if _, ok := adminevents.ActorFrom(ctx); !ok {
		return fmt.Errorf("delete module %s: %w", slug, adminevents.ErrNoActor)
	}
	err := pgx.BeginFunc(ctx, r.pool, func(tx pgx.Tx) error {
		before, err := scanModule(tx.QueryRow(ctx, sqlSelectModule+` FOR UPDATE`, slug))
		if err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `DELETE FROM modules WHERE slug = $1`, slug); err != nil {
			return err
		}
		return adminevents.Record(ctx, tx, now, adminevents.Change{Action: adminevents.ModuleDelete, Target: "module:" + slug, Before: before})
	})
	if errors.Is(err, pgx.ErrNoRows) {
		return fmt.Errorf("module %q: %w", slug, ErrModuleNotFound)
	}
	if err != nil {
		return storageError("delete module "+slug, err)
	}
	return nil
}
