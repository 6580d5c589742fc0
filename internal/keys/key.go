// Package keys owns the signing-key lifecycle of every issuer: the issuers
// and signing_keys tables, key generation, sealing of private keys under a
// key-encryption key, rotation (next → active → retired → expired, and
// revocation), and the in-memory Keyring that signs launch tokens and serves
// each issuer's JWKS without touching the database.
package keys

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/lestrrat-go/jwx/v2/jwa"
	"github.com/lestrrat-go/jwx/v2/jwk"
)

// Algorithm is a JWS signature algorithm an issuer may sign launch tokens with.
// HMAC and "none" are deliberately absent: a verifier must never be able to
// check a token with a shared secret (docs/ARCHITECTURE.md, "The launch token").
type Algorithm string

// The algorithms an issuer may choose. RS512 is the default because the
// Koppeltaal reference auth server and the Java reference libraries handle RSA
// best; ES384 and RS384 are also accepted by the auth server; ES256 and PS*
// exist for generic (non-Koppeltaal) HTI modules.
const (
	RS384 Algorithm = "RS384"
	RS512 Algorithm = "RS512"
	PS256 Algorithm = "PS256"
	PS384 Algorithm = "PS384"
	PS512 Algorithm = "PS512"
	ES256 Algorithm = "ES256"
	ES384 Algorithm = "ES384"
)

// DefaultAlgorithm is the algorithm of an issuer that names none.
const DefaultAlgorithm = RS512

// DefaultRSABits is the RSA modulus size of an issuer that names none.
const DefaultRSABits = 2048

// Algorithms lists every algorithm an issuer may choose, in display order.
func Algorithms() []Algorithm {
	return []Algorithm{RS512, RS384, PS256, PS384, PS512, ES256, ES384}
}

// ParseAlgorithm returns the Algorithm named s, or an error listing the
// allowed names.
func ParseAlgorithm(s string) (Algorithm, error) {
	for _, a := range Algorithms() {
		if string(a) == s {
			return a, nil
		}
	}
	return "", fmt.Errorf("%q is not an allowed signing algorithm (allowed: RS512, RS384, PS256, PS384, PS512, ES256, ES384)", s)
}

// IsRSA reports whether the algorithm signs with an RSA key.
func (a Algorithm) IsRSA() bool {
	switch a {
	case RS384, RS512, PS256, PS384, PS512:
		return true
	}
	return false
}

// curve returns the elliptic curve of an ECDSA algorithm.
func (a Algorithm) curve() (elliptic.Curve, bool) {
	switch a {
	case ES256:
		return elliptic.P256(), true
	case ES384:
		return elliptic.P384(), true
	}
	return nil, false
}

// jwa returns the jwx name of the algorithm.
func (a Algorithm) jwa() jwa.SignatureAlgorithm { return jwa.SignatureAlgorithm(a) }

// ValidRSABits reports whether n is an RSA modulus size an issuer may use.
func ValidRSABits(n int) bool { return n == 2048 || n == 3072 || n == 4096 }

// State is where a signing key is in its lifecycle (docs/ARCHITECTURE.md,
// "Key lifecycle").
type State string

// The states of a signing key.
const (
	// StateNext keys are published in the JWKS but do not sign yet, so that
	// verifiers have them cached before the first token signed with them.
	StateNext State = "next"
	// StateActive is the single key of an issuer that signs new tokens.
	StateActive State = "active"
	// StateRetired keys no longer sign but stay published for the grace
	// period, so tokens they signed remain verifiable until they expire.
	StateRetired State = "retired"
	// StateExpired keys are out of the JWKS and their private part is erased.
	StateExpired State = "expired"
	// StateRevoked keys were withdrawn by an operator: out of the JWKS at
	// once, private part erased.
	StateRevoked State = "revoked"
)

// Key is a signing key's public description: everything but the private part.
type Key struct {
	Kid         string          // random id, never reused
	Issuer      string          // slug of the issuer the key belongs to
	Alg         Algorithm       // the one algorithm the key signs with
	Bits        int             // RSA modulus or EC curve size
	State       State           // where the key is in its lifecycle
	PublicJWK   json.RawMessage // the public key as published in the JWKS
	KEKID       string          // empty once the private part is erased
	CreatedAt   time.Time       // when the key was made (and published, for next keys)
	ActivatedAt time.Time       // zero until the key signs
	RetiredAt   time.Time       // when it stopped signing
	ExpiresAt   time.Time       // for retired keys: when they leave the JWKS
	RevokedAt   time.Time       // when an operator withdrew it
}

