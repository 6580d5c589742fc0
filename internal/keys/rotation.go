package keys

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/ehealth-nl/portal/internal/adminevents"
)

// Rotator moves an issuer's keys through their lifecycle (docs/ARCHITECTURE.md,
// "Key lifecycle"). Every instance runs one on a timer and operators call
// it through commands; all of them may act on one database at once. Each change takes a per-issuer
// advisory lock, re-reads the keys inside the transaction and decides again,
// so two rotators never rotate twice; new keys are generated before the
// transaction opens, so the lock is never held during RSA generation.
type Rotator struct {
	store      *Store
	sealer     *Sealer
	now        func() time.Time
	log        *slog.Logger
	runTimeout time.Duration
}

// DefaultRotationRunTimeout bounds one scheduled rotation check of every
// issuer, RSA key generation included.
const DefaultRotationRunTimeout = 2 * time.Minute

// NewRotator returns a Rotator that stores keys through store, seals them
// with sealer and reads the time from clock.
func NewRotator(store *Store, sealer *Sealer, clock func() time.Time, logger *slog.Logger) *Rotator {
	return &Rotator{store: store, sealer: sealer, now: clock, log: logger, runTimeout: DefaultRotationRunTimeout}
}

// SetRunTimeout bounds each scheduled run of Run (all issuers together), so
// that a database that stops answering cannot hold a run forever.
func (r *Rotator) SetRunTimeout(d time.Duration) {
	if d > 0 {
		r.runTimeout = d
	}
}

// Change reports what one rotator call did to an issuer's keys.
type Change struct {
	Issuer    string   // the issuer whose keys changed
	Expired   []string // retired keys that left the JWKS, or next keys replaced
	Revoked   string   // a key withdrawn by an operator
	Retired   string   // the key that stopped signing
	Activated string   // a next key (or a new key) that now signs
	Created   []string // new keys, in the order active, next
}

// Changed reports whether any key changed state.
func (c Change) Changed() bool {
	return len(c.Expired) > 0 || c.Revoked != "" || c.Retired != "" || c.Activated != "" || len(c.Created) > 0
}

// auditState is what the admin trail records of a change.
func (c Change) auditState() map[string]any {
	state := map[string]any{"issuer": c.Issuer}
	for name, v := range map[string][]string{"expired": c.Expired, "created": c.Created} {
		if len(v) > 0 {
			state[name] = v
		}
	}
	for name, v := range map[string]string{"revoked": c.Revoked, "retired": c.Retired, "activated": c.Activated} {
		if v != "" {
			state[name] = v
		}
	}
	return state
}

// keyStates is what the admin trail records of an issuer's published keys
// before a change: each kid with its state.
func keyStates(ks []Key) map[string]string {
	states := make(map[string]string, len(ks))
	for _, k := range ks {
		states[k.Kid] = string(k.State)
	}
	return states
}

// Rotated reports whether the active key was replaced on schedule or on request.
func (c Change) Rotated() bool { return c.Retired != "" && c.Activated != "" }

// String summarises the change for logs and command output.
func (c Change) String() string {
	var parts []string
	add := func(label string, v ...string) {
		if len(v) > 0 && v[0] != "" {
			parts = append(parts, label+" "+strings.Join(v, ","))
		}
	}
	add("revoked", c.Revoked)
	add("retired", c.Retired)
	add("activated", c.Activated)
	add("created", c.Created...)
	add("expired", c.Expired...)
	if len(parts) == 0 {
		return "no change"
	}
	return strings.Join(parts, "; ")
}

// ErrNextKeyTooYoung means a forced rotation was refused because the next
// key has not been published for the issuer's publish lead yet: verifiers
// with a cached JWKS might not know it.
var ErrNextKeyTooYoung = errors.New("next key not published long enough")

// ErrNoNextKey means a forced rotation found no next key to activate.
var ErrNoNextKey = errors.New("issuer has no next key")

