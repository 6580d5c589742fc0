package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"strings"
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
of the secret is stored: the secret is printed once, at creation.

A launch key created with --issuer may launch only modules of those issuers,
that is only under their client_ids: give each portal backend its own key,
limited to its portal's issuer. A key without --issuer may launch for any
issuer, which suits only a deployment serving a single portal.`,
		sub: []*command{
			{name: "create", summary: "create a key and print its secret once", usage: "portal apikeys create NAME --scope launch|admin [--issuer SLUG[,SLUG...]]...", env: databaseEnv, run: apikeysCreate},
			{name: "list", summary: "show every key (never the secrets)", usage: "portal apikeys list", env: databaseEnv, run: apikeysList},
			{name: "revoke", summary: "revoke the valid key with that name, at once", usage: "portal apikeys revoke NAME", env: databaseEnv, run: apikeysRevoke},
		},
	}
}

// issuerList is the value of a repeatable --issuer flag; each use may hold
// several slugs separated by commas.
type issuerList []string

// String is the flag's value as given, comma-separated.
func (l *issuerList) String() string { return strings.Join(*l, ",") }

// Set adds the comma-separated slugs of one --issuer.
func (l *issuerList) Set(v string) error {
	for _, slug := range strings.Split(v, ",") {
		if slug = strings.TrimSpace(slug); slug == "" {
			return fmt.Errorf("empty issuer slug in %q", v)
		}
		*l = append(*l, strings.TrimSpace(slug))
	}
	return nil
}

func apikeysCreate(ctx context.Context, c *cli, args []string) error {
	fs := flag.NewFlagSet("apikeys create", flag.ContinueOnError)
	name := fs.String("name", "", "the key's name, as an alternative to the NAME argument")
	scope := fs.String("scope", "", "launch or admin")
	var issuers issuerList
	fs.Var(&issuers, "issuer", "limit a launch key to this issuer's modules (repeatable, or comma-separated)")
	rest, err := parseFlags(fs, args)
	if err != nil {
		return err
	}
	switch {
	case len(rest) > 1 || (len(rest) == 1 && *name != ""):
		return usagef("apikeys create: want one NAME")
	case len(rest) == 1:
		*name = rest[0]
	case *name == "":
		return usagef("apikeys create: want the key's NAME, e.g. the portal backend that uses it")
	}
	sc, err := apikeys.ParseScope(*scope)
	if err != nil {
		return usagef("apikeys create: --scope: %s", err)
	}
	if len(issuers) > 0 && sc != apikeys.ScopeLaunch {
		return usagef("apikeys create: --issuer limits a launch key; an %s key does not launch", sc)
	}
	env, err := openDatabase(ctx, c)
	if err != nil {
		return err
	}
	defer env.close()
	key, secret, err := apikeys.NewStore(env.pool).Create(ctx, *name, sc, env.clock(), issuers...)
	if errors.Is(err, apikeys.ErrInvalidIssuer) || errors.Is(err, apikeys.ErrUnknownIssuer) {
		return usagef("apikeys create: --issuer: %s (portal issuers list shows the issuers)", err)
	}
	if err != nil {
		return err
	}
	fmt.Fprintf(c.stderr, "API key %q (scope %s, id %s, %s) created. Its secret follows; it is not shown again:\n",
		key.Name, key.Scope, key.KeyID, issuerLimit(key))
	fmt.Fprintln(c.stdout, secret)
	return nil
}

// issuerLimit says for which issuers a key may launch, terminal-safe.
func issuerLimit(k apikeys.Key) string {
	switch {
	case k.Scope != apikeys.ScopeLaunch:
		return "-"
	case len(k.Issuers) == 0:
		return "any issuer"
	}
	return "issuers " + terminalSafe(strings.Join(k.Issuers, ","))
}

func apikeysList(ctx context.Context, c *cli, args []string) error {
	if len(args) > 0 {
		return wantArgs("apikeys list", args, 0, "")
	}
	env, err := openDatabase(ctx, c)
	if err != nil {
		return err
	}
	defer env.close()
	list, err := apikeys.NewStore(env.pool).List(ctx)
	if err != nil {
		return err
	}
	tw := tabwriter.NewWriter(c.stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tSCOPE\tLAUNCHES FOR\tKEY ID\tCREATED\tREVOKED")
	for _, k := range list {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", terminalSafe(k.Name), terminalSafe(string(k.Scope)), issuerLimit(k),
			terminalSafe(k.KeyID), stamp(k.CreatedAt), stamp(k.RevokedAt))
	}
	return tw.Flush()
}

func apikeysRevoke(ctx context.Context, c *cli, args []string) error {
	if err := wantArgs("apikeys revoke", args, 1, "the name of the key to revoke"); err != nil {
		return err
	}
	env, err := openDatabase(ctx, c)
	if err != nil {
		return err
	}
	defer env.close()
	k, err := apikeys.NewStore(env.pool).Revoke(ctx, args[0], env.clock())
	if err != nil {
		return err
	}
	fmt.Fprintf(c.stdout, "API key %s (id %s) revoked\n", terminalSafe(k.Name), terminalSafe(k.KeyID))
	return nil
}
