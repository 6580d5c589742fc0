package config

import (
	"errors"
	"strings"
	"testing"
	"time"
)

const validKEK = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=" // base64 of 32 bytes

// production is a complete, valid production environment.
func production() map[string]string {
	return map[string]string{
		"DATABASE_URL":         "postgres://portal@db.internal:5432/portal",
		"PORTAL_PUBLIC_URL":    "https://portal.example.org",
		"PORTAL_CLIENT_ID":     "portal-client-1",
		"PORTAL_FHIR_BASE_URL": "https://fhir.koppeltaal.example/fhir",
		"PORTAL_KEK":           validKEK,
	}
}

func getenv(env map[string]string) func(string) string {
	return func(k string) string { return env[k] }
}

func TestLoad_ProductionDefaults(t *testing.T) {
	c, err := Load(getenv(production()))
	if err != nil {
		t.Fatal(err)
	}
	if c.DefaultIssuer.Alg != "RS512" || c.DefaultIssuer.RSABits != 2048 {
		t.Errorf("default algorithm %s/%d, want RS512/2048", c.DefaultIssuer.Alg, c.DefaultIssuer.RSABits)
	}
	p := c.DefaultIssuer.Policy
	if p.RotationPeriod != 24*time.Hour || p.PublishLead != time.Hour || p.RetireGrace != time.Hour {
		t.Errorf("default policy %+v", p)
	}
	if c.KeyringMaxStaleness != 90*time.Second {
		t.Errorf("default max staleness %s, want 90s", c.KeyringMaxStaleness)
	}
	if c.JWKSMaxAge != 60*time.Second || c.KeyringRefresh != 30*time.Second || c.TokenLifetime != 300*time.Second || c.TicketLifetime != 120*time.Second {
		t.Errorf("default timings: max-age %s, refresh %s, token %s, ticket %s", c.JWKSMaxAge, c.KeyringRefresh, c.TokenLifetime, c.TicketLifetime)
	}
	if len(c.KEKs) != 1 || c.KEKs[0].ID == "" || len(c.KEKs[0].Key) != 32 {
		t.Errorf("KEK ring %v", c.KEKs)
	}
	if c.Dev || c.Demo {
		t.Error("development or demo mode on by default")
	}
}

func TestLoad_DevelopmentNeedsOnlyADatabase(t *testing.T) {
	c, err := Load(getenv(map[string]string{"DATABASE_URL": "postgres://localhost/portal", "PORTAL_DEV": "true", "PORTAL_LISTEN_ADDR": "127.0.0.1:9000"}))
	if err != nil {
		t.Fatal(err)
	}
	if c.PublicURL != "http://localhost:9000" || len(c.KEKs) != 0 || c.DefaultIssuer.ClientID == "" {
		t.Fatalf("dev config: public %s, KEKs %d, client id %q", c.PublicURL, len(c.KEKs), c.DefaultIssuer.ClientID)
	}
}

func TestLoad_KEKRing(t *testing.T) {
	env := production()
	delete(env, "PORTAL_KEK")
	const otherKEK = "ZmVkY2JhOTg3NjU0MzIxMGZlZGNiYTk4NzY1NDMyMTA" // unpadded
	env["PORTAL_KEKS"] = validKEK + ", " + otherKEK
	c, err := Load(getenv(env))
	if err != nil {
		t.Fatal(err)
	}
	if len(c.KEKs) != 2 || string(c.KEKs[0].Key) != "0123456789abcdef0123456789abcdef" {
		t.Fatalf("ring %v, want the listed KEK first", c.KEKs)
	}
	single, err := Load(getenv(production()))
	if err != nil {
		t.Fatal(err)
	}
	// The same key gets the same id whether it comes alone or in a ring, so
	// moving from PORTAL_KEK to PORTAL_KEKS never orphans a sealed key.
	if c.KEKs[0].ID != single.KEKs[0].ID || c.KEKs[0].ID == c.KEKs[1].ID {
		t.Fatalf("ids: ring %s,%s; single %s", c.KEKs[0].ID, c.KEKs[1].ID, single.KEKs[0].ID)
	}
}