// Summary is how a key is shown to operators (command line and admin API):
// its lifecycle, never its private part.
type Summary struct {
	Kid         string     `json:"kid"`
	Issuer      string     `json:"issuer"`
	State       string     `json:"state"`
	Alg         string     `json:"alg"`
	Bits        int        `json:"bits"`
	KEK         string     `json:"kek,omitempty"`          // the KEK its private part is sealed under
	CreatedAt   time.Time  `json:"created_at"`             // when it was made and published
	ActivatedAt *time.Time `json:"activated_at,omitempty"` // when it started signing
	RetiredAt   *time.Time `json:"retired_at,omitempty"`   // when it stopped signing
	ExpiresAt   *time.Time `json:"expires_at,omitempty"`   // when it leaves (or left) the JWKS
	RevokedAt   *time.Time `json:"revoked_at,omitempty"`   // when an operator withdrew it
}

// Summary describes the key for operators.
func (k Key) Summary() Summary {
	at := func(t time.Time) *time.Time {
		if t.IsZero() {
			return nil
		}
		return &t
	}
	return Summary{Kid: k.Kid, Issuer: k.Issuer, State: string(k.State), Alg: string(k.Alg), Bits: k.Bits, KEK: k.KEKID,
		CreatedAt: k.CreatedAt, ActivatedAt: at(k.ActivatedAt), RetiredAt: at(k.RetiredAt), ExpiresAt: at(k.ExpiresAt), RevokedAt: at(k.RevokedAt)}
}

// generatedKey is a freshly generated key pair, ready to be sealed and stored.
type generatedKey struct {
	kid       string
	alg       Algorithm
	bits      int
	private   crypto.Signer
	publicJWK json.RawMessage
}

// newKid returns a random key id of 128 bits as 32 lower-case hex digits.
// Ids are random rather than derived from the key so that they reveal
// nothing and, being the table's primary key, are never reused; hex never
// starts with "-", so a kid is never read as a command-line flag. Older
// base64url kids stay valid everywhere (docs/ARCHITECTURE.md, "Data model").
func newKid() (string, error) {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("read random kid: %w", err)
	}
	return hex.EncodeToString(b), nil
}

// generateKey creates a new key pair for alg (RSA keys with rsaBits bits).
func generateKey(alg Algorithm, rsaBits int) (*generatedKey, error) {
	kid, err := newKid()
	if err != nil {
		return nil, err
	}
	var (
		priv crypto.Signer
		bits int
	)
	switch {
	case alg.IsRSA():
		if !ValidRSABits(rsaBits) {
			return nil, fmt.Errorf("generate %s key: RSA size %d is not 2048, 3072 or 4096", alg, rsaBits)
		}
		k, err := rsa.GenerateKey(rand.Reader, rsaBits)
		if err != nil {
			return nil, fmt.Errorf("generate %s key: %w", alg, err)
		}
		priv, bits = k, rsaBits
	default:
		curve, ok := alg.curve()
		if !ok {
			return nil, fmt.Errorf("generate key: unsupported algorithm %q", alg)
		}
		k, err := ecdsa.GenerateKey(curve, rand.Reader)
		if err != nil {
			return nil, fmt.Errorf("generate %s key: %w", alg, err)
		}
		priv, bits = k, curve.Params().BitSize
	}
	pub, err := publicJWK(priv.Public(), kid, alg)
	if err != nil {
		return nil, err
	}
	return &generatedKey{kid: kid, alg: alg, bits: bits, private: priv, publicJWK: pub}, nil
}

// publicJWK renders the public half of a key as a JWK with exactly the
// members docs/ARCHITECTURE.md, "The JWKS" allows: kty, kid, use, alg and the
// public parameters.
func publicJWK(pub crypto.PublicKey, kid string, alg Algorithm) (json.RawMessage, error) {
	k, err := publicJWKKey(pub, kid, alg)
	if err != nil {
		return nil, err
	}
	b, err := json.Marshal(k)
	if err != nil {
		return nil, fmt.Errorf("marshal public JWK of kid %s: %w", kid, err)
	}
	return b, nil
}

