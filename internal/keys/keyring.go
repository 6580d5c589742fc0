package keys

import (
	"context"
	"crypto"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sort"
	"strings"
	"sync/atomic"
	"time"

	"github.com/lestrrat-go/jwx/v2/jws"
)

// Keyring is an instance's in-memory view of every issuer's keys: the active
// signer and the serialized JWKS. Refresh rebuilds it from the database and
// swaps it in atomically; Signer and JWKS read it without touching the
// database, so signing and JWKS requests keep working while the database is
// away — for at most the maximum staleness, after which the keyring no
// longer signs (a revoked key must not stay in service behind a partition).
//
// Only keys this instance can sign with are published: the JWK of each key
// is derived from its opened private key (docs/ARCHITECTURE.md, "Key
// integrity"). A key row that does not open as its row describes is
// refused: not published, never used, logged once.
type Keyring struct {
	store  *Store
	sealer *Sealer
	now    func() time.Time
	log    *slog.Logger

	maxStaleness   time.Duration
	refreshTimeout time.Duration
	limits         TimingLimits // zero: issuers' policies are not checked

	// refreshLock is a one-slot semaphore: one Refresh at a time, and a
	// caller can give up waiting for it with its context.
	refreshLock  chan struct{}
	onEvent      func(Event)       // guarded by refreshLock
	policyLogged map[string]string // issuer → the policy problem last logged; guarded by refreshLock
	current      atomic.Pointer[ringSnapshot]
}

// openedRow is the outcome of opening one key row.
type openedRow struct {
	priv      crypto.Signer   // nil for retired keys (proven to open, not kept) and refused ones
	publicJWK json.RawMessage // derived from the private key
	err       error           // why the row was refused
}

// DefaultMaxStaleness is how long a keyring keeps signing without a
// successful refresh when no other maximum is configured.
const DefaultMaxStaleness = 90 * time.Second

// DefaultRefreshTimeout bounds one refresh of the keyring, and each
// database call of its LISTEN connection.
const DefaultRefreshTimeout = 10 * time.Second

// KeyringOption configures a Keyring.
type KeyringOption func(*Keyring)

// WithMaxStaleness sets how long the keyring may go without a successful
// refresh before it refuses to sign and reports itself not ready.
func WithMaxStaleness(d time.Duration) KeyringOption {
	return func(k *Keyring) {
		if d > 0 {
			k.maxStaleness = d
		}
	}
}

// WithRefreshTimeout bounds each refresh and each database call of the
// LISTEN connection.
func WithRefreshTimeout(d time.Duration) KeyringOption {
	return func(k *Keyring) {
		if d > 0 {
			k.refreshTimeout = d
		}
	}
}

// WithTimingLimits makes every refresh check each issuer's rotation policy
// against the service limits: an issuer that breaks a rule is reported not
// ready, naming the rule.
func WithTimingLimits(l TimingLimits) KeyringOption {
	return func(k *Keyring) { k.limits = l }
}

// ringSnapshot is one immutable state of the keyring.
type ringSnapshot struct {
	issuers       map[string]*issuerRing
	defaultIssuer string
	loadedAt      time.Time // when the database was last read successfully
}

// issuerRing is one issuer's part of a snapshot. It is immutable once
// built: a refresh that reads the same issuer and rows again, before any
// time boundary of the ring, keeps it rather than building it again
// (reusableFor).
type issuerRing struct {
	issuer    Issuer
	signer    *Signer // nil when the issuer has no usable active key
	jwks      JWKS
	published []Key
	unusable  []UnusableKey
	notReady  []string // why the issuer is not ready; empty when it is
	problems  []error  // what a refresh reports for the issuer (RefreshProblems)

	// What the ring was built from and when it stops being what building
	// it again would give.
	rows []rowStamp // the issuer's published key rows, in the order read
	// opened maps the fingerprint of each row to what opening it gave. A
	// row that changes in any way is opened again (docs/ARCHITECTURE.md,
	// "What the keyring opens").
	opened  map[rowFingerprint]*openedRow
	builtAt time.Time // the clock reading the ring was built for
	// validUntil is the first instant at which the clock alone changes
	// the ring: the end of a retired key's grace. Zero when there is none.
	validUntil time.Time
}

