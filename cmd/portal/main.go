// Command portal is the portal-side HTI launch issuer for Koppeltaal 2.0:
// it serves the JWKS and launch endpoints and manages issuers, keys and
// the schema. Run "portal --help" for the commands.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args, os.Getenv, os.Stdout, os.Stderr)
	stop()
	if err != nil {
		os.Exit(reportError(os.Stderr, err))
	}
}

// reportError prints a command's error as one line and returns the exit
// status: 2 for a mistake in the command line, 1 otherwise. The message
// may hold text from the database or a token (a kid, a claim), so it is
// made terminal-safe; a multi-line error stays on one line.
func reportError(w io.Writer, err error) int {
	fmt.Fprintln(w, "portal:", terminalSafe(err.Error()))
	var ue *usageError
	if errors.As(err, &ue) {
		return 2
	}
	return 1
}
