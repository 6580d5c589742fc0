package keys

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// logBuffer collects a keyring's log lines.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) count(substrings ...string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, line := range strings.Split(l.b.String(), "\n") {
		all := line != ""
		for _, s := range substrings {
			all = all && strings.Contains(line, s)
		}
		if all {
			n++
		}
	}
	return n
}

func newLoggedKeyring(f *fixture, opts ...KeyringOption) (*Keyring, *logBuffer) {
	logs := &logBuffer{}
	return NewKeyring(f.store, f.sealer, f.clock.Now, slog.New(slog.NewJSONHandler(logs, nil)), opts...), logs
}

// foreignJWK is the public JWK of a key pair nobody but the attacker holds.
func foreignJWK(t testing.TB, kid string) []byte {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := publicJWK(k.Public(), kid, ES256)
	if err != nil {
		t.Fatal(err)
	}
	return pub
}

// insertForged writes the row an attacker with write access to the table
// (but without the KEK) would write: a foreign public key and garbage in
// place of the sealed private part, as a published retired key.
func insertForged(t testing.TB, f *fixture, issuer, kid string, notify bool) {
	t.Helper()
	garbage := make([]byte, 80)
	_, _ = rand.Read(garbage)
	now := f.clock.Now()
	_, err := f.pool.Exec(testContext(), `INSERT INTO signing_keys
		(kid, issuer, alg, key_bits, state, public_jwk, sealed_private, kek_id, seal_version, created_at, retired_at, expires_at)
		VALUES ($1, $2, 'ES256', 256, 'retired', $3, $4, $5, 2, $6, $6, $7)`,
		kid, issuer, foreignJWK(t, kid), garbage, f.sealer.CurrentKEK(), now, now.Add(24*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	if notify {
		if _, err := f.pool.Exec(testContext(), `SELECT pg_notify($1, $2)`, NotifyChannel, issuer); err != nil {
			t.Fatal(err)
		}
	}
}

func unusableKids(k *Keyring, issuer string) []string {
	var kids []string
	for _, st := range k.Status() {
		if st.Slug == issuer {
			for _, u := range st.Unusable {
				kids = append(kids, u.Kid)
			}
		}
	}
	return kids
}

func issuerReady(k *Keyring, issuer string) (ready bool, reasons []string) {
	for _, st := range k.Status() {
		if st.Slug == issuer {
			return st.Ready, st.Reasons
		}
	}
	return false, nil
}

func kidOf(t testing.TB, f *fixture, issuer string, state State) string {
	t.Helper()
	var kid string
	if err := f.pool.QueryRow(testContext(), `SELECT kid FROM signing_keys WHERE issuer = $1 AND state = $2`, issuer, string(state)).Scan(&kid); err != nil {
		t.Fatal(err)
	}
	return kid
}

// TestIntegrity_ForgedRowNeverReachesTheJWKS inserts a row with a foreign
// public key and garbage ciphertext, and checks that it is published neither
// by a running keyring told by NOTIFY, nor by one that only polls, nor by a
// keyring started afterwards; that it is logged once; and that the issuer's
// sound keys keep signing.
func TestIntegrity_ForgedRowNeverReachesTheJWKS(t *testing.T) {
	ctx, cancel := context.WithCancel(testContext())
	defer cancel()
	clock := newFakeClock()
	url := testDB.Fresh(t)
	f := newFixture(t, url, clock, newSealer(t, newKEK(t, "k1")))
	f.addIssuer(t, testIssuer("forged", ES256))

	notified, logs := newLoggedKeyring(f)
	var events []Event
	var eventsMu sync.Mutex
	notified.OnEvent(func(e Event) { eventsMu.Lock(); events = append(events, e); eventsMu.Unlock() })
	first := make(chan struct{}, 1)
	go notified.Follow(ctx, time.Hour, func(error) {
		select {
		case first <- struct{}{}:
		default:
		}
	})
	<-first
	polled := newFixture(t, url, clock, f.sealer).keyring
	go polled.Follow(ctx, 20*time.Millisecond, nil)

	forgedNotify := "f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0"
	insertForged(t, f, "forged", forgedNotify, true)
	waitFor(t, "the notified keyring to refuse the forged row", func() bool {
		return slices.Contains(unusableKids(notified, "forged"), forgedNotify)
	})
	forgedPoll := "e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0"
	insertForged(t, f, "forged", forgedPoll, false)
	waitFor(t, "the polling keyring to refuse both forged rows", func() bool {
		u := unusableKids(polled, "forged")
		return slices.Contains(u, forgedNotify) && slices.Contains(u, forgedPoll)
	})
	restarted := NewKeyring(f.store, f.sealer, clock.Now, quietLogger())
	var problems *RefreshProblems
	if err := restarted.Refresh(ctx); !errors.As(err, &problems) || !errors.Is(err, ErrOpenFailed) {
		t.Fatalf("refresh of a new keyring: %v, want the forged rows reported as not opening", err)
	}

	for name, k := range map[string]*Keyring{"notified": notified, "polled": polled, "restarted": restarted} {
		kids := jwksKids(t, mustJWKS(t, k, "forged"))
		if slices.Contains(kids, forgedNotify) || slices.Contains(kids, forgedPoll) {
			t.Errorf("%s keyring publishes a forged key: %v", name, kids)
		}
		if len(kids) != 2 {
			t.Errorf("%s keyring publishes %v, want the sound active and next keys", name, kids)
		}
		if _, err := k.Signer("forged"); err != nil {
			t.Errorf("%s keyring: the sound active key no longer signs: %v", name, err)
		}
		if ready, reasons := issuerReady(k, "forged"); ready || !strings.Contains(strings.Join(reasons, " "), forgedNotify) {
			t.Errorf("%s keyring: issuer ready=%v, reasons %v; want not ready naming %s", name, ready, reasons, forgedNotify)
		}
	}

	// More refreshes do not log the refusal again.
	for range 3 {
		f.refresh(t)
		_ = notified.Refresh(ctx)
	}
	if n := logs.count("signing key refused", forgedNotify, `"issuer":"forged"`); n != 1 {
		t.Errorf("the refusal of %s was logged %d times, want once", forgedNotify, n)
	}
	eventsMu.Lock()
	refused := 0
	for _, e := range events {
		if e.Kind == EventRefused && e.Kid == forgedNotify {
			refused++
		}
	}
	eventsMu.Unlock()
	if refused != 1 {
		t.Errorf("refusal of %s observed %d times, want once", forgedNotify, refused)
	}
}

// TestIntegrity_PublicJWKOfAnotherKeyIsRefused puts the next key's public
// JWK on the active row: as SealV2 the AAD no longer matches; as SealV1 the
// key derived from the private part has another thumbprint. Either way the
// active key is refused and the issuer cannot sign.
func TestIntegrity_PublicJWKOfAnotherKeyIsRefused(t *testing.T) {
	for _, version := range []SealVersion{SealV2, SealV1} {
		t.Run("v"+string(rune('0'+version)), func(t *testing.T) {
			ctx := testContext()
			clock := newFakeClock()
			f := newFixture(t, testDB.Fresh(t), clock, newSealer(t, newKEK(t, "k1")))
			f.addIssuer(t, testIssuer("jwk", ES256))
			active, next := kidOf(t, f, "jwk", StateActive), kidOf(t, f, "jwk", StateNext)
			if version == SealV1 {
				resealAsV1(t, f, active)
			}
			f.refresh(t)
			if s, err := f.keyring.Signer("jwk"); err != nil || s.Kid != active {
				t.Fatalf("before: signer %v, %v", s, err)
			}
			_, err := f.pool.Exec(ctx, `UPDATE signing_keys a SET public_jwk = jsonb_set(b.public_jwk, '{kid}', to_jsonb(a.kid))
				FROM signing_keys b WHERE a.kid = $1 AND b.kid = $2`, active, next)
			if err != nil {
				t.Fatal(err)
			}
			err = f.keyring.Refresh(ctx)
			want := ErrOpenFailed
			if version == SealV1 {
				want = ErrKeyMismatch
			}
			if !errors.Is(err, want) || !strings.Contains(err.Error(), active) {
				t.Fatalf("refresh: %v, want %v naming %s", err, want, active)
			}
			if s, err := f.keyring.Signer("jwk"); err == nil {
				t.Fatalf("signs with %s although its row describes another key", s.Kid)
			}
			if kids := jwksKids(t, mustJWKS(t, f.keyring, "jwk")); !slices.Equal(kids, []string{next}) {
				t.Fatalf("JWKS %v, want only the sound next key %s", kids, next)
			}
			if err := f.keyring.Ready(); err == nil || !strings.Contains(err.Error(), active) {
				t.Fatalf("Ready: %v, want not ready naming %s", err, active)
			}
		})
	}
}

// resealAsV1 rewrites a key's sealed part as a pre-0003 row: SealV1 AAD.
func resealAsV1(t testing.TB, f *fixture, kid string) {
	t.Helper()
	ctx := testContext()
	sk, err := scanKey(f.pool.QueryRow(ctx, `SELECT `+keyColumns+`, sealed_private FROM signing_keys WHERE kid = $1`, kid), true)
	if err != nil {
		t.Fatal(err)
	}
	der, err := f.sealer.Open(sk.KEKID, sk.binding(), sk.sealed)
	if err != nil {
		t.Fatal(err)
	}
	b := sk.binding()
	b.Version = SealV1
	aad, err := b.aad()
	if err != nil {
		t.Fatal(err)
	}
	aead := f.sealer.aeads[sk.KEKID]
	nonce := make([]byte, aead.NonceSize())
	_, _ = rand.Read(nonce)
	if _, err := f.pool.Exec(ctx, `UPDATE signing_keys SET sealed_private = $2, seal_version = 1 WHERE kid = $1`,
		kid, aead.Seal(nonce, nonce, der, aad)); err != nil {
		t.Fatal(err)
	}
}

// TestIntegrity_SwappedCiphertextsAreRefused swaps the sealed parts of the
// active and next keys (same issuer, KEK and algorithm): neither opens, so
// neither is published and the issuer cannot sign.
func TestIntegrity_SwappedCiphertextsAreRefused(t *testing.T) {
	ctx := testContext()
	clock := newFakeClock()
	f := newFixture(t, testDB.Fresh(t), clock, newSealer(t, newKEK(t, "k1")))
	f.addIssuer(t, testIssuer("swapped", ES256))
	f.addIssuer(t, testIssuer("bystander", ES256))
	active, next := kidOf(t, f, "swapped", StateActive), kidOf(t, f, "swapped", StateNext)
	_, err := f.pool.Exec(ctx, `UPDATE signing_keys a SET sealed_private = b.sealed_private
		FROM signing_keys b WHERE (a.kid, b.kid) IN (($1, $2), ($2, $1))`, active, next)
	if err != nil {
		t.Fatal(err)
	}
	err = f.keyring.Refresh(ctx)
	var problems *RefreshProblems
	if !errors.As(err, &problems) || !errors.Is(err, ErrOpenFailed) || len(problems.Issuers["swapped"]) == 0 || len(problems.Issuers["bystander"]) != 0 {
		t.Fatalf("refresh after the swap: %v, want ErrOpenFailed for issuer swapped only", err)
	}
	if kids := jwksKids(t, mustJWKS(t, f.keyring, "swapped")); len(kids) != 0 {
		t.Fatalf("JWKS after the swap: %v, want empty", kids)
	}
	if s, err := f.keyring.Signer("swapped"); err == nil {
		t.Fatalf("signs with %s after the swap", s.Kid)
	}
	if _, err := f.keyring.Signer("bystander"); err != nil {
		t.Fatalf("the other issuer stopped signing: %v", err)
	}
}

// TestIntegrity_AlteredAlgIsRefusedByARunningKeyring changes the active
// row's algorithm and announces it: the running keyring must open the row
// again (it changed), refuse it, take it out of the JWKS and stop signing.
// The schema refuses algorithms and sizes the service does not know.
func TestIntegrity_AlteredAlgIsRefusedByARunningKeyring(t *testing.T) {
	ctx, cancel := context.WithCancel(testContext())
	defer cancel()
	clock := newFakeClock()
	f := newFixture(t, testDB.Fresh(t), clock, newSealer(t, newKEK(t, "k1")))
	f.addIssuer(t, testIssuer("alg", ES256))
	active := kidOf(t, f, "alg", StateActive)
	first := make(chan struct{}, 1)
	go f.keyring.Follow(ctx, time.Hour, func(error) {
		select {
		case first <- struct{}{}:
		default:
		}
	})
	<-first
	if s, err := f.keyring.Signer("alg"); err != nil || s.Alg != ES256 {
		t.Fatalf("before: %v, %v", s, err)
	}
	for _, bad := range []string{`alg = 'HS256'`, `alg = 'none'`, `key_bits = 257`, `alg = 'RS512'`} {
		if _, err := f.pool.Exec(ctx, `UPDATE signing_keys SET `+bad+` WHERE kid = $1`, active); err == nil {
			t.Errorf("the schema accepted %s on an ES256 key", bad)
		}
	}
	if _, err := f.pool.Exec(ctx, `UPDATE signing_keys SET alg = 'ES384', key_bits = 384 WHERE kid = $1`, active); err != nil {
		t.Fatal(err)
	}
	if _, err := f.pool.Exec(ctx, `SELECT pg_notify($1, 'alg')`, NotifyChannel); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the running keyring to refuse the altered row", func() bool {
		return slices.Contains(unusableKids(f.keyring, "alg"), active)
	})
	if s, err := f.keyring.Signer("alg"); err == nil {
		t.Fatalf("still signs with %s (%s)", s.Kid, s.Alg)
	}
	if kids := jwksKids(t, mustJWKS(t, f.keyring, "alg")); slices.Contains(kids, active) {
		t.Fatalf("the altered key is still published: %v", kids)
	}
	err := f.keyring.Ready()
	var re *ReadinessError
	if !errors.As(err, &re) || !strings.Contains(strings.Join(re.Issuers["alg"], " "), active) {
		t.Fatalf("Ready: %v, want issuer alg not ready naming %s", err, active)
	}
}