// rowStamp is all of a key row that an issuer's ring depends on: its
// content (the fingerprint) and the lifecycle times that order the JWKS,
// date the signer and end a retired key's grace.
type rowStamp struct {
	fingerprint                                   rowFingerprint
	created, activated, retired, expires, revoked time.Time
}

func stampOf(sk storedKey) rowStamp {
	return rowStamp{fingerprint: sk.fingerprint(), created: sk.CreatedAt, activated: sk.ActivatedAt,
		retired: sk.RetiredAt, expires: sk.ExpiresAt, revoked: sk.RevokedAt}
}

func sameStamp(a, b rowStamp) bool {
	return a.fingerprint == b.fingerprint && a.created.Equal(b.created) && a.activated.Equal(b.activated) &&
		a.retired.Equal(b.retired) && a.expires.Equal(b.expires) && a.revoked.Equal(b.revoked)
}

// sameIssuer reports whether two issuer rows are identical, times
// included.
func sameIssuer(a, b Issuer) bool {
	return sameSettings(a, b) && a.CreatedAt.Equal(b.CreatedAt) && a.UpdatedAt.Equal(b.UpdatedAt)
}

// reusableFor reports whether building the issuer's ring from is and rows
// at now would give exactly this ring: the same issuer row, the same key
// rows (content and times), and no time boundary crossed since it was
// built. Only the end of a retired key's grace depends on the clock
// (buildIssuer), so that is the one boundary.
func (ir *issuerRing) reusableFor(is Issuer, rows []rowStamp, now time.Time) bool {
	if !sameIssuer(ir.issuer, is) || !slices.EqualFunc(ir.rows, rows, sameStamp) {
		return false
	}
	return !now.Before(ir.builtAt) && (ir.validUntil.IsZero() || now.Before(ir.validUntil))
}

// UnusableKey is a key row this instance refused: it is neither published
// nor used.
type UnusableKey struct {
	Kid    string // the key id
	State  State  // the row's state
	Reason string // why it was refused
}

// JWKS is an issuer's JWK Set, serialized once per change, with its strong
// entity tag.
type JWKS struct {
	Body []byte // the JSON served, identical on every instance
	ETag string // a strong entity tag of Body
	// ETagHeader is ETag as an HTTP header value, made once with the set
	// so that serving it allocates nothing; never to be changed.
	ETagHeader []string
}

// Signer signs launch tokens with an issuer's active key. It is immutable;
// a rotation makes the keyring hand out a new one.
type Signer struct {
	Issuer      Issuer    // the issuer the key signs for (client_id, FHIR base)
	Kid         string    // the key id put in every token header
	Alg         Algorithm // the algorithm of the key
	ActiveSince time.Time // when the key started signing
	key         crypto.Signer
}

// Sign returns the compact JWS of payload with the header alg, kid and
// typ: JWT (docs/ARCHITECTURE.md, "The launch token": kid is required, no
// jku or x5u).
func (s *Signer) Sign(payload []byte) ([]byte, error) {
	hdr := jws.NewHeaders()
	if err := hdr.Set(jws.KeyIDKey, s.Kid); err != nil {
		return nil, err
	}
	if err := hdr.Set(jws.TypeKey, "JWT"); err != nil {
		return nil, err
	}
	token, err := jws.Sign(payload, jws.WithKey(s.Alg.jwa(), s.key, jws.WithProtectedHeaders(hdr)))
	if err != nil {
		return nil, fmt.Errorf("sign with kid %s of issuer %q: %w", s.Kid, s.Issuer.Slug, err)
	}
	return token, nil
}

// EventKind names a key change a keyring observed.
type EventKind string

// The key changes a keyring recognises.
const (
	// EventRotation: the active key was retired and another one signs.
	EventRotation EventKind = "rotation"
	// EventRevocation: a key left the JWKS before its time (the active key
	// vanished, or a retired key before its grace ended).
	EventRevocation EventKind = "revocation"
	// EventRefused: a key row did not open as its row describes, so this
	// instance neither publishes nor uses it (reported once per row
	// content).
	EventRefused EventKind = "refused"
)