// ErrKeyNotRevocable means the key is already expired or revoked.
var ErrKeyNotRevocable = errors.New("key is already expired or revoked")

// ErrRotationTooSoon means a forced rotation was refused because the key
// retired by the previous rotation is still inside its retire grace: forced
// rotations would otherwise grow the JWKS without bound. Revocation is the
// emergency path and is never refused for this.
var ErrRotationTooSoon = errors.New("previous rotation too recent")

// rotationMode says how insistent a rotation is.
type rotationMode int

const (
	// scheduled rotates only when the rotation period is over.
	scheduled rotationMode = iota
	// forced rotates now if the next key has been published long enough.
	forced
	// forcedIgnoringLead rotates now even if verifiers may not know the next key.
	forcedIgnoringLead
)

// plan is what a rotator will do to an issuer's keys in one transaction.
type plan struct {
	expire    []string // retired keys past expiry, and next keys that no longer fit the issuer
	revoke    string
	retire    string
	activate  string // an existing next key
	newActive bool   // a generated key becomes active at once (fresh issuer)
	newNext   bool   // a generated key becomes the next key
}

func (p plan) keysNeeded() int {
	n := 0
	if p.newActive {
		n++
	}
	if p.newNext {
		n++
	}
	return n
}

func (p plan) empty() bool {
	return len(p.expire) == 0 && p.revoke == "" && p.retire == "" && p.activate == "" && !p.newActive && !p.newNext
}

// decision computes a plan from an issuer and its unexpired keys at a time.
type decision func(is Issuer, published []Key, now time.Time) (plan, error)

// planRotation decides what a rotation does at time now. It is pure so the
// schedule can be tested without a database.
func planRotation(is Issuer, published []Key, now time.Time, mode rotationMode) (plan, error) {
	var p plan
	var active, next *Key
	for i := range published {
		k := &published[i]
		switch k.State {
		case StateActive:
			active = k
		case StateNext:
			next = k
		case StateRetired:
			if !now.Before(k.ExpiresAt) {
				p.expire = append(p.expire, k.Kid)
			}
		}
	}
	// A next key made before the issuer changed algorithm or size would
	// bring the old algorithm back at the next rotation: replace it.
	if next != nil && !fitsIssuer(is, *next) {
		p.expire = append(p.expire, next.Kid)
		next = nil
	}
	if active != nil && mode != scheduled {
		if err := checkRotationNotTooSoon(is, published, now); err != nil {
			return plan{}, err
		}
	}
	if active == nil {
		// A fresh issuer: nobody can have cached anything, so the first key
		// signs at once (docs/ARCHITECTURE.md, "Key lifecycle").
		if next != nil {
			p.activate = next.Kid
		} else {
			p.newActive = true
		}
		p.newNext = true
		return p, nil
	}
	due := mode != scheduled || !now.Before(active.ActivatedAt.Add(is.Policy.RotationPeriod))
	switch {
	case !due:
	case next == nil && mode == forced:
		return plan{}, fmt.Errorf("rotate issuer %q: %w (one is created within a rotation check; it may sign after the publish lead %s)", is.Slug, ErrNoNextKey, is.Policy.PublishLead)
	case next == nil && mode == forcedIgnoringLead:
		p.retire, p.newActive = active.Kid, true
	case next == nil:
		// Rotation waits until a next key has been published for the lead.
	case now.Before(next.CreatedAt.Add(is.Policy.PublishLead)) && mode != forcedIgnoringLead:
		if mode == forced {
			signsAt := next.CreatedAt.Add(is.Policy.PublishLead)
			return plan{}, fmt.Errorf("rotate issuer %q: %w: next key %s was published at %s and may sign from %s (publish lead %s); wait, or ignore the lead knowing that verifiers with a cached JWKS will reject tokens until they refetch it",
				is.Slug, ErrNextKeyTooYoung, next.Kid, next.CreatedAt.Format(time.RFC3339), signsAt.Format(time.RFC3339), is.Policy.PublishLead)
		}
	default:
		p.retire, p.activate = active.Kid, next.Kid
		next = nil
	}
	if next == nil {
		p.newNext = true
	}
	return p, nil
}

