package server

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/gorillamux"

	"github.com/ehealth-nl/portal/api"
	"github.com/ehealth-nl/portal/internal/keys"
	"github.com/ehealth-nl/portal/internal/pgtest"
)

// readmeProblemURL is where the document says each problem type is
// explained: the README, at the anchor problem-<kind>.
const readmeProblemURL = "https://github.com/ehealth-nl/portal/blob/main/README.md#problem-"

func init() {
	// The launch link's pages are HTML; the document gives them a string
	// schema, which the plain text decoder reads.
	openapi3filter.RegisterBodyDecoder("text/html", openapi3filter.PlainBodyDecoder)
}

// loadContract loads and validates api/openapi.yaml as served.
func loadContract(t testing.TB) *openapi3.T {
	t.Helper()
	doc, err := openapi3.NewLoader().LoadFromData(api.OpenAPI)
	if err != nil {
		t.Fatalf("load api/openapi.yaml: %v", err)
	}
	if err := doc.Validate(context.Background()); err != nil {
		t.Fatalf("api/openapi.yaml is not a valid OpenAPI document: %v", err)
	}
	if !doc.IsOpenAPI31OrLater() {
		t.Fatalf("api/openapi.yaml is OpenAPI %s, want 3.1", doc.OpenAPI)
	}
	return doc
}

// contractCase is one request of the conformance test and what the server
// must answer.
type contractCase struct {
	name    string
	method  string
	path    string // with the query
	key     string // the bearer API key; none when empty
	header  map[string]string
	ctype   string // Content-Type of the body
	body    string
	status  int
	problem string // the problem kind of the answer; "" when it is not problem+json
	// invalid says the request breaks the document, which must then refuse
	// it too: the document's rules are the server's.
	invalid bool
}

// contract runs cases against a stack and checks request and response
// against the document, recording which operation, status and problem type
// each case covered.
type contract struct {
	t        *testing.T
	s        *stack
	doc      *openapi3.T
	router   routers.Router
	scopes   map[string]string // API key → scope
	covered  map[string]bool   // "operationId status kind"
	examples map[string][]byte // operationId status → a real answer
}

func newContract(t *testing.T, s *stack) *contract {
	doc := loadContract(t)
	doc.Servers = openapi3.Servers{{URL: s.http.URL}}
	router, err := gorillamux.NewRouter(doc)
	if err != nil {
		t.Fatal(err)
	}
	return &contract{t: t, s: s, doc: doc, router: router, covered: map[string]bool{}, examples: map[string][]byte{},
		scopes: map[string]string{s.launchKey: "launch", s.adminKey: "admin"}}
}

// apiKeyFormat is the form of a presented API key (internal/apikeys).
var apiKeyFormat = regexp.MustCompile(`^ptl_[0-9a-f]{16}_[A-Za-z0-9_-]{43}$`)

// authenticate is the document's security scheme as the test knows it:
// a bearer API key of the scope the operation names.
func (c *contract) authenticate(_ context.Context, in *openapi3filter.AuthenticationInput) error {
	h := in.RequestValidationInput.Request.Header.Get("Authorization")
	key, ok := strings.CutPrefix(h, "Bearer ")
	if !ok {
		return errors.New("no bearer API key")
	}
	if !apiKeyFormat.MatchString(key) {
		return errors.New("not of the API key format")
	}
	scope, known := c.scopes[key]
	if !known {
		return errors.New("unknown API key")
	}
	if !slices.Contains(in.Scopes, scope) {
		return fmt.Errorf("key of scope %s, operation takes %v", scope, in.Scopes)
	}
	return nil
}

func (c *contract) newRequest(tc contractCase) *http.Request {
	req, err := http.NewRequest(tc.method, c.s.http.URL+tc.path, strings.NewReader(tc.body))
	if err != nil {
		c.t.Fatal(err)
	}
	if tc.key != "" {
		req.Header.Set("Authorization", "Bearer "+tc.key)
	}
	if tc.ctype != "" {
		req.Header.Set("Content-Type", tc.ctype)
	}
	for k, v := range tc.header {
		req.Header.Set(k, v)
	}
	return req
}

// run sends each case and checks it.
func (c *contract) run(phase string, cases []contractCase) {
	for _, tc := range cases {
		c.t.Run(phase+"/"+tc.name, func(t *testing.T) { c.check(t, tc) })
	}
}