// TestLoad_EveryRuleNamesItsVariable sets one bad value at a time on a valid
// production environment.
func TestLoad_EveryRuleNamesItsVariable(t *testing.T) {
	cases := []struct {
		name    string
		set     map[string]string
		unset   []string
		wantVar string
		wantIn  string
	}{
		{"database url missing", nil, []string{"DATABASE_URL"}, "DATABASE_URL", "required"},
		{"database url garbage", map[string]string{"DATABASE_URL": "postgres://%zz"}, nil, "DATABASE_URL", "not a valid"},
		{"listen addr", map[string]string{"PORTAL_LISTEN_ADDR": "8080"}, nil, "PORTAL_LISTEN_ADDR", "host:port"},
		{"listen port", map[string]string{"PORTAL_LISTEN_ADDR": ":http-alt"}, nil, "PORTAL_LISTEN_ADDR", "port"},
		{"public url missing", nil, []string{"PORTAL_PUBLIC_URL"}, "PORTAL_PUBLIC_URL", "required"},
		{"public url relative", map[string]string{"PORTAL_PUBLIC_URL": "portal.example.org"}, nil, "PORTAL_PUBLIC_URL", "absolute"},
		{"public url plain http", map[string]string{"PORTAL_PUBLIC_URL": "http://portal.example.org"}, nil, "PORTAL_PUBLIC_URL", "https"},
		{"public url with query", map[string]string{"PORTAL_PUBLIC_URL": "https://portal.example.org/?a=b"}, nil, "PORTAL_PUBLIC_URL", "query"},
		{"client id missing", nil, []string{"PORTAL_CLIENT_ID"}, "PORTAL_CLIENT_ID", "required"},
		{"client id with space", map[string]string{"PORTAL_CLIENT_ID": "my portal"}, nil, "PORTAL_CLIENT_ID", "spaces"},
		{"fhir base missing", nil, []string{"PORTAL_FHIR_BASE_URL"}, "PORTAL_FHIR_BASE_URL", "required"},
		{"fhir base relative", map[string]string{"PORTAL_FHIR_BASE_URL": "/fhir"}, nil, "PORTAL_FHIR_BASE_URL", "absolute"},
		{"fhir base ftp", map[string]string{"PORTAL_FHIR_BASE_URL": "ftp://fhir.example/fhir"}, nil, "PORTAL_FHIR_BASE_URL", "https"},
		{"fhir base plain http", map[string]string{"PORTAL_FHIR_BASE_URL": "http://evil.test/fhir"}, nil, "PORTAL_FHIR_BASE_URL", "https"},
		{"fhir base user info", map[string]string{"PORTAL_FHIR_BASE_URL": "https://user:pw@f.test/fhir"}, nil, "PORTAL_FHIR_BASE_URL", "user info"},
		{"fhir base query", map[string]string{"PORTAL_FHIR_BASE_URL": "https://f.test/fhir?x=1"}, nil, "PORTAL_FHIR_BASE_URL", "query"},
		{"fhir base fragment", map[string]string{"PORTAL_FHIR_BASE_URL": "https://f.test/fhir#x"}, nil, "PORTAL_FHIR_BASE_URL", "fragment"},
		{"profile unknown", map[string]string{"PORTAL_ISSUER_PROFILE": "smart"}, nil, "PORTAL_ISSUER_PROFILE", "koppeltaal or hti"},
		{"koppeltaal issuer with ES256", map[string]string{"PORTAL_SIGNING_ALG": "ES256"}, nil, "PORTAL_SIGNING_ALG", "Koppeltaal auth server"},
		{"koppeltaal issuer with PS256", map[string]string{"PORTAL_SIGNING_ALG": "PS256", "PORTAL_ISSUER_PROFILE": "koppeltaal"}, nil, "PORTAL_SIGNING_ALG", "profile hti"},
		{"demo without dev", map[string]string{"PORTAL_DEMO": "true"}, nil, "PORTAL_DEMO", "PORTAL_DEV=true"},
		{"iat backdate too long", map[string]string{"PORTAL_TOKEN_IAT_BACKDATE": "31s"}, nil, "PORTAL_TOKEN_IAT_BACKDATE", "0s to 30s"},
		{"iat backdate negative", map[string]string{"PORTAL_TOKEN_IAT_BACKDATE": "-1s"}, nil, "PORTAL_TOKEN_IAT_BACKDATE", "0s to 30s"},
		{"iat backdate fraction", map[string]string{"PORTAL_TOKEN_IAT_BACKDATE": "1500ms"}, nil, "PORTAL_TOKEN_IAT_BACKDATE", "whole seconds"},
		{"iat backdate vs short ttl", map[string]string{"PORTAL_TOKEN_IAT_BACKDATE": "10s", "PORTAL_LAUNCH_TOKEN_TTL": "20s"}, nil, "PORTAL_TOKEN_IAT_BACKDATE", "half"},
		{"metrics addr without port", map[string]string{"PORTAL_METRICS_ADDR": "metrics.internal"}, nil, "PORTAL_METRICS_ADDR", "public"},
		{"metrics addr is the listener", map[string]string{"PORTAL_METRICS_ADDR": ":8080"}, nil, "PORTAL_METRICS_ADDR", "differ"},
		{"issuer slug", map[string]string{"PORTAL_DEFAULT_ISSUER": "My Portal"}, nil, "PORTAL_DEFAULT_ISSUER", "lower-case"},
		{"kek missing", nil, []string{"PORTAL_KEK"}, "PORTAL_KEK", "required outside development"},
		{"kek not base64", map[string]string{"PORTAL_KEK": "not base64!"}, nil, "PORTAL_KEK", "base64"},
		{"kek too short", map[string]string{"PORTAL_KEK": "c2hvcnQ="}, nil, "PORTAL_KEK", "32 bytes"},
		{"kek and ring", map[string]string{"PORTAL_KEKS": validKEK}, nil, "PORTAL_KEKS", "not both"},
		{"ring entry with a name", map[string]string{"PORTAL_KEKS": "old:" + validKEK}, []string{"PORTAL_KEK"}, "PORTAL_KEKS", "base64,base64"},
		{"ring repeats a key", map[string]string{"PORTAL_KEKS": validKEK + "," + validKEK}, []string{"PORTAL_KEK"}, "PORTAL_KEKS", "repeats"},
		{"ring short key", map[string]string{"PORTAL_KEKS": "c2hvcnQ="}, []string{"PORTAL_KEK"}, "PORTAL_KEKS", "32 bytes"},
		{"algorithm hmac", map[string]string{"PORTAL_SIGNING_ALG": "HS256"}, nil, "PORTAL_SIGNING_ALG", "not an allowed"},
		{"algorithm none", map[string]string{"PORTAL_SIGNING_ALG": "none"}, nil, "PORTAL_SIGNING_ALG", "not an allowed"},
		{"rsa bits", map[string]string{"PORTAL_RSA_KEY_BITS": "1024"}, nil, "PORTAL_RSA_KEY_BITS", "2048"},
		{"rsa bits not a number", map[string]string{"PORTAL_RSA_KEY_BITS": "big"}, nil, "PORTAL_RSA_KEY_BITS", "whole number"},
		{"token ttl over 300s", map[string]string{"PORTAL_LAUNCH_TOKEN_TTL": "301s"}, nil, "PORTAL_LAUNCH_TOKEN_TTL", "at most 300s"},
		{"token ttl zero", map[string]string{"PORTAL_LAUNCH_TOKEN_TTL": "0s"}, nil, "PORTAL_LAUNCH_TOKEN_TTL", "more than 0"},
		{"token ttl fraction", map[string]string{"PORTAL_LAUNCH_TOKEN_TTL": "90.5s"}, nil, "PORTAL_LAUNCH_TOKEN_TTL", "whole seconds"},
		{"token ttl not a duration", map[string]string{"PORTAL_LAUNCH_TOKEN_TTL": "300"}, nil, "PORTAL_LAUNCH_TOKEN_TTL", "Go duration"},
		{"jwks max-age zero", map[string]string{"PORTAL_JWKS_MAX_AGE": "0s"}, nil, "PORTAL_JWKS_MAX_AGE", "1s to 1h"},
		{"jwks max-age too long", map[string]string{"PORTAL_JWKS_MAX_AGE": "2h"}, nil, "PORTAL_JWKS_MAX_AGE", "1s to 1h"},
		{"keyring refresh tiny", map[string]string{"PORTAL_KEYRING_REFRESH": "1ms"}, nil, "PORTAL_KEYRING_REFRESH", "at least"},
		{"rotation check tiny", map[string]string{"PORTAL_ROTATION_CHECK_INTERVAL": "1ms"}, nil, "PORTAL_ROTATION_CHECK_INTERVAL", "at least"},
		{"ticket ttl long", map[string]string{"PORTAL_TICKET_TTL": "1h"}, nil, "PORTAL_TICKET_TTL", "at most 10m"},
		{"shutdown timeout", map[string]string{"PORTAL_SHUTDOWN_TIMEOUT": "0s"}, nil, "PORTAL_SHUTDOWN_TIMEOUT", "more than 0"},
		{"log level", map[string]string{"PORTAL_LOG_LEVEL": "loud"}, nil, "PORTAL_LOG_LEVEL", "debug, info"},
		{"dev flag", map[string]string{"PORTAL_DEV": "yes please"}, nil, "PORTAL_DEV", "true or false"},
		{"allow http modules flag", map[string]string{"PORTAL_ALLOW_HTTP_MODULES": "maybe"}, nil, "PORTAL_ALLOW_HTTP_MODULES", "true or false"},
		{"frame ancestors injection", map[string]string{"PORTAL_FRAME_ANCESTORS": "https://a.example; script-src *"}, nil, "PORTAL_FRAME_ANCESTORS", "origin"},
		{"frame ancestors none plus", map[string]string{"PORTAL_FRAME_ANCESTORS": "'none' https://a.example"}, nil, "PORTAL_FRAME_ANCESTORS", "cannot be combined"},
		{"trusted proxies", map[string]string{"PORTAL_TRUSTED_PROXIES": "10.0.0.0/8, proxy.internal"}, nil, "PORTAL_TRUSTED_PROXIES", "CIDR"},
		{"max staleness not above refresh", map[string]string{"PORTAL_KEYRING_MAX_STALENESS": "30s"}, nil, "PORTAL_KEYRING_MAX_STALENESS", "more than PORTAL_KEYRING_REFRESH"},
		{"max staleness below a slow refresh", map[string]string{"PORTAL_KEYRING_REFRESH": "2m"}, nil, "PORTAL_KEYRING_MAX_STALENESS", "more than PORTAL_KEYRING_REFRESH"},
		{"max staleness not a duration", map[string]string{"PORTAL_KEYRING_MAX_STALENESS": "long"}, nil, "PORTAL_KEYRING_MAX_STALENESS", "Go duration"},
		// docs/ARCHITECTURE.md, "Key lifecycle": publish lead ≥ JWKS max-age + max staleness.
		{"publish lead below max-age + staleness", map[string]string{"PORTAL_PUBLISH_LEAD": "149s"}, nil, "PORTAL_PUBLISH_LEAD", "JWKS max-age + keyring max staleness"},
		{"publish lead vs raised max-age", map[string]string{"PORTAL_JWKS_MAX_AGE": "1h"}, nil, "PORTAL_PUBLISH_LEAD", "JWKS max-age + keyring max staleness"},
		// docs/ARCHITECTURE.md, "Key lifecycle": retire grace ≥ token lifetime + max-age + max staleness.
		{"retire grace below the sum", map[string]string{"PORTAL_RETIRE_GRACE": "449s"}, nil, "PORTAL_RETIRE_GRACE", "token lifetime + JWKS max-age + keyring max staleness"},
		{"retire grace vs large staleness", map[string]string{"PORTAL_KEYRING_MAX_STALENESS": "59m"}, nil, "PORTAL_RETIRE_GRACE", "keyring max staleness"},
		{"rotation period below lead", map[string]string{"PORTAL_ROTATION_PERIOD": "30m"}, nil, "PORTAL_ROTATION_PERIOD", "shorter than the publish lead"},
		{"link retention negative", map[string]string{"PORTAL_LINK_RETENTION": "-1s"}, nil, "PORTAL_LINK_RETENTION", "0s to 8760h"},
		{"launch retention too short", map[string]string{"PORTAL_LAUNCH_RETENTION": "23h"}, nil, "PORTAL_LAUNCH_RETENTION", "24h to 876000h"},
		{"launch retention not a duration", map[string]string{"PORTAL_LAUNCH_RETENTION": "7 years"}, nil, "PORTAL_LAUNCH_RETENTION", "Go duration"},
		{"rotation period not a duration", map[string]string{"PORTAL_ROTATION_PERIOD": "daily"}, nil, "PORTAL_ROTATION_PERIOD", "Go duration"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			env := production()
			for k, v := range tc.set {
				env[k] = v
			}
			for _, k := range tc.unset {
				delete(env, k)
			}
			_, err := Load(getenv(env))
			var ce *Error
			if !errors.As(err, &ce) {
				t.Fatalf("Load accepted it or failed without naming a variable: %v", err)
			}
			if ce.Var != tc.wantVar || !strings.Contains(ce.Reason, tc.wantIn) {
				t.Fatalf("error %q, want variable %s and a reason containing %q", err, tc.wantVar, tc.wantIn)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Fatalf("error spans several lines: %q", err)
			}
			if env["PORTAL_KEK"] != "" && strings.Contains(err.Error(), env["PORTAL_KEK"]) {
				t.Fatalf("error repeats the KEK: %q", err)
			}
		})
	}
}

