package testdomain

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/lestrrat-go/jwx/v2/jwk"
)

// BackendClient is a SMART backend-services client of a test's own, for
// tests that read the domain without the portal's keyring: an ES384 key
// (kid k1) whose public JWKS is served on loopback, and client_credentials
// grants with a fresh private_key_jwt assertion each.
type BackendClient struct {
	// Client is what to register with Start.
	Client
	key jwk.Key
}

// NewBackendClient makes a BackendClient with id and serves its JWKS until
// the test ends.
func NewBackendClient(t testing.TB, id string) *BackendClient {
	t.Helper()
	key, set, err := newKey("k1")
	if err != nil {
		t.Fatal(err)
	}
	jwks := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(set)
	}))
	t.Cleanup(jwks.Close)
	return &BackendClient{Client: Client{ID: id, JWKSURL: jwks.URL}, key: key}
}

// Token gets an access token from d's token endpoint for scope.
func (b *BackendClient) Token(ctx context.Context, d *Domain, scope string) (string, error) {
	token, _, err := d.fetchToken(ctx, b.key, b.ID, scope)
	return token, err
}
