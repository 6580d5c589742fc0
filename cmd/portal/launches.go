package main

import (
	"context"
	"flag"
	"fmt"
	"text/tabwriter"

	"github.com/ehealth-nl/portal/internal/launch"
)

func launchesCommand() *command {
	return &command{
		name:    "launches",
		summary: "read the launch audit trail",
		usage:   "portal launches list [filters]",
		sub: []*command{
			{name: "list", summary: "show launches, newest first: who opened what for whom, when and from where",
				usage: "portal launches list [--task Task/ID] [--user Type/ID] [--patient Patient/ID] [--module SLUG|Device/ID] [--issuer SLUG] [--outcome accepted|refused] [--from RFC3339] [--to RFC3339] [--limit N] [--cursor C] [--json]",
				help:  "Tokens and launch links are never stored, so they are never shown; the jti identifies a token.",
				env:   databaseEnv, run: launchesList},
		},
	}
}

func launchesList(ctx context.Context, c *cli, args []string) error {
	fs := flag.NewFlagSet("launches list", flag.ContinueOnError)
	var f launch.Filter
	fs.StringVar(&f.Task, "task", "", "only this Task/<id>")
	fs.StringVar(&f.User, "user", "", "only launches by this Patient, Practitioner or RelatedPerson")
	fs.StringVar(&f.Patient, "patient", "", "only launches for this Patient/<id>")
	fs.StringVar(&f.Module, "module", "", "only this module")
	fs.StringVar(&f.Issuer, "issuer", "", "only this issuer")
	fs.StringVar(&f.Outcome, "outcome", "", "only accepted or only refused launches (refused: the Koppeltaal domain did not allow them)")
	timeFlag(fs, "from", "created at or after (RFC 3339)", &f.From)
	timeFlag(fs, "to", "created before (RFC 3339)", &f.To)
	fs.IntVar(&f.Limit, "limit", 50, "records per page, 1-500")
	fs.StringVar(&f.Cursor, "cursor", "", "the cursor printed after the previous page")
	asJSON := fs.Bool("json", false, "print JSON")
	rest, err := parseFlags(fs, args)
	if err != nil {
		return err
	}
	if len(rest) > 0 {
		return wantArgs("launches list", rest, 0, "")
	}
	env, err := openDatabase(ctx, c)
	if err != nil {
		return err
	}
	defer env.close()
	svc := launch.NewService(env.pool, nil, nil, launch.Config{}, env.clock, env.log)
	page, err := svc.List(ctx, f)
	if err != nil {
		return err
	}
	if *asJSON {
		return writeTerminalJSON(c.stdout, page)
	}
	tw := tabwriter.NewWriter(c.stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "CREATED\tSTATUS\tMODULE\tTASK\tUSER\tPATIENT\tREDEEMED\tFROM\tJTI\tBY")
	for _, r := range page.Records {
		redeemed := "-"
		if r.RedeemedAt != nil {
			redeemed = stamp(*r.RedeemedAt)
		}
		// Every column is from the database, where a browser or a backend
		// put it (the client address comes from a header): printed
		// terminal-safe. The user agent is in --json.
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", stamp(r.CreatedAt), terminalSafe(r.Status), terminalSafe(r.Module),
			terminalSafe(r.Task), terminalSafe(r.User), terminalSafe(dash(r.Patient)), redeemed, terminalSafe(dash(r.ClientAddr)),
			terminalSafe(dash(r.JTI)), terminalSafe(r.CreatedBy))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if page.Next != "" {
		fmt.Fprintf(c.stdout, "more: --cursor %s\n", terminalSafe(page.Next))
	}
	return nil
}
