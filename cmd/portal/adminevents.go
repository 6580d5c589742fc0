package main

import (
	"context"
	"flag"
	"fmt"
	"text/tabwriter"

	"github.com/ehealth-nl/portal/internal/adminevents"
)

func adminEventsCommand() *command {
	return &command{
		name:    "admin-events",
		summary: "read the trail of changes to issuers, keys, modules and API keys",
		usage:   "portal admin-events list [filters]",
		sub: []*command{
			{name: "list", summary: "show changes, newest first: who changed what, when, and what it was before and after",
				usage: "portal admin-events list [--actor apikey:NAME|cli:USER@HOST|serve:HOST] [--action module.put] [--target module:SLUG] [--from RFC3339] [--to RFC3339] [--limit N] [--cursor C] [--json]",
				help: `Every change made through the admin API or this command line is recorded in the
transaction of the change. Actions: module.put, module.delete, issuer.add,
issuer.update, issuer.configure, key.rotate, key.revoke, key.reseal,
apikey.create, apikey.revoke. --json prints the states before and after.`,
				env: databaseEnv, run: adminEventsList},
		},
	}
}

func adminEventsList(ctx context.Context, c *cli, args []string) error {
	fs := flag.NewFlagSet("admin-events list", flag.ContinueOnError)
	var f adminevents.Filter
	fs.StringVar(&f.Actor, "actor", "", "only changes by this actor")
	fs.StringVar(&f.Action, "action", "", "only this action, e.g. module.put")
	fs.StringVar(&f.Target, "target", "", "only changes to this target, e.g. module:diary")
	timeFlag(fs, "from", "at or after (RFC 3339)", &f.From)
	timeFlag(fs, "to", "before (RFC 3339)", &f.To)
	fs.IntVar(&f.Limit, "limit", 50, "events per page, 1-500")
	fs.StringVar(&f.Cursor, "cursor", "", "the cursor printed after the previous page")
	asJSON := fs.Bool("json", false, "print JSON, with the states before and after")
	rest, err := parseFlags(fs, args)
	if err != nil {
		return err
	}
	if len(rest) > 0 {
		return wantArgs("admin-events list", rest, 0, "")
	}
	env, err := openDatabase(ctx, c)
	if err != nil {
		return err
	}
	defer env.close()
	page, err := adminevents.NewStore(env.pool).List(ctx, f)
	if err != nil {
		return err
	}
	if *asJSON {
		return writeTerminalJSON(c.stdout, page)
	}
	tw := tabwriter.NewWriter(c.stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "AT\tACTOR\tACTION\tTARGET")
	for _, e := range page.Events {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", stamp(e.At), terminalSafe(e.Actor), terminalSafe(e.Action), terminalSafe(e.Target))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if page.Next != "" {
		fmt.Fprintf(c.stdout, "more: --cursor %s\n", page.Next)
	}
	return nil
}
