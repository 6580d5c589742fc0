package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"
	"github.com/lestrrat-go/jwx/v2/jwa"
	"github.com/lestrrat-go/jwx/v2/jwk"
	"github.com/lestrrat-go/jwx/v2/jws"
)

// hostile holds what could drive a terminal: clear screen (ESC), a title
// change ended by BEL, a carriage return that overwrites the line, DEL, a
// C1 CSI (U+009B), a right-to-left override and a byte that is not UTF-8.
const hostile = "\x1b[2J\x1b]0;owned\x07\rfake line\x7f\u009b31m\u202eevil\xff"

// assertTerminalSafe fails when out holds a byte below 0x20 other than
// newline and tab, DEL, a C1 control or a bidirectional override.
func assertTerminalSafe(t *testing.T, what, out string) {
	t.Helper()
	for i := 0; i < len(out); i++ {
		if b := out[i]; (b < 0x20 && b != '\n' && b != '\t') || b == 0x7f {
			t.Fatalf("%s: byte %#x at %d can drive the terminal:\n%q", what, b, i, out)
		}
	}
	for _, r := range out {
		if (r >= 0x80 && r <= 0x9f) || r == '\u202e' {
			t.Fatalf("%s: %U can drive the terminal:\n%q", what, r, out)
		}
	}
}

func TestTerminalSafe(t *testing.T) {
	for in, want := range map[string]string{
		"":                      "",
		"Device/diary é 日本":     "Device/diary é 日本",
		`back\slash "quoted"`:   `back\slash "quoted"`,
		"\x1b[2J\x07\r\n\t\x7f": `\x1b[2J\a\r\n\t\x7f`,
		"a\u009bb\u202ec\u200b": `a\u009bb\u202ec\u200b`,
		"bad \xff\xfe bytes":    `bad \xff\xfe bytes`,
	} {
		if got := terminalSafe(in); got != want {
			t.Errorf("terminalSafe(%q) = %q, want %q", in, got, want)
		}
	}
	var buf bytes.Buffer
	in := map[string]string{"v": hostile + "\U0001F600"}
	if err := writeTerminalJSON(&buf, in); err != nil {
		t.Fatal(err)
	}
	assertTerminalSafe(t, "writeTerminalJSON", buf.String())
	var back map[string]string
	if err := json.Unmarshal(buf.Bytes(), &back); err != nil || back["v"] != strings.ToValidUTF8(in["v"], "\uFFFD") {
		t.Fatalf("writeTerminalJSON changed the value: %q, %v", back["v"], err)
	}
}

// hostileModule is a module whose JWKS publishes a key under a kid that
// holds control characters.
type hostileModule struct {
	key *ecdsa.PrivateKey
	kid string
	url string
}

func newHostileJWKS(t *testing.T, kid string) *hostileModule {
	t.Helper()
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := jwk.FromRaw(priv.Public())
	if err != nil {
		t.Fatal(err)
	}
	_ = pub.Set(jwk.KeyIDKey, kid)
	_ = pub.Set(jwk.AlgorithmKey, jwa.ES256)
	_ = pub.Set(jwk.KeyUsageKey, "sig")
	set := jwk.NewSet()
	_ = set.AddKey(pub)
	body, err := json.Marshal(set)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(body)
	}))
	t.Cleanup(srv.Close)
	return &hostileModule{key: priv, kid: kid, url: srv.URL}
}

func (m *hostileModule) sign(t *testing.T, kid string, claims map[string]any) string {
	t.Helper()
	raw, err := json.Marshal(claims)
	if err != nil {
		t.Fatal(err)
	}
	hdr := jws.NewHeaders()
	_ = hdr.Set(jws.KeyIDKey, kid)
	_ = hdr.Set(jws.TypeKey, "JWT")
	tok, err := jws.Sign(raw, jws.WithKey(jwa.ES256, m.key, jws.WithProtectedHeaders(hdr)))
	if err != nil {
		t.Fatal(err)
	}
	return string(tok)
}

