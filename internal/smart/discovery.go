package smart

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/ehealth-nl/portal/internal/weburl"
)

// maxDiscoveryBody bounds the smart-configuration document read.
const maxDiscoveryBody = 64 << 10

// discoveryTTL is how long a discovered token endpoint is used before it is
// looked up again; a failed token request drops it at once.
const discoveryTTL = time.Hour

// discovered is one FHIR base's cached smart-configuration.
type discovered struct {
	tokenEndpoint string
	fetchedAt     time.Time
}

// TokenEndpoint returns the token endpoint of the Koppeltaal domain whose
// FHIR base URL is fhirBase, from its
// <fhirBase>/.well-known/smart-configuration (SMART App Launch,
// "Conformance", which Koppeltaal's backend-services flow uses, TOP-KT-013).
// It is cached per FHIR base for an hour, and dropped when a token request
// to it fails. Both URLs must be https, or http on a loopback host. A
// domain that cannot be reached is ErrUnavailable; a document without a
// usable token_endpoint is a plain error (a misconfigured domain or base).
func (c *Client) TokenEndpoint(ctx context.Context, fhirBase string) (string, error) {
	base := strings.TrimSuffix(fhirBase, "/")
	c.mu.Lock()
	d, ok := c.discovery[base]
	c.mu.Unlock()
	if ok && c.now().Sub(d.fetchedAt) < discoveryTTL {
		return d.tokenEndpoint, nil
	}
	endpoint, err := c.discover(ctx, base)
	if err != nil {
		return "", err
	}
	c.mu.Lock()
	c.discovery[base] = discovered{tokenEndpoint: endpoint, fetchedAt: c.now()}
	c.mu.Unlock()
	return endpoint, nil
}

// forgetDiscovery drops a FHIR base's cached token endpoint, so that the
// next token request looks it up again.
func (c *Client) forgetDiscovery(fhirBase string) {
	c.mu.Lock()
	delete(c.discovery, strings.TrimSuffix(fhirBase, "/"))
	c.mu.Unlock()
}

// discover fetches and checks the smart-configuration of a FHIR base.
func (c *Client) discover(ctx context.Context, base string) (string, error) {
	if err := checkURL(base); err != nil {
		return "", fmt.Errorf("discover token endpoint: FHIR base: %w", err)
	}
	target := base + "/.well-known/smart-configuration"
	op := "discover token endpoint at " + target
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, target, nil)
	if err != nil {
		return "", fmt.Errorf("%s: %w", op, err)
	}
	req.Header.Set("Accept", "application/json")
	resp, err := c.http.Do(req)
	if err != nil {
		return "", transportError(op, err)
	}
	defer resp.Body.Close()
	body, err := readBounded(resp.Body, maxDiscoveryBody)
	if err != nil {
		if errors.Is(err, errTooLarge) {
			return "", fmt.Errorf("%s: %w", op, err)
		}
		return "", transportError(op, err)
	}
	switch {
	case transientStatus(resp.StatusCode):
		return "", unavailable(op, fmt.Errorf("status %d", resp.StatusCode))
	case resp.StatusCode != http.StatusOK:
		return "", fmt.Errorf("%s: status %d", op, resp.StatusCode)
	}
	var conf struct {
		TokenEndpoint string `json:"token_endpoint"`
	}
	if err := json.Unmarshal(body, &conf); err != nil {
		return "", fmt.Errorf("%s: not a JSON document: %w", op, err)
	}
	if conf.TokenEndpoint == "" {
		return "", fmt.Errorf("%s: no token_endpoint", op)
	}
	if err := checkURL(conf.TokenEndpoint); err != nil {
		return "", fmt.Errorf("%s: token_endpoint: %w", op, err)
	}
	return conf.TokenEndpoint, nil
}

// checkURL accepts an absolute https URL, or http on a loopback host
// (docs/ARCHITECTURE.md, "Module launch URLs": plain http only for a host on
// this machine), without user info or fragment.
func checkURL(s string) error {
	u, err := url.Parse(s)
	if err != nil {
		return fmt.Errorf("%q is not a URL: %w", s, err)
	}
	switch {
	case u.Host == "" || (u.Scheme != "https" && u.Scheme != "http"):
		return fmt.Errorf("%q is not an absolute http(s) URL", s)
	case u.Scheme == "http" && !weburl.IsLoopbackHost(u.Hostname()):
		return fmt.Errorf("%q uses http on a host that is not loopback; https is required", s)
	case u.User != nil || u.Fragment != "":
		return fmt.Errorf("%q has user info or a fragment", s)
	}
	return nil
}

// errTooLarge means a response body was over its bound.
var errTooLarge = errors.New("response body too large")

// readBounded reads at most limit bytes of r, and fails when there is more.
func readBounded(r io.Reader, limit int64) ([]byte, error) {
	b, err := io.ReadAll(io.LimitReader(r, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("%w (over %d bytes)", errTooLarge, limit)
	}
	return b, nil
}
