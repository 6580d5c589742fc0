package launch

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"
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
	// ErrUnavailable means the database could not be reached; nothing was
	// changed and the request may be retried.
	ErrUnavailable = errors.New("launch storage unavailable")
)

// storageError wraps a database error: failures to reach the database
// become ErrUnavailable (a 503 for the client), errors the server reported
// stay as they are (a bug, a 500).
func storageError(op string, err error) error {
	var pgErr *pgconn.PgError
	if errors.Is(err, context.Canceled) || (errors.As(err, &pgErr) && !transientSQLState(pgErr.Code)) {
		return fmt.Errorf("%s: %w", op, err)
	}
	return fmt.Errorf("%s: %w: %v", op, ErrUnavailable, err)
}

// transientSQLState reports SQLSTATEs that mean "try again": connection
// exceptions (08), a server shutting down or starting (57P01-57P03),
// exhausted resources (53) and transaction conflicts (40001, 40P01).
func transientSQLState(code string) bool {
	switch {
	case strings.HasPrefix(code, "08"), strings.HasPrefix(code, "53"):
		return true
	}
	switch code {
	case "57P01", "57P02", "57P03", "40001", "40P01":
		return true
	}
	return false
}
