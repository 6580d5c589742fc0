package keys

import (
	"context"
	"errors"
	"fmt"
	"sort"

	"github.com/ehealth-nl/portal/internal/adminevents"
)

// ResealResult reports what Reseal or UpgradeSeals did.
type ResealResult struct {
	Resealed []string // kids whose private part was rewritten
	// Failed names, per kid, a key that could not be rewritten because it
	// does not open as its row describes; keyrings refuse it too.
	Failed map[string]error
	// Remaining counts, per KEK id other than the current one, the keys of
	// any issuer still sealed under it: an old KEK may be dropped only when
	// it is absent here.
	Remaining map[string]int
	// RemainingV1 counts the keys of any issuer still sealed as SealV1.
	RemainingV1 int
}

// Err joins the failures, naming each kid; nil when every key was rewritten.
func (r ResealResult) Err() error {
	kids := make([]string, 0, len(r.Failed))
	for kid := range r.Failed {
		kids = append(kids, kid)
	}
	sort.Strings(kids)
	errs := make([]error, 0, len(kids))
	for _, kid := range kids {
		errs = append(errs, r.Failed[kid])
	}
	return errors.Join(errs...)
}

// Reseal rewrites the private keys of one issuer (or of all, when issuer is
// empty) under the current KEK as SealV2, so that an old KEK can be removed
// from the ring afterwards and no SealV1 row is left. Each issuer is one
// transaction under the issuer's advisory lock. A key is rewritten only
// after it opened and proved to be the key its row describes; one that does
// not is reported in Failed and left as it is.
func (r *Rotator) Reseal(ctx context.Context, issuer string) (ResealResult, error) {
	return r.reseal(ctx, issuer, false)
}

// UpgradeSeals rewrites every SealV1 row of every issuer as SealV2 under
// the KEK it is sealed under (so instances without the current KEK still
// open it). serve calls it at start-up: a migration cannot do it, as SQL
// has no KEK.
func (r *Rotator) UpgradeSeals(ctx context.Context) (ResealResult, error) {
	return r.reseal(ctx, "", true)
}

func (r *Rotator) reseal(ctx context.Context, issuer string, keepKEK bool) (ResealResult, error) {
	res := ResealResult{Failed: map[string]error{}}
	var slugs []string
	if issuer != "" {
		if _, err := r.store.Issuer(ctx, issuer); err != nil {
			return res, err
		}
		slugs = []string{issuer}
	} else {
		all, err := r.store.Issuers(ctx)
		if err != nil {
			return res, err
		}
		for _, is := range all {
			slugs = append(slugs, is.Slug)
		}
	}
	current := r.sealer.CurrentKEK()
	for _, slug := range slugs {
		_, err := r.store.inIssuerTx(ctx, slug, true, func(tx *issuerTx) (bool, error) {
			_, stored, err := tx.issuerAndKeys(ctx)
			if err != nil {
				return false, err
			}
			changed := false
			for _, sk := range stored {
				target := current
				if keepKEK {
					target = sk.KEKID
				}
				if sk.sealed == nil || (sk.KEKID == target && sk.sealVersion == SealV2) {
					continue
				}
				priv, _, err := openStored(r.sealer, sk)
				if err != nil {
					res.Failed[sk.Kid] = fmt.Errorf("reseal kid %s of issuer %q: %w", sk.Kid, slug, err)
					continue
				}
				der, err := marshalPrivate(priv)
				if err != nil {
					return false, err
				}
				b := sk.binding()
				kekID, sealed, err := r.sealer.sealUnder(target, b, der)
				clear(der)
				if err != nil {
					return false, err
				}
				if err := tx.updateSealed(ctx, sk.Kid, kekID, sealed, SealV2); err != nil {
					return false, err
				}
				if err := adminevents.Record(ctx, tx.tx, r.now(), adminevents.Change{Action: adminevents.KeyReseal, Target: "key:" + sk.Kid,
					Before: map[string]any{"issuer": slug, "kek": sk.KEKID, "seal_version": int(sk.sealVersion)},
					After:  map[string]any{"issuer": slug, "kek": kekID, "seal_version": int(SealV2)}}); err != nil {
					return false, err
				}
				res.Resealed = append(res.Resealed, sk.Kid)
				changed = true
			}
			return changed, nil
		})
		if err != nil {
			return res, fmt.Errorf("reseal keys of issuer %q: %w", slug, err)
		}
	}
	usage, err := r.store.KEKUsage(ctx)
	if err != nil {
		return res, err
	}
	delete(usage, current)
	res.Remaining = usage
	if res.RemainingV1, err = r.store.sealV1Count(ctx); err != nil {
		return res, err
	}
	return res, nil
}