// fitsIssuer reports whether a key has the issuer's current algorithm and size.
func fitsIssuer(is Issuer, k Key) bool {
	return k.Alg == is.Alg && (!is.Alg.IsRSA() || k.Bits == is.RSABits)
}

// checkRotationNotTooSoon refuses a forced rotation while the key retired by
// the previous rotation is still published: each forced rotation adds a
// retired key to the JWKS for the retire grace, so without this rule ten
// forced rotations publish thirteen keys.
func checkRotationNotTooSoon(is Issuer, published []Key, now time.Time) error {
	var last *Key
	for i := range published {
		k := &published[i]
		if k.State == StateRetired && now.Before(k.ExpiresAt) && (last == nil || k.RetiredAt.After(last.RetiredAt)) {
			last = k
		}
	}
	if last == nil {
		return nil
	}
	return fmt.Errorf("rotate issuer %q: %w: key %s, retired at %s, stays published until %s (retire grace %s); a forced rotation is possible from then. To withdraw a compromised key now, use portal keys revoke",
		is.Slug, ErrRotationTooSoon, last.Kid, last.RetiredAt.Format(time.RFC3339), last.ExpiresAt.Format(time.RFC3339), is.Policy.RetireGrace)
}

// planRevocation decides what revoking kid does: the key leaves at once; if
// it was active, the next key (or a new one) takes over in the same
// transaction so the issuer is never left without an active key. A next key
// that no longer fits the issuer's algorithm or size is replaced, as in
// planRotation, rather than made active.
func planRevocation(is Issuer, published []Key, now time.Time, kid string) (plan, error) {
	p := plan{revoke: kid}
	var target, active, next *Key
	for i := range published {
		k := &published[i]
		switch {
		case k.Kid == kid:
			target = k
		case k.State == StateRetired && !now.Before(k.ExpiresAt):
			p.expire = append(p.expire, k.Kid)
		case k.State == StateActive:
			active = k
		case k.State == StateNext:
			next = k
		}
	}
	if target == nil {
		return plan{}, fmt.Errorf("revoke key %s of issuer %q: %w", kid, is.Slug, ErrKeyNotRevocable)
	}
	if next != nil && !fitsIssuer(is, *next) {
		p.expire = append(p.expire, next.Kid)
		next = nil
	}
	if active == nil {
		if next != nil {
			p.activate, next = next.Kid, nil
		} else {
			p.newActive = true
		}
	}
	if next == nil {
		p.newNext = true
	}
	return p, nil
}

// RotateIfDue does what is due for one issuer: expire retired keys past their
// grace, rotate when the period is over and the next key has been published
// long enough, create missing keys. If another instance holds the issuer's
// lock it does nothing: that instance does the work.
func (r *Rotator) RotateIfDue(ctx context.Context, issuer string) (Change, error) {
	return r.change(ctx, issuer, false, "", func(is Issuer, ks []Key, now time.Time) (plan, error) {
		return planRotation(is, ks, now, scheduled)
	})
}

// EnsureKeys is RotateIfDue that waits for another instance's lock instead
// of skipping, so that on return the issuer has an active and a next key.
// The service calls it at start-up.
func (r *Rotator) EnsureKeys(ctx context.Context, issuer string) (Change, error) {
	return r.change(ctx, issuer, true, "", func(is Issuer, ks []Key, now time.Time) (plan, error) {
		return planRotation(is, ks, now, scheduled)
	})
}

