package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/ehealth-nl/portal/internal/adminevents"
	"github.com/ehealth-nl/portal/internal/config"
)

// usageError is a mistake in the command line; main exits 2 for it.
type usageError struct{ msg string }

// Error is the message printed before the exit with status 2.
func (e *usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error {
	return &usageError{fmt.Sprintf(format, args...)}
}

// cli is what every command gets: the process's environment and streams.
type cli struct {
	getenv func(string) string
	stdout io.Writer
	stderr io.Writer
}

// command is one node of the command tree.
type command struct {
	name    string
	summary string
	usage   string
	help    string // longer text after the usage line
	env     []string
	run     func(ctx context.Context, c *cli, args []string) error
	sub     []*command
}

// serviceEnv marks commands that read the whole service configuration.
var serviceEnv = []string{"*"}

// databaseEnv marks commands that never open a private key: they read only
// config.DatabaseVariables.
var databaseEnv = config.DatabaseVariables

// noEnv marks commands that read no environment variable.
const noEnv = "(none)"

func commands() *command {
	return &command{
		name:    "portal",
		summary: "portal-side HTI 2.0 launch issuer for Koppeltaal 2.0",
		usage:   "portal COMMAND [SUBCOMMAND] [FLAGS]",
		help: `portal signs HTI launch tokens with rotating keys kept in PostgreSQL, publishes
its public keys as a JWKS, and starts module launches for patients,
practitioners and related persons.

Every command that touches the database reads DATABASE_URL; commands that make
or open keys also read the key-encryption key (PORTAL_KEK or PORTAL_KEKS).
Run "portal COMMAND --help" for the variables a command reads.`,
		sub: []*command{
			serveCommand(),
			migrateCommand(),
			keysCommand(),
			issuersCommand(),
			modulesCommand(),
			apikeysCommand(),
			launchesCommand(),
			adminEventsCommand(),
			auditEventsCommand(),
			tokenCommand(),
		},
	}
}

// run is the whole program: main calls it with the real process state and
// tests call it with their own.
func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	c := &cli{getenv: getenv, stdout: stdout, stderr: stderr}
	if len(args) > 0 {
		args = args[1:]
	}
	// Changes to issuers, keys, modules and API keys are recorded with who
	// made them: the operator at this terminal, or, for what a starting
	// instance writes from its configuration, the instance's host.
	if len(args) > 0 && args[0] == "serve" {
		ctx = adminevents.WithActor(ctx, adminevents.ServeActor())
	} else {
		ctx = adminevents.WithActor(ctx, adminevents.CommandLineActor())
	}
	return dispatch(ctx, c, commands(), args, "portal")
}

func dispatch(ctx context.Context, c *cli, cmd *command, args []string, path string) error {
	if len(cmd.sub) == 0 {
		for _, a := range args {
			if a == "--help" || a == "-help" || a == "-h" {
				printHelp(c.stdout, cmd, path)
				return nil
			}
		}
		return cmd.run(ctx, c, args)
	}
	if len(args) == 0 {
		printHelp(c.stderr, cmd, path)
		return usagef("%s: a subcommand is required", path)
	}
	switch args[0] {
	case "--help", "-help", "-h", "help":
		printHelp(c.stdout, cmd, path)
		return nil
	}
	for _, s := range cmd.sub {
		if s.name == args[0] {
			return dispatch(ctx, c, s, args[1:], path+" "+s.name)
		}
	}
	printHelp(c.stderr, cmd, path)
	return usagef("%s: unknown subcommand %q", path, args[0])
}

func printHelp(w io.Writer, cmd *command, path string) {
	fmt.Fprintf(w, "%s — %s\n\nUsage: %s\n", path, cmd.summary, cmd.usage)
	if cmd.help != "" {
		fmt.Fprintf(w, "\n%s\n", cmd.help)
	}
	if len(cmd.sub) > 0 {
		fmt.Fprintln(w, "\nCommands:")
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		for _, s := range cmd.sub {
			fmt.Fprintf(tw, "  %s\t%s\n", s.name, s.summary)
		}
		_ = tw.Flush()
	}
	if len(cmd.env) == 1 && cmd.env[0] == noEnv {
		fmt.Fprintln(w, "\nEnvironment: none is read.")
	} else if len(cmd.env) > 0 {
		fmt.Fprintln(w, "\nEnvironment:")
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		for _, v := range config.Variables() {
			if cmd.env[0] == "*" || contains(cmd.env, v.Name) {
				fmt.Fprintf(tw, "  %s\t%s\t%s\n", v.Name, v.Default, v.Doc)
			}
		}
		_ = tw.Flush()
	}
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// parseFlags parses flags that may appear before, between or after the
// positional arguments, and returns the positional ones.
func parseFlags(fs *flag.FlagSet, args []string) ([]string, error) {
	fs.SetOutput(io.Discard)
	var positional []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, usagef("%s: %s", fs.Name(), strings.TrimSpace(err.Error()))
		}
		if fs.NArg() == 0 {
			return positional, nil
		}
		positional = append(positional, fs.Arg(0))
		args = fs.Args()[1:]
	}
}

// timeFlag defines a flag that takes an RFC 3339 time into dst.
func timeFlag(fs *flag.FlagSet, name, usage string, dst *time.Time) {
	fs.Func(name, usage, func(v string) error {
		t, err := time.Parse(time.RFC3339, v)
		if err != nil {
			return errors.New("must be an RFC 3339 time such as 2026-11-24T09:00:00Z")
		}
		*dst = t
		return nil
	})
}

// wantArgs checks the number of positional arguments.
func wantArgs(name string, got []string, n int, what string) error {
	if len(got) != n {
		if n == 0 {
			return usagef("%s: unexpected argument %q", name, got[0])
		}
		return usagef("%s: want %s", name, what)
	}
	return nil
}