// Event is a change of an issuer's keys that this keyring observed on a
// refresh, whichever instance or command made it.
type Event struct {
	Issuer string    // the issuer whose keys changed
	Kind   EventKind // rotation, revocation or refused
	Kid    string    // the key retired, revoked or refused
}

// OnEvent registers fn to see every key change the keyring observes (for
// metrics). Call it before the first Refresh.
func (k *Keyring) OnEvent(fn func(Event)) {
	k.refreshLock <- struct{}{}
	defer func() { <-k.refreshLock }()
	k.onEvent = fn
}

// ErrUnknownIssuer means the keyring holds no issuer with that slug.
var ErrUnknownIssuer = errors.New("unknown issuer")

// ErrNoActiveKey means the issuer exists but has no key that can sign.
var ErrNoActiveKey = errors.New("issuer has no active signing key")

// ErrNotLoaded means the keyring has not been loaded from the database yet.
var ErrNotLoaded = errors.New("keyring not loaded yet")

// ErrKeyringStale means the keyring has not been refreshed successfully
// for longer than the maximum staleness: it may not know of a revocation,
// so it does not sign. Signer wraps it together with ErrNoActiveKey.
var ErrKeyringStale = errors.New("keyring is stale")

// NewKeyring returns an empty keyring; call Refresh before use.
func NewKeyring(store *Store, sealer *Sealer, clock func() time.Time, logger *slog.Logger, opts ...KeyringOption) *Keyring {
	k := &Keyring{store: store, sealer: sealer, now: clock, log: logger,
		maxStaleness: DefaultMaxStaleness, refreshTimeout: DefaultRefreshTimeout,
		refreshLock: make(chan struct{}, 1), policyLogged: map[string]string{}}
	for _, o := range opts {
		o(k)
	}
	return k
}

// MaxStaleness is how long the keyring signs without a successful refresh.
func (k *Keyring) MaxStaleness() time.Duration { return k.maxStaleness }

// fresh returns an error wrapping ErrKeyringStale when the snapshot is
// older than the maximum staleness.
func (k *Keyring) fresh(snap *ringSnapshot) error {
	if age := k.now().Sub(snap.loadedAt); age > k.maxStaleness {
		return fmt.Errorf("%w: keys last loaded %s ago, more than the maximum staleness %s", ErrKeyringStale, age.Round(time.Millisecond), k.maxStaleness)
	}
	return nil
}

// Signer returns the signer of an issuer's active key; an empty slug means
// the default issuer. It refuses when the keyring is stale.
func (k *Keyring) Signer(issuer string) (*Signer, error) {
	snap, ir, err := k.issuer(issuer)
	if err != nil {
		return nil, err
	}
	if err := k.fresh(snap); err != nil {
		return nil, fmt.Errorf("issuer %q: %w: %w", ir.issuer.Slug, ErrNoActiveKey, err)
	}
	if ir.signer == nil {
		return nil, fmt.Errorf("issuer %q: %w (%s)", ir.issuer.Slug, ErrNoActiveKey, strings.Join(ir.notReady, "; "))
	}
	return ir.signer, nil
}

// ActiveSigners returns the signer of every issuer that has one, all from
// the same snapshot; none when the keyring is stale.
func (k *Keyring) ActiveSigners() []*Signer {
	snap := k.current.Load()
	if snap == nil || k.fresh(snap) != nil {
		return nil
	}
	out := make([]*Signer, 0, len(snap.issuers))
	for _, ir := range snap.issuers {
		if ir.signer != nil {
			out = append(out, ir.signer)
		}
	}
	return out
}

// JWKS returns an issuer's published key set; an empty slug means the
// default issuer. A stale keyring still serves it: verifiers need it.
func (k *Keyring) JWKS(issuer string) (JWKS, error) {
	_, ir, err := k.issuer(issuer)
	if err != nil {
		return JWKS{}, err
	}
	return ir.jwks, nil
}

// Issuer returns an issuer's settings as last loaded; an empty slug means
// the default issuer.
func (k *Keyring) Issuer(slug string) (Issuer, error) {
	_, ir, err := k.issuer(slug)
	if err != nil {
		return Issuer{}, err
	}
	return ir.issuer, nil
}