func TestLoad_RulesAtTheirBoundariesPass(t *testing.T) {
	env := production()
	env["PORTAL_PUBLISH_LEAD"] = "150s" // 60s + 90s
	env["PORTAL_RETIRE_GRACE"] = "450s" // 300s + 60s + 90s
	env["PORTAL_ROTATION_PERIOD"] = "150s"
	env["PORTAL_KEYRING_MAX_STALENESS"] = "90s"
	env["PORTAL_LAUNCH_TOKEN_TTL"] = "300s"
	env["PORTAL_LINK_RETENTION"] = "0s"
	env["PORTAL_LAUNCH_RETENTION"] = "24h"
	if _, err := Load(getenv(env)); err != nil {
		t.Fatalf("values exactly at the limits were refused: %v", err)
	}
}

func TestLoad_HTIIssuerMayUseEveryAlgorithm(t *testing.T) {
	for _, alg := range []string{"RS512", "RS384", "PS256", "PS384", "PS512", "ES256", "ES384"} {
		env := production()
		env["PORTAL_ISSUER_PROFILE"], env["PORTAL_SIGNING_ALG"] = "hti", alg
		c, err := Load(getenv(env))
		if err != nil || c.DefaultIssuer.Profile != "hti" {
			t.Errorf("hti issuer with %s: %v", alg, err)
		}
	}
	c, err := Load(getenv(production()))
	if err != nil || c.DefaultIssuer.Profile != "koppeltaal" {
		t.Fatalf("default profile: %q, %v", c.DefaultIssuer.Profile, err)
	}
}

