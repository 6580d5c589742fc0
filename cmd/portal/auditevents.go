package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"strings"
	"text/tabwriter"

	"github.com/ehealth-nl/portal/internal/auditoutbox"
	"github.com/ehealth-nl/portal/internal/fhirdomain"
)

func auditEventsCommand() *command {
	return &command{
		name:    "audit-events",
		summary: "watch and retry the AuditEvents that report launches to the Koppeltaal domains",
		usage:   "portal audit-events list|retry",
		sub: []*command{
			{name: "list", summary: "show the outbox, newest first: each launch's AuditEvent and how its delivery stands",
				usage: "portal audit-events list [--state pending|failed|delivered] [--launch ID] [--limit N] [--cursor C] [--json]",
				help: `Every launch of an issuer in a Koppeltaal domain that started a module or was
refused has one AuditEvent (TOP-KT-011), written with the launch. pending: not
delivered yet (the domain was away, or the next attempt is due later);
delivered: the domain's FHIR server stored it; failed: the server refused it as
invalid, with the OperationOutcome it answered (printed below the event; all of
it with --json). Delivered events are pruned after PORTAL_AUDIT_RETENTION.`,
				env: databaseEnv, run: auditEventsList},
			{name: "retry", summary: "send failed events again: one by its id or launch id, or every failed one",
				usage: "portal audit-events retry ID|--all-failed",
				help: `A failed event goes back to pending, due at once, with its attempts counted
anew; a running instance delivers it within PORTAL_AUDIT_POLL. Retry after the
cause is fixed (the event is rebuilt from the launch record, so a fix of the
portal's data or configuration takes effect).`,
				env: databaseEnv, run: auditEventsRetry},
		},
	}
}

func auditEventsList(ctx context.Context, c *cli, args []string) error {
	fs := flag.NewFlagSet("audit-events list", flag.ContinueOnError)
	var f auditoutbox.Filter
	fs.StringVar(&f.State, "state", "", "only events in this state: pending, failed or delivered")
	fs.StringVar(&f.Launch, "launch", "", "only the event of this launch id")
	fs.IntVar(&f.Limit, "limit", 50, "events per page, 1-500")
	fs.StringVar(&f.Cursor, "cursor", "", "the cursor printed after the previous page")
	asJSON := fs.Bool("json", false, "print JSON, with the whole OperationOutcome")
	rest, err := parseFlags(fs, args)
	if err != nil {
		return err
	}
	if len(rest) > 0 {
		return wantArgs("audit-events list", rest, 0, "")
	}
	env, err := openDatabase(ctx, c)
	if err != nil {
		return err
	}
	defer env.close()
	page, err := auditoutbox.NewStore(env.pool).List(ctx, f)
	if err != nil {
		return err
	}
	if *asJSON {
		return writeTerminalJSON(c.stdout, page)
	}
	tw := tabwriter.NewWriter(c.stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "CREATED\tSTATE\tOUTCOME\tLAUNCH\tEVENT\tISSUER\tATTEMPTS\tLAST")
	for _, e := range page.Events {
		last := "-"
		if e.LastStatus != 0 || e.LastError != "" {
			last = strings.TrimSpace(fmt.Sprintf("%s %s", statusText(e.LastStatus), firstLine(e.LastError, 120)))
		}
		// The error and the OperationOutcome come from the domain's server:
		// printed terminal-safe.
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%d\t%s\n", stamp(e.Created), e.State, e.Outcome, e.LaunchID, dash(e.ID),
			terminalSafe(e.Issuer), e.Attempts, terminalSafe(last))
		for _, issue := range fhirdomain.OutcomeIssues(e.OperationOutcome) {
			fmt.Fprintf(tw, "\t  OperationOutcome: %s\t\t\t\t\t\t\n", terminalSafe(firstLine(issue, 300)))
		}
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if page.Next != "" {
		fmt.Fprintf(c.stdout, "more: --cursor %s\n", page.Next)
	}
	return nil
}

// statusText is an HTTP status for the LAST column; none when there was
// no answer.
func statusText(status int) string {
	if status == 0 {
		return ""
	}
	return fmt.Sprintf("HTTP %d:", status)
}

// firstLine is the first line of s, cut to n bytes.
func firstLine(s string, n int) string {
	s, _, _ = strings.Cut(s, "\n")
	if len(s) > n {
		s = strings.ToValidUTF8(s[:n], "") + "…"
	}
	return s
}

func auditEventsRetry(ctx context.Context, c *cli, args []string) error {
	fs := flag.NewFlagSet("audit-events retry", flag.ContinueOnError)
	all := fs.Bool("all-failed", false, "retry every failed event")
	rest, err := parseFlags(fs, args)
	if err != nil {
		return err
	}
	switch {
	case *all && len(rest) > 0:
		return usagef("audit-events retry: give an ID or --all-failed, not both")
	case !*all && len(rest) != 1:
		return wantArgs("audit-events retry", rest, 1, "ID")
	}
	env, err := openDatabase(ctx, c)
	if err != nil {
		return err
	}
	defer env.close()
	store := auditoutbox.NewStore(env.pool)
	if *all {
		n, err := store.RetryAllFailed(ctx, env.clock())
		if err != nil {
			return err
		}
		fmt.Fprintf(c.stdout, "%d failed audit events are pending again\n", n)
		return nil
	}
	err = store.Retry(ctx, rest[0], env.clock())
	switch {
	case errors.Is(err, auditoutbox.ErrNotFound):
		return fmt.Errorf("no audit event has id or launch id %s", rest[0])
	case err != nil:
		return err
	}
	fmt.Fprintf(c.stdout, "audit event %s is pending again\n", rest[0])
	return nil
}
