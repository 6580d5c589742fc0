package keys

import (
	"crypto"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"

	"github.com/lestrrat-go/jwx/v2/jwk"
)

// KEKSize is the length in bytes of a key-encryption key (AES-256).
const KEKSize = 32

// KEK is a key-encryption key: the AES-256 key that seals signing keys at
// rest, and the id stored beside every row it sealed.
type KEK struct {
	ID  string // stored beside every row it sealed; derived from the key by config
	Key []byte // the 32 AES-256 key bytes
}

// String hides the key material so a KEK can never end up in a log by accident.
func (k KEK) String() string { return "KEK(" + k.ID + ")" }

// KEKIDFor derives a stable, non-secret id for a KEK given without one: a
// short hash of the key, so the same PORTAL_KEK always gets the same id.
func KEKIDFor(key []byte) string {
	sum := sha256.Sum256(append([]byte("portal kek id\x00"), key...))
	return "kek-" + hex.EncodeToString(sum[:6])
}

// Sealer encrypts private keys with AES-256-GCM under the first KEK of a
// ring and decrypts them under any KEK of the ring, so an operator can move
// to a new KEK (put it first, reseal, then drop the old one).
type Sealer struct {
	current string
	aeads   map[string]cipher.AEAD
	order   []string
}

// ErrUnknownKEK means a row was sealed under a KEK id that is not configured.
var ErrUnknownKEK = errors.New("KEK not configured")

// ErrOpenFailed means the sealed bytes did not decrypt: a wrong KEK under the
// right id, a tampered row, or a row whose identity (issuer, kid, alg, key
// size or public key) was altered or swapped with another's.
var ErrOpenFailed = errors.New("sealed key does not open (wrong KEK, or the row was altered)")

// NewSealer returns a Sealer over a KEK ring; the first KEK seals.
func NewSealer(ring []KEK) (*Sealer, error) {
	if len(ring) == 0 {
		return nil, errors.New("no KEK configured")
	}
	s := &Sealer{aeads: map[string]cipher.AEAD{}}
	for i, k := range ring {
		if len(k.Key) != KEKSize {
			return nil, fmt.Errorf("KEK %q: want %d bytes, got %d", k.ID, KEKSize, len(k.Key))
		}
		if k.ID == "" {
			return nil, fmt.Errorf("KEK #%d has no id", i+1)
		}
		if _, dup := s.aeads[k.ID]; dup {
			return nil, fmt.Errorf("KEK id %q appears twice", k.ID)
		}
		block, err := aes.NewCipher(k.Key)
		if err != nil {
			return nil, fmt.Errorf("KEK %q: %w", k.ID, err)
		}
		aead, err := cipher.NewGCM(block)
		if err != nil {
			return nil, fmt.Errorf("KEK %q: %w", k.ID, err)
		}
		s.aeads[k.ID] = aead
		s.order = append(s.order, k.ID)
	}
	s.current = ring[0].ID
	return s, nil
}

// CurrentKEK is the id of the KEK that seals new keys.
func (s *Sealer) CurrentKEK() string { return s.current }

// KEKIDs lists the configured KEK ids, the sealing one first.
func (s *Sealer) KEKIDs() []string { return append([]string(nil), s.order...) }

// SealVersion says what a sealed private key is bound to (its AAD).
type SealVersion int

// The seal versions (docs/ARCHITECTURE.md, "Key integrity").
const (
	// SealV1 binds issuer, kid and alg: rows written before migration 0003.
	// serve and keys reseal rewrite them as SealV2; until then the keyring
	// still opens and uses them, after checking the key's size and its
	// public key's thumbprint against the row, which v1 does not bind.
	SealV1 SealVersion = 1
	// SealV2 binds issuer, kid, alg, key size and the RFC 7638 thumbprint of
	// the public key: no column of the row can be altered, and no sealed
	// part moved to another row, without the row failing to open.
	SealV2 SealVersion = 2
)

// Binding is the identity of a signing-key row that its sealed private part
// is bound to, as AES-GCM additional authenticated data (NIST SP 800-38D,
// 7.1): whoever can write the table but does not hold the KEK cannot make a
// row that opens, nor change one that does.
type Binding struct {
	Issuer    string          // the issuer slug
	Kid       string          // the key id
	Alg       Algorithm       // the one algorithm the key signs with
	Bits      int             // RSA modulus or EC curve size
	PublicJWK json.RawMessage // the stored public key; v2 binds its thumbprint
	Version   SealVersion     // which of the above the AAD covers
}

