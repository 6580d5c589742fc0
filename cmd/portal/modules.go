package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"text/tabwriter"

	"github.com/ehealth-nl/portal/internal/launch"
)

func modulesCommand() *command {
	flagsUsage := "--launch-url URL --audience Device/ID [--issuer SLUG] [--definition ActivityDefinition/ID] [--method post|get] [--fields koppeltaal|hti|all]"
	return &command{
		name:    "modules",
		summary: "register, change, list and remove the modules the portal launches",
		usage:   "portal modules add|update|list|remove",
		help: `A module has a launch URL (https, or http on a loopback host; any http with
PORTAL_ALLOW_HTTP_MODULES=true), an audience (its Device/<id>: the token's aud),
an optional default definition, a method (post: auto-submitting form; get:
redirect with query parameters, for launch type "redirect") and the fields it
receives (koppeltaal: iss+launch; hti: token; all: iss+launch+token).`,
		sub: []*command{
			{name: "add", summary: "register a module", usage: "portal modules add SLUG " + flagsUsage, env: databaseEnv, run: modulesAdd},
			{name: "update", summary: "change a module; unset flags keep their value", usage: "portal modules update SLUG [" + flagsUsage + "]", env: databaseEnv, run: modulesUpdate},
			{name: "list", summary: "show every module", usage: "portal modules list [--json]", env: databaseEnv, run: modulesList},
			{name: "remove", summary: "remove a module (launch records keep what they launched)", usage: "portal modules remove SLUG", env: databaseEnv, run: modulesRemove},
		},
	}
}

type moduleFlags struct {
	fs                                                      *flag.FlagSet
	issuer, launchURL, audience, definition, method, fields *string
}

func newModuleFlags(name string) *moduleFlags {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	return &moduleFlags{
		fs:         fs,
		issuer:     fs.String("issuer", "", "issuer that signs its tokens (default: the default issuer)"),
		launchURL:  fs.String("launch-url", "", "the module's launch URL (Endpoint.address)"),
		audience:   fs.String("audience", "", "the module's Device/<id>: the token's aud"),
		definition: fs.String("definition", "", "default ActivityDefinition/<id>"),
		method:     fs.String("method", "", "post (default) or get"),
		fields:     fs.String("fields", "", "koppeltaal (default), hti or all"),
	}
}

func (f *moduleFlags) apply(m *launch.Module) {
	f.fs.Visit(func(fl *flag.Flag) {
		v := fl.Value.String()
		switch fl.Name {
		case "issuer":
			m.Issuer = v
		case "launch-url":
			m.LaunchURL = v
		case "audience":
			m.Audience = v
		case "definition":
			m.DefaultDefinition = v
		case "method":
			m.Method = launch.Method(v)
		case "fields":
			m.Fields = launch.FieldSet(v)
		}
	})
}

// moduleError turns a validation error into a usage error naming the flags.
func moduleError(err error) error {
	var v *launch.ValidationError
	if !errors.As(err, &v) {
		return err
	}
	flagName := map[string]string{"slug": "SLUG", "issuer": "--issuer", "launch_url": "--launch-url", "audience": "--audience",
		"default_definition": "--definition", "method": "--method", "fields": "--fields"}
	msg := ""
	for i, fe := range v.Fields {
		if i > 0 {
			msg += "; "
		}
		msg += flagName[fe.Field] + ": " + fe.Reason
	}
	return usagef("%s", msg)
}

func modulesAdd(ctx context.Context, c *cli, args []string) error {
	return putModule(ctx, c, args, "add")
}

func modulesUpdate(ctx context.Context, c *cli, args []string) error {
	return putModule(ctx, c, args, "update")
}

// putModule is modules add (the module must be new; unset flags take their
// defaults) and modules update (it must exist; unset flags keep their value).
func putModule(ctx context.Context, c *cli, args []string, verb string) error {
	f := newModuleFlags("modules " + verb)
	rest, err := parseFlags(f.fs, args)
	if err != nil {
		return err
	}
	if err := wantArgs("modules "+verb, rest, 1, "the module's slug"); err != nil {
		return err
	}
	env, err := openDatabase(ctx, c)
	if err != nil {
		return err
	}
	defer env.close()
	reg := launch.NewRegistry(env.pool, env.cfg.AllowHTTPModules)
	m, err := reg.Module(ctx, rest[0])
	switch {
	case verb == "add" && err == nil:
		return usagef("modules add: %q exists; use modules update", rest[0])
	case verb == "add" && errors.Is(err, launch.ErrModuleNotFound):
		issuer := *f.issuer
		if issuer == "" {
			if issuer, err = defaultIssuer(ctx, env); err != nil {
				return err
			}
		}
		m = launch.Module{Slug: rest[0], Issuer: issuer}
	case err != nil:
		return err
	}
	f.apply(&m)
	stored, _, err := reg.Put(ctx, m, env.clock())
	if err != nil {
		return moduleError(err)
	}
	done := map[string]string{"add": "added", "update": "updated"}[verb]
	fmt.Fprintf(c.stdout, "module %s %s: %s %s → %s (aud %s, fields %s)\n", terminalSafe(stored.Slug), done, terminalSafe(stored.Issuer),
		terminalSafe(string(stored.Method)), terminalSafe(stored.LaunchURL), terminalSafe(stored.Audience), terminalSafe(string(stored.Fields)))
	return nil
}

func modulesList(ctx context.Context, c *cli, args []string) error {
	fs := flag.NewFlagSet("modules list", flag.ContinueOnError)
	asJSON := fs.Bool("json", false, "print JSON")
	rest, err := parseFlags(fs, args)
	if err != nil {
		return err
	}
	if len(rest) > 0 {
		return wantArgs("modules list", rest, 0, "")
	}
	env, err := openDatabase(ctx, c)
	if err != nil {
		return err
	}
	defer env.close()
	list, err := launch.NewRegistry(env.pool, env.cfg.AllowHTTPModules).Modules(ctx)
	if err != nil {
		return err
	}
	if *asJSON {
		if list == nil {
			list = []launch.Module{}
		}
		return writeTerminalJSON(c.stdout, list)
	}
	tw := tabwriter.NewWriter(c.stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "SLUG\tISSUER\tMETHOD\tFIELDS\tAUDIENCE\tDEFINITION\tLAUNCH URL")
	for _, m := range list {
		// Validated when stored, but read back from the database: printed terminal-safe.
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", terminalSafe(m.Slug), terminalSafe(m.Issuer), terminalSafe(string(m.Method)),
			terminalSafe(string(m.Fields)), terminalSafe(m.Audience), terminalSafe(dash(m.DefaultDefinition)), terminalSafe(m.LaunchURL))
	}
	return tw.Flush()
}

func modulesRemove(ctx context.Context, c *cli, args []string) error {
	if err := wantArgs("modules remove", args, 1, "the module's slug"); err != nil {
		return err
	}
	env, err := openDatabase(ctx, c)
	if err != nil {
		return err
	}
	defer env.close()
	if err := launch.NewRegistry(env.pool, env.cfg.AllowHTTPModules).Delete(ctx, args[0], env.clock()); err != nil {
		return err
	}
	fmt.Fprintf(c.stdout, "module %s removed\n", terminalSafe(args[0]))
	return nil
}
