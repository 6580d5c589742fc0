package fhirdomain

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
)

// RejectedError means the FHIR server answered a write with a client error
// (a 4xx other than 401 and 429): Status, and the OperationOutcome it sent
// (nil when the body was not one). Whether sending again can help is the
// caller's to judge: a 400 or 422 says the resource is invalid.
type RejectedError struct {
	Status  int
	Outcome json.RawMessage // the server's OperationOutcome, as sent
	Text    string          // its gist, for a log line
}

// Error gives the status and the gist of the server's answer.
func (e *RejectedError) Error() string {
	return fmt.Sprintf("fhirdomain: the server refused the write: status %d: %s", e.Status, e.Text)
}

// Invalid reports whether the server refused the resource itself (400 or
// 422): sending the same resource again will be refused again.
func (e *RejectedError) Invalid() bool {
	return e.Status == http.StatusBadRequest || e.Status == http.StatusUnprocessableEntity
}

// Put writes a resource with PUT {base}/{resourceType}/{id} (update as
// create: the client chooses the id, so a write sent again after a lost
// answer replaces the resource instead of adding a second), with the
// issuer's access token, the context's trace headers and Content-Type
// application/fhir+json. A 401 makes it invalidate the token and try once
// more with a fresh one. It returns the status of the server's answer (0
// when there was none) and nil for a 2xx, ErrUnavailable for no
// answer, a 5xx, 429, a redirect or a 401 with a fresh token too, and a
// *RejectedError for another 4xx.
func (c *Client) Put(ctx context.Context, issuer, resourceType, id string, body []byte) (int, error) {
	res, err := c.put(ctx, issuer, resourceType+"/"+id, body)
	var rejected *RejectedError
	if err == nil || errors.As(err, &rejected) {
		c.health.record(issuer, nil, c.cfg.Now()) // the server answered
	} else {
		c.health.record(issuer, err, c.cfg.Now())
	}
	if c.cfg.ObserveRequest != nil {
		outcome := RequestOK
		switch {
		case errors.Is(err, ErrUnavailable):
			outcome = RequestUnavailable
		case err != nil:
			outcome = RequestError
		}
		c.cfg.ObserveRequest(resourceType, outcome)
	}
	return res.status, err
}

// put is Put without the bookkeeping.
func (c *Client) put(ctx context.Context, issuer, rel string, body []byte) (response, error) {
	op := "PUT " + rel
	base, err := c.base(issuer)
	if err != nil {
		return response{}, err
	}
	ctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
	defer cancel()
	res, err := c.withToken(ctx, issuer, op, func(token string) (response, error) {
		return c.send(ctx, http.MethodPut, base+"/"+rel, token, "", body)
	})
	if err != nil {
		return res, err
	}
	// Every answer below keeps its status, for the caller's records.
	switch s := res.status; {
	case s >= 200 && s < 300: // 200 or 201, or 202/204 from a server asked for no body
		return res, nil
	case s == http.StatusTooManyRequests || s >= 500 || (s >= 300 && s < 400) || s < 200:
		return response{status: s}, unavailable(op, fmt.Errorf("status %d: %s", s, outcomeText(res.body)))
	case s >= 400:
		rejected := &RejectedError{Status: s, Text: outcomeText(res.body)}
		var oo struct {
			ResourceType string `json:"resourceType"`
		}
		if json.Unmarshal(res.body, &oo) == nil && oo.ResourceType == "OperationOutcome" {
			rejected.Outcome = json.RawMessage(res.body)
		}
		return response{status: s}, rejected
	default:
		return response{status: s}, unavailable(op, fmt.Errorf("status %d: not an answer to a write", s))
	}
}
