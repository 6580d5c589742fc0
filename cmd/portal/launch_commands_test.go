package main

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
)

// post sends a JSON request with a bearer key.
func post(t testing.TB, url, key, body string) (int, []byte) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+key)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

// TestCommands_ModulesKeysLaunchesAndVerify walks an operator and a module
// provider through the commands: register a module, create API keys, let a
// backend launch, read the audit trail, verify the token with
// "portal token verify", revoke the key.
func TestCommands_ModulesKeysLaunchesAndVerify(t *testing.T) {
	env := baseEnv(t, testDB.Fresh(t))
	inst := startServe(t, env)

	out := mustRun(t, env, "modules", "add", "diary", "--launch-url", "https://diary.example.org/launch", "--audience", "Device/diary", "--definition", "ActivityDefinition/d1")
	if !strings.Contains(out, "module diary added") {
		t.Fatalf("modules add: %s", out)
	}
	if _, err := runCommand(t, env, "modules", "add", "plain", "--launch-url", "http://plain.example.org/launch", "--audience", "Device/p"); err == nil || !strings.Contains(err.Error(), "--launch-url") {
		t.Fatalf("a plain-http module on a public host: %v", err)
	}
	if _, err := runCommand(t, with(env, "PORTAL_ALLOW_HTTP_MODULES", "true"), "modules", "add", "plain", "--launch-url", "http://plain.example.org/launch", "--audience", "Device/p"); err != nil {
		t.Fatalf("with PORTAL_ALLOW_HTTP_MODULES=true: %v", err)
	}
	if _, err := runCommand(t, env, "modules", "add", "bad", "--launch-url", "https://x.example.org", "--audience", "Patient/1"); err == nil || !strings.Contains(err.Error(), "--audience") {
		t.Fatalf("a module with a Patient audience: %v", err)
	}
	mustRun(t, env, "modules", "update", "diary", "--fields", "all")
	list := mustRun(t, env, "modules", "list")
	if !strings.Contains(list, "diary") || !strings.Contains(list, "all") || !strings.Contains(list, "ActivityDefinition/d1") {
		t.Fatalf("modules list:\n%s", list)
	}
	mustRun(t, env, "modules", "remove", "plain")
	if strings.Contains(mustRun(t, env, "modules", "list"), "plain") {
		t.Fatal("removed module still listed")
	}
	// Each change is in the admin trail, as made by this operator here.
	trail := mustRun(t, env, "admin-events", "list", "--target", "module:plain")
	if !strings.Contains(trail, "module.delete") || !strings.Contains(trail, "module.put") || !strings.Contains(trail, "cli:") {
		t.Fatalf("admin-events list:\n%s", trail)
	}

	launchKey := strings.TrimSpace(mustRun(t, env, "apikeys", "create", "--name", "backend", "--scope", "launch"))
	if !strings.HasPrefix(launchKey, "ptl_") || len(launchKey) != 64 {
		t.Fatalf("apikeys create printed %q", launchKey)
	}
	if _, err := runCommand(t, env, "apikeys", "create", "--name", "backend", "--scope", "launch"); err == nil {
		t.Fatal("a second valid key with the same name was created")
	}
	if _, err := runCommand(t, env, "apikeys", "create", "--name", "x", "--scope", "root"); err == nil {
		t.Fatal("an unknown scope was accepted")
	}
	keys := mustRun(t, env, "apikeys", "list")
	if !strings.Contains(keys, "backend") || strings.Contains(keys, launchKey[21:]) {
		t.Fatalf("apikeys list must show the key but never its secret:\n%s", keys)
	}

	status, body := post(t, inst.URL+"/api/v1/launch-tokens", launchKey, `{"module":"diary","task":"Task/7","user":"Practitioner/dr","patient":"Patient/9"}`)
	if status != 201 {
		t.Fatalf("launch-tokens: %d %s", status, body)
	}
	var issued struct{ Token, JTI string }
	if err := json.Unmarshal(body, &issued); err != nil {
		t.Fatal(err)
	}

	verifyArgs := []string{"token", "verify", "--jwks", inst.URL + "/.well-known/jwks.json", "--issuer", "portal-test", "--audience", "Device/diary", issued.Token}
	out, err := runCommand(t, nil, verifyArgs...)
	if err != nil {
		t.Fatalf("token verify: %v", err)
	}
	var claims map[string]any
	if err := json.Unmarshal([]byte(out), &claims); err != nil || claims["jti"] != issued.JTI || claims["patient"] != "Patient/9" {
		t.Fatalf("token verify printed %s", out)
	}
	wrongAud := append([]string(nil), verifyArgs...)
	wrongAud[7] = "Device/other"
	if _, err := runCommand(t, nil, wrongAud...); err == nil || !strings.Contains(err.Error(), "audience") {
		t.Fatalf("token verify with another audience: %v", err)
	}

	audit := mustRun(t, env, "launches", "list", "--patient", "Patient/9")
	if !strings.Contains(audit, "Task/7") || !strings.Contains(audit, issued.JTI) || !strings.Contains(audit, "issued") || strings.Contains(audit, issued.Token) {
		t.Fatalf("launches list:\n%s", audit)
	}
	var page struct {
		Records []map[string]any `json:"records"`
	}
	if err := json.Unmarshal([]byte(mustRun(t, env, "launches", "list", "--json", "--task", "Task/7")), &page); err != nil || len(page.Records) != 1 {
		t.Fatalf("launches list --json: %v %v", page, err)
	}
	if _, err := runCommand(t, env, "launches", "list", "--task", "Patient/1"); err == nil {
		t.Fatal("a bad filter was accepted")
	}
	if out := mustRun(t, env, "launches", "list", "--outcome", "accepted"); !strings.Contains(out, "Task/7") {
		t.Fatalf("launches list --outcome accepted:\n%s", out)
	}
	if out := mustRun(t, env, "launches", "list", "--outcome", "refused"); strings.Contains(out, "Task/7") {
		t.Fatalf("launches list --outcome refused lists an accepted launch:\n%s", out)
	}
	if _, err := runCommand(t, env, "launches", "list", "--outcome", "lost"); err == nil {
		t.Fatal("an unknown outcome was accepted")
	}

	mustRun(t, env, "apikeys", "revoke", "backend")
	if status, body := post(t, inst.URL+"/api/v1/launch-tokens", launchKey, `{"module":"diary","task":"Task/7","user":"Patient/9"}`); status != 401 {
		t.Fatalf("revoked key: %d %s", status, body)
	}
	if _, err := runCommand(t, env, "apikeys", "revoke", "backend"); err == nil {
		t.Fatal("revoking twice succeeded")
	}
	// Nothing secret reached the logs.
	if logs := inst.Logs.String(); strings.Contains(logs, issued.Token) || strings.Contains(logs, launchKey) {
		t.Fatal("a token or an API key reached the log")
	}
}

