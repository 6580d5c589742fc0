package main

import (
	"context"
	"flag"
	"io"
	"os"
	"strings"
	"time"

	"github.com/ehealth-nl/portal/pkg/hti"
)

func tokenCommand() *command {
	return &command{
		name:    "token",
		summary: "verify a launch token as a module would",
		usage:   "portal token verify --jwks URL --issuer CLIENT_ID --audience Device/ID [--leeway 0s] [--alg RS512,...] TOKEN|-",
		sub: []*command{
			{name: "verify", summary: "verify a token against a JWKS and print its claims",
				usage: "portal token verify --jwks URL --issuer CLIENT_ID --audience Device/ID [--leeway 0s] [--alg RS512,...] TOKEN|-",
				help: `Checks what a careful module checks (pkg/hti): the key by kid from the JWKS,
an allow-list of asymmetric algorithms, iss, aud as a single string, exp, iat not
in the future (--leeway, default 0 as in Koppeltaal), exp - iat at most 300 s,
the HTI claims and their reference formats. TOKEN "-" reads it from standard
input. It needs no database and no configuration.`,
				env: []string{noEnv}, run: tokenVerify},
		},
	}
}

func tokenVerify(ctx context.Context, c *cli, args []string) error {
	fs := flag.NewFlagSet("token verify", flag.ContinueOnError)
	jwks := fs.String("jwks", "", "JWKS URL of the portal")
	issuer := fs.String("issuer", "", "expected iss: the portal's client_id")
	audience := fs.String("audience", "", "expected aud: the module's Device/<id>")
	leeway := fs.Duration("leeway", 0, "clock skew allowed for iat and exp")
	algs := fs.String("alg", strings.Join(hti.DefaultAlgorithms, ","), "allowed algorithms, comma-separated")
	rest, err := parseFlags(fs, args)
	if err != nil {
		return err
	}
	if err := wantArgs("token verify", rest, 1, "the token (or - for standard input)"); err != nil {
		return err
	}
	if *jwks == "" || *issuer == "" || *audience == "" {
		return usagef("token verify: --jwks, --issuer and --audience are required")
	}
	token := rest[0]
	if token == "-" {
		b, err := io.ReadAll(io.LimitReader(os.Stdin, 64<<10))
		if err != nil {
			return err
		}
		token = strings.TrimSpace(string(b))
	}
	v, err := hti.NewVerifier(hti.VerifierConfig{JWKSURL: *jwks, Issuer: *issuer, Audience: *audience, Leeway: *leeway,
		Algorithms: strings.Split(*algs, ","), Now: time.Now})
	if err != nil {
		return usagef("token verify: %s", err)
	}
	claims, err := v.Verify(ctx, token)
	if err != nil {
		return err // main prints it terminal-safe: it may quote the token's kid or claims
	}
	return writeTerminalJSON(c.stdout, claims)
}