// TestIntegrity_OneBrokenIssuerLeavesTheOthersServing flips a byte of one
// issuer's next key, then of its active key: only that issuer is affected.
func TestIntegrity_OneBrokenIssuerLeavesTheOthersServing(t *testing.T) {
	ctx := testContext()
	clock := newFakeClock()
	f := newFixture(t, testDB.Fresh(t), clock, newSealer(t, newKEK(t, "k1")))
	f.addIssuer(t, testIssuer("healthy", ES256))
	f.addIssuer(t, testIssuer("broken", ES256))
	flip := func(state State) string {
		kid := kidOf(t, f, "broken", state)
		if _, err := f.pool.Exec(ctx, `UPDATE signing_keys SET sealed_private = overlay(sealed_private placing
			decode(lpad(to_hex(get_byte(sealed_private, 20) # 1), 2, '0'), 'hex') from 21 for 1) WHERE kid = $1`, kid); err != nil {
			t.Fatal(err)
		}
		return kid
	}
	next := flip(StateNext)
	k := NewKeyring(f.store, f.sealer, clock.Now, quietLogger())
	err := k.Refresh(ctx)
	var problems *RefreshProblems
	if !errors.As(err, &problems) || len(problems.Issuers) != 1 || !strings.Contains(err.Error(), next) {
		t.Fatalf("refresh: %v, want a problem of issuer broken naming %s only", err, next)
	}
	if _, err := k.Signer("healthy"); err != nil {
		t.Fatal(err)
	}
	if _, err := k.Signer("broken"); err != nil {
		t.Fatalf("a broken next key stopped the sound active key: %v", err)
	}
	active := flip(StateActive)
	_ = k.Refresh(ctx)
	if _, err := k.Signer("broken"); !errors.Is(err, ErrNoActiveKey) {
		t.Fatalf("issuer broken signs with a broken active key: %v", err)
	}
	if _, err := k.Signer("healthy"); err != nil {
		t.Fatalf("issuer healthy stopped signing: %v", err)
	}
	err = k.Ready()
	var re *ReadinessError
	if !errors.As(err, &re) || len(re.Issuers) != 1 || !strings.Contains(strings.Join(re.Issuers["broken"], " "), active) {
		t.Fatalf("Ready: %v, want only issuer broken not ready, naming %s", err, active)
	}
}