func (c *contract) check(t *testing.T, tc contractCase) {
	ctx := context.Background()
	probe := c.newRequest(tc)
	route, params, err := c.router.FindRoute(probe)
	if err != nil {
		t.Fatalf("%s %s is not in the document: %v", tc.method, tc.path, err)
	}
	opts := &openapi3filter.Options{AuthenticationFunc: c.authenticate, MultiError: true, SkipSettingDefaults: true, IncludeResponseStatus: true}
	in := &openapi3filter.RequestValidationInput{Request: probe, PathParams: params, Route: route, Options: opts}
	reqErr := openapi3filter.ValidateRequest(ctx, in)
	switch {
	case tc.invalid && reqErr != nil:
		msg := reqErr.Error()
		if len(msg) > 300 {
			msg = msg[:300] + "…"
		}
		t.Logf("the document refuses it too: %s", msg)
	case tc.invalid && reqErr == nil:
		t.Errorf("the document allows a request the server refuses with %d %s", tc.status, tc.problem)
	case !tc.invalid && reqErr != nil:
		t.Errorf("the document refuses the request: %v", reqErr)
	}

	resp, err := noRedirects.Do(c.newRequest(tc))
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != tc.status {
		t.Fatalf("status %d, want %d: %s", resp.StatusCode, tc.status, body)
	}
	kind := ""
	if tc.problem != "" && tc.method != http.MethodHead {
		var p Problem
		if err := json.Unmarshal(body, &p); err != nil || resp.Header.Get("Content-Type") != "application/problem+json" {
			t.Fatalf("not problem+json (%s): %s", resp.Header.Get("Content-Type"), body)
		}
		if kind = problemKind(&p); kind != tc.problem {
			t.Fatalf("problem %s, want %s: %s", p.Type, tc.problem, body)
		}
	}
	op := route.Operation.OperationID
	c.covered[fmt.Sprintf("%s %d %s", op, tc.status, kind)] = true
	if _, seen := c.examples[fmt.Sprintf("%s %d", op, tc.status)]; !seen {
		c.examples[fmt.Sprintf("%s %d", op, tc.status)] = body
	}

	// kin-openapi does not look at the answers of HEAD and 304; their
	// status and headers are checked here.
	documented := route.Operation.Responses.Status(resp.StatusCode)
	if documented == nil {
		t.Fatalf("status %d is not documented for %s", resp.StatusCode, op)
	}
	for name, h := range documented.Value.Headers {
		value := resp.Header.Get(name)
		if value == "" {
			if h.Value.Required {
				t.Errorf("answer lacks the documented header %s", name)
			}
			continue
		}
		if h.Value.Schema != nil && h.Value.Schema.Value != nil {
			if err := h.Value.Schema.Value.VisitJSON(value); err != nil {
				t.Errorf("header %s: %q breaks its documented schema: %v", name, value, err)
			}
		}
	}
	out := &openapi3filter.ResponseValidationInput{RequestValidationInput: in, Status: resp.StatusCode, Header: resp.Header,
		Body: io.NopCloser(bytes.NewReader(body)), Options: opts}
	if err := openapi3filter.ValidateResponse(ctx, out); err != nil {
		t.Errorf("the answer breaks the document: %v\n%s", err, body)
	}
}

// documentedOutcomes lists "operationId status kind" for every response of
// every operation, a kind for each problem type the response names.
func documentedOutcomes(doc *openapi3.T) []string {
	var out []string
	for _, item := range doc.Paths.Map() {
		for _, op := range item.Operations() {
			for status, r := range op.Responses.Map() {
				kinds := []string{""}
				if mt := r.Value.Content.Get("application/problem+json"); mt != nil {
					kinds = nil
					for _, typ := range problemTypesOf(mt.Schema) {
						kinds = append(kinds, strings.TrimPrefix(typ, problemTypePrefix))
					}
					if len(kinds) == 0 {
						// A problem response that names no type cannot be
						// covered; keep it so the coverage check fails on it.
						kinds = []string{"(no problem type named)"}
					}
				}
				for _, k := range kinds {
					out = append(out, op.OperationID+" "+status+" "+k)
				}
			}
		}
	}
	sort.Strings(out)
	return out
}

// problemTypesOf finds the problem type constants a problem schema allows.
func problemTypesOf(ref *openapi3.SchemaRef) []string {
	if ref == nil || ref.Value == nil {
		return nil
	}
	var out []string
	for _, sub := range ref.Value.AllOf {
		if sub.Ref == "#/components/schemas/Problem" {
			continue // every type; the other branch narrows it
		}
		if typ := sub.Value.Properties["type"]; typ != nil {
			out = append(out, constsOf(typ)...)
		}
	}
	return out
}

func constsOf(ref *openapi3.SchemaRef) []string {
	if s, ok := ref.Value.Const.(string); ok {
		return []string{s}
	}
	var out []string
	for _, sub := range ref.Value.OneOf {
		out = append(out, constsOf(sub)...)
	}
	return out
}

// documentedRoutes lists "METHOD /path" for every operation, in Echo's
// path syntax.
func documentedRoutes(doc *openapi3.T) []string {
	param := regexp.MustCompile(`\{([^}]+)\}`)
	var out []string
	for path, item := range doc.Paths.Map() {
		for method := range item.Operations() {
			out = append(out, method+" "+param.ReplaceAllString(path, ":$1"))
		}
	}
	sort.Strings(out)
	return out
}