// TestTokenVerify_HostileKidAndClaimsCannotDriveTheTerminal verifies
// crafted tokens whose kid and jti hold control characters: the claims
// printed and the error line printed hold them only as visible escapes.
func TestTokenVerify_HostileKidAndClaimsCannotDriveTheTerminal(t *testing.T) {
	kid := "k" + hostile
	m := newHostileJWKS(t, kid)
	now := time.Now().Unix()
	claims := map[string]any{"iss": "portal-test", "aud": "Device/diary", "sub": "Patient/1", "resource": "Task/1",
		"hti-version": "2.0", "jti": "0123456789abcdef" + hostile, "iat": now, "exp": now + 60}
	args := func(token string) []string {
		return []string{"token", "verify", "--jwks", m.url, "--issuer", "portal-test", "--audience", "Device/diary", token}
	}

	out, err := runCommand(t, nil, args(m.sign(t, kid, claims))...)
	if err != nil {
		t.Fatalf("token verify: %v", err)
	}
	assertTerminalSafe(t, "token verify", out)
	var printed map[string]any
	if err := json.Unmarshal([]byte(out), &printed); err != nil || printed["jti"] != strings.ToValidUTF8(claims["jti"].(string), "\uFFFD") {
		t.Fatalf("token verify printed %s (%v)", out, err)
	}

	// Refused tokens: the error line quotes the kid and the claim.
	claims["iss"] = "other" + hostile
	for what, token := range map[string]string{
		"unknown kid": m.sign(t, kid+"-unknown", claims),
		"wrong iss":   m.sign(t, kid, claims),
	} {
		_, err := runCommand(t, nil, args(token)...)
		if err == nil {
			t.Fatalf("%s: verified", what)
		}
		var line bytes.Buffer
		if code := reportError(&line, err); code != 1 {
			t.Errorf("%s: exit status %d", what, code)
		}
		assertTerminalSafe(t, what, line.String())
		if !strings.Contains(line.String(), `\x1b[2J`) || strings.Count(line.String(), "\n") != 1 {
			t.Fatalf("%s: error line %q", what, line.String())
		}
	}
}

// TestLaunchesList_HostileAuditValuesCannotDriveTheTerminal stores a user
// agent and client address holding control characters in a launch record
// (as a browser or a misconfigured proxy could) and lists the trail.
func TestLaunchesList_HostileAuditValuesCannotDriveTheTerminal(t *testing.T) {
	env := baseEnv(t, testDB.Fresh(t))
	inst := startServe(t, env)
	mustRun(t, env, "modules", "add", "diary", "--launch-url", "https://diary.example.org/launch", "--audience", "Device/diary")
	key := strings.TrimSpace(mustRun(t, env, "apikeys", "create", "--name", "backend", "--scope", "launch"))
	if status, body := post(t, inst.URL+"/api/v1/launch-tokens", key, `{"module":"diary","task":"Task/7","user":"Patient/9"}`); status != 201 {
		t.Fatalf("launch-tokens: %d %s", status, body)
	}
	conn, err := pgx.Connect(context.Background(), env["DATABASE_URL"])
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	stored := strings.ToValidUTF8(hostile, "\uFFFD") // PostgreSQL text is UTF-8
	if _, err := conn.Exec(context.Background(), `UPDATE launches SET user_agent = $1, client_addr = $1`, stored); err != nil {
		t.Fatal(err)
	}

	table := mustRun(t, env, "launches", "list")
	assertTerminalSafe(t, "launches list", table)
	if !strings.Contains(table, `\x1b[2J`) {
		t.Fatalf("launches list does not show the address escaped:\n%s", table)
	}
	asJSON := mustRun(t, env, "launches", "list", "--json")
	assertTerminalSafe(t, "launches list --json", asJSON)
	var page struct {
		Records []struct {
			UserAgent string `json:"user_agent"`
		} `json:"records"`
	}
	if err := json.Unmarshal([]byte(asJSON), &page); err != nil || len(page.Records) != 1 || page.Records[0].UserAgent != stored {
		t.Fatalf("launches list --json: %v\n%s", err, asJSON)
	}
	if !utf8.ValidString(asJSON) {
		t.Fatal("launches list --json is not UTF-8")
	}
}
