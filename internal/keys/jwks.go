package keys

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"sort"

	"github.com/lestrrat-go/jwx/v2/jwk"
)

// jwksOrder puts the active key first, then the next key, then retired keys
// newest first: verifiers that try keys in order find the likely one first.
func jwksOrder(ks []Key) {
	rank := map[State]int{StateActive: 0, StateNext: 1, StateRetired: 2}
	sort.SliceStable(ks, func(i, j int) bool {
		if rank[ks[i].State] != rank[ks[j].State] {
			return rank[ks[i].State] < rank[ks[j].State]
		}
		if !ks[i].CreatedAt.Equal(ks[j].CreatedAt) {
			return ks[i].CreatedAt.After(ks[j].CreatedAt)
		}
		return ks[i].Kid < ks[j].Kid
	})
}

// buildJWKS serializes the public keys as a JWK Set (docs/ARCHITECTURE.md,
// "The JWKS"). Each JWK (derived from the opened private key by the
// keyring) is parsed again and reduced to its public part, so a private
// member can never be published. A key whose JWK is unreadable is left out
// (and reported); the others are published. The bytes depend only on the keys, so every instance serves the
// same body and ETag. It returns the keys it published.
func buildJWKS(published []Key) (JWKS, []Key, error) {
	ks := append([]Key(nil), published...)
	jwksOrder(ks)
	set := jwk.NewSet()
	var (
		good []Key
		errs []error
	)
	for _, k := range ks {
		key, err := publicOnly(k)
		if err == nil {
			err = set.AddKey(key)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("public JWK of kid %s: %w", k.Kid, err))
			continue
		}
		good = append(good, k)
	}
	body, err := json.Marshal(set)
	if err != nil {
		return emptyJWKS(), nil, fmt.Errorf("marshal JWKS: %w", err)
	}
	return newJWKS(body), good, errors.Join(errs...)
}

// publicOnly rebuilds a stored key's JWK from its public part.
func publicOnly(k Key) (jwk.Key, error) {
	parsed, err := jwk.ParseKey(k.PublicJWK)
	if err != nil {
		return nil, err
	}
	var raw any
	if err := parsed.Raw(&raw); err != nil {
		return nil, err
	}
	pub, err := jwk.PublicRawKeyOf(raw)
	if err != nil {
		return nil, err
	}
	return publicJWKKey(pub, k.Kid, k.Alg)
}

func emptyJWKS() JWKS {
	body := []byte(`{"keys":[]}`)
	return newJWKS(body)
}

// etagOf is a strong entity tag: a hash of the exact bytes served.
func etagOf(body []byte) string {
	sum := sha256.Sum256(body)
	return `"` + base64.RawURLEncoding.EncodeToString(sum[:18]) + `"`
}

// newJWKS is the set served with body.
func newJWKS(body []byte) JWKS {
	etag := etagOf(body)
	return JWKS{Body: body, ETag: etag, ETagHeader: []string{etag}}
}