// publicJWKKey builds the jwx public key with kid, use and alg set.
func publicJWKKey(pub crypto.PublicKey, kid string, alg Algorithm) (jwk.Key, error) {
	k, err := jwk.FromRaw(pub)
	if err != nil {
		return nil, fmt.Errorf("public JWK of kid %s: %w", kid, err)
	}
	if _, isPrivate := k.(interface{ D() []byte }); isPrivate {
		return nil, fmt.Errorf("public JWK of kid %s: refusing a private key", kid)
	}
	for name, value := range map[string]any{
		jwk.KeyIDKey:     kid,
		jwk.KeyUsageKey:  "sig",
		jwk.AlgorithmKey: alg.jwa(),
	} {
		if err := k.Set(name, value); err != nil {
			return nil, fmt.Errorf("public JWK of kid %s: set %s: %w", kid, name, err)
		}
	}
	return k, nil
}

// marshalPrivate encodes a private key as PKCS#8 DER, the form that is sealed.
func marshalPrivate(k crypto.Signer) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		return nil, fmt.Errorf("encode private key: %w", err)
	}
	return der, nil
}

// ErrKeyMismatch means a sealed private key opened but is not the key its
// row describes: another type, curve or size than the row's alg and
// key_bits, or another key than its stored public JWK.
var ErrKeyMismatch = errors.New("private key does not match its row")

// parsePrivate decodes a PKCS#8 private key and checks it fits alg and bits.
func parsePrivate(der []byte, alg Algorithm, bits int) (crypto.Signer, error) {
	k, err := x509.ParsePKCS8PrivateKey(der)
	if err != nil {
		return nil, fmt.Errorf("decode private key: %w", err)
	}
	switch k := k.(type) {
	case *rsa.PrivateKey:
		if !alg.IsRSA() {
			return nil, fmt.Errorf("RSA key for %s", alg)
		}
		if n := k.N.BitLen(); n != bits || !ValidRSABits(n) {
			return nil, fmt.Errorf("RSA key of %d bits for key_bits %d", n, bits)
		}
		k.Precompute()
		return k, nil
	case *ecdsa.PrivateKey:
		curve, ok := alg.curve()
		if !ok || k.Curve != curve {
			return nil, fmt.Errorf("ECDSA key on %s for %s", k.Curve.Params().Name, alg)
		}
		if n := curve.Params().BitSize; n != bits {
			return nil, fmt.Errorf("ECDSA key of %d bits for key_bits %d", n, bits)
		}
		return k, nil
	}
	return nil, fmt.Errorf("unsupported key type %T", k)
}

// openStored unseals a stored key and checks that it is the key its row
// describes: the private key must fit the row's alg and key_bits, and the
// public key derived from it must have the RFC 7638 thumbprint of the stored
// public_jwk. It returns the private key and the public JWK derived from
// it, which is what gets published: the stored column is only a cache that
// must agree (docs/ARCHITECTURE.md, "Key integrity").
func openStored(s *Sealer, sk storedKey) (crypto.Signer, json.RawMessage, error) {
	if _, err := ParseAlgorithm(string(sk.Alg)); err != nil {
		return nil, nil, fmt.Errorf("open kid %s of issuer %q: %w: %w", sk.Kid, sk.Issuer, ErrKeyMismatch, err)
	}
	der, err := s.Open(sk.KEKID, sk.binding(), sk.sealed)
	if err != nil {
		return nil, nil, err
	}
	defer clear(der)
	priv, err := parsePrivate(der, sk.Alg, sk.Bits)
	if err != nil {
		return nil, nil, fmt.Errorf("open kid %s of issuer %q: %w: %w", sk.Kid, sk.Issuer, ErrKeyMismatch, err)
	}
	derived, err := publicJWK(priv.Public(), sk.Kid, sk.Alg)
	if err != nil {
		return nil, nil, err
	}
	got, err := thumbprint(derived)
	if err != nil {
		return nil, nil, fmt.Errorf("open kid %s of issuer %q: %w", sk.Kid, sk.Issuer, err)
	}
	want, err := thumbprint(sk.PublicJWK)
	if err != nil {
		return nil, nil, fmt.Errorf("open kid %s of issuer %q: %w: stored public JWK: %w", sk.Kid, sk.Issuer, ErrKeyMismatch, err)
	}
	if got != want {
		return nil, nil, fmt.Errorf("open kid %s of issuer %q: %w: the stored public JWK has thumbprint %s, the private key's is %s (RFC 7638)",
			sk.Kid, sk.Issuer, ErrKeyMismatch, want, got)
	}
	return priv, derived, nil
}
