package keys

import (
	"context"
	"crypto"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lestrrat-go/jwx/v2/jws"
)

// Keyring is an instance's in-memory view of every issuer's keys: the active
// signer and the serialized JWKS. Refresh rebuilds it from the database and
// swaps it in atomically; Signer and JWKS read it without touching the
// database, so signing and JWKS requests keep working while the database is
// away.
type Keyring struct {
	store  *Store
	sealer *Sealer
	now    func() time.Time
	log    *slog.Logger

	refreshMu sync.Mutex  // one Refresh at a time
	onEvent   func(Event) // guarded by refreshMu
	// opened maps a kid to its private key once unsealed; retired keys map
	// to nil (proven to open, not kept). Guarded by refreshMu.
	opened  map[string]crypto.Signer
	current atomic.Pointer[ringSnapshot]
}

// ringSnapshot is one immutable state of the keyring.
type ringSnapshot struct {
	issuers       map[string]*issuerRing
	defaultIssuer string
	loadedAt      time.Time
}

// issuerRing is one issuer's part of a snapshot.
type issuerRing struct {
	issuer    Issuer
	signer    *Signer // nil when the issuer has no active key
	jwks      JWKS
	published []Key
}

// JWKS is an issuer's JWK Set, serialized once per change, with its strong
// entity tag.
type JWKS struct {
	Body []byte // the JSON served, identical on every instance
	ETag string // a strong entity tag of Body
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
// typ: JWT (DESIGN 1.1: kid is required, no jku or x5u).
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
)

// Event is a change of an issuer's keys that this keyring observed on a
// refresh, whichever instance or command made it.
type Event struct {
	Issuer string    // the issuer whose keys changed
	Kind   EventKind // rotation or revocation
	Kid    string    // the key retired or revoked
}

// OnEvent registers fn to see every key change the keyring observes (for
// metrics). Call it before the first Refresh.
func (k *Keyring) OnEvent(fn func(Event)) {
	k.refreshMu.Lock()
	defer k.refreshMu.Unlock()
	k.onEvent = fn
}

// ErrUnknownIssuer means the keyring holds no issuer with that slug.
var ErrUnknownIssuer = errors.New("unknown issuer")

// ErrNoActiveKey means the issuer exists but has no key that can sign.
var ErrNoActiveKey = errors.New("issuer has no active signing key")

// ErrNotLoaded means the keyring has not been loaded from the database yet.
var ErrNotLoaded = errors.New("keyring not loaded yet")

// NewKeyring returns an empty keyring; call Refresh before use.
func NewKeyring(store *Store, sealer *Sealer, clock func() time.Time, logger *slog.Logger) *Keyring {
	return &Keyring{store: store, sealer: sealer, now: clock, log: logger, opened: map[string]crypto.Signer{}}
}

// Signer returns the signer of an issuer's active key; an empty slug means
// the default issuer.
func (k *Keyring) Signer(issuer string) (*Signer, error) {
	ir, err := k.issuer(issuer)
	if err != nil {
		return nil, err
	}
	if ir.signer == nil {
		return nil, fmt.Errorf("issuer %q: %w", ir.issuer.Slug, ErrNoActiveKey)
	}
	return ir.signer, nil
}