func (k *Keyring) issuer(slug string) (*ringSnapshot, *issuerRing, error) {
	snap := k.current.Load()
	if snap == nil {
		return nil, nil, ErrNotLoaded
	}
	if slug == "" {
		slug = snap.defaultIssuer
	}
	ir, ok := snap.issuers[slug]
	if !ok {
		return nil, nil, fmt.Errorf("issuer %q: %w", slug, ErrUnknownIssuer)
	}
	return snap, ir, nil
}

// IssuerStatus is what the keyring knows of one issuer's keys, for probes
// and metrics.
type IssuerStatus struct {
	Slug         string        // the issuer
	Default      bool          // the issuer served at /.well-known/jwks.json
	ActiveKid    string        // empty when the issuer has no usable active key
	ActiveSince  time.Time     // when the active key started signing
	NextRotation time.Time     // when the active key is due to be replaced
	Published    int           // keys in the JWKS
	NextKid      string        // the published next key; empty when there is none
	CanSign      bool          // a usable active key and a fresh keyring
	Ready        bool          // CanSign, no refused key and a policy within the limits
	Reasons      []string      // why the issuer is not ready
	Unusable     []UnusableKey // refused key rows
}

// Status describes every issuer in the current snapshot, default first.
func (k *Keyring) Status() []IssuerStatus {
	snap := k.current.Load()
	if snap == nil {
		return nil
	}
	stale := k.fresh(snap)
	var out []IssuerStatus
	for _, ir := range snap.issuers {
		st := IssuerStatus{Slug: ir.issuer.Slug, Default: ir.issuer.Slug == snap.defaultIssuer, Published: len(ir.published),
			Reasons: slices.Clone(ir.notReady), Unusable: slices.Clone(ir.unusable)}
		for _, pk := range ir.published {
			if pk.State == StateNext {
				st.NextKid = pk.Kid
			}
		}
		if ir.signer != nil {
			st.ActiveKid, st.ActiveSince = ir.signer.Kid, ir.signer.ActiveSince
			st.NextRotation = ir.signer.ActiveSince.Add(ir.issuer.Policy.RotationPeriod)
		}
		if stale != nil {
			st.Reasons = append(st.Reasons, stale.Error())
		}
		st.CanSign = ir.signer != nil && stale == nil
		st.Ready = st.CanSign && len(st.Reasons) == 0
		out = append(out, st)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Default != out[j].Default {
			return out[i].Default
		}
		return out[i].Slug < out[j].Slug
	})
	return out
}

// Staleness is how long ago the keyring was last refreshed successfully;
// ok is false before the first refresh.
func (k *Keyring) Staleness() (age time.Duration, ok bool) {
	snap := k.current.Load()
	if snap == nil {
		return 0, false
	}
	return k.now().Sub(snap.loadedAt), true
}

// ReadinessError says why the keyring is not ready: not loaded, stale, or
// which issuers are not ready and why. Critical tells whether the instance
// as a whole cannot serve (the /readyz probe answers 503) or only some
// issuers are affected.
type ReadinessError struct {
	Loaded         bool                // the keyring was loaded at least once
	Stale          error               // non-nil when older than the maximum staleness
	DefaultIssuer  string              // the default issuer's slug; empty when there is none
	DefaultCanSign bool                // the default issuer has a usable active key (or, without one, there are issuers)
	Issuers        map[string][]string // each issuer that is not ready, and why
}

// Critical reports whether the instance cannot sign for its default issuer:
// not loaded, stale, or the default issuer has no usable active key.
func (e *ReadinessError) Critical() bool { return !e.Loaded || e.Stale != nil || !e.DefaultCanSign }

// Error names every reason, the default issuer first.
func (e *ReadinessError) Error() string {
	var parts []string
	switch {
	case !e.Loaded:
		return ErrNotLoaded.Error()
	case e.Stale != nil:
		parts = append(parts, e.Stale.Error())
	}
	if !e.DefaultCanSign && len(e.Issuers) == 0 {
		parts = append(parts, "no issuer configured")
	}
	slugs := make([]string, 0, len(e.Issuers))
	for slug := range e.Issuers {
		slugs = append(slugs, slug)
	}
	sort.Slice(slugs, func(i, j int) bool {
		if (slugs[i] == e.DefaultIssuer) != (slugs[j] == e.DefaultIssuer) {
			return slugs[i] == e.DefaultIssuer
		}
		return slugs[i] < slugs[j]
	})
	for _, slug := range slugs {
		parts = append(parts, fmt.Sprintf("issuer %q: %s", slug, strings.Join(e.Issuers[slug], "; ")))
	}
	return "not ready: " + strings.Join(parts, "; ")
}

