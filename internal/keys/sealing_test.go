package keys

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/rsa"
	"errors"
	"slices"
	"strings"
	"testing"
)

// TestSealing_StoredColumnHoldsNoKeyMaterialInClear opens every stored key
// with the KEK and checks that neither its PKCS#8 encoding nor its private
// scalars appear in the column.
func TestSealing_StoredColumnHoldsNoKeyMaterialInClear(t *testing.T) {
	ctx := testContext()
	clock := newFakeClock()
	f := newFixture(t, testDB.Fresh(t), clock, newSealer(t, newKEK(t, "k1")))
	f.addIssuer(t, testIssuer("sealed-rsa", RS512))
	f.addIssuer(t, testIssuer("sealed-ec", ES384))

	rows, err := f.pool.Query(ctx, `SELECT `+keyColumns+`, sealed_private FROM signing_keys`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	n := 0
	for rows.Next() {
		sk, err := scanKey(rows, true)
		if err != nil {
			t.Fatal(err)
		}
		kid, sealed := sk.Kid, sk.sealed
		der, err := f.sealer.Open(sk.KEKID, sk.binding(), sealed)
		if err != nil {
			t.Fatalf("open %s: %v", kid, err)
		}
		priv, err := parsePrivate(der, sk.Alg, sk.Bits)
		if err != nil {
			t.Fatal(err)
		}
		secrets := [][]byte{der[len(der)/2 : len(der)/2+16]}
		switch k := priv.(type) {
		case *rsa.PrivateKey:
			secrets = append(secrets, k.D.Bytes()[:16], k.Primes[0].Bytes()[:16], k.Primes[1].Bytes()[:16])
		case *ecdsa.PrivateKey:
			d, err := k.Bytes()
			if err != nil {
				t.Fatal(err)
			}
			secrets = append(secrets, d[:16])
		}
		for _, s := range secrets {
			if bytes.Contains(sealed, s) {
				t.Fatalf("sealed column of %s contains private key bytes in clear", kid)
			}
		}
		n++
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if n != 4 {
		t.Fatalf("checked %d keys, want 4", n)
	}
}

func TestSealing_WrongKEKFailsNamingTheKid(t *testing.T) {
	ctx := testContext()
	clock := newFakeClock()
	url := testDB.Fresh(t)
	f := newFixture(t, url, clock, newSealer(t, newKEK(t, "main")))
	f.addIssuer(t, testIssuer("wrong-kek", ES256))
	stored, err := f.store.Keys(ctx, "wrong-kek")
	if err != nil {
		t.Fatal(err)
	}

	// Same KEK id, other key material: what a mistyped PORTAL_KEKS gives.
	other := newFixture(t, url, clock, newSealer(t, newKEK(t, "main")))
	err = other.keyring.Refresh(ctx)
	if err == nil {
		t.Fatal("keyring loaded keys sealed under another KEK")
	}
	named := false
	for _, k := range stored {
		named = named || strings.Contains(err.Error(), "kid "+k.Kid)
	}
	if !errors.Is(err, ErrOpenFailed) || !named {
		t.Fatalf("error %q should say the key did not open and name one of the issuer's kids", err)
	}
	if _, err := other.keyring.Signer("wrong-kek"); err == nil {
		t.Fatal("keyring offers a signer although its key did not open")
	}

	// A KEK id that is not configured at all.
	missing := newFixture(t, url, clock, newSealer(t, newKEK(t, "other-id")))
	err = missing.keyring.Refresh(ctx)
	if !errors.Is(err, ErrUnknownKEK) || !strings.Contains(err.Error(), "main") {
		t.Fatalf("error %q should say KEK \"main\" is not configured", err)
	}
}

func TestSealing_RowsCannotBeSwapped(t *testing.T) {
	ctx := testContext()
	clock := newFakeClock()
	f := newFixture(t, testDB.Fresh(t), clock, newSealer(t, newKEK(t, "k1")))
	f.addIssuer(t, testIssuer("swap", ES256))
	// Put the next key's sealed bytes on the active row (same issuer, same
	// algorithm): the AAD names the kid, so it must not open.
	_, err := f.pool.Exec(ctx, `UPDATE signing_keys a SET sealed_private = b.sealed_private
		FROM signing_keys b WHERE a.issuer = 'swap' AND b.issuer = 'swap' AND a.state = 'active' AND b.state = 'next'`)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.keyring.Refresh(ctx); !errors.Is(err, ErrOpenFailed) {
		t.Fatalf("refresh after swapping sealed rows: err = %v, want ErrOpenFailed", err)
	}
}

func TestReseal_OldKEKCanBeRemovedAfterwards(t *testing.T) {
	ctx := testContext()
	clock := newFakeClock()
	url := testDB.Fresh(t)
	oldKEK, newKEKv := newKEK(t, "old"), newKEK(t, "new")
	f := newFixture(t, url, clock, newSealer(t, oldKEK))
	f.addIssuer(t, testIssuer("reseal-a", RS512))
	f.addIssuer(t, testIssuer("reseal-b", ES256))
	f.refresh(t)
	before, _ := f.keyring.Signer("reseal-a")

	ring := newFixture(t, url, clock, newSealer(t, newKEKv, oldKEK))
	res, err := ring.rotator.Reseal(ctx, "reseal-a")
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Resealed) != 2 || res.Remaining["old"] != 2 {
		t.Fatalf("reseal of one issuer: %+v, want 2 resealed and 2 left under old", res)
	}
	res, err = ring.rotator.Reseal(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Resealed) != 2 || len(res.Remaining) != 0 {
		t.Fatalf("reseal of all issuers: %+v, want 2 more resealed and nothing left", res)
	}

	onlyNew := newFixture(t, url, clock, newSealer(t, newKEKv))
	if err := onlyNew.keyring.Refresh(ctx); err != nil {
		t.Fatalf("with the old KEK removed: %v", err)
	}
	after, err := onlyNew.keyring.Signer("reseal-a")
	if err != nil || after.Kid != before.Kid {
		t.Fatalf("signer after reseal: %v, %v; want kid %s", after, err, before.Kid)
	}
	if _, err := after.Sign([]byte(`{"sub":"Patient/1"}`)); err != nil {
		t.Fatal(err)
	}
	var stale int
	if err := f.pool.QueryRow(ctx, `SELECT count(*) FROM signing_keys WHERE kek_id = 'old'`).Scan(&stale); err != nil || stale != 0 {
		t.Fatalf("rows still under the old KEK: %d (%v)", stale, err)
	}
}

func TestSealer_RejectsBadKEKs(t *testing.T) {
	for name, ring := range map[string][]KEK{
		"empty":     nil,
		"short key": {{ID: "a", Key: make([]byte, 16)}},
		"no id":     {{ID: "", Key: make([]byte, 32)}},
		"duplicate": {{ID: "a", Key: make([]byte, 32)}, {ID: "a", Key: make([]byte, 32)}},
	} {
		if _, err := NewSealer(ring); err == nil {
			t.Errorf("%s: NewSealer accepted it", name)
		}
	}
}

func TestKEK_StringHidesKey(t *testing.T) {
	k := newKEK(t, "visible")
	if s := k.String(); strings.Contains(s, string(k.Key)) || !strings.Contains(s, "visible") {
		t.Fatalf("KEK prints as %q", s)
	}
}

// TestKeyring_UnopenableKeyNeverKeepsARevokedOneAlive is the KEK rollout
// case: instance B has only the old KEK while A seals new keys under a new
// one. B must still follow every revocation and rotation in its JWKS, and
// stop signing (not sign with an old key) when it cannot open the active one.
func TestKeyring_UnopenableKeyNeverKeepsARevokedOneAlive(t *testing.T) {
	ctx := testContext()
	clock := newFakeClock()
	url := testDB.Fresh(t)
	oldKEK, newKEKv := newKEK(t, "old"), newKEK(t, "new")
	b := newFixture(t, url, clock, newSealer(t, oldKEK))
	b.addIssuer(t, testIssuer("rollout", ES256))
	b.refresh(t)
	compromised, _ := b.keyring.Signer("rollout")

	a := newFixture(t, url, clock, newSealer(t, newKEKv, oldKEK))
	c, err := a.rotator.Revoke(ctx, "rollout", compromised.Kid)
	if err != nil {
		t.Fatal(err)
	}
	err = b.keyring.Refresh(ctx)
	if err == nil || !strings.Contains(err.Error(), c.Created[0]) {
		t.Fatalf("B's refresh should report the new next key %s it cannot open: %v", c.Created[0], err)
	}
	signer, err := b.keyring.Signer("rollout")
	if err != nil || signer.Kid != c.Activated {
		t.Fatalf("B signs with %v (%v), want the key that took over, %s", signer, err, c.Activated)
	}
	for _, kid := range jwksKids(t, mustJWKS(t, b.keyring, "rollout")) {
		if kid == compromised.Kid {
			t.Fatal("B still publishes the revoked key")
		}
	}

	// A rotates: the active key is now one B cannot open.
	c, err = a.rotator.Rotate(ctx, "rollout", true)
	if err != nil {
		t.Fatal(err)
	}
	_ = b.keyring.Refresh(ctx)
	if s, err := b.keyring.Signer("rollout"); err == nil {
		t.Fatalf("B signs with %s although it cannot open the active key %s", s.Kid, c.Activated)
	}
	if err := b.keyring.Ready(); err == nil || !strings.Contains(err.Error(), c.Activated) {
		t.Fatalf("B should report not ready naming the active key %s it cannot open: %v", c.Activated, err)
	}
	// B publishes only keys it can sign with (docs/ARCHITECTURE.md, "Key integrity").
	if kids := jwksKids(t, mustJWKS(t, b.keyring, "rollout")); slices.Contains(kids, c.Activated) {
		t.Fatalf("B's JWKS %v publishes the active key %s it cannot open", kids, c.Activated)
	}
}
