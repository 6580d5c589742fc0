package fhirdomain

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strconv"
	"strings"
)

// response is what one GET answered that a caller has to judge: 200 with a
// body, 304, or 404/410. Every other status is an error from get.
type response struct {
	status int
	etag   string
	body   []byte
}

// get sends GET {base}/{rel} for the issuer with a Bearer token, Accept:
// application/fhir+json, the context's trace headers and, when etag is set,
// If-None-Match. A 401 makes it invalidate the token and try once more
// with a fresh one (the token may have expired, or been revoked, since
// Tokens handed it out). Config.Timeout bounds both tries together.
func (c *Client) get(ctx context.Context, issuer, rel, etag string) (response, error) {
	res, err := c.exchange(ctx, issuer, rel, etag)
	c.health.record(issuer, err, c.cfg.Now())
	if c.cfg.ObserveRequest != nil {
		c.cfg.ObserveRequest(resourceTypeOf(rel), requestOutcome(res, err))
	}
	return res, err
}

// resourceTypeOf is the resource type a relative request is about:
// "Task" for Task/t-1 and for ActivityDefinition?url=… alike.
func resourceTypeOf(rel string) string {
	if i := strings.IndexAny(rel, "/?"); i >= 0 {
		return rel[:i]
	}
	return rel
}

// requestOutcome classifies what get returned for the metrics.
func requestOutcome(res response, err error) RequestOutcome {
	switch {
	case errors.Is(err, ErrUnavailable):
		return RequestUnavailable
	case err != nil:
		return RequestError
	case res.status == http.StatusNotModified:
		return RequestNotModified
	case res.status == http.StatusNotFound || res.status == http.StatusGone:
		return RequestNotFound
	}
	return RequestOK
}

// exchange is get without the bookkeeping.
func (c *Client) exchange(ctx context.Context, issuer, rel, etag string) (response, error) {
	op := "GET " + rel
	base, err := c.base(issuer)
	if err != nil {
		return response{}, err
	}
	ctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
	defer cancel()
	res, err := c.withToken(ctx, issuer, op, func(token string) (response, error) {
		return c.send(ctx, http.MethodGet, base+"/"+rel, token, etag, nil)
	})
	if err != nil {
		return response{}, err
	}
	switch s := res.status; {
	case s == http.StatusOK:
		return res, nil
	case s == http.StatusNotModified && etag != "":
		return res, nil
	case s == http.StatusNotFound || s == http.StatusGone:
		return res, nil
	case s == http.StatusForbidden || s == http.StatusTooManyRequests || s >= 500 || (s >= 300 && s < 400):
		return response{}, unavailable(op, fmt.Errorf("status %d: %s", s, outcomeText(res.body)))
	default:
		// A 400 for a read or a search we built is our bug, not an outage.
		return response{}, fmt.Errorf("%s: unexpected status %d: %s", op, s, outcomeText(res.body))
	}
}

// withToken sends a request (send) with the issuer's access token, and
// once more with a fresh token after a 401 (the token may have expired, or
// been revoked, since Tokens handed it out). Every failure is
// ErrUnavailable; a 401 to the fresh token too keeps its status.
func (c *Client) withToken(ctx context.Context, issuer, op string, send func(token string) (response, error)) (response, error) {
	token, err := c.cfg.Tokens.Token(ctx, issuer)
	if err != nil {
		return response{}, unavailable(op+": access token", err)
	}
	res, err := send(token)
	if err != nil {
		return response{}, unavailable(op, err)
	}
	if res.status != http.StatusUnauthorized {
		return res, nil
	}
	c.cfg.Tokens.Invalidate(issuer, token)
	if token, err = c.cfg.Tokens.Token(ctx, issuer); err != nil {
		return response{}, unavailable(op+": fresh access token after 401", err)
	}
	if res, err = send(token); err != nil {
		return response{}, unavailable(op+" (with a fresh token)", err)
	}
	if res.status == http.StatusUnauthorized {
		return response{status: res.status}, unavailable(op, fmt.Errorf("401 with a fresh token too: %s", outcomeText(res.body)))
	}
	return res, nil
}