func TestLoad_LoopbackFHIRBaseURLMayUseHTTP(t *testing.T) {
	for _, u := range []string{"http://localhost:8080/fhir", "http://127.0.0.1/fhir", "http://[::1]:8080/fhir"} {
		env := production()
		env["PORTAL_FHIR_BASE_URL"] = u
		if _, err := Load(getenv(env)); err != nil {
			t.Errorf("%s: %v", u, err)
		}
	}
}

func TestLoad_MetricsAddrAndBackdate(t *testing.T) {
	c, err := Load(getenv(production()))
	if err != nil || c.MetricsAddr != ":9464" || c.IATBackdate != 5*time.Second {
		t.Fatalf("defaults: metrics %q, backdate %s, %v", c.MetricsAddr, c.IATBackdate, err)
	}
	env := production()
	env["PORTAL_METRICS_ADDR"], env["PORTAL_TOKEN_IAT_BACKDATE"] = "public", "0s"
	if c, err = Load(getenv(env)); err != nil || c.MetricsAddr != "" || c.IATBackdate != 0 {
		t.Fatalf("public metrics, no backdate: %q, %s, %v", c.MetricsAddr, c.IATBackdate, err)
	}
	env = production()
	env["PORTAL_DEMO"], env["PORTAL_DEV"] = "true", "true"
	if _, err := Load(getenv(env)); err != nil {
		t.Fatalf("demo in development mode: %v", err)
	}
}