// aad is the additional authenticated data of the binding.
func (b Binding) aad() ([]byte, error) {
	switch b.Version {
	case SealV1:
		return []byte("portal signing key v1\x00" + b.Issuer + "\x00" + b.Kid + "\x00" + string(b.Alg)), nil
	case SealV2:
		tp, err := thumbprint(b.PublicJWK)
		if err != nil {
			return nil, fmt.Errorf("kid %s of issuer %q: stored public JWK: %w", b.Kid, b.Issuer, err)
		}
		return []byte("portal signing key v2\x00" + b.Issuer + "\x00" + b.Kid + "\x00" + string(b.Alg) +
			"\x00" + strconv.Itoa(b.Bits) + "\x00" + tp), nil
	}
	return nil, fmt.Errorf("kid %s of issuer %q: unknown seal version %d", b.Kid, b.Issuer, b.Version)
}

// thumbprint is the RFC 7638 SHA-256 thumbprint of a JWK, base64url: it
// covers the public members only, so it names the key pair whatever kid,
// use or alg the JWK carries.
func thumbprint(raw json.RawMessage) (string, error) {
	k, err := jwk.ParseKey(raw)
	if err != nil {
		return "", fmt.Errorf("parse JWK: %w", err)
	}
	sum, err := k.Thumbprint(crypto.SHA256)
	if err != nil {
		return "", fmt.Errorf("JWK thumbprint: %w", err)
	}
	return base64.RawURLEncoding.EncodeToString(sum), nil
}

// Seal encrypts plaintext for the row b under the current KEK, always as
// SealV2, and returns the KEK id with nonce||ciphertext.
func (s *Sealer) Seal(b Binding, plaintext []byte) (kekID string, sealed []byte, err error) {
	return s.sealUnder(s.current, b, plaintext)
}

// sealUnder is Seal under a given KEK of the ring: the start-up upgrade
// from SealV1 keeps each row's KEK, so that instances that do not have the
// current KEK yet still open it.
func (s *Sealer) sealUnder(kekID string, b Binding, plaintext []byte) (string, []byte, error) {
	aead, ok := s.aeads[kekID]
	if !ok {
		return "", nil, fmt.Errorf("seal kid %s of issuer %q: %w: %q", b.Kid, b.Issuer, ErrUnknownKEK, kekID)
	}
	b.Version = SealV2
	aad, err := b.aad()
	if err != nil {
		return "", nil, fmt.Errorf("seal: %w", err)
	}
	nonce := make([]byte, aead.NonceSize())
	if _, err := rand.Read(nonce); err != nil {
		return "", nil, fmt.Errorf("seal kid %s: read nonce: %w", b.Kid, err)
	}
	return kekID, aead.Seal(nonce, nonce, plaintext, aad), nil
}

// Open decrypts a sealed private key of the row b, sealed under kekID.
func (s *Sealer) Open(kekID string, b Binding, sealed []byte) ([]byte, error) {
	aead, ok := s.aeads[kekID]
	if !ok {
		return nil, fmt.Errorf("open kid %s of issuer %q: sealed under %q: %w (configured: %v)", b.Kid, b.Issuer, kekID, ErrUnknownKEK, s.order)
	}
	aad, err := b.aad()
	if err != nil {
		return nil, fmt.Errorf("open: %w: %w", ErrOpenFailed, err)
	}
	if len(sealed) < aead.NonceSize()+aead.Overhead() {
		return nil, fmt.Errorf("open kid %s of issuer %q under %q: %w", b.Kid, b.Issuer, kekID, ErrOpenFailed)
	}
	n := aead.NonceSize()
	plain, err := aead.Open(nil, sealed[:n], sealed[n:], aad)
	if err != nil {
		return nil, fmt.Errorf("open kid %s of issuer %q under %q (seal v%d): %w", b.Kid, b.Issuer, kekID, b.Version, ErrOpenFailed)
	}
	return plain, nil
}
