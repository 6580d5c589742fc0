package keys

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
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
// right id, a tampered row, or a row moved to another issuer, kid or alg.
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

// sealingAAD binds a ciphertext to its row: moving sealed bytes to another
// issuer, kid or algorithm makes them fail to open.
func sealingAAD(issuer, kid string, alg Algorithm) []byte {
	return []byte("portal signing key v1\x00" + issuer + "\x00" + kid + "\x00" + string(alg))
}

// Seal encrypts plaintext for the row (issuer, kid, alg) under the current
// KEK and returns the KEK id with nonce||ciphertext.
func (s *Sealer) Seal(issuer, kid string, alg Algorithm, plaintext []byte) (kekID string, sealed []byte, err error) {
	aead := s.aeads[s.current]
	nonce := make([]byte, aead.NonceSize())
	if _, err := rand.Read(nonce); err != nil {
		return "", nil, fmt.Errorf("seal kid %s: read nonce: %w", kid, err)
	}
	return s.current, aead.Seal(nonce, nonce, plaintext, sealingAAD(issuer, kid, alg)), nil
}

// Open decrypts a sealed private key of the row (issuer, kid, alg).
func (s *Sealer) Open(kekID, issuer, kid string, alg Algorithm, sealed []byte) ([]byte, error) {
	aead, ok := s.aeads[kekID]
	if !ok {
		return nil, fmt.Errorf("open kid %s of issuer %q: sealed under %q: %w (configured: %v)", kid, issuer, kekID, ErrUnknownKEK, s.order)
	}
	if len(sealed) < aead.NonceSize()+aead.Overhead() {
		return nil, fmt.Errorf("open kid %s of issuer %q under %q: %w", kid, issuer, kekID, ErrOpenFailed)
	}
	n := aead.NonceSize()
	plain, err := aead.Open(nil, sealed[:n], sealed[n:], sealingAAD(issuer, kid, alg))
	if err != nil {
		return nil, fmt.Errorf("open kid %s of issuer %q under %q: %w", kid, issuer, kekID, ErrOpenFailed)
	}
	return plain, nil
}