// TestLoadDatabase_NeedsOnlyTheDatabase loads the configuration of the
// commands that open no private key from DATABASE_URL alone.
func TestLoadDatabase_NeedsOnlyTheDatabase(t *testing.T) {
	c, err := LoadDatabase(getenv(map[string]string{"DATABASE_URL": "postgres://portal@db:5432/portal"}))
	if err != nil || c.DatabaseURL == "" || c.AllowHTTPModules {
		t.Fatalf("DATABASE_URL alone: %+v, %v", c, err)
	}
	var ce *Error
	if _, err := LoadDatabase(getenv(map[string]string{})); !errors.As(err, &ce) || ce.Var != "DATABASE_URL" {
		t.Fatalf("no DATABASE_URL: %v", err)
	}
	if _, err := LoadDatabase(getenv(map[string]string{"DATABASE_URL": "postgres://x", "PORTAL_ALLOW_HTTP_MODULES": "maybe"})); !errors.As(err, &ce) || ce.Var != "PORTAL_ALLOW_HTTP_MODULES" {
		t.Fatalf("a malformed PORTAL_ALLOW_HTTP_MODULES: %v", err)
	}
	if _, err := Load(getenv(map[string]string{"DATABASE_URL": "postgres://x"})); err == nil {
		t.Fatal("Load accepted an environment without the service's identity or a KEK")
	}
}

