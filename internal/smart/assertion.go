package smart

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"time"

	"github.com/ehealth-nl/portal/internal/keys"
)

// assertionClaims are the claims of a client assertion, and nothing else:
// RFC 7523 §3 (iss, sub, aud, exp; jti and iat as SMART App Launch,
// client-confidential-asymmetric, requires them). The field order is the
// order of the JSON.
type assertionClaims struct {
	Iss string `json:"iss"` // the client_id (RFC 7523 §3 rule 1)
	Sub string `json:"sub"` // the client_id again (RFC 7523 §3 rule 2)
	Aud string `json:"aud"` // the token endpoint, one string (RFC 7523 §3 rule 3; SMART)
	JTI string `json:"jti"` // unique per assertion, so the server can refuse a replay
	IAT int64  `json:"iat"`
	Exp int64  `json:"exp"` // at most five minutes after iat (SMART)
}

// assertion builds and signs a private_key_jwt client assertion for the
// token endpoint aud at time now, with the issuer's active key: header alg,
// kid and typ JWT and no jku (keys.Signer.Sign; the domain's auth server
// finds the key through the client's registered jwks_uri, TOP-KT-013).
// The payload is marshalled here, not by a JWT library, so aud is a string
// and no claim is added.
func assertion(s *keys.Signer, aud string, now time.Time, lifetime time.Duration) ([]byte, error) {
	jti, err := newJTI()
	if err != nil {
		return nil, err
	}
	iat := now.Unix()
	payload, err := json.Marshal(assertionClaims{Iss: s.Issuer.ClientID, Sub: s.Issuer.ClientID, Aud: aud, JTI: jti,
		IAT: iat, Exp: iat + int64(lifetime/time.Second)})
	if err != nil {
		return nil, fmt.Errorf("client assertion: %w", err)
	}
	signed, err := s.Sign(payload)
	if err != nil {
		return nil, fmt.Errorf("client assertion: %w", err)
	}
	return signed, nil
}

// newJTI returns 128 random bits as 32 lower-case hex digits.
func newJTI() (string, error) {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("client assertion: jti: %w", err)
	}
	return hex.EncodeToString(b), nil
}
