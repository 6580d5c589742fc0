package main

import (
	"context"
	"flag"
	"fmt"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/ehealth-nl/portal/internal/keys"
)

func keysCommand() *command {
	return &command{
		name:    "keys",
		summary: "list, rotate, revoke and reseal signing keys",
		usage:   "portal keys list|rotate|revoke|reseal [--issuer SLUG]",
		help: `Every change is announced to all running instances (PostgreSQL NOTIFY), which
reload their keyring within moments; instances also reload every
PORTAL_KEYRING_REFRESH. --issuer defaults to the default issuer.`,
		sub: []*command{
			{name: "list", summary: "show an issuer's keys and their states", usage: "portal keys list [--issuer SLUG] [--json]", env: serviceEnv, run: keysList},
			{name: "rotate", summary: "activate the next key now and retire the active one",
				usage: "portal keys rotate [--issuer SLUG] [--ignore-publish-lead]",
				help: `Refuses when the next key has not been published for the publish lead yet
(verifiers with a cached JWKS might not know it); --ignore-publish-lead
rotates anyway.`,
				env: serviceEnv, run: keysRotate},
			{name: "revoke", summary: "withdraw a key at once (compromise): out of the JWKS, private part erased",
				usage: "portal keys revoke KID [--issuer SLUG]",
				help: `If KID is the active key, the next key takes over in the same transaction and
a new next key is created. Tokens already signed with KID stop verifying as
soon as verifiers refetch the JWKS. Older kids may start with "-": give them
after --, or anywhere as long as they are not a flag of this command.`,
				env: serviceEnv, run: keysRevoke},
			{name: "reseal", summary: "re-encrypt private keys under the current (first) KEK, as seal v2",
				usage: "portal keys reseal [--issuer SLUG | --all-issuers]",
				help: `Run it once every instance has the new KEK first in PORTAL_KEKS
(new-base64,old-base64). It also rewrites keys sealed as v1 (before migration
0003) as v2. It prints how many keys are still sealed under other KEKs or as v1;
when none is left under the old KEK, remove it from PORTAL_KEKS. A key that
does not open is named and left as it is (the service refuses it too); the
command then exits non-zero.`,
				env: serviceEnv, run: keysReseal},
		},
	}
}

// issuerFlag registers --issuer and returns a function resolving its value.
func issuerFlag(fs *flag.FlagSet) *string {
	return fs.String("issuer", "", "issuer slug (default: the default issuer)")
}

func resolveIssuer(env *environment, flagValue string) string {
	if flagValue != "" {
		return flagValue
	}
	return env.cfg.DefaultIssuer.Slug
}

func keysList(ctx context.Context, c *cli, args []string) error {
	fs := flag.NewFlagSet("keys list", flag.ContinueOnError)
	issuer := issuerFlag(fs)
	asJSON := fs.Bool("json", false, "print JSON")
	rest, err := parseFlags(fs, args)
	if err != nil {
		return err
	}
	if len(rest) > 0 {
		return wantArgs("keys list", rest, 0, "")
	}
	env, err := openEnvironment(ctx, c)
	if err != nil {
		return err
	}
	defer env.close()
	list, err := env.store.Keys(ctx, resolveIssuer(env, *issuer))
	if err != nil {
		return err
	}
	// Newest first: what an operator looks for.
	sort.SliceStable(list, func(i, j int) bool { return list[i].CreatedAt.After(list[j].CreatedAt) })
	if *asJSON {
		views := make([]keys.Summary, 0, len(list))
		for _, k := range list {
			views = append(views, k.Summary())
		}
		return writeTerminalJSON(c.stdout, views)
	}
	tw := tabwriter.NewWriter(c.stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "KID\tSTATE\tALG\tCREATED\tACTIVATED\tRETIRED\tLEAVES JWKS\tKEK")
	for _, k := range list {
		leaves := stamp(k.ExpiresAt)
		if k.State == keys.StateRevoked {
			leaves = "revoked " + stamp(k.RevokedAt)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", terminalSafe(k.Kid), k.State, algWithSize(k), stamp(k.CreatedAt),
			stamp(k.ActivatedAt), stamp(k.RetiredAt), leaves, terminalSafe(dash(k.KEKID)))
	}
	return tw.Flush()
}

func algWithSize(k keys.Key) string {
	if k.Alg.IsRSA() {
		return fmt.Sprintf("%s/%d", k.Alg, k.Bits)
	}
	return string(k.Alg)
}

