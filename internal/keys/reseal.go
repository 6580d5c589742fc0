package keys

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// ResealResult reports what Reseal did.
type ResealResult struct {
	Resealed []string // kids moved to the current KEK
	// Remaining counts, per KEK id other than the current one, the keys of
	// any issuer still sealed under it: an old KEK may be dropped only when
	// it is absent here.
	Remaining map[string]int
}

const sqlSelectSealedForReseal = `SELECT kid, issuer, alg, kek_id, sealed_private FROM signing_keys
WHERE sealed_private IS NOT NULL AND kek_id <> $1 AND ($2 = '' OR issuer = $2) ORDER BY issuer, created_at`

const sqlLockSealed = `SELECT kek_id, sealed_private FROM signing_keys WHERE kid = $1 AND sealed_private IS NOT NULL FOR UPDATE`

const sqlUpdateSealed = `UPDATE signing_keys SET kek_id = $2, sealed_private = $3 WHERE kid = $1`

// Reseal moves the private keys of one issuer (or of all, when issuer is
// empty) to the current KEK, one row per transaction, so that an old KEK can
// be removed from the ring afterwards. A key that does not open under the
// ring stops the run with an error naming its kid.
func (r *Rotator) Reseal(ctx context.Context, issuer string) (ResealResult, error) {
	var res ResealResult
	if issuer != "" {
		if _, err := r.store.Issuer(ctx, issuer); err != nil {
			return res, err
		}
	}
	current := r.sealer.CurrentKEK()
	rows, err := r.store.pool.Query(ctx, sqlSelectSealedForReseal, current, issuer)
	if err != nil {
		return res, fmt.Errorf("reseal: list keys: %w", err)
	}
	type row struct{ kid, issuer, alg string }
	todo, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (row, error) {
		var (
			x      row
			kek    string
			sealed []byte
		)
		err := r.Scan(&x.kid, &x.issuer, &x.alg, &kek, &sealed)
		return x, err
	})
	if err != nil {
		return res, fmt.Errorf("reseal: list keys: %w", err)
	}
	for _, k := range todo {
		err := pgx.BeginFunc(ctx, r.store.pool, func(tx pgx.Tx) error {
			var (
				kek    string
				sealed []byte
			)
			if err := tx.QueryRow(ctx, sqlLockSealed, k.kid).Scan(&kek, &sealed); err != nil {
				if errors.Is(err, pgx.ErrNoRows) {
					return nil // expired or revoked meanwhile: nothing left to move
				}
				return err
			}
			if kek == current {
				return nil // another reseal got here first
			}
			plain, err := r.sealer.Open(kek, k.issuer, k.kid, Algorithm(k.alg), sealed)
			if err != nil {
				return err
			}
			newKEK, resealed, err := r.sealer.Seal(k.issuer, k.kid, Algorithm(k.alg), plain)
			clear(plain)
			if err != nil {
				return err
			}
			if _, err := tx.Exec(ctx, sqlUpdateSealed, k.kid, newKEK, resealed); err != nil {
				return err
			}
			res.Resealed = append(res.Resealed, k.kid)
			return nil
		})
		if err != nil {
			return res, fmt.Errorf("reseal kid %s of issuer %q: %w", k.kid, k.issuer, err)
		}
	}
	usage, err := r.store.KEKUsage(ctx)
	if err != nil {
		return res, err
	}
	delete(usage, current)
	res.Remaining = usage
	return res, nil
}