// Unwrap gives the sentinels behind the reasons: ErrNotLoaded,
// ErrKeyringStale and ErrNoActiveKey (the default issuer cannot sign).
func (e *ReadinessError) Unwrap() []error {
	var errs []error
	if !e.Loaded {
		errs = append(errs, ErrNotLoaded)
	}
	if e.Stale != nil {
		errs = append(errs, ErrKeyringStale)
	}
	if !e.DefaultCanSign {
		errs = append(errs, ErrNoActiveKey)
	}
	return errs
}

// Ready returns nil when the keyring is loaded and fresh and every issuer
// is ready (a usable active key, no refused key, a policy within the
// service limits); otherwise a *ReadinessError saying which issuers are not
// ready and why.
func (k *Keyring) Ready() error {
	snap := k.current.Load()
	if snap == nil {
		return &ReadinessError{}
	}
	e := &ReadinessError{Loaded: true, Stale: k.fresh(snap), DefaultIssuer: snap.defaultIssuer, Issuers: map[string][]string{}}
	// Without a default issuer (tests, or before serve made one) the
	// instance can serve as long as it has issuers.
	e.DefaultCanSign = snap.defaultIssuer == "" && len(snap.issuers) > 0
	for slug, ir := range snap.issuers {
		if slug == snap.defaultIssuer {
			e.DefaultCanSign = ir.signer != nil
		}
		if len(ir.notReady) > 0 {
			e.Issuers[slug] = slices.Clone(ir.notReady)
		}
	}
	if e.Stale == nil && e.DefaultCanSign && len(e.Issuers) == 0 {
		return nil
	}
	return e
}

// RefreshProblems is what Refresh returns when it loaded the keys but some
// issuers have problems: refused key rows, no usable active key, a policy
// outside the service limits. The new snapshot is in use all the same; the
// other issuers are unaffected.
type RefreshProblems struct {
	Issuers map[string][]error // per issuer, what is wrong
}

// Error lists the problems, issuer by issuer.
func (p *RefreshProblems) Error() string {
	slugs := make([]string, 0, len(p.Issuers))
	for slug := range p.Issuers {
		slugs = append(slugs, slug)
	}
	sort.Strings(slugs)
	var parts []string
	for _, slug := range slugs {
		for _, err := range p.Issuers[slug] {
			parts = append(parts, fmt.Sprintf("issuer %q: %v", slug, err))
		}
	}
	return strings.Join(parts, "; ")
}

// Unwrap gives every problem, so errors.Is finds ErrOpenFailed and the like.
func (p *RefreshProblems) Unwrap() []error {
	var errs []error
	for _, list := range p.Issuers {
		errs = append(errs, list...)
	}
	return errs
}

// Refresh reloads every issuer's keys from the database and swaps in the
// new snapshot. What is published (and what is not: revoked, expired and
// refused keys) always follows the database. Each row is opened, and its
// public JWK derived from the private key, whenever the row's content
// changes; a row that does not open as it describes is refused, logged once
// with issuer and kid. An issuer whose row and key rows are unchanged, and
// for which no time boundary passed, keeps its ring (signer and serialized
// JWKS) from the current snapshot. A refused active key leaves its issuer
// without a signer (its launches answer 503 and /readyz names it) rather
// than going on with an older key; other issuers are unaffected. The
// returned error is a *RefreshProblems when the snapshot was swapped in
// with problems, and a plain error when the database could not be read
// (the previous snapshot stays, growing stale). Refresh waits for a
// refresh in progress only as long as ctx allows, and takes at most the
// refresh timeout.
func (k *Keyring) Refresh(ctx context.Context) error {
	return k.underRefreshLock(ctx, k.reloadAll)
}