func stamp(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.UTC().Format("2006-01-02 15:04:05Z")
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func keysRotate(ctx context.Context, c *cli, args []string) error {
	fs := flag.NewFlagSet("keys rotate", flag.ContinueOnError)
	issuer := issuerFlag(fs)
	ignoreLead := fs.Bool("ignore-publish-lead", false, "rotate even if the next key was published less than the publish lead ago")
	rest, err := parseFlags(fs, args)
	if err != nil {
		return err
	}
	if len(rest) > 0 {
		return wantArgs("keys rotate", rest, 0, "")
	}
	env, err := openEnvironment(ctx, c)
	if err != nil {
		return err
	}
	defer env.close()
	change, err := env.rotator.Rotate(ctx, resolveIssuer(env, *issuer), *ignoreLead)
	if err != nil {
		return err
	}
	fmt.Fprintf(c.stdout, "issuer %s: %s\n", change.Issuer, terminalSafe(change.String()))
	return nil
}

// parseKidArgs is parseFlags for commands that take a kid: older kids are
// base64url and may start with "-", so an argument after "--", or one that
// starts with "-" but names no flag of fs, is a positional argument rather
// than an unknown flag. New kids are hex and never start with "-".
func parseKidArgs(fs *flag.FlagSet, args []string) ([]string, error) {
	var flags, positional []string
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			positional = append(positional, args[i+1:]...)
			break
		}
		name, hasValue := strings.TrimLeft(a, "-"), false
		if j := strings.IndexByte(name, '='); j >= 0 {
			name, hasValue = name[:j], true
		}
		fl := fs.Lookup(name)
		if !strings.HasPrefix(a, "-") || a == "-" || fl == nil {
			positional = append(positional, a)
			continue
		}
		flags = append(flags, a)
		if b, ok := fl.Value.(interface{ IsBoolFlag() bool }); !hasValue && !(ok && b.IsBoolFlag()) && i+1 < len(args) {
			i++
			flags = append(flags, args[i])
		}
	}
	rest, err := parseFlags(fs, flags)
	if err != nil {
		return nil, err
	}
	return append(rest, positional...), nil
}

func keysRevoke(ctx context.Context, c *cli, args []string) error {
	fs := flag.NewFlagSet("keys revoke", flag.ContinueOnError)
	issuer := issuerFlag(fs)
	rest, err := parseKidArgs(fs, args)
	if err != nil {
		return err
	}
	if err := wantArgs("keys revoke", rest, 1, "the kid to revoke"); err != nil {
		return err
	}
	env, err := openEnvironment(ctx, c)
	if err != nil {
		return err
	}
	defer env.close()
	change, err := env.rotator.Revoke(ctx, resolveIssuer(env, *issuer), rest[0])
	if err != nil {
		return err
	}
	fmt.Fprintf(c.stdout, "issuer %s: %s\n", change.Issuer, terminalSafe(change.String()))
	return nil
}

func keysReseal(ctx context.Context, c *cli, args []string) error {
	fs := flag.NewFlagSet("keys reseal", flag.ContinueOnError)
	issuer := issuerFlag(fs)
	all := fs.Bool("all-issuers", false, "reseal the keys of every issuer")
	rest, err := parseFlags(fs, args)
	if err != nil {
		return err
	}
	if len(rest) > 0 {
		return wantArgs("keys reseal", rest, 0, "")
	}
	if *all && *issuer != "" {
		return usagef("keys reseal: give --issuer or --all-issuers, not both")
	}
	env, err := openEnvironment(ctx, c)
	if err != nil {
		return err
	}
	defer env.close()
	target := resolveIssuer(env, *issuer)
	if *all {
		target = ""
	}
	res, err := env.rotator.Reseal(ctx, target)
	if err != nil {
		return err
	}
	fmt.Fprintf(c.stdout, "resealed %d key(s) under KEK %s as seal v2\n", len(res.Resealed), env.sealer.CurrentKEK())
	if res.RemainingV1 > 0 {
		fmt.Fprintf(c.stdout, "still sealed as v1: %d key(s) — run keys reseal --all-issuers\n", res.RemainingV1)
	}
	if len(res.Remaining) == 0 {
		fmt.Fprintln(c.stdout, "no key of any issuer is sealed under another KEK: older KEKs may be removed")
		return res.Err()
	}
	ids := make([]string, 0, len(res.Remaining))
	for id := range res.Remaining {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	for _, id := range ids {
		fmt.Fprintf(c.stdout, "still sealed under KEK %s: %d key(s) — keep it, or run keys reseal --all-issuers\n", id, res.Remaining[id])
	}
	return res.Err()
}