// ActiveSigners returns the signer of every issuer that has one, all from
// the same snapshot.
func (k *Keyring) ActiveSigners() []*Signer {
	snap := k.current.Load()
	if snap == nil {
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
// default issuer.
func (k *Keyring) JWKS(issuer string) (JWKS, error) {
	ir, err := k.issuer(issuer)
	if err != nil {
		return JWKS{}, err
	}
	return ir.jwks, nil
}

// Issuer returns an issuer's settings as last loaded; an empty slug means
// the default issuer.
func (k *Keyring) Issuer(slug string) (Issuer, error) {
	ir, err := k.issuer(slug)
	if err != nil {
		return Issuer{}, err
	}
	return ir.issuer, nil
}

func (k *Keyring) issuer(slug string) (*issuerRing, error) {
	snap := k.current.Load()
	if snap == nil {
		return nil, ErrNotLoaded
	}
	if slug == "" {
		slug = snap.defaultIssuer
	}
	ir, ok := snap.issuers[slug]
	if !ok {
		return nil, fmt.Errorf("issuer %q: %w", slug, ErrUnknownIssuer)
	}
	return ir, nil
}

// IssuerStatus is what the keyring knows of one issuer's keys, for probes
// and metrics.
type IssuerStatus struct {
	Slug         string    // the issuer
	ActiveKid    string    // empty when the issuer has no active key
	ActiveSince  time.Time // when the active key started signing
	NextRotation time.Time // when the active key is due to be replaced
	Published    int       // keys in the JWKS
}

// Status describes every issuer in the current snapshot, default first.
func (k *Keyring) Status() []IssuerStatus {
	snap := k.current.Load()
	if snap == nil {
		return nil
	}
	var out []IssuerStatus
	for _, ir := range snap.issuers {
		st := IssuerStatus{Slug: ir.issuer.Slug, Published: len(ir.published)}
		if ir.signer != nil {
			st.ActiveKid, st.ActiveSince = ir.signer.Kid, ir.signer.ActiveSince
			st.NextRotation = ir.signer.ActiveSince.Add(ir.issuer.Policy.RotationPeriod)
		}
		out = append(out, st)
	}
	sort.Slice(out, func(i, j int) bool {
		if (out[i].Slug == snap.defaultIssuer) != (out[j].Slug == snap.defaultIssuer) {
			return out[i].Slug == snap.defaultIssuer
		}
		return out[i].Slug < out[j].Slug
	})
	return out
}

// Ready returns nil when the keyring is loaded and every issuer has an
// active key; otherwise an error that says which issuers cannot sign.
func (k *Keyring) Ready() error {
	snap := k.current.Load()
	if snap == nil {
		return ErrNotLoaded
	}
	var missing []string
	for slug, ir := range snap.issuers {
		if ir.signer == nil {
			missing = append(missing, slug)
		}
	}
	if len(missing) > 0 {
		sort.Strings(missing)
		return fmt.Errorf("%w: %s", ErrNoActiveKey, strings.Join(missing, ", "))
	}
	if len(snap.issuers) == 0 {
		return errors.New("no issuer configured")
	}
	return nil
}

// Refresh reloads every issuer's keys from the database and swaps in the new
// snapshot. The JWKS is built from the stored public keys alone, so what is
// published (and what is not: revoked and expired keys) always follows the
// database. A private key that does not open under the configured KEKs is
// an error naming its kid; if it is the issuer's active key, the issuer has
// no signer on this instance (its launches answer 503 and /readyz says so)
// rather than going on with an older key. When the database cannot be read
// at all, the previous snapshot stays.
func (k *Keyring) Refresh(ctx context.Context) error {
	k.refreshMu.Lock()
	defer k.refreshMu.Unlock()

	issuers, stored, err := k.store.publishedKeys(ctx)
	if err != nil {
		return fmt.Errorf("refresh keyring: %w", err)
	}
	now := k.now().UTC()
	snap := &ringSnapshot{issuers: map[string]*issuerRing{}, loadedAt: now}
	byIssuer := map[string][]storedKey{}
	for _, sk := range stored {
		byIssuer[sk.Issuer] = append(byIssuer[sk.Issuer], sk)
	}
	keep := map[string]bool{}
	var errs []error
	for _, is := range issuers {
		if is.IsDefault {
			snap.defaultIssuer = is.Slug
		}
		ir, issuerErrs := k.buildIssuer(is, byIssuer[is.Slug], now, keep)
		errs = append(errs, issuerErrs...)
		snap.issuers[is.Slug] = ir
	}
	// Forget private keys that left the JWKS.
	for kid := range k.opened {
		if !keep[kid] {
			delete(k.opened, kid)
		}
	}
	prev := k.current.Load()
	k.current.Store(snap)
	if k.onEvent != nil && prev != nil {
		for _, e := range observedEvents(prev, snap) {
			k.onEvent(e)
		}
	}
	return errors.Join(errs...)
}

// observedEvents compares two snapshots: an active key that is now retired
// was rotated; an active key that vanished, or a retired key that left
// before its grace ended, was revoked.
func observedEvents(prev, next *ringSnapshot) []Event {
	var events []Event
	for slug, was := range prev.issuers {
		is, ok := next.issuers[slug]
		if !ok {
			continue
		}
		current := map[string]Key{}
		for _, k := range is.published {
			current[k.Kid] = k
		}
		for _, k := range was.published {
			after, still := current[k.Kid]
			switch {
			case k.State == StateActive && still && after.State == StateRetired:
				events = append(events, Event{slug, EventRotation, k.Kid})
			case k.State == StateActive && !still:
				events = append(events, Event{slug, EventRevocation, k.Kid})
			case k.State == StateRetired && !still && next.loadedAt.Before(k.ExpiresAt):
				events = append(events, Event{slug, EventRevocation, k.Kid})
			}
		}
	}
	return events
}

// buildIssuer serializes an issuer's JWKS from the public keys and opens
// the private keys: the active one to sign with, the others to prove early
// that the KEK ring opens them.
func (k *Keyring) buildIssuer(is Issuer, stored []storedKey, now time.Time, keep map[string]bool) (*issuerRing, []error) {
	ir := &issuerRing{issuer: is}
	var (
		published []Key
		errs      []error
	)
	for _, sk := range stored {
		// A retired key past its grace leaves the JWKS even before the rotator
		// has marked it expired.
		if sk.State == StateRetired && !now.Before(sk.ExpiresAt) {
			continue
		}
		published = append(published, sk.Key)
		keep[sk.Kid] = true
		priv, err := k.open(sk)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if sk.State == StateActive {
			ir.signer = &Signer{Issuer: is, Kid: sk.Kid, Alg: sk.Alg, ActiveSince: sk.ActivatedAt, key: priv}
		}
	}
	jwks, good, err := buildJWKS(published)
	if err != nil {
		errs = append(errs, fmt.Errorf("issuer %q: %w", is.Slug, err))
	}
	ir.jwks, ir.published = jwks, good
	// Never sign with a key verifiers cannot find.
	if ir.signer != nil && !slices.ContainsFunc(good, func(k Key) bool { return k.Kid == ir.signer.Kid }) {
		errs = append(errs, fmt.Errorf("issuer %q: active key %s is not in the JWKS; not signing with it", is.Slug, ir.signer.Kid))
		ir.signer = nil
	}
	return ir, errs
}

// open returns the private key of a stored key, unsealing it the first time
// the keyring meets it. Only active and next keys keep their private part
// in memory; a retired key is opened once, to prove the KEK ring still opens
// it, and then only remembered as opened.
func (k *Keyring) open(sk storedKey) (crypto.Signer, error) {
	if priv, ok := k.opened[sk.Kid]; ok {
		if sk.State != StateActive && sk.State != StateNext {
			k.opened[sk.Kid] = nil // no longer signs: drop the private part
			return nil, nil
		}
		if priv != nil {
			return priv, nil
		}
	}
	der, err := k.sealer.Open(sk.KEKID, sk.Issuer, sk.Kid, sk.Alg, sk.sealed)
	if err != nil {
		return nil, err
	}
	priv, err := parsePrivate(der, sk.Alg)
	if err != nil {
		return nil, fmt.Errorf("open kid %s of issuer %q: %w", sk.Kid, sk.Issuer, err)
	}
	if sk.State == StateRetired {
		k.opened[sk.Kid] = nil
		return nil, nil
	}
	k.opened[sk.Kid] = priv
	return priv, nil
}
