package postgres

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"
)

// ErrUnavailable means the database could not be reached or asked for the
// operation to be retried (a connection failure, a timeout, a server
// shutting down, a serialization conflict). Nothing was changed; the HTTP
// layer answers 503 with Retry-After.
var ErrUnavailable = errors.New("database unavailable")

// Error is the one classification of database errors at the storage
// boundary: every store wraps what pgx returns with it. A transient failure
// wraps ErrUnavailable (a 503 for the client); anything else — a missing
// table, a constraint the code should have checked, a scan into the wrong
// type — is a bug and stays a plain error (a 500, logged with the request
// id). The message names the operation and the cause, never the query's
// parameters: pgx errors carry the statement's SQLSTATE and message only.
func Error(op string, err error) error {
	if err == nil {
		return nil
	}
	if Transient(err) {
		return fmt.Errorf("%s: %w: %v", op, ErrUnavailable, err)
	}
	return fmt.Errorf("%s: %w", op, err)
}

// Transient reports whether err means "the database is away or busy, try
// again": connection exceptions (SQLSTATE class 08), insufficient resources
// (53), operator intervention (57P01-57P03 shutdown, 57014 a cancelled or
// timed-out statement), lock timeouts (55P03), serialization failures and
// deadlocks (40001, 40P01), connection and network errors, and deadlines.
// A request whose own caller went away (context.Canceled) is not transient.
func Transient(err error) bool {
	if err == nil || errors.Is(err, context.Canceled) {
		return false
	}
	if errors.Is(err, ErrUnavailable) {
		return true
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return transientSQLState(pgErr.Code)
	}
	if errors.Is(err, context.DeadlineExceeded) || pgconn.Timeout(err) {
		return true
	}
	var (
		connectErr *pgconn.ConnectError
		netErr     net.Error
	)
	if errors.As(err, &connectErr) || errors.As(err, &netErr) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, net.ErrClosed) || pgconn.SafeToRetry(err) {
		return true
	}
	// pgx reports a connection that died mid-statement with these texts.
	msg := err.Error()
	return strings.Contains(msg, "conn closed") || strings.Contains(msg, "conn busy") ||
		strings.Contains(msg, "closed pool") || strings.Contains(msg, "failed to connect")
}

func transientSQLState(code string) bool {
	switch {
	case strings.HasPrefix(code, "08"), strings.HasPrefix(code, "53"):
		return true
	}
	switch code {
	case "57P01", "57P02", "57P03", "57014", "55P03", "40001", "40P01":
		return true
	}
	return false
}