// TestUpgradeSeals_RewritesV1RowsKeepingTheirKEK is the v1 → v2 move that
// serve makes at start-up.
func TestUpgradeSeals_RewritesV1RowsKeepingTheirKEK(t *testing.T) {
	ctx := testContext()
	clock := newFakeClock()
	url := testDB.Fresh(t)
	old, current := newKEK(t, "old"), newKEK(t, "new")
	f := newFixture(t, url, clock, newSealer(t, old))
	f.addIssuer(t, testIssuer("upgrade", ES256))
	active, next := kidOf(t, f, "upgrade", StateActive), kidOf(t, f, "upgrade", StateNext)
	resealAsV1(t, f, active)
	resealAsV1(t, f, next)
	if _, err := f.pool.Exec(ctx, `UPDATE signing_keys SET sealed_private = sealed_private || '\x00'::bytea WHERE kid = $1`, next); err != nil {
		t.Fatal(err)
	}
	g := newFixture(t, url, clock, newSealer(t, current, old))
	res, err := g.rotator.UpgradeSeals(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(res.Resealed, []string{active}) || res.Failed[next] == nil || res.RemainingV1 != 1 {
		t.Fatalf("upgrade: %+v, want %s rewritten, %s failed and one v1 row left", res, active, next)
	}
	var version int
	var kek string
	if err := f.pool.QueryRow(ctx, `SELECT seal_version, kek_id FROM signing_keys WHERE kid = $1`, active).Scan(&version, &kek); err != nil {
		t.Fatal(err)
	}
	if version != 2 || kek != "old" {
		t.Fatalf("after the upgrade: v%d under %s, want v2 under old (the KEK it had)", version, kek)
	}
	f.refresh(t)
	if s, err := f.keyring.Signer("upgrade"); err != nil || s.Kid != active {
		t.Fatalf("an instance with only the old KEK: %v, %v", s, err)
	}
}