func TestLoad_LoopbackPublicURLMayUseHTTP(t *testing.T) {
	for _, u := range []string{"http://localhost:8080", "http://127.0.0.1:8080", "http://[::1]:8080"} {
		env := production()
		env["PORTAL_PUBLIC_URL"] = u
		if _, err := Load(getenv(env)); err != nil {
			t.Errorf("%s: %v", u, err)
		}
	}
}

// TestLoad_DeviceJoinsTheDefaultIssuerToADomain: PORTAL_DEVICE is the
// portal's own Device reference, and only a koppeltaal issuer takes one.
func TestLoad_DeviceJoinsTheDefaultIssuerToADomain(t *testing.T) {
	env := production()
	env["PORTAL_DEVICE"] = "Device/portal-1"
	c, err := Load(getenv(env))
	if err != nil || c.DefaultIssuer.Device != "Device/portal-1" {
		t.Fatalf("a Device: %v, %q", err, c.DefaultIssuer.Device)
	}
	for _, bad := range []map[string]string{
		{"PORTAL_DEVICE": "Patient/1"},
		{"PORTAL_DEVICE": "Device/a_b"},
		{"PORTAL_DEVICE": "Device/portal-1", "PORTAL_ISSUER_PROFILE": "hti", "PORTAL_SIGNING_ALG": "ES256"},
	} {
		env := production()
		for k, v := range bad {
			env[k] = v
		}
		var ce *Error
		if _, err := Load(getenv(env)); !errors.As(err, &ce) || ce.Var != "PORTAL_DEVICE" {
			t.Errorf("%v: %v, want an error naming PORTAL_DEVICE", bad, err)
		}
	}
	if c, err := Load(getenv(production())); err != nil || c.DefaultIssuer.Device != "" {
		t.Fatalf("no Device: %v, %q", err, c.DefaultIssuer.Device)
	}
}
