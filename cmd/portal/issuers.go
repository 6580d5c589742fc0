package main

import (
	"context"
	"flag"
	"fmt"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/ehealth-nl/portal/internal/keys"
)

func issuersCommand() *command {
	return &command{
		name:    "issuers",
		summary: "list, add and update issuers (Koppeltaal client_ids this portal signs as)",
		usage:   "portal issuers list|add|update",
		help: `The default issuer is configured by PORTAL_CLIENT_ID, PORTAL_FHIR_BASE_URL and
the PORTAL_* key settings and is updated at every start; add further issuers
here. Each issuer has its own keys and its JWKS at /issuers/SLUG/jwks.json.`,
		sub: []*command{
			{name: "list", summary: "show every issuer", usage: "portal issuers list [--json]", env: append([]string{"PORTAL_PUBLIC_URL"}, databaseEnv...), run: issuersList},
			{name: "add", summary: "add an issuer and create its first keys",
				usage: "portal issuers add --slug SLUG --client-id ID --fhir-base-url URL [--profile koppeltaal|hti] [--device Device/ID] [--alg ALG] [--rsa-bits N] [--rotation-period D] [--publish-lead D] [--retire-grace D]",
				help: `Unset settings take the default issuer's values from the environment. A
koppeltaal issuer signs with RS512, RS384 or ES384 (what the Koppeltaal auth
server accepts); an hti issuer, for plain HTI modules that verify tokens
themselves, may use any algorithm.`,
				env: serviceEnv, run: issuersAdd},
			{name: "update", summary: "change an issuer's settings",
				usage: "portal issuers update SLUG [--client-id ID] [--fhir-base-url URL] [--profile koppeltaal|hti] [--device Device/ID] [--alg ALG] [--rsa-bits N] [--rotation-period D] [--publish-lead D] [--retire-grace D]",
				help: `A new algorithm or key size applies from the next key on: the rotator replaces
the current next key at once and the new one signs after the publish lead.`,
				env: serviceEnv, run: issuersUpdate},
		},
	}
}

// issuerFlags are the settable fields of an issuer; nil means "not given".
type issuerFlags struct {
	clientID, fhirBase, alg *string
	profile, device         *string
	rsaBits                 *string
	rotation, lead, grace   *string
	fs                      *flag.FlagSet
}

func newIssuerFlags(name string) *issuerFlags {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	return &issuerFlags{
		fs:       fs,
		clientID: fs.String("client-id", "", "Koppeltaal client_id: the JWT iss claim"),
		fhirBase: fs.String("fhir-base-url", "", "FHIR base URL of the Koppeltaal domain: the form field iss"),
		profile:  fs.String("profile", "", "koppeltaal (RS512, RS384, ES384) or hti (plain HTI modules: any algorithm)"),
		device:   fs.String("device", "", "the portal's own Device/<id> in the Koppeltaal domain (koppeltaal issuers; empty: not in a domain)"),
		alg:      fs.String("alg", "", "signing algorithm: RS512, RS384, ES384; for profile hti also PS256, PS384, PS512, ES256"),
		rsaBits:  fs.String("rsa-bits", "", "RSA key size: 2048, 3072 or 4096"),
		rotation: fs.String("rotation-period", "", "how long a key signs, e.g. 24h"),
		lead:     fs.String("publish-lead", "", "how long a next key is published before it signs, e.g. 1h"),
		grace:    fs.String("retire-grace", "", "how long a retired key stays published, e.g. 1h"),
	}
}

// apply overwrites the fields of is that were given on the command line.
func (f *issuerFlags) apply(is *keys.Issuer) error {
	set := map[string]bool{}
	f.fs.Visit(func(fl *flag.Flag) { set[fl.Name] = true })
	if set["client-id"] {
		is.ClientID = *f.clientID
	}
	if set["fhir-base-url"] {
		is.FHIRBaseURL = *f.fhirBase
	}
	if set["profile"] {
		p, err := keys.ParseProfile(*f.profile)
		if err != nil {
			return usagef("--profile: %s", err)
		}
		is.Profile = p
	}
	if set["device"] {
		is.Device = *f.device
	}
	if set["alg"] {
		alg, err := keys.ParseAlgorithm(*f.alg)
		if err != nil {
			return usagef("--alg: %s", err)
		}
		is.Alg = alg
	}
	if set["rsa-bits"] {
		n, err := strconv.Atoi(*f.rsaBits)
		if err != nil {
			return usagef("--rsa-bits: %q is not a number", *f.rsaBits)
		}
		is.RSABits = n
	}
	for name, target := range map[string]*time.Duration{"rotation-period": &is.Policy.RotationPeriod, "publish-lead": &is.Policy.PublishLead, "retire-grace": &is.Policy.RetireGrace} {
		if !set[name] {
			continue
		}
		raw := map[string]*string{"rotation-period": f.rotation, "publish-lead": f.lead, "retire-grace": f.grace}[name]
		d, err := time.ParseDuration(*raw)
		if err != nil {
			return usagef("--%s: %q must be a Go duration such as 90s or 24h", name, *raw)
		}
		*target = d
	}
	return nil
}

// issuerFlagName maps an issuer field to its command-line flag.
var issuerFlagName = map[string]string{
	"slug": "--slug", "client_id": "--client-id", "fhir_base_url": "--fhir-base-url", "profile": "--profile", "device": "--device", "alg": "--alg",
	"rsa_bits": "--rsa-bits", "rotation_period": "--rotation-period", "publish_lead": "--publish-lead", "retire_grace": "--retire-grace",
}

