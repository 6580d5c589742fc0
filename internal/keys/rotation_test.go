package keys

import (
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func jwksKids(t testing.TB, set JWKS) []string {
	t.Helper()
	var doc struct {
		Keys []struct {
			Kid string `json:"kid"`
		} `json:"keys"`
	}
	if err := json.Unmarshal(set.Body, &doc); err != nil {
		t.Fatalf("JWKS is not JSON: %v", err)
	}
	var kids []string
	for _, k := range doc.Keys {
		kids = append(kids, k.Kid)
	}
	return kids
}

// TestRotation_Timeline drives an issuer through three days with an
// injected clock and checks the publication rules of docs/ARCHITECTURE.md, "Key lifecycle" from the
// outside: what the JWKS shows and which key signs, at every step.
func TestRotation_Timeline(t *testing.T) {
	ctx := testContext()
	clock := newFakeClock()
	f := newFixture(t, testDB.Fresh(t), clock, newSealer(t, newKEK(t, "k1")))
	is := testIssuer("timeline", RS512)
	f.addIssuer(t, is)

	type seen struct {
		published, firstSigned, lastSigned, unpublished time.Time
	}
	keys := map[string]*seen{}
	var order []string
	step := 5 * time.Minute
	start := clock.Now()
	end := start.Add(72 * time.Hour)
	var revokedNext string
	for !clock.Now().After(end) {
		now := clock.Now()
		// Half an hour before the first rotation an operator revokes the
		// next key: its replacement must still wait the full publish lead.
		if now.Equal(start.Add(23*time.Hour + 30*time.Minute)) {
			ks, err := f.store.Keys(ctx, is.Slug)
			if err != nil {
				t.Fatal(err)
			}
			for _, k := range ks {
				if k.State == StateNext {
					revokedNext = k.Kid
				}
			}
			if _, err := f.rotator.Revoke(ctx, is.Slug, revokedNext); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := f.rotator.RotateIfDue(ctx, is.Slug); err != nil {
			t.Fatal(err)
		}
		f.refresh(t)
		set, err := f.keyring.JWKS(is.Slug)
		if err != nil {
			t.Fatal(err)
		}
		signer, err := f.keyring.Signer(is.Slug)
		if err != nil {
			t.Fatalf("%s: no signer: %v", now, err)
		}
		inJWKS := map[string]bool{}
		kids := jwksKids(t, set)
		if len(kids) == 0 || len(kids) > 3 {
			t.Fatalf("%s: JWKS has %d keys, want 1 to 3", now, len(kids))
		}
		for _, kid := range kids {
			inJWKS[kid] = true
			if keys[kid] == nil {
				keys[kid] = &seen{published: now}
				order = append(order, kid)
			}
		}
		if !inJWKS[signer.Kid] {
			t.Fatalf("%s: active key %s is not in the JWKS", now, signer.Kid)
		}
		s := keys[signer.Kid]
		if s.firstSigned.IsZero() {
			s.firstSigned = now
		}
		s.lastSigned = now
		for kid, s := range keys {
			if !inJWKS[kid] && s.unpublished.IsZero() {
				s.unpublished = now
			}
			if !s.unpublished.IsZero() && inJWKS[kid] {
				t.Fatalf("%s: key %s came back into the JWKS", now, kid)
			}
		}
		clock.Advance(step)
	}

	if len(order) < 4 {
		t.Fatalf("only %d keys over three days; rotation did not happen", len(order))
	}
	rotations := 0
	for i, kid := range order {
		s := keys[kid]
		if s.firstSigned.IsZero() {
			continue
		}
		if i > 0 { // the first key of a fresh issuer signs at once
			rotations++
			if lead := s.firstSigned.Sub(s.published); lead < is.Policy.PublishLead {
				t.Errorf("key %s signed %s after it was published, want at least the publish lead %s", kid, lead, is.Policy.PublishLead)
			}
		}
		if !s.unpublished.IsZero() {
			// It stopped signing one step after lastSigned.
			if stayed := s.unpublished.Sub(s.lastSigned.Add(step)); stayed < is.Policy.RetireGrace {
				t.Errorf("key %s left the JWKS %s after it stopped signing, want at least the retire grace %s", kid, stayed, is.Policy.RetireGrace)
			}
		}
	}
	if rotations != 2 {
		t.Errorf("rotations in 72h = %d, want 2 (at 24h30m, when the replacement next key has been published for the lead, and at 48h30m)", rotations)
	}
	if s := keys[revokedNext]; s == nil || !s.firstSigned.IsZero() || s.unpublished.IsZero() {
		t.Errorf("revoked next key %s: %+v; want published, never signing, then gone", revokedNext, s)
	}

	// Keys that left the JWKS are expired or revoked in the table, private
	// part erased.
	var expired, withPrivate int
	err := f.pool.QueryRow(ctx, `SELECT count(*) FILTER (WHERE state IN ('expired', 'revoked')), count(*) FILTER (WHERE state IN ('expired', 'revoked') AND (sealed_private IS NOT NULL OR kek_id IS NOT NULL))
		FROM signing_keys WHERE issuer = $1`, is.Slug).Scan(&expired, &withPrivate)
	if err != nil {
		t.Fatal(err)
	}
	unpublished := 0
	for _, s := range keys {
		if !s.unpublished.IsZero() {
			unpublished++
		}
	}
	if expired != unpublished || expired == 0 {
		t.Errorf("expired rows = %d, keys that left the JWKS = %d", expired, unpublished)
	}
	if withPrivate != 0 {
		t.Errorf("%d expired keys still hold a private part", withPrivate)
	}
}

// TestRotation_ThreeRotatorsRace lets three rotators, each with its own
// connection pool, race on one database over many simulated rotations,
// while a fourth keyring keeps reading the JWKS.
func TestRotation_ThreeRotatorsRace(t *testing.T) {
	ctx := testContext()
	url := testDB.Fresh(t)
	clock := newFakeClock()
	sealer := newSealer(t, newKEK(t, "k1"))
	is := testIssuer("race", ES256)
	is.Policy = Policy{RotationPeriod: 4 * time.Hour, PublishLead: time.Hour, RetireGrace: time.Hour}
	var rotators []*Rotator
	for i := 0; i < 3; i++ {
		rotators = append(rotators, NewRotator(NewStore(connect(t, url)), sealer, clock.Now, quietLogger()))
	}
	observer := newFixture(t, url, clock, sealer)
	if err := observer.store.CreateIssuer(ctx, is, clock.Now()); err != nil {
		t.Fatal(err)
	}

	// Watch the database and the JWKS continuously during the race.
	stop := make(chan struct{})
	var watchErr atomic.Value
	var watch sync.WaitGroup
	watch.Add(1)
	go func() {
		defer watch.Done()
		loaded := false
		for {
			select {
			case <-stop:
				return
			default:
			}
			var active int
			if err := observer.pool.QueryRow(ctx, `SELECT count(*) FROM signing_keys WHERE issuer = $1 AND state = 'active'`, is.Slug).Scan(&active); err != nil {
				watchErr.Store(err)
				return
			}
			if active > 1 {
				watchErr.Store(fmt.Errorf("%d active keys", active))
				return
			}
			// Before the first keys exist, the issuer has no active key.
			var problems *RefreshProblems
			if err := observer.keyring.Refresh(ctx); err != nil && (loaded || !errors.As(err, &problems)) {
				watchErr.Store(err)
				return
			}
			set, err := observer.keyring.JWKS(is.Slug)
			if err != nil {
				watchErr.Store(err)
				return
			}
			n := len(jwksKids(t, set))
			if n > 0 {
				loaded = true
			}
			if loaded && n == 0 {
				watchErr.Store(errors.New("the JWKS was empty"))
				return
			}
		}
	}()

	const steps = 120 // 120 simulated hours: 30 rotation periods
	for step := 0; step < steps; step++ {
		var wg sync.WaitGroup
		start := make(chan struct{})
		errs := make([]error, len(rotators))
		for i, r := range rotators {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				_, errs[i] = r.RotateIfDue(ctx, is.Slug)
			}()
		}
		close(start)
		wg.Wait()
		for _, err := range errs {
			if err != nil {
				t.Fatalf("step %d: %v", step, err)
			}
		}
		clock.Advance(time.Hour)
	}
	close(stop)
	watch.Wait()
	if err, _ := watchErr.Load().(error); err != nil {
		t.Fatalf("during the race: %v", err)
	}

	// Exactly one activation per due rotation: the first key at hour 0,
	// then one every 4 hours (hours 4, 8, ..., 116).
	var activations, active, next int
	err := observer.pool.QueryRow(ctx, `SELECT count(activated_at), count(*) FILTER (WHERE state = 'active'), count(*) FILTER (WHERE state = 'next')
		FROM signing_keys WHERE issuer = $1`, is.Slug).Scan(&activations, &active, &next)
	if err != nil {
		t.Fatal(err)
	}
	if want := 1 + (steps-1)/4; activations != want {
		t.Errorf("keys activated = %d, want %d: a rotation was doubled or missed", activations, want)
	}
	if active != 1 || next != 1 {
		t.Errorf("at the end: %d active and %d next keys, want 1 and 1", active, next)
	}
	var tooSoon int
	err = observer.pool.QueryRow(ctx, `SELECT count(*) FROM signing_keys a JOIN signing_keys b
		ON a.issuer = b.issuer AND a.kid <> b.kid AND b.activated_at > a.activated_at AND b.activated_at < a.activated_at + interval '4 hours'
		WHERE a.issuer = $1`, is.Slug).Scan(&tooSoon)
	if err != nil {
		t.Fatal(err)
	}
	if tooSoon != 0 {
		t.Errorf("%d keys activated less than a rotation period after the one before", tooSoon)
	}
}

// TestRotation_DatabaseAllowsOneActiveKey checks the guarantee does not
// rest on the rotator alone: the table refuses a second active key.
func TestRotation_DatabaseAllowsOneActiveKey(t *testing.T) {
	ctx := testContext()
	clock := newFakeClock()
	f := newFixture(t, testDB.Fresh(t), clock, newSealer(t, newKEK(t, "k1")))
	f.addIssuer(t, testIssuer("unique", ES256))
	_, err := f.pool.Exec(ctx, `UPDATE signing_keys SET state = 'active', activated_at = now() WHERE issuer = 'unique' AND state = 'next'`)
	if err == nil {
		t.Fatal("the database accepted a second active key")
	}
}

func TestRotate_RefusesNextKeyYoungerThanPublishLead(t *testing.T) {
	ctx := testContext()
	clock := newFakeClock()
	f := newFixture(t, testDB.Fresh(t), clock, newSealer(t, newKEK(t, "k1")))
	f.addIssuer(t, testIssuer("young", ES256))
	clock.Advance(30 * time.Minute)
	if _, err := f.rotator.Rotate(ctx, "young", false); !errors.Is(err, ErrNextKeyTooYoung) {
		t.Fatalf("forced rotation 30m after the next key appeared: err = %v, want ErrNextKeyTooYoung", err)
	}
	clock.Advance(30 * time.Minute)
	c, err := f.rotator.Rotate(ctx, "young", false)
	if err != nil || !c.Rotated() {
		t.Fatalf("forced rotation after the lead: change %v, err %v", c, err)
	}
}

func TestRotate_IgnoringLeadRotatesAtOnce(t *testing.T) {
	ctx := testContext()
	clock := newFakeClock()
	f := newFixture(t, testDB.Fresh(t), clock, newSealer(t, newKEK(t, "k1")))
	f.addIssuer(t, testIssuer("hurry", ES256))
	f.refresh(t)
	before, _ := f.keyring.Signer("hurry")
	c, err := f.rotator.Rotate(ctx, "hurry", true)
	if err != nil || !c.Rotated() {
		t.Fatalf("change %v, err %v", c, err)
	}
	f.refresh(t)
	after, _ := f.keyring.Signer("hurry")
	if after.Kid == before.Kid || after.Kid != c.Activated {
		t.Fatalf("signer %s → %s, activated %s", before.Kid, after.Kid, c.Activated)
	}
	if kids := jwksKids(t, mustJWKS(t, f.keyring, "hurry")); len(kids) != 3 {
		t.Fatalf("JWKS after rotation has %v, want active, next and retired", kids)
	}
}

func mustJWKS(t testing.TB, k *Keyring, issuer string) JWKS {
	t.Helper()
	set, err := k.JWKS(issuer)
	if err != nil {
		t.Fatal(err)
	}
	return set
}

func TestRevoke_ActiveKeyLeavesAtOnceAndNextTakesOver(t *testing.T) {
	ctx := testContext()
	clock := newFakeClock()
	f := newFixture(t, testDB.Fresh(t), clock, newSealer(t, newKEK(t, "k1")))
	f.addIssuer(t, testIssuer("rev", ES384))
	f.refresh(t)
	active, _ := f.keyring.Signer("rev")
	c, err := f.rotator.Revoke(ctx, "rev", active.Kid)
	if err != nil {
		t.Fatal(err)
	}
	f.refresh(t)
	signer, err := f.keyring.Signer("rev")
	if err != nil {
		t.Fatal(err)
	}
	if signer.Kid == active.Kid || signer.Kid != c.Activated {
		t.Fatalf("after revoking %s the signer is %s (change: %s)", active.Kid, signer.Kid, c)
	}
	for _, kid := range jwksKids(t, mustJWKS(t, f.keyring, "rev")) {
		if kid == active.Kid {
			t.Fatal("the revoked key is still in the JWKS")
		}
	}
	var state string
	var sealed []byte
	if err := f.pool.QueryRow(ctx, `SELECT state, sealed_private FROM signing_keys WHERE kid = $1`, active.Kid).Scan(&state, &sealed); err != nil {
		t.Fatal(err)
	}
	if state != "revoked" || sealed != nil {
		t.Fatalf("revoked row: state %s, private part present: %v", state, sealed != nil)
	}
	var next int
	if err := f.pool.QueryRow(ctx, `SELECT count(*) FROM signing_keys WHERE issuer = 'rev' AND state = 'next'`).Scan(&next); err != nil {
		t.Fatal(err)
	}
	if next != 1 {
		t.Fatalf("after revocation the issuer has %d next keys, want 1", next)
	}
	if _, err := f.rotator.Revoke(ctx, "rev", active.Kid); !errors.Is(err, ErrKeyNotRevocable) {
		t.Fatalf("second revoke: err = %v, want ErrKeyNotRevocable", err)
	}
	if _, err := f.rotator.Revoke(ctx, "rev", "no-such-kid-000000"); !errors.Is(err, ErrKeyNotFound) {
		t.Fatalf("unknown kid: err = %v, want ErrKeyNotFound", err)
	}
}

func TestRotation_AlgorithmChangeReplacesNextKey(t *testing.T) {
	ctx := testContext()
	clock := newFakeClock()
	f := newFixture(t, testDB.Fresh(t), clock, newSealer(t, newKEK(t, "k1")))
	is := testIssuer("switch", ES256)
	f.addIssuer(t, is)
	is.Alg = ES384
	if err := f.store.UpdateIssuer(ctx, is, clock.Now()); err != nil {
		t.Fatal(err)
	}
	c, err := f.rotator.RotateIfDue(ctx, is.Slug)
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Expired) != 1 || len(c.Created) != 1 {
		t.Fatalf("change after algorithm switch: %s, want the next key replaced", c)
	}
	ks, err := f.store.Keys(ctx, is.Slug)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range ks {
		if k.State == StateNext && k.Alg != ES384 {
			t.Fatalf("next key has %s, want ES384", k.Alg)
		}
	}
}

