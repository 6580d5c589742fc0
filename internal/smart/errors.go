package smart

import (
	"context"
	"errors"
	"fmt"
	"net/http"
)

// ErrUnavailable means the Koppeltaal domain could not be reached or asked
// for the request to be retried: a connection failure, a timeout, a 5xx,
// 408 or 429 from its discovery or token endpoint. Nothing was obtained;
// the caller may try again later, and the HTTP layer answers 503 with
// Retry-After.
var ErrUnavailable = errors.New("koppeltaal domain unavailable")

// ErrRefused means the domain's token endpoint refused the token request
// (a 4xx with an OAuth error, RFC 6749 §5.2): an unregistered client_id, an
// assertion signed with a key the domain does not know, a scope it does not
// grant. Retrying does not help until the registration or configuration is
// fixed. Errors that wrap it are *RefusedError.
var ErrRefused = errors.New("token request refused")

// RefusedError is a refusal by the token endpoint, with the OAuth error
// code it gave (RFC 6749 §5.2, e.g. "invalid_client"). It matches
// ErrRefused with errors.Is.
type RefusedError struct {
	Issuer      string // the portal issuer (slug) that asked
	Status      int    // the HTTP status of the answer
	Code        string // the OAuth error code; empty when the body had none
	Description string // the error_description, cut to maxDescription bytes
}

// Error names the issuer, the status and the OAuth error.
func (e *RefusedError) Error() string {
	msg := fmt.Sprintf("issuer %q: %v: %d", e.Issuer, ErrRefused, e.Status)
	if e.Code != "" {
		msg += " " + e.Code
	}
	if e.Description != "" {
		msg += ": " + e.Description
	}
	return msg
}

// Is makes errors.Is(err, ErrRefused) true.
func (e *RefusedError) Is(target error) bool { return target == ErrRefused }

// maxDescription bounds the error_description kept from a refusal.
const maxDescription = 200

// unavailable wraps err with ErrUnavailable and context.
func unavailable(op string, err error) error {
	return fmt.Errorf("%s: %w: %w", op, ErrUnavailable, err)
}

// transportError classifies an error of http.Client.Do: a connection
// failure, a timeout or a broken response is the domain being away
// (ErrUnavailable); the caller giving up (context.Canceled) stays as it is.
// net/http errors name the method and URL, never the form that carried the
// assertion.
func transportError(op string, err error) error {
	if errors.Is(err, context.Canceled) {
		return fmt.Errorf("%s: %w", op, err)
	}
	return unavailable(op, err)
}

// transientStatus reports whether an HTTP status means "try again later".
func transientStatus(status int) bool {
	return status >= 500 || status == http.StatusRequestTimeout || status == http.StatusTooManyRequests
}