// TestOpenAPI_EveryRouteIsDocumented compares the routes of the server
// with the document's operations: in the default configuration (/metrics
// on a listener of its own, no demo) one may not have what the other
// lacks; the routes of the other configurations are exactly the ones the
// document names as left out.
func TestOpenAPI_EveryRouteIsDocumented(t *testing.T) {
	documented := documentedRoutes(loadContract(t))
	for _, tc := range []struct {
		name   string
		option stackOption
		extra  []string // routed, deliberately not in the document
	}{
		{"default", func(_ testing.TB, _ *stack, d *Deps) { d.MetricsElsewhere = true }, nil},
		{"metrics public", func(testing.TB, *stack, *Deps) {}, []string{"GET /metrics"}},
		{"demo", func(t testing.TB, s *stack, d *Deps) { d.MetricsElsewhere = true; withDemo(t, s, d) },
			[]string{"GET /", "GET /demo/module/launch", "POST /demo/launch", "POST /demo/module/launch"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var deps *Deps
			newStack(t, testDB.Fresh(t), keys.ES256, tc.option, func(_ testing.TB, _ *stack, d *Deps) { deps = d })
			e, err := NewServer(*deps)
			if err != nil {
				t.Fatal(err)
			}
			var routed []string
			extra := map[string]bool{}
			for _, r := range e.Routes() {
				switch route := r.Method + " " + r.Path; r.Method {
				case http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodDelete, http.MethodPatch, http.MethodOptions:
					if slices.Contains(tc.extra, route) {
						extra[route] = true
					} else {
						routed = append(routed, route)
					}
				}
			}
			if len(extra) != len(tc.extra) {
				t.Errorf("of the routes left out of the document, only %v are routed; want %v", extra, tc.extra)
			}
			sort.Strings(routed)
			routed = slices.Compact(routed)
			for _, r := range routed {
				if !slices.Contains(documented, r) {
					t.Errorf("routed but not documented: %s", r)
				}
			}
			for _, d := range documented {
				if !slices.Contains(routed, d) {
					t.Errorf("documented but not routed: %s", d)
				}
			}
		})
	}
}

// TestOpenAPI_ServedAsEmbedded fetches the document from the server: the
// embedded bytes, as YAML, without an API key.
func TestOpenAPI_ServedAsEmbedded(t *testing.T) {
	s := newStack(t, testDB.Fresh(t), keys.ES256)
	resp, body := get(t, s.http.URL+"/api/v1/openapi.yaml", nil)
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/yaml" || !bytes.Equal(body, api.OpenAPI) {
		t.Fatalf("%d %s, %d bytes (embedded: %d)", resp.StatusCode, resp.Header.Get("Content-Type"), len(body), len(api.OpenAPI))
	}
}

// TestOpenAPI_ProblemTypesResolve checks that the document lists exactly
// the problem kinds problems.go can answer with, and that each one's
// externalDocs lead to a README section with its anchor.
func TestOpenAPI_ProblemTypesResolve(t *testing.T) {
	doc := loadContract(t)
	source, err := os.ReadFile("problems.go")
	if err != nil {
		t.Fatal(err)
	}
	var kinds []string
	for _, m := range regexp.MustCompile(`newProblem\([^,]+, "([a-z-]+)"`).FindAllSubmatch(source, -1) {
		kinds = append(kinds, string(m[1]))
	}
	sort.Strings(kinds)
	kinds = slices.Compact(kinds)
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	var listed []string
	for _, ref := range doc.Components.Schemas["ProblemType"].Value.OneOf {
		typ, _ := ref.Value.Const.(string)
		kind, ok := strings.CutPrefix(typ, problemTypePrefix)
		if !ok {
			t.Errorf("problem type %q does not start with %s", typ, problemTypePrefix)
			continue
		}
		listed = append(listed, kind)
		if ref.Value.ExternalDocs == nil || ref.Value.ExternalDocs.URL != readmeProblemURL+kind {
			t.Errorf("%s: externalDocs %+v, want %s", typ, ref.Value.ExternalDocs, readmeProblemURL+kind)
		}
		if ref.Value.Description == "" || ref.Value.Title == "" {
			t.Errorf("%s has no title or description", typ)
		}
		if !bytes.Contains(readme, []byte(`<a id="problem-`+kind+`"></a>`)) {
			t.Errorf("README.md has no anchor problem-%s", kind)
		}
	}
	sort.Strings(listed)
	if !slices.Equal(listed, kinds) {
		t.Errorf("the document lists problem kinds %v, problems.go answers with %v", listed, kinds)
	}
}

// TestOpenAPI_ProblemsOutsideOperations checks the two problems that
// belong to no operation: an unknown path and a method a path does not
// take. Their bodies follow the document's Problem schema.
func TestOpenAPI_ProblemsOutsideOperations(t *testing.T) {
	s := newStack(t, testDB.Fresh(t), keys.ES256)
	problem := loadContract(t).Components.Schemas["Problem"].Value
	for _, tc := range []struct {
		method, path string
		status       int
		kind         string
	}{
		{http.MethodGet, "/api/v1/nothing-here", 404, "not-found"},
		{http.MethodGet, "/nothing-here", 404, "not-found"},
		{http.MethodPatch, "/api/v1/modules/diary", 404, "not-found"}, // Echo: the group's catch-all answers first
		{http.MethodPut, "/launch/x", 405, "method-not-allowed"},
	} {
		t.Run(tc.method+" "+tc.path, func(t *testing.T) {
			status, _, body := s.apiCall(t, tc.method, tc.path, s.adminKey, "", "")
			var v any
			if err := json.Unmarshal(body, &v); err != nil {
				t.Fatal(err)
			}
			if err := problem.VisitJSON(v, openapi3.EnableJSONSchema2020()); err != nil {
				t.Errorf("breaks the Problem schema: %v", err)
			}
			if want := fmt.Sprintf(`"type":"%s%s"`, problemTypePrefix, tc.kind); status != tc.status || !strings.Contains(string(body), want) {
				t.Errorf("%d %s, want %d %s", status, body, tc.status, want)
			}
		})
	}
}

