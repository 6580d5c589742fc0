package fhirdomain

import (
	"errors"
	"sync"
	"time"

	"github.com/ehealth-nl/portal/internal/keys"
)

// Reachability is what the last request to an issuer's domain showed.
type Reachability string

// The states Health reports.
const (
	// Reachable: the last request was answered (whatever the answer).
	Reachable Reachability = "reachable"
	// Unreachable: the last request failed with ErrUnavailable (no
	// answer, a 5xx, a refused or missing access token, a bad answer).
	Unreachable Reachability = "unreachable"
)

// Health is the state of one issuer's domain as this instance last saw it.
type Health struct {
	State Reachability `json:"state"`
	// Since is when the domain entered this state.
	Since time.Time `json:"since"`
	// Error is the last failure while Unreachable; it names requests and
	// statuses, never a token. The readiness probe, which needs no
	// authentication, does not serve it; the failed request's log line
	// holds it.
	Error string `json:"-"`
}

// health keeps the Health of each issuer's domain, from the requests
// launches make; nothing is probed on its own.
type health struct {
	mu     sync.Mutex
	states map[string]Health
}

// record notes how a request to the issuer's domain ended.
func (h *health) record(issuer string, err error, now time.Time) {
	state, msg := Reachable, ""
	if err != nil {
		if !errors.Is(err, ErrUnavailable) || errors.Is(err, keys.ErrNoActiveKey) || errors.Is(err, keys.ErrNotLoaded) ||
			errors.Is(err, keys.ErrUnknownIssuer) {
			// Our own mistake, a cancelled request, or an issuer that cannot
			// sign its client assertion: says nothing about the domain.
			return
		}
		state, msg = Unreachable, err.Error()
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.states == nil {
		h.states = make(map[string]Health)
	}
	old, ok := h.states[issuer]
	since := now.UTC()
	if ok && old.State == state {
		since = old.Since
	}
	h.states[issuer] = Health{State: state, Since: since, Error: msg}
}

// Health returns the state of each issuer's domain this instance has
// talked to, from the outcome of its last request; issuers not asked yet
// are absent. The readiness probe reports it.
func (c *Client) Health() map[string]Health {
	c.health.mu.Lock()
	defer c.health.mu.Unlock()
	out := make(map[string]Health, len(c.health.states))
	for k, v := range c.health.states {
		out[k] = v
	}
	return out
}