// Rotate activates the next key now, retiring the active one, provided the
// next key has been published for the publish lead; with ignoreLead it
// rotates even if not, creating a key on the spot if there is no next key.
func (r *Rotator) Rotate(ctx context.Context, issuer string, ignoreLead bool) (Change, error) {
	mode := forced
	if ignoreLead {
		mode = forcedIgnoringLead
	}
	return r.change(ctx, issuer, true, adminevents.KeyRotate, func(is Issuer, ks []Key, now time.Time) (plan, error) {
		return planRotation(is, ks, now, mode)
	})
}

// Revoke withdraws a key at once: it leaves the JWKS, its private part is
// erased, and if it was the active key the next key takes over (or a new
// key, if there was none) in the same transaction.
func (r *Rotator) Revoke(ctx context.Context, issuer, kid string) (Change, error) {
	k, err := r.store.Key(ctx, issuer, kid)
	if err != nil {
		return Change{}, err
	}
	if k.State == StateExpired || k.State == StateRevoked {
		return Change{}, fmt.Errorf("revoke key %s of issuer %q: %w (it is %s)", kid, issuer, ErrKeyNotRevocable, k.State)
	}
	return r.change(ctx, issuer, true, adminevents.KeyRevoke, func(is Issuer, ks []Key, now time.Time) (plan, error) {
		return planRevocation(is, ks, now, kid)
	})
}

// RotateAllIfDue runs RotateIfDue for every issuer and returns the changes
// made; an error for one issuer does not stop the others.
func (r *Rotator) RotateAllIfDue(ctx context.Context) ([]Change, error) {
	issuers, err := r.store.Issuers(ctx)
	if err != nil {
		return nil, err
	}
	var (
		changes []Change
		errs    []error
	)
	for _, is := range issuers {
		c, err := r.RotateIfDue(ctx, is.Slug)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if c.Changed() {
			changes = append(changes, c)
		}
	}
	return changes, errors.Join(errs...)
}

// Run calls RotateAllIfDue every interval until ctx ends, logging what it did.
// Each run is bounded by the run timeout. The optional observe function sees
// every change (for metrics).
func (r *Rotator) Run(ctx context.Context, interval time.Duration, observe func(Change)) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		runCtx, cancel := context.WithTimeout(ctx, r.runTimeout)
		changes, err := r.RotateAllIfDue(runCtx)
		cancel()
		if err != nil && ctx.Err() == nil {
			r.log.Error("scheduled key rotation failed", "err", err)
		}
		for _, c := range changes {
			if observe != nil {
				observe(c)
			}
		}
	}
}

// maxPlanAttempts bounds how often change re-generates keys when the state
// moved between the read outside the transaction and the one inside it.
const maxPlanAttempts = 4

// change runs decide against the issuer's keys inside a transaction under
// the issuer's advisory lock, and applies the plan. An operator's change
// (action not empty: a forced rotation or a revocation) is recorded as an
// admin event of the context's actor in the same transaction; scheduled
// rotations are the service's own and are not.
func (r *Rotator) change(ctx context.Context, slug string, wait bool, action string, decide decision) (Change, error) {
	var fresh []*generatedKey
	for attempt := 0; attempt < maxPlanAttempts; attempt++ {
		// Outside the transaction: guess how many keys the plan needs and
		// generate them, so no lock is held while RSA keys are made.
		is, ks, err := r.store.issuerKeys(ctx, slug)
		if err != nil {
			return Change{}, err
		}
		p, err := decide(is, ks, r.now())
		if err != nil {
			return Change{}, err
		}
		for len(fresh) < p.keysNeeded() {
			g, err := generateKey(is.Alg, is.RSABits)
			if err != nil {
				return Change{}, fmt.Errorf("rotate issuer %q: %w", slug, err)
			}
			fresh = append(fresh, g)
		}
		c, retry, err := r.apply(ctx, slug, wait, action, decide, fresh)
		if err != nil || !retry {
			if err == nil && c.Changed() {
				r.log.Info("signing keys changed", "issuer", slug, "change", c.String())
			}
			return c, err
		}
		fresh = nil // the issuer's algorithm changed under us
	}
	return Change{}, fmt.Errorf("rotate issuer %q: key state kept changing, gave up after %d attempts", slug, maxPlanAttempts)
}