// RefreshIssuers reloads only the named issuers (what a notification on
// NotifyChannel names) and swaps in a snapshot that keeps every other
// issuer's ring as it is: its cost does not grow with the number of other
// issuers. What it publishes for the named issuers follows the database as
// with Refresh; an issuer no longer stored leaves the keyring. It reloads
// every issuer instead when the keyring was never loaded, when no slug is
// given, or when the default issuer changes. It does not make the keyring
// fresher: only a full Refresh, which reads every issuer, resets the
// staleness (a notification of another issuer may have been lost). The
// returned error is as with Refresh, its problems those of the issuers it
// read.
func (k *Keyring) RefreshIssuers(ctx context.Context, slugs ...string) error {
	return k.underRefreshLock(ctx, func(ctx context.Context) error { return k.reloadIssuers(ctx, slugs) })
}

// underRefreshLock runs reload holding the refresh lock, waiting for a
// refresh in progress only as long as ctx allows, within the refresh
// timeout.
func (k *Keyring) underRefreshLock(ctx context.Context, reload func(context.Context) error) error {
	select {
	case k.refreshLock <- struct{}{}:
	case <-ctx.Done():
		return fmt.Errorf("refresh keyring: wait for the refresh in progress: %w", ctx.Err())
	}
	defer func() { <-k.refreshLock }()

	ctx, cancel := context.WithTimeout(ctx, k.refreshTimeout)
	defer cancel()
	return reload(ctx)
}

// reloadIssuers is RefreshIssuers under the refresh lock.
func (k *Keyring) reloadIssuers(ctx context.Context, slugs []string) error {
	prev := k.current.Load()
	if prev == nil || len(slugs) == 0 {
		return k.reloadAll(ctx)
	}
	issuers, stored, err := k.store.publishedKeysOf(ctx, slugs)
	if err != nil {
		return fmt.Errorf("refresh keyring: issuers %s: %w", strings.Join(slugs, ", "), err)
	}
	found := make(map[string]bool, len(issuers))
	for _, is := range issuers {
		found[is.Slug] = true
		// Which issuer is the default changes two issuers' rows, of which
		// a notification names one.
		if is.IsDefault != (is.Slug == prev.defaultIssuer) {
			return k.reloadAll(ctx)
		}
	}
	if prev.defaultIssuer != "" && slices.Contains(slugs, prev.defaultIssuer) && !found[prev.defaultIssuer] {
		return k.reloadAll(ctx)
	}
	now := k.now().UTC()
	next := &ringSnapshot{issuers: maps.Clone(prev.issuers), defaultIssuer: prev.defaultIssuer, loadedAt: prev.loadedAt}
	for _, slug := range slugs {
		if !found[slug] {
			delete(next.issuers, slug)
		}
	}
	byIssuer := map[string][]storedKey{}
	for _, sk := range stored {
		byIssuer[sk.Issuer] = append(byIssuer[sk.Issuer], sk)
	}
	out := newRefreshOutcome()
	for _, is := range issuers {
		next.issuers[is.Slug] = k.ringFor(prev.ring(is.Slug), is, byIssuer[is.Slug], now, out)
	}
	return k.swap(prev, next, now, out)
}

// reloadAll is Refresh under the refresh lock.
func (k *Keyring) reloadAll(ctx context.Context) error {
	issuers, stored, err := k.store.publishedKeys(ctx)
	if err != nil {
		return fmt.Errorf("refresh keyring: %w", err)
	}
	now := k.now().UTC()
	prev := k.current.Load()
	next := &ringSnapshot{issuers: make(map[string]*issuerRing, len(issuers)), loadedAt: now}
	byIssuer := map[string][]storedKey{}
	for _, sk := range stored {
		byIssuer[sk.Issuer] = append(byIssuer[sk.Issuer], sk)
	}
	out := newRefreshOutcome()
	for _, is := range issuers {
		if is.IsDefault {
			next.defaultIssuer = is.Slug
		}
		next.issuers[is.Slug] = k.ringFor(prev.ring(is.Slug), is, byIssuer[is.Slug], now, out)
	}
	return k.swap(prev, next, now, out)
}

// refreshOutcome collects, while a refresh builds its snapshot, the
// problems of the issuers it read and the rows refused for the first time.
type refreshOutcome struct {
	problems map[string][]error
	refused  []Event
}

