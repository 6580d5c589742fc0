package launch

import (
	"errors"
	"strings"

	"github.com/ehealth-nl/portal/internal/postgres"
)

// FieldError names one invalid request field and says what is wrong with it.
type FieldError struct {
	Field  string // the request field, as named in JSON
	Reason string // what is wrong with it
}

// ValidationError lists every invalid field of a request; nothing was
// written.
type ValidationError struct {
	Fields []FieldError // every invalid field, in request order
}

// Error lists every invalid field with its reason.
func (e *ValidationError) Error() string {
	parts := make([]string, len(e.Fields))
	for i, f := range e.Fields {
		parts[i] = f.Field + ": " + f.Reason
	}
	return "invalid request: " + strings.Join(parts, "; ")
}

func (e *ValidationError) add(field, reason string) {
	e.Fields = append(e.Fields, FieldError{Field: field, Reason: reason})
}

// orNil returns the error when it holds a field, nil otherwise.
func (e *ValidationError) orNil() error {
	if len(e.Fields) == 0 {
		return nil
	}
	return e
}

// Errors of the launch flow.
var (
	// ErrTicketNotFound means no launch link has that ticket.
	ErrTicketNotFound = errors.New("launch link not found")
	// ErrTicketUsed means the link was followed before; tokens are
	// single-use, so the launch must be started again from the portal.
	ErrTicketUsed = errors.New("launch link already used")
	// ErrTicketExpired means the link was not followed in time.
	ErrTicketExpired = errors.New("launch link expired")
	// ErrModuleChanged means the module was removed or re-pointed (another
	// launch URL, audience, method or fields) after the link was made; the
	// link no longer leads anywhere and the launch must be started again.
	ErrModuleChanged = errors.New("module changed since the launch link was made")
	// ErrUnavailable means the database could not be reached; nothing was
	// changed and the request may be retried. It is postgres.ErrUnavailable.
	ErrUnavailable = postgres.ErrUnavailable
	// ErrCallerRevoked means the caller's API key (Caller.KeyID) was
	// revoked after this instance last found it valid: nothing was stored,
	// and the request is answered as one with an unknown key.
	ErrCallerRevoked = errors.New("the API key was revoked")
)

// storageError classifies a database error with the one classifier of
// the storage boundary (postgres.Error): transient failures wrap
// ErrUnavailable, anything else is a bug.
func storageError(op string, err error) error { return postgres.Error(op, err) }