// TestMakeRunDemo_Flow starts the service as make run does (development
// mode, demo on, no KEK given) and follows the demo launch over HTTP.
func TestMakeRunDemo_Flow(t *testing.T) {
	dir := t.TempDir()
	env := map[string]string{
		"DATABASE_URL":          testDB.Fresh(t),
		"PORTAL_DEV":            "true",
		"PORTAL_DEMO":           "true",
		"PORTAL_LISTEN_ADDR":    "127.0.0.1:0",
		"PORTAL_DEV_KEK_FILE":   dir + "/kek",
		"PORTAL_SIGNING_ALG":    "ES256",
		"PORTAL_ISSUER_PROFILE": "hti",
		"PORTAL_METRICS_ADDR":   "public",
	}
	// The public URL must be known before start: take a port first.
	inst := startServe(t, env)
	port := inst.URL[strings.LastIndex(inst.URL, ":")+1:]
	if err := inst.stop(); err != nil {
		t.Fatal(err)
	}
	env["PORTAL_LISTEN_ADDR"] = "127.0.0.1:" + port
	env["PORTAL_PUBLIC_URL"] = "http://127.0.0.1:" + port
	inst = startServe(t, env) // a restart opens the same keys with the kept development KEK
	// The demo module moved to the new port: one change. Another restart
	// with the same settings records nothing more.
	before := strings.Count(mustRun(t, env, "admin-events", "list", "--target", "module:demo"), "module.put")
	if err := inst.stop(); err != nil {
		t.Fatal(err)
	}
	inst = startServe(t, env)
	if trail := mustRun(t, env, "admin-events", "list", "--target", "module:demo"); strings.Count(trail, "module.put") != before {
		t.Fatalf("an unchanged restart recorded demo module changes:\n%s", trail)
	}
	status, _, page := httpGet(t, inst.URL+"/")
	if status != 200 || !bytes.Contains(page, []byte("launch-practitioner")) {
		t.Fatalf("demo portal: %d", status)
	}
	client := &http.Client{}
	resp, err := client.PostForm(inst.URL+"/demo/launch", map[string][]string{"role": {"practitioner"}})
	if err != nil {
		t.Fatal(err)
	}
	followPage, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !bytes.Contains(followPage, []byte(`id="follow"`)) {
		t.Fatalf("demo launch link: %d\n%s", resp.StatusCode, followPage)
	}
	// The link's page posts back to the link, which redeems it.
	resp, err = client.Post(resp.Request.URL.String(), "", nil)
	if err != nil {
		t.Fatal(err)
	}
	launchPage, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !bytes.Contains(launchPage, []byte(`name="launch"`)) {
		t.Fatalf("demo launch page: %d\n%s", resp.StatusCode, launchPage)
	}
	token := string(launchPage[bytes.Index(launchPage, []byte(`name="launch" value="`))+len(`name="launch" value="`):])
	token = token[:strings.Index(token, `"`)]
	resp, err = client.PostForm(inst.URL+"/demo/module/launch", map[string][]string{"iss": {"x"}, "launch": {token}})
	if err != nil {
		t.Fatal(err)
	}
	modulePage, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !bytes.Contains(modulePage, []byte("Practitioner/demo-practitioner")) {
		t.Fatalf("demo module: %d\n%s", resp.StatusCode, modulePage)
	}
}

// TestCommands_WithoutPrivateKeysNeedOnlyTheDatabase runs the commands that
// never open a private key with DATABASE_URL alone: no KEK, no client_id,
// no public URL.
func TestCommands_WithoutPrivateKeysNeedOnlyTheDatabase(t *testing.T) {
	env := baseEnv(t, testDB.Fresh(t))
	if err := startServe(t, env).stop(); err != nil { // stores the default issuer
		t.Fatal(err)
	}
	only := map[string]string{"DATABASE_URL": env["DATABASE_URL"]}
	for _, args := range [][]string{
		{"apikeys", "create", "kekless", "--scope", "launch"},
		{"apikeys", "list"},
		{"modules", "add", "kekless", "--launch-url", "https://m.example.org/launch", "--audience", "Device/k"},
		{"modules", "list"},
		{"modules", "remove", "kekless"},
		{"launches", "list"},
		{"admin-events", "list"},
		{"issuers", "list"},
		{"migrate", "version"},
	} {
		if _, err := runCommand(t, only, args...); err != nil {
			t.Errorf("portal %s with DATABASE_URL alone: %v", strings.Join(args, " "), err)
		}
	}
	if _, err := runCommand(t, only, "keys", "rotate"); err == nil {
		t.Error("keys rotate ran without a KEK")
	}
}