func newRefreshOutcome() *refreshOutcome {
	return &refreshOutcome{problems: map[string][]error{}}
}

// ring returns the current ring of an issuer; nil when the snapshot is nil
// or does not hold the issuer.
func (s *ringSnapshot) ring(slug string) *issuerRing {
	if s == nil {
		return nil
	}
	return s.issuers[slug]
}

// ringFor returns the issuer's ring for the rows just read: prev when it
// is still exactly what building would give (reusableFor), a new one
// otherwise. It records the issuer's problems and refused rows in out.
func (k *Keyring) ringFor(prev *issuerRing, is Issuer, stored []storedKey, now time.Time, out *refreshOutcome) *issuerRing {
	rows := make([]rowStamp, len(stored))
	for i, sk := range stored {
		rows[i] = stampOf(sk)
	}
	ir := prev
	if prev == nil || !prev.reusableFor(is, rows, now) {
		var refused []Event
		ir, refused = k.buildIssuer(is, stored, rows, prev, now)
		out.refused = append(out.refused, refused...)
	}
	if len(ir.problems) > 0 {
		out.problems[is.Slug] = ir.problems
	}
	return ir
}

// swap makes next the current snapshot, reports the events the change
// shows (refused rows first, then rotations and revocations), and returns
// the problems of the issuers the refresh read.
func (k *Keyring) swap(prev, next *ringSnapshot, now time.Time, out *refreshOutcome) error {
	k.current.Store(next)
	if k.onEvent != nil {
		events := out.refused
		if prev != nil {
			events = append(events, observedEvents(prev, next, now)...)
		}
		for _, e := range events {
			k.onEvent(e)
		}
	}
	if len(out.problems) > 0 {
		return &RefreshProblems{Issuers: out.problems}
	}
	return nil
}

// observedEvents compares two snapshots, the second made at now: an active
// key that is now retired was rotated; an active key that vanished, or a
// retired key that left before its grace ended, was revoked. A key that is
// now refused did not leave by a lifecycle change and is reported as
// refused instead. An issuer whose ring was kept has no events.
func observedEvents(prev, next *ringSnapshot, now time.Time) []Event {
	var events []Event
	for slug, was := range prev.issuers {
		is, ok := next.issuers[slug]
		if !ok || is == was {
			continue
		}
		current := map[string]Key{}
		for _, k := range is.published {
			current[k.Kid] = k
		}
		refused := map[string]bool{}
		for _, u := range is.unusable {
			refused[u.Kid] = true
		}
		for _, k := range was.published {
			after, still := current[k.Kid]
			if refused[k.Kid] {
				continue
			}
			switch {
			case k.State == StateActive && still && after.State == StateRetired:
				events = append(events, Event{slug, EventRotation, k.Kid})
			case k.State == StateActive && !still:
				events = append(events, Event{slug, EventRevocation, k.Kid})
			case k.State == StateRetired && !still && now.Before(k.ExpiresAt):
				events = append(events, Event{slug, EventRevocation, k.Kid})
			}
		}
	}
	return events
}