// TestOpenAPI_EveryOperationConforms runs every documented operation
// against the whole service — its successes and each documented error — and
// validates every request and answer against the document. An outcome the
// document lists that no case produced fails the test.
func TestOpenAPI_EveryOperationConforms(t *testing.T) {
	ctx := operatorContext()
	url := testDB.Fresh(t)
	proxy := pgtest.NewProxy(t, url)
	var dom *domainStack
	s := newStack(t, proxy.URL(url), keys.ES256, func(_ testing.TB, _ *stack, d *Deps) { d.MetricsElsewhere = true }, withDomain(&dom))
	c := newContract(t, s)
	const ctJSON = "application/json"
	L, A := s.launchKey, s.adminKey
	unknownKey := "ptl_0123456789abcdef_" + strings.Repeat("A", 43)
	// Bodies over the limit, each otherwise of the operation's shape: no
	// schema states a byte limit, so the document refuses them for the
	// field that is over its own.
	huge := strings.Repeat("x", maxBodyBytes)
	tooLargeLaunch := `{"module":"diary","task":"Task/1","user":"Patient/1","idp_hint":"` + huge + `"}`
	tooLargeModule := `{"launch_url":"https://m.example.org/` + huge + `","audience":"Device/new"}`
	tooLargeRotate := `{"issuer":"` + huge + `"}`
	launchBody := `{"module":"diary","task":"Task/1","user":"Patient/1"}`
	domainBody := `{"issuer":"kt","task":"Task/t-team","user":"Practitioner/pr-team"}`
	unknownTicket := "/launch/" + strings.Repeat("Q", 43)

	s.registerTestModule(t)
	s.putModule(t, "diary-get", map[string]string{"launch_url": testModuleURL, "audience": "Device/diary-get", "method": "get"})
	s.putModule(t, "moving", map[string]string{"launch_url": testModuleURL, "audience": "Device/moving"})
	link := func(module string) string {
		l := s.createLaunch(t, map[string]string{"module": module, "task": "Task/1", "user": "Patient/1"})
		return strings.TrimPrefix(l, s.http.URL)
	}
	expired := link("diary")
	s.clock.Advance(121 * time.Second)
	used, open, redirect, changed := link("diary"), link("diary"), link("diary-get"), link("moving")
	if _, _, body := s.apiCall(t, http.MethodPost, used, "", "", ""); !strings.Contains(string(body), "<form") {
		t.Fatalf("redeem: %s", body)
	}
	s.putModule(t, "moving", map[string]string{"launch_url": testModuleURL + "/v2", "audience": "Device/moving"})
	cross := map[string]string{"Sec-Fetch-Site": "cross-site"}
	same := map[string]string{"Sec-Fetch-Site": "same-origin"}

	c.run("normal", []contractCase{
		{name: "launch", method: "POST", path: "/api/v1/launches", key: L, ctype: ctJSON, body: launchBody, status: 201},
		{name: "launch practitioner", method: "POST", path: "/api/v1/launches", key: L, ctype: ctJSON, body: `{"module":"diary","task":"Task/1","user":"Practitioner/7","patient":"Patient/1","intent":"order","idp_hint":"idp-1"}`, status: 201},
		// An empty optional string is taken as absent; the document asks
		// clients to leave the member out.
		{name: "launch empty optional", method: "POST", path: "/api/v1/launches", key: L, ctype: ctJSON, body: `{"module":"diary","task":"Task/1","user":"Patient/1","intent":""}`, status: 201, invalid: true},
		{name: "launch unknown member", method: "POST", path: "/api/v1/launches", key: L, ctype: ctJSON, body: `{"module":"diary","task":"Task/1","user":"Patient/1","colour":"red"}`, status: 400, problem: "malformed-request", invalid: true},
		{name: "launch no key", method: "POST", path: "/api/v1/launches", ctype: ctJSON, body: launchBody, status: 401, problem: "unauthenticated", invalid: true},
		{name: "launch unknown key", method: "POST", path: "/api/v1/launches", key: unknownKey, ctype: ctJSON, body: launchBody, status: 401, problem: "unauthenticated", invalid: true},
		{name: "launch admin key", method: "POST", path: "/api/v1/launches", key: A, ctype: ctJSON, body: launchBody, status: 403, problem: "forbidden", invalid: true},
		{name: "launch too large", method: "POST", path: "/api/v1/launches", key: L, ctype: ctJSON, body: tooLargeLaunch, status: 413, problem: "body-too-large", invalid: true},
		{name: "launch not JSON", method: "POST", path: "/api/v1/launches", key: L, ctype: "text/plain", body: launchBody, status: 415, problem: "unsupported-media-type", invalid: true},
		{name: "launch dot task", method: "POST", path: "/api/v1/launches", key: L, ctype: ctJSON, body: `{"module":"diary","task":"Task/..","user":"Patient/1"}`, status: 422, problem: "invalid-request", invalid: true},
		// The patient is required for a plain HTI issuer only, which the
		// document cannot tell from the body.
		{name: "launch practitioner without patient", method: "POST", path: "/api/v1/launches", key: L, ctype: ctJSON, body: `{"module":"diary","task":"Task/1","user":"Practitioner/7"}`, status: 422, problem: "invalid-request"},
		{name: "launch domain", method: "POST", path: "/api/v1/launches", key: L, ctype: ctJSON, body: domainBody, status: 201},
		{name: "launch domain refused", method: "POST", path: "/api/v1/launches", key: L, ctype: ctJSON, body: `{"issuer":"kt","task":"Task/t-patient","user":"Patient/p-2"}`, status: 403, problem: "launch-refused"},
		{name: "launch domain not launchable", method: "POST", path: "/api/v1/launches", key: L, ctype: ctJSON, body: `{"issuer":"kt","task":"Task/t-http","user":"Patient/p-1"}`, status: 422, problem: "task-not-launchable"},
		{name: "launch domain contradicted", method: "POST", path: "/api/v1/launches", key: L, ctype: ctJSON, body: `{"issuer":"kt","task":"Task/t-patient","user":"Patient/p-1","intent":"plan"}`, status: 422, problem: "invalid-request"},
		{name: "launch unknown module", method: "POST", path: "/api/v1/launches", key: L, ctype: ctJSON, body: `{"module":"nope","task":"Task/1","user":"Patient/1"}`, status: 422, problem: "invalid-request"},

		{name: "token", method: "POST", path: "/api/v1/launch-tokens", key: L, ctype: ctJSON, body: launchBody, status: 201},
		{name: "token wrong type", method: "POST", path: "/api/v1/launch-tokens", key: L, ctype: ctJSON, body: `{"module":"diary","task":1,"user":"Patient/1"}`, status: 400, problem: "malformed-request", invalid: true},
		// JSON allows no data after the value, but kin-openapi's decoder
		// reads the first value and stops.
		{name: "token trailing data", method: "POST", path: "/api/v1/launch-tokens", key: L, ctype: ctJSON, body: launchBody + "{}", status: 400, problem: "malformed-request"},
		{name: "token no key", method: "POST", path: "/api/v1/launch-tokens", ctype: ctJSON, body: launchBody, status: 401, problem: "unauthenticated", invalid: true},
		{name: "token admin key", method: "POST", path: "/api/v1/launch-tokens", key: A, ctype: ctJSON, body: launchBody, status: 403, problem: "forbidden", invalid: true},
		{name: "token too large", method: "POST", path: "/api/v1/launch-tokens", key: L, ctype: ctJSON, body: tooLargeLaunch, status: 413, problem: "body-too-large", invalid: true},
		{name: "token not JSON", method: "POST", path: "/api/v1/launch-tokens", key: L, ctype: "text/plain", body: launchBody, status: 415, problem: "unsupported-media-type", invalid: true},
		{name: "token domain", method: "POST", path: "/api/v1/launch-tokens", key: L, ctype: ctJSON, body: domainBody, status: 201},
		{name: "token domain refused", method: "POST", path: "/api/v1/launch-tokens", key: L, ctype: ctJSON, body: `{"issuer":"kt","task":"Task/t-done","user":"Patient/p-1"}`, status: 403, problem: "launch-refused"},
		{name: "token domain not launchable", method: "POST", path: "/api/v1/launch-tokens", key: L, ctype: ctJSON, body: `{"issuer":"kt","task":"Task/t-noinst","user":"Patient/p-1"}`, status: 422, problem: "task-not-launchable"},
		{name: "token bad intent", method: "POST", path: "/api/v1/launch-tokens", key: L, ctype: ctJSON, body: `{"module":"diary","task":"Task/1","user":"Patient/1","intent":"wish"}`, status: 422, problem: "invalid-request", invalid: true},

		{name: "audit", method: "GET", path: "/api/v1/launches", key: A, status: 200},
		{name: "audit filtered", method: "GET", path: "/api/v1/launches?task=Task/1&user=Patient/1&patient=Patient/1&module=diary&issuer=default&from=2020-01-01T00:00:00Z&limit=2", key: A, status: 200},
		{name: "audit refused", method: "GET", path: "/api/v1/launches?issuer=kt&outcome=refused&module=Device/mod-1", key: A, status: 200},
		{name: "audit domain", method: "GET", path: "/api/v1/launches?issuer=kt&outcome=accepted", key: A, status: 200},
		{name: "audit bad outcome", method: "GET", path: "/api/v1/launches?outcome=maybe", key: A, status: 422, problem: "invalid-request", invalid: true},
		{name: "audit unknown parameter", method: "GET", path: "/api/v1/launches?colour=red", key: A, status: 400, problem: "malformed-request"},
		{name: "audit bad time", method: "GET", path: "/api/v1/launches?from=yesterday", key: A, status: 400, problem: "malformed-request", invalid: true},
		{name: "audit no key", method: "GET", path: "/api/v1/launches", status: 401, problem: "unauthenticated", invalid: true},
		{name: "audit launch key", method: "GET", path: "/api/v1/launches", key: L, status: 403, problem: "forbidden", invalid: true},
		{name: "audit limit", method: "GET", path: "/api/v1/launches?limit=501", key: A, status: 422, problem: "invalid-request", invalid: true},
		{name: "audit to before from", method: "GET", path: "/api/v1/launches?from=2026-01-02T00:00:00Z&to=2026-01-01T00:00:00Z", key: A, status: 422, problem: "invalid-request"},

		{name: "modules", method: "GET", path: "/api/v1/modules", key: A, status: 200},
		{name: "modules paged", method: "GET", path: "/api/v1/modules?limit=1", key: A, status: 200},
		{name: "modules bad limit", method: "GET", path: "/api/v1/modules?limit=x", key: A, status: 400, problem: "malformed-request", invalid: true},
		{name: "modules no key", method: "GET", path: "/api/v1/modules", status: 401, problem: "unauthenticated", invalid: true},
		{name: "modules launch key", method: "GET", path: "/api/v1/modules", key: L, status: 403, problem: "forbidden", invalid: true},
		{name: "modules limit 0", method: "GET", path: "/api/v1/modules?limit=0", key: A, status: 422, problem: "invalid-request", invalid: true},

		{name: "module", method: "GET", path: "/api/v1/modules/diary", key: A, status: 200},
		{name: "module bad slug", method: "GET", path: "/api/v1/modules/Diary", key: A, status: 400, problem: "malformed-request", invalid: true},
		{name: "module no key", method: "GET", path: "/api/v1/modules/diary", status: 401, problem: "unauthenticated", invalid: true},
		{name: "module launch key", method: "GET", path: "/api/v1/modules/diary", key: L, status: 403, problem: "forbidden", invalid: true},
		{name: "module unknown", method: "GET", path: "/api/v1/modules/nope", key: A, status: 404, problem: "unknown-module"},

		{name: "put new", method: "PUT", path: "/api/v1/modules/new", key: A, ctype: ctJSON, body: `{"launch_url":"https://m.example.org/launch","audience":"Device/new","fields":"all"}`, status: 201},
		{name: "put again", method: "PUT", path: "/api/v1/modules/new", key: A, ctype: ctJSON, body: `{"slug":"new","issuer":"default","launch_url":"https://m.example.org/v2","audience":"Device/new","default_definition":"ActivityDefinition/x","method":"get","fields":"hti"}`, status: 200},
		{name: "put unknown member", method: "PUT", path: "/api/v1/modules/new", key: A, ctype: ctJSON, body: `{"launch_url":"https://m.example.org","audience":"Device/new","colour":"red"}`, status: 400, problem: "malformed-request", invalid: true},
		{name: "put no key", method: "PUT", path: "/api/v1/modules/new", ctype: ctJSON, body: `{"launch_url":"https://m.example.org","audience":"Device/new"}`, status: 401, problem: "unauthenticated", invalid: true},
		{name: "put launch key", method: "PUT", path: "/api/v1/modules/new", key: L, ctype: ctJSON, body: `{"launch_url":"https://m.example.org","audience":"Device/new"}`, status: 403, problem: "forbidden", invalid: true},
		{name: "put too large", method: "PUT", path: "/api/v1/modules/new", key: A, ctype: ctJSON, body: tooLargeModule, status: 413, problem: "body-too-large", invalid: true},
		{name: "put not JSON", method: "PUT", path: "/api/v1/modules/new", key: A, ctype: "text/plain", body: `{}`, status: 415, problem: "unsupported-media-type", invalid: true},
		{name: "put bad audience", method: "PUT", path: "/api/v1/modules/new", key: A, ctype: ctJSON, body: `{"launch_url":"https://m.example.org","audience":"Patient/1"}`, status: 422, problem: "invalid-request", invalid: true},
		{name: "put unknown issuer", method: "PUT", path: "/api/v1/modules/new", key: A, ctype: ctJSON, body: `{"launch_url":"https://m.example.org","audience":"Device/new","issuer":"nobody"}`, status: 422, problem: "invalid-request"},

		{name: "delete", method: "DELETE", path: "/api/v1/modules/new", key: A, status: 204},
		{name: "delete bad slug", method: "DELETE", path: "/api/v1/modules/-x", key: A, status: 400, problem: "malformed-request", invalid: true},
		{name: "delete no key", method: "DELETE", path: "/api/v1/modules/new", status: 401, problem: "unauthenticated", invalid: true},
		{name: "delete launch key", method: "DELETE", path: "/api/v1/modules/new", key: L, status: 403, problem: "forbidden", invalid: true},
		{name: "delete unknown", method: "DELETE", path: "/api/v1/modules/new", key: A, status: 404, problem: "unknown-module"},

		{name: "keys", method: "GET", path: "/api/v1/keys", key: A, status: 200},
		{name: "keys of issuer", method: "GET", path: "/api/v1/keys?issuer=default", key: A, status: 200},
		{name: "keys bad issuer", method: "GET", path: "/api/v1/keys?issuer=%00", key: A, status: 400, problem: "malformed-request", invalid: true},
		{name: "keys no key", method: "GET", path: "/api/v1/keys", status: 401, problem: "unauthenticated", invalid: true},
		{name: "keys launch key", method: "GET", path: "/api/v1/keys", key: L, status: 403, problem: "forbidden", invalid: true},
		{name: "keys unknown issuer", method: "GET", path: "/api/v1/keys?issuer=nobody", key: A, status: 404, problem: "unknown-issuer"},

		{name: "rotate too soon", method: "POST", path: "/api/v1/keys/rotate", key: A, status: 409, problem: "rotation-refused"},
		{name: "rotate", method: "POST", path: "/api/v1/keys/rotate", key: A, ctype: ctJSON, body: `{"issuer":"default","ignore_publish_lead":true}`, status: 200},
		{name: "rotate wrong case", method: "POST", path: "/api/v1/keys/rotate", key: A, ctype: ctJSON, body: `{"Issuer":"default"}`, status: 400, problem: "malformed-request", invalid: true},
		{name: "rotate no key", method: "POST", path: "/api/v1/keys/rotate", status: 401, problem: "unauthenticated", invalid: true},
		{name: "rotate launch key", method: "POST", path: "/api/v1/keys/rotate", key: L, status: 403, problem: "forbidden", invalid: true},
		{name: "rotate unknown issuer", method: "POST", path: "/api/v1/keys/rotate", key: A, ctype: ctJSON, body: `{"issuer":"nobody"}`, status: 404, problem: "unknown-issuer"},
		{name: "rotate too large", method: "POST", path: "/api/v1/keys/rotate", key: A, ctype: ctJSON, body: tooLargeRotate, status: 413, problem: "body-too-large", invalid: true},
		{name: "rotate not JSON", method: "POST", path: "/api/v1/keys/rotate", key: A, ctype: "text/plain", body: `{}`, status: 415, problem: "unsupported-media-type", invalid: true},

		{name: "events", method: "GET", path: "/api/v1/admin-events", key: A, status: 200},
		{name: "events filtered", method: "GET", path: "/api/v1/admin-events?actor=apikey:operator&action=module.put&target=module:diary&limit=1", key: A, status: 200},
		{name: "events unknown parameter", method: "GET", path: "/api/v1/admin-events?who=me", key: A, status: 400, problem: "malformed-request"},
		{name: "events no key", method: "GET", path: "/api/v1/admin-events", status: 401, problem: "unauthenticated", invalid: true},
		{name: "events launch key", method: "GET", path: "/api/v1/admin-events", key: L, status: 403, problem: "forbidden", invalid: true},
		{name: "events bad actor", method: "GET", path: "/api/v1/admin-events?actor=someone", key: A, status: 422, problem: "invalid-request", invalid: true},

		{name: "audit events", method: "GET", path: "/api/v1/audit-events", key: A, status: 200},
		{name: "audit events filtered", method: "GET", path: "/api/v1/audit-events?state=failed&launch=8d7c3a52-6b1e-4f0e-9a0b-0c1d2e3f4a5b&limit=5", key: A, status: 200},
		{name: "audit events unknown parameter", method: "GET", path: "/api/v1/audit-events?kind=x", key: A, status: 400, problem: "malformed-request"},
		{name: "audit events no key", method: "GET", path: "/api/v1/audit-events", status: 401, problem: "unauthenticated", invalid: true},
		{name: "audit events launch key", method: "GET", path: "/api/v1/audit-events", key: L, status: 403, problem: "forbidden", invalid: true},
		{name: "audit events bad state", method: "GET", path: "/api/v1/audit-events?state=lost", key: A, status: 422, problem: "invalid-request", invalid: true},

		{name: "contract", method: "GET", path: "/api/v1/openapi.yaml", status: 200},
		{name: "contract unknown parameter", method: "GET", path: "/api/v1/openapi.yaml?v=2", status: 400, problem: "malformed-request"},

		{name: "follow", method: "GET", path: open, status: 200},
		{name: "follow unknown", method: "GET", path: unknownTicket, status: 404},
		{name: "follow used", method: "GET", path: used, status: 410},
		{name: "follow expired", method: "GET", path: expired, status: 410},
		{name: "follow changed", method: "GET", path: changed, status: 410},
		{name: "head", method: "HEAD", path: open, status: 200},
		{name: "head unknown", method: "HEAD", path: unknownTicket, status: 404},
		{name: "head used", method: "HEAD", path: used, status: 410},
		{name: "redeem cross-site", method: "POST", path: open, header: cross, status: 403},
		{name: "redeem too large", method: "POST", path: open, ctype: ctJSON, body: tooLargeLaunch, status: 413, problem: "body-too-large"},
		{name: "redeem", method: "POST", path: open, header: same, status: 200},
		{name: "redeem redirect", method: "POST", path: redirect, header: same, status: 303},
		{name: "redeem unknown", method: "POST", path: unknownTicket, status: 404},
		{name: "redeem used", method: "POST", path: used, status: 410},
		{name: "redeem expired", method: "POST", path: expired, status: 410},
		{name: "redeem changed", method: "POST", path: changed, status: 410},

		{name: "healthz", method: "GET", path: "/healthz", status: 200},
		{name: "readyz", method: "GET", path: "/readyz", status: 200},
	})

	// The JWKS after the rotation above, with its current ETag.
	resp, _ := get(t, s.http.URL+"/.well-known/jwks.json", nil)
	match := map[string]string{"If-None-Match": resp.Header.Get("ETag")}
	c.run("jwks", []contractCase{
		{name: "jwks", method: "GET", path: "/.well-known/jwks.json", status: 200},
		{name: "jwks not modified", method: "GET", path: "/.well-known/jwks.json", header: match, status: 304},
		{name: "jwks head", method: "HEAD", path: "/.well-known/jwks.json", status: 200},
		{name: "jwks head not modified", method: "HEAD", path: "/.well-known/jwks.json", header: match, status: 304},
		{name: "issuer jwks", method: "GET", path: "/issuers/default/jwks.json", status: 200},
		{name: "issuer jwks not modified", method: "GET", path: "/issuers/default/jwks.json", header: match, status: 304},
		{name: "issuer jwks unknown", method: "GET", path: "/issuers/nobody/jwks.json", status: 404, problem: "unknown-issuer"},
		{name: "issuer jwks head", method: "HEAD", path: "/issuers/default/jwks.json", status: 200},
		{name: "issuer jwks head not modified", method: "HEAD", path: "/issuers/default/jwks.json", header: match, status: 304},
		{name: "issuer jwks head unknown", method: "HEAD", path: "/issuers/nobody/jwks.json", status: 404, problem: "unknown-issuer"},
	})

	// Each API operation once more, with the database broken (500), and
	// cut off (503).
	authenticated := []contractCase{
		{name: "launch", method: "POST", path: "/api/v1/launches", key: L, ctype: ctJSON, body: launchBody},
		{name: "token", method: "POST", path: "/api/v1/launch-tokens", key: L, ctype: ctJSON, body: launchBody},
		{name: "audit", method: "GET", path: "/api/v1/launches", key: A},
		{name: "modules", method: "GET", path: "/api/v1/modules", key: A},
		{name: "module", method: "GET", path: "/api/v1/modules/diary", key: A},
		{name: "put", method: "PUT", path: "/api/v1/modules/diary", key: A, ctype: ctJSON, body: `{"launch_url":"https://m.example.org","audience":"Device/diary-1"}`},
		{name: "delete", method: "DELETE", path: "/api/v1/modules/diary", key: A},
		{name: "keys", method: "GET", path: "/api/v1/keys", key: A},
		{name: "rotate", method: "POST", path: "/api/v1/keys/rotate", key: A},
		{name: "events", method: "GET", path: "/api/v1/admin-events", key: A},
		{name: "audit events", method: "GET", path: "/api/v1/audit-events", key: A},
	}
	withOutcome := func(cases []contractCase, status int, kind string) []contractCase {
		out := slices.Clone(cases)
		for i := range out {
			out[i].status, out[i].problem = status, kind
		}
		return out
	}
	pages := []contractCase{
		{name: "follow", method: "GET", path: unknownTicket},
		{name: "head", method: "HEAD", path: unknownTicket},
		{name: "redeem", method: "POST", path: unknownTicket},
	}

	if _, err := s.pool.Exec(ctx, `ALTER TABLE api_keys RENAME TO api_keys_away; ALTER TABLE launches RENAME TO launches_away`); err != nil {
		t.Fatal(err)
	}
	s.pool.Reset()
	c.run("broken", append(withOutcome(authenticated, 500, "internal"), withOutcome(pages, 500, "")...))
	if _, err := s.pool.Exec(ctx, `ALTER TABLE api_keys_away RENAME TO api_keys; ALTER TABLE launches_away RENAME TO launches`); err != nil {
		t.Fatal(err)
	}
	s.pool.Reset()

	// No usable signing key: the default issuer's active key cannot be
	// unsealed any more.
	if _, err := s.pool.Exec(ctx, `UPDATE signing_keys SET sealed_private = sealed_private || '\x00'::bytea WHERE issuer = 'default' AND state = 'active'`); err != nil {
		t.Fatal(err)
	}
	_ = s.keyring.Refresh(ctx)
	c.run("keyless", []contractCase{
		{name: "token", method: "POST", path: "/api/v1/launch-tokens", key: L, ctype: ctJSON, body: launchBody, status: 503, problem: "keys-unavailable"},
	})
	// The domain issuer's key too: it cannot ask its domain for a token.
	if _, err := s.pool.Exec(ctx, `UPDATE signing_keys SET sealed_private = sealed_private || '\x00'::bytea WHERE issuer = 'kt' AND state = 'active'`); err != nil {
		t.Fatal(err)
	}
	_ = s.keyring.Refresh(ctx)
	c.run("keyless domain", []contractCase{
		{name: "launch", method: "POST", path: "/api/v1/launches", key: L, ctype: ctJSON, body: domainBody, status: 503, problem: "keys-unavailable"},
	})
	if _, err := s.pool.Exec(ctx, `UPDATE signing_keys SET sealed_private = substring(sealed_private from 1 for length(sealed_private) - 1) WHERE state = 'active'`); err != nil {
		t.Fatal(err)
	}
	if err := s.keyring.Refresh(ctx); err != nil {
		t.Fatal(err)
	}

	// The Koppeltaal domain silent, then not knowing the portal's client.
	dom.proxy.BlackHole()
	c.run("domain outage", []contractCase{
		{name: "launch", method: "POST", path: "/api/v1/launches", key: L, ctype: ctJSON, body: domainBody, status: 503, problem: "domain-unavailable"},
		{name: "token", method: "POST", path: "/api/v1/launch-tokens", key: L, ctype: ctJSON, body: domainBody, status: 503, problem: "domain-unavailable"},
		{name: "readyz", method: "GET", path: "/readyz", status: 200},
	})
	if err := dom.proxy.Restore(); err != nil {
		t.Fatal(err)
	}
	unregisterDomainClient(t, s)
	c.run("domain refuses the client", []contractCase{
		{name: "launch", method: "POST", path: "/api/v1/launches", key: L, ctype: ctJSON, body: domainBody, status: 503, problem: "domain-client-refused"},
		{name: "token", method: "POST", path: "/api/v1/launch-tokens", key: L, ctype: ctJSON, body: domainBody, status: 503, problem: "domain-client-refused"},
	})

	proxy.Cut()
	c.run("outage", append(withOutcome(authenticated, 503, "unavailable"), append(withOutcome(pages, 503, ""),
		contractCase{name: "readyz", method: "GET", path: "/readyz", status: 503})...))
	proxy.Restore()

	for _, want := range documentedOutcomes(c.doc) {
		if !c.covered[want] {
			t.Errorf("documented but never produced: %s", want)
		}
	}
	if testing.Verbose() {
		for k, body := range c.examples {
			if len(body) < 20000 {
				t.Logf("example %s: %s", k, strings.TrimSpace(string(body)))
			}
		}
	}
}