// send makes one request (a GET, or a write with a FHIR JSON body) and
// reads at most MaxBodyBytes of the answer.
func (c *Client) send(ctx context.Context, method, target, token, etag string, body []byte) (response, error) {
	var reader io.Reader
	if body != nil {
		reader = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, target, reader)
	if err != nil {
		return response{}, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/fhir+json")
	}
	req.Header.Set("Accept", "application/fhir+json")
	req.Header.Set("Authorization", "Bearer "+token)
	if etag != "" {
		req.Header.Set("If-None-Match", etag)
	}
	tr := TraceFrom(ctx)
	for name, v := range map[string]string{"X-Request-Id": tr.RequestID, "X-Correlation-Id": tr.CorrelationID, "X-Trace-Id": tr.TraceID} {
		if v != "" {
			req.Header.Set(name, v)
		}
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return response{}, err
	}
	defer resp.Body.Close()
	limit := c.cfg.MaxBodyBytes
	if resp.ContentLength > limit {
		return response{}, fmt.Errorf("%w: Content-Length %d, limit %d bytes", ErrTooLarge, resp.ContentLength, limit)
	}
	respBody, err := io.ReadAll(io.LimitReader(resp.Body, limit+1))
	if err != nil {
		return response{}, fmt.Errorf("reading the body: %w", err)
	}
	if int64(len(respBody)) > limit {
		return response{}, fmt.Errorf("%w: more than %d bytes", ErrTooLarge, limit)
	}
	res := response{status: resp.StatusCode, etag: resp.Header.Get("ETag"), body: respBody}
	if res.status == http.StatusOK && method == http.MethodGet {
		mt, _, err := mime.ParseMediaType(resp.Header.Get("Content-Type"))
		if err != nil || (mt != "application/fhir+json" && mt != "application/json") {
			return response{}, fmt.Errorf("status 200 with Content-Type %q, not FHIR JSON", resp.Header.Get("Content-Type"))
		}
	}
	return res, nil
}

// head is what decode reads from a resource's JSON itself. Status is the
// code as sent: the FHIR model's enums decode a missing status as their
// first code (EndpointStatusActive for an Endpoint), so rules check this.
type head struct {
	ResourceType string `json:"resourceType"`
	ID           string `json:"id"`
	Status       string `json:"status"`
}

// decode checks that body is FHIR JSON of the resourceType want and
// unmarshals it with the FHIR model's own decoder (which refuses unknown
// codes). A body that is not is the domain's fault: ErrUnavailable.
func decode[T any](op string, body []byte, want string, unmarshal func([]byte) (T, error)) (T, head, error) {
	var zero T
	var h head
	if err := json.Unmarshal(body, &h); err != nil {
		return zero, h, unavailable(op, fmt.Errorf("not FHIR JSON: %w", err))
	}
	if h.ResourceType != want {
		return zero, h, unavailable(op, fmt.Errorf("answered a %q, want %s", h.ResourceType, want))
	}
	v, err := unmarshal(body)
	if err != nil {
		return zero, h, unavailable(op, fmt.Errorf("not a valid FHIR R4 %s: %w", want, err))
	}
	return v, h, nil
}

// outcomeText is the gist of an error body for an error message: the
// OperationOutcome's first issue, or the start of whatever it is.
func outcomeText(body []byte) string {
	if issues := OutcomeIssues(body); len(issues) > 0 {
		return issues[0]
	}
	body = bytes.TrimSpace(body)
	if len(body) > 200 {
		return strconv.Quote(string(body[:200])) + "..."
	}
	return strconv.Quote(string(body))
}

// OutcomeIssues renders each issue of an OperationOutcome on one line: its
// code, text and diagnostics, and the elements it is about in brackets
// ("structure Missing required property (AuditEvent.type)"). It returns
// nil when body is not an OperationOutcome.
func OutcomeIssues(body []byte) []string {
	var oo struct {
		ResourceType string `json:"resourceType"`
		Issue        []struct {
			Code        string   `json:"code"`
			Diagnostics string   `json:"diagnostics"`
			Expression  []string `json:"expression"`
			Details     struct {
				Text string `json:"text"`
			} `json:"details"`
		} `json:"issue"`
	}
	if json.Unmarshal(body, &oo) != nil || oo.ResourceType != "OperationOutcome" {
		return nil
	}
	lines := make([]string, 0, len(oo.Issue))
	for _, i := range oo.Issue {
		text := strings.Join(strings.Fields(i.Code+" "+i.Details.Text+" "+i.Diagnostics), " ")
		if len(i.Expression) > 0 {
			text += " (" + strings.Join(i.Expression, ", ") + ")"
		}
		lines = append(lines, text)
	}
	return lines
}