func TestPlanRotation_FreshIssuerActivatesAtOnce(t *testing.T) {
	p, err := planRotation(testIssuer("x", RS512), nil, time.Now(), scheduled)
	if err != nil {
		t.Fatal(err)
	}
	if !p.newActive || !p.newNext || p.keysNeeded() != 2 {
		t.Fatalf("plan for a fresh issuer: %+v", p)
	}
}

func TestPlanRotation_WaitsForPublishLead(t *testing.T) {
	now := time.Date(2026, 1, 2, 0, 0, 0, 0, time.UTC)
	is := testIssuer("x", RS512)
	ks := []Key{
		{Kid: "active", State: StateActive, Alg: RS512, Bits: 2048, ActivatedAt: now.Add(-48 * time.Hour)},
		{Kid: "next", State: StateNext, Alg: RS512, Bits: 2048, CreatedAt: now.Add(-59 * time.Minute)},
	}
	p, err := planRotation(is, ks, now, scheduled)
	if err != nil || !p.empty() {
		t.Fatalf("overdue rotation with a 59m-old next key: plan %+v, err %v; want to wait", p, err)
	}
	ks[1].CreatedAt = now.Add(-time.Hour)
	p, err = planRotation(is, ks, now, scheduled)
	if err != nil || p.retire != "active" || p.activate != "next" || !p.newNext {
		t.Fatalf("plan once the lead has passed: %+v, err %v", p, err)
	}
}