// buildIssuer opens an issuer's key rows (those prev, the issuer's former
// ring, did not open in this exact form), serializes its JWKS from the
// public keys derived from the private ones, and decides whether the
// issuer is ready; rows[i] is the stamp of stored[i]. The ring holds the
// issuer's problems; buildIssuer returns an event for each row refused
// for the first time.
func (k *Keyring) buildIssuer(is Issuer, stored []storedKey, rows []rowStamp, prev *issuerRing, now time.Time) (*issuerRing, []Event) {
	ir := &issuerRing{issuer: is, rows: rows, opened: make(map[rowFingerprint]*openedRow, len(stored)), builtAt: now}
	var (
		published []Key
		errs      []error
		events    []Event
		active    string
	)
	for i, sk := range stored {
		// A retired key past its grace leaves the JWKS even before the rotator
		// has marked it expired; until then its grace is a time boundary of
		// the ring.
		if sk.State == StateRetired {
			if !now.Before(sk.ExpiresAt) {
				continue
			}
			if ir.validUntil.IsZero() || sk.ExpiresAt.Before(ir.validUntil) {
				ir.validUntil = sk.ExpiresAt
			}
		}
		if sk.State == StateActive {
			active = sk.Kid
		}
		fp := rows[i].fingerprint
		var row *openedRow
		if prev != nil {
			row = prev.opened[fp]
		}
		if row == nil {
			row = k.open(sk)
			if row.err != nil {
				k.log.Error("signing key refused: not published and not used", "issuer", sk.Issuer, "kid", sk.Kid, "state", string(sk.State), "err", row.err)
				events = append(events, Event{is.Slug, EventRefused, sk.Kid})
			}
		}
		ir.opened[fp] = row
		if row.err != nil {
			ir.unusable = append(ir.unusable, UnusableKey{Kid: sk.Kid, State: sk.State, Reason: row.err.Error()})
			errs = append(errs, row.err)
			if sk.State == StateActive {
				ir.notReady = append(ir.notReady, fmt.Sprintf("active key %s refused: %v", sk.Kid, row.err))
			} else {
				ir.notReady = append(ir.notReady, fmt.Sprintf("%s key %s refused: %v", sk.State, sk.Kid, row.err))
			}
			continue
		}
		pub := sk.Key
		pub.PublicJWK = row.publicJWK
		published = append(published, pub)
		if sk.State == StateActive {
			ir.signer = &Signer{Issuer: is, Kid: sk.Kid, Alg: sk.Alg, ActiveSince: sk.ActivatedAt, key: row.priv}
		}
	}
	if active == "" {
		ir.notReady = append(ir.notReady, "no active key")
		errs = append(errs, ErrNoActiveKey)
	}
	jwks, good, err := buildJWKS(published)
	if err != nil {
		errs = append(errs, err)
	}
	ir.jwks, ir.published = jwks, good
	// Never sign with a key verifiers cannot find.
	if ir.signer != nil && !slices.ContainsFunc(good, func(k Key) bool { return k.Kid == ir.signer.Kid }) {
		errs = append(errs, fmt.Errorf("active key %s is not in the JWKS; not signing with it", ir.signer.Kid))
		ir.notReady = append(ir.notReady, fmt.Sprintf("active key %s is not in the JWKS", ir.signer.Kid))
		ir.signer = nil
	}
	// An issuer moved to the koppeltaal profile keeps its old active key
	// until the next rotation; the domain's auth server refuses what that
	// key signs, so say so rather than look ready.
	if ir.signer != nil && !is.Profile.Allows(ir.signer.Alg) {
		ir.notReady = append(ir.notReady, fmt.Sprintf("active key %s signs %s, which profile %s does not allow: rotate now (portal keys rotate --issuer %s --ignore-publish-lead)",
			ir.signer.Kid, ir.signer.Alg, is.Profile, is.Slug))
	}
	k.checkPolicy(is, ir, &errs)
	ir.problems = errs
	return ir, events
}

// checkPolicy reports an issuer whose rotation policy breaks the service
// limits as not ready (it keeps signing: its keys are sound, only the
// timing of its rotations is at risk), logging each new problem once.
func (k *Keyring) checkPolicy(is Issuer, ir *issuerRing, errs *[]error) {
	if k.limits == (TimingLimits{}) {
		return
	}
	err := is.Policy.Validate(k.limits)
	if err == nil {
		delete(k.policyLogged, is.Slug)
		return
	}
	reason := "policy " + err.Error()
	ir.notReady = append(ir.notReady, reason)
	*errs = append(*errs, err)
	if k.policyLogged[is.Slug] != reason {
		k.policyLogged[is.Slug] = reason
		k.log.Error("issuer's rotation policy breaks the service timing limits; fix it with portal issuers update", "issuer", is.Slug, "err", err)
	}
}

// open unseals a key row and derives its public JWK. Only active and next
// keys keep their private part in memory; a retired key is opened to prove
// it is sound and then only its public JWK is kept.
func (k *Keyring) open(sk storedKey) *openedRow {
	priv, pub, err := openStored(k.sealer, sk)
	if err != nil {
		return &openedRow{err: err}
	}
	if sk.State != StateActive && sk.State != StateNext {
		priv = nil
	}
	return &openedRow{priv: priv, publicJWK: pub}
}