// apply is one transaction of change. retry is true when the plan needs keys
// that were not generated beforehand.
func (r *Rotator) apply(ctx context.Context, slug string, wait bool, action string, decide decision, fresh []*generatedKey) (c Change, retry bool, err error) {
	c.Issuer = slug
	_, err = r.store.inIssuerTx(ctx, slug, wait, func(tx *issuerTx) (bool, error) {
		is, stored, err := tx.issuerAndKeys(ctx)
		if err != nil {
			return false, err
		}
		now := r.now().UTC()
		p, err := decide(is, publicKeys(stored), now)
		if err != nil || p.empty() {
			return false, err
		}
		if p.keysNeeded() > len(fresh) {
			retry = true
			return false, nil
		}
		for _, g := range fresh[:p.keysNeeded()] {
			if g.alg != is.Alg || (is.Alg.IsRSA() && g.bits != is.RSABits) {
				retry = true
				return false, nil
			}
		}
		for _, kid := range p.expire {
			if err := tx.expire(ctx, kid, now); err != nil {
				return false, err
			}
			c.Expired = append(c.Expired, kid)
		}
		if p.revoke != "" {
			if err := tx.revoke(ctx, p.revoke, now); err != nil {
				return false, err
			}
			c.Revoked = p.revoke
		}
		if p.retire != "" {
			if err := tx.retire(ctx, p.retire, now, now.Add(is.Policy.RetireGrace)); err != nil {
				return false, err
			}
			c.Retired = p.retire
		}
		if p.activate != "" {
			if err := tx.activate(ctx, p.activate, now); err != nil {
				return false, err
			}
			c.Activated = p.activate
		}
		i := 0
		insert := func(state State) error {
			g := fresh[i]
			i++
			row, err := r.sealNew(slug, g, state, now)
			if err != nil {
				return err
			}
			if err := tx.insert(ctx, row); err != nil {
				return err
			}
			if state == StateActive {
				c.Activated = g.kid
			}
			c.Created = append(c.Created, g.kid)
			return nil
		}
		if p.newActive {
			if err := insert(StateActive); err != nil {
				return false, err
			}
		}
		if p.newNext {
			if err := insert(StateNext); err != nil {
				return false, err
			}
		}
		if action != "" {
			target := "issuer:" + slug
			if action == adminevents.KeyRevoke {
				target = "key:" + c.Revoked
			}
			if err := adminevents.Record(ctx, tx.tx, now, adminevents.Change{Action: action, Target: target,
				Before: keyStates(publicKeys(stored)), After: c.auditState()}); err != nil {
				return false, err
			}
		}
		return true, nil
	})
	if err != nil || retry {
		return Change{Issuer: slug}, retry, err
	}
	return c, false, nil
}

// sealNew seals a generated key for its row (SealV2).
func (r *Rotator) sealNew(slug string, g *generatedKey, state State, now time.Time) (newRow, error) {
	der, err := marshalPrivate(g.private)
	if err != nil {
		return newRow{}, err
	}
	defer clear(der)
	k := Key{Kid: g.kid, Issuer: slug, Alg: g.alg, Bits: g.bits, State: state, PublicJWK: g.publicJWK, CreatedAt: now}
	if state == StateActive {
		k.ActivatedAt = now
	}
	kekID, sealed, err := r.sealer.Seal(Binding{Issuer: slug, Kid: g.kid, Alg: g.alg, Bits: g.bits, PublicJWK: g.publicJWK}, der)
	if err != nil {
		return newRow{}, err
	}
	k.KEKID = kekID
	return newRow{Key: k, kekID: kekID, sealed: sealed}, nil
}