func validateIssuer(env *environment, is keys.Issuer) error {
	if err := is.Validate(env.cfg.Limits()); err != nil {
		if ie, ok := err.(*keys.IssuerError); ok {
			return usagef("%s: %s", issuerFlagName[ie.Field], ie.Reason)
		}
		return err
	}
	return nil
}

func issuersList(ctx context.Context, c *cli, args []string) error {
	fs := flag.NewFlagSet("issuers list", flag.ContinueOnError)
	asJSON := fs.Bool("json", false, "print JSON")
	rest, err := parseFlags(fs, args)
	if err != nil {
		return err
	}
	if len(rest) > 0 {
		return wantArgs("issuers list", rest, 0, "")
	}
	env, err := openDatabase(ctx, c)
	if err != nil {
		return err
	}
	defer env.close()
	list, err := env.store.Issuers(ctx)
	if err != nil {
		return err
	}
	if *asJSON {
		type view struct {
			Slug           string `json:"slug"`
			ClientID       string `json:"client_id"`
			FHIRBaseURL    string `json:"fhir_base_url"`
			Profile        string `json:"profile"`
			Device         string `json:"device,omitempty"`
			Alg            string `json:"alg"`
			RSABits        int    `json:"rsa_bits"`
			RotationPeriod string `json:"rotation_period"`
			PublishLead    string `json:"publish_lead"`
			RetireGrace    string `json:"retire_grace"`
			Default        bool   `json:"default"`
			JWKSURL        string `json:"jwks_url"`
		}
		views := []view{}
		for _, is := range list {
			views = append(views, view{is.Slug, is.ClientID, is.FHIRBaseURL, string(is.Profile), is.Device, string(is.Alg), is.RSABits,
				is.Policy.RotationPeriod.String(), is.Policy.PublishLead.String(), is.Policy.RetireGrace.String(),
				is.IsDefault, strings.TrimRight(strings.TrimSpace(c.getenv("PORTAL_PUBLIC_URL")), "/") + "/issuers/" + is.Slug + "/jwks.json"})
		}
		return writeTerminalJSON(c.stdout, views)
	}
	tw := tabwriter.NewWriter(c.stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "SLUG\tCLIENT_ID\tFHIR BASE URL\tPROFILE\tDEVICE\tALG\tROTATION\tLEAD\tGRACE\tDEFAULT")
	for _, is := range list {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%v\n", is.Slug, terminalSafe(is.ClientID), terminalSafe(is.FHIRBaseURL), is.Profile, dash(is.Device), is.Alg,
			is.Policy.RotationPeriod, is.Policy.PublishLead, is.Policy.RetireGrace, is.IsDefault)
	}
	return tw.Flush()
}

func issuersAdd(ctx context.Context, c *cli, args []string) error {
	f := newIssuerFlags("issuers add")
	slug := f.fs.String("slug", "", "short name of the issuer: lower-case letters, digits and dashes")
	rest, err := parseFlags(f.fs, args)
	if err != nil {
		return err
	}
	if len(rest) > 0 {
		return wantArgs("issuers add", rest, 0, "")
	}
	env, err := openEnvironment(ctx, c)
	if err != nil {
		return err
	}
	defer env.close()
	def := env.cfg.DefaultIssuer
	is := keys.Issuer{Slug: *slug, Profile: def.Profile, Alg: def.Alg, RSABits: def.RSABits, Policy: def.Policy}
	if err := f.apply(&is); err != nil {
		return err
	}
	if err := validateIssuer(env, is); err != nil {
		return err
	}
	if err := env.store.CreateIssuer(ctx, is, env.clock()); err != nil {
		return err
	}
	change, err := env.rotator.EnsureKeys(ctx, is.Slug)
	if err != nil {
		return fmt.Errorf("issuer %q added, but its keys were not created (the service creates them at its next rotation check): %w", is.Slug, err)
	}
	fmt.Fprintf(c.stdout, "issuer %s added: %s\nJWKS: %s/issuers/%s/jwks.json\n", is.Slug, change, env.cfg.PublicURL, is.Slug)
	return nil
}

func issuersUpdate(ctx context.Context, c *cli, args []string) error {
	f := newIssuerFlags("issuers update")
	rest, err := parseFlags(f.fs, args)
	if err != nil {
		return err
	}
	if err := wantArgs("issuers update", rest, 1, "the slug of the issuer to update"); err != nil {
		return err
	}
	env, err := openEnvironment(ctx, c)
	if err != nil {
		return err
	}
	defer env.close()
	is, err := env.store.Issuer(ctx, rest[0])
	if err != nil {
		return err
	}
	if is.IsDefault {
		return usagef("issuers update: %q is the default issuer; it is configured by the PORTAL_* environment variables and updated at every start", is.Slug)
	}
	if err := f.apply(&is); err != nil {
		return err
	}
	if err := validateIssuer(env, is); err != nil {
		return err
	}
	if err := env.store.UpdateIssuer(ctx, is, env.clock()); err != nil {
		return err
	}
	change, err := env.rotator.EnsureKeys(ctx, is.Slug)
	if err != nil {
		return err
	}
	fmt.Fprintf(c.stdout, "issuer %s updated: %s\n", is.Slug, change)
	return nil
}
