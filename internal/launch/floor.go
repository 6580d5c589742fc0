package launch

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/ehealth-nl/portal/internal/keys"
)

// SQLFloor runs n registry launches as SQL only, from conc goroutines: for
// each, the statement that creates the launch with its one-time link and
// the statement that claims the link, through the same Store code and pgx
// pool settings the service uses, with no HTTP, no API key, no template and
// no signature. It is the floor `make bench` sets the PostgreSQL CPU of a
// launch against (docs/BENCHMARKS.md). The launches are for module, which
// must be registered for issuer, whose active key in the database claims
// them; they stay in the audit trail like any other.
func SQLFloor(ctx context.Context, pool *pgxpool.Pool, module Module, n, conc int) error {
	var issuer keys.Issuer
	var kid string
	err := pool.QueryRow(ctx, `SELECT i.slug, i.client_id, k.kid FROM issuers i JOIN signing_keys k ON k.issuer = i.slug AND k.state = 'active'
		WHERE i.slug = $1`, module.Issuer).Scan(&issuer.Slug, &issuer.ClientID, &kid)
	if err != nil {
		return fmt.Errorf("sql floor: the active key of issuer %q: %w", module.Issuer, err)
	}
	signers := []*keys.Signer{{Issuer: issuer, Kid: kid}}
	st := NewStore(pool)
	sp := spec{issuer: issuer.Slug, module: module, task: "Task/floor-1", user: "Practitioner/floor-1", patient: "Patient/floor-1",
		definition: module.DefaultDefinition, intent: "plan"}
	by := Caller{Name: "sql-floor", Addr: "127.0.0.1", RequestID: "sql-floor"}
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		firstErr error
	)
	work := make(chan struct{})
	for range conc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range work {
				now := time.Now().UTC()
				_, hash := newTicket()
				stored, err := st.insert(ctx, newLaunch{id: newLaunchID(), kind: "ticket", sp: sp, by: by, createdAt: now, ticketHash: hash,
					expiresAt: now.Add(time.Minute)})
				if err == nil && !stored {
					err = fmt.Errorf("sql floor: module %q is not registered as given", module.Slug)
				}
				if err == nil {
					_, _, _, err = st.claim(ctx, claimRequest{hash: hash, now: now, browser: Browser{Addr: "127.0.0.1", UserAgent: "sql-floor"},
						jti: newJTI(), tokenExpiresAt: now.Add(5 * time.Minute), signers: signers})
				}
				if err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
				}
			}
		}()
	}
	for range n {
		work <- struct{}{}
	}
	close(work)
	wg.Wait()
	return firstErr
}
