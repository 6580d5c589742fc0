package main

import (
	"context"
	"flag"
	"fmt"
	"text/tabwriter"

	"github.com/ehealth-nl/portal/internal/apikeys"
)

func apikeysCommand() *command {
	return &command{
		name:    "apikeys",
		summary: "create, list and revoke API keys (bearer keys for /api/v1)",
		usage:   "portal apikeys create|list|revoke",
		help: `Scope launch may create launches (POST /api/v1/launches, /api/v1/launch-tokens);
scope admin may manage modules, keys and read the audit trail. Only a SHA-256
of the secret is stored: the secret is printed once, at creation.`,
		sub: []*command{
			{name: "create", summary: "create a key and print its secret once", usage: "portal apikeys create --name NAME --scope launch|admin", env: serviceEnv, run: apikeysCreate},
			{name: "list", summary: "show every key (never the secrets)", usage: "portal apikeys list", env: serviceEnv, run: apikeysList},
			{name: "revoke", summary: "revoke the valid key with that name, at once", usage: "portal apikeys revoke NAME", env: serviceEnv, run: apikeysRevoke},
		},
	}
}

func apikeysCreate(ctx context.Context, c *cli, args []string) error {
	fs := flag.NewFlagSet("apikeys create", flag.ContinueOnError)
	name := fs.String("name", "", "a name for the key, e.g. the portal backend that uses it")
	scope := fs.String("scope", "", "launch or admin")
	rest, err := parseFlags(fs, args)
	if err != nil {
		return err
	}
	if len(rest) > 0 {
		return wantArgs("apikeys create", rest, 0, "")
	}
	if *name == "" {
		return usagef("apikeys create: --name is required")
	}
	sc, err := apikeys.ParseScope(*scope)
	if err != nil {
		return usagef("apikeys create: --scope: %s", err)
	}
	env, err := openEnvironment(ctx, c)
	if err != nil {
		return err
	}
	defer env.close()
	key, secret, err := apikeys.NewStore(env.pool).Create(ctx, *name, sc, env.clock())
	if err != nil {
		return err
	}
	fmt.Fprintf(c.stderr, "API key %q (scope %s, id %s) created. Its secret follows; it is not shown again:\n", key.Name, key.Scope, key.KeyID)
	fmt.Fprintln(c.stdout, secret)
	return nil
}

func apikeysList(ctx context.Context, c *cli, args []string) error {
	if len(args) > 0 {
		return wantArgs("apikeys list", args, 0, "")
	}
	env, err := openEnvironment(ctx, c)
	if err != nil {
		return err
	}
	defer env.close()
	list, err := apikeys.NewStore(env.pool).List(ctx)
	if err != nil {
		return err
	}
	tw := tabwriter.NewWriter(c.stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tSCOPE\tKEY ID\tCREATED\tREVOKED")
	for _, k := range list {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", k.Name, k.Scope, k.KeyID, stamp(k.CreatedAt), stamp(k.RevokedAt))
	}
	return tw.Flush()
}

func apikeysRevoke(ctx context.Context, c *cli, args []string) error {
	if err := wantArgs("apikeys revoke", args, 1, "the name of the key to revoke"); err != nil {
		return err
	}
	env, err := openEnvironment(ctx, c)
	if err != nil {
		return err
	}
	defer env.close()
	k, err := apikeys.NewStore(env.pool).Revoke(ctx, args[0], env.clock())
	if err != nil {
		return err
	}
	fmt.Fprintf(c.stdout, "API key %s (id %s) revoked\n", k.Name, k.KeyID)
	return nil
}
