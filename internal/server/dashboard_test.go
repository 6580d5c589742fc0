package server

import (
	"bufio"
	"encoding/json"
	"net/http"
	"os"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/ehealth-nl/portal/internal/keys"
	"github.com/ehealth-nl/portal/internal/pgtest"
)

// The operator's kit in deploy/: a Grafana dashboard and Prometheus
// alerting rules. promtool tests what the rules do (deploy/check.sh); these
// tests check that the dashboard is one Grafana can load and that every
// series the dashboard and the rules query is one the service exports.
const (
	dashboardPath = "../../deploy/grafana/portal.json"
	alertsPath    = "../../deploy/prometheus/alerts.yml"

	// dashboardSchemaVersion is the version of Grafana's classic dashboard
	// model the dashboard is written in.
	dashboardSchemaVersion = 39
)

// grafanaDashboard is the part of Grafana's dashboard model (schema 39)
// that a dashboard must have for Grafana to import and draw it.
type grafanaDashboard struct {
	Title         string         `json:"title"`
	UID           string         `json:"uid"`
	SchemaVersion int            `json:"schemaVersion"`
	Panels        []grafanaPanel `json:"panels"`
	Templating    struct {
		List []struct {
			Name  string          `json:"name"`
			Type  string          `json:"type"`
			Query json.RawMessage `json:"query"`
		} `json:"list"`
	} `json:"templating"`
}

// grafanaPanel is a panel: a row, or a graph with its PromQL targets.
type grafanaPanel struct {
	ID         int                `json:"id"`
	Type       string             `json:"type"`
	Title      string             `json:"title"`
	GridPos    *grafanaGridPos    `json:"gridPos"`
	Datasource *grafanaDatasource `json:"datasource"`
	Targets    []struct {
		RefID      string             `json:"refId"`
		Expr       string             `json:"expr"`
		Datasource *grafanaDatasource `json:"datasource"`
	} `json:"targets"`
	Panels []grafanaPanel `json:"panels"` // a collapsed row's panels
}

// grafanaGridPos places a panel on Grafana's grid of 24 columns.
type grafanaGridPos struct {
	H, W, X, Y int
}

// grafanaDatasource names the data source a panel or target queries.
type grafanaDatasource struct {
	Type string `json:"type"`
	UID  string `json:"uid"`
}

// readDashboard decodes the dashboard, refusing fields of the wrong type.
func readDashboard(t *testing.T) grafanaDashboard {
	t.Helper()
	b, err := os.ReadFile(dashboardPath)
	if err != nil {
		t.Fatal(err)
	}
	var d grafanaDashboard
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatalf("%s is not a dashboard: %v", dashboardPath, err)
	}
	return d
}

// dashboardQueries returns each PromQL query of the dashboard, panel
// targets and variable queries, keyed by where it is.
func dashboardQueries(d grafanaDashboard) map[string]string {
	out := map[string]string{}
	var walk func([]grafanaPanel)
	walk = func(panels []grafanaPanel) {
		for _, p := range panels {
			for _, tg := range p.Targets {
				out["panel "+p.Title+" "+tg.RefID] = tg.Expr
			}
			walk(p.Panels)
		}
	}
	walk(d.Panels)
	for _, v := range d.Templating.List {
		if v.Type != "query" {
			continue
		}
		var q struct {
			Query string `json:"query"`
		}
		if json.Unmarshal(v.Query, &q) != nil {
			_ = json.Unmarshal(v.Query, &q.Query) // the older form: a plain string
		}
		// label_values(metric, label) is Grafana's, not PromQL: keep the
		// selector only.
		if m := labelValuesQuery.FindStringSubmatch(q.Query); m != nil {
			q.Query = m[1]
		}
		out["variable "+v.Name] = q.Query
	}
	return out
}

var labelValuesQuery = regexp.MustCompile(`^\s*label_values\(\s*(.+?)\s*,\s*[a-zA-Z_]\w*\s*\)\s*$`)

// TestDashboard_HasWhatGrafanaSchema39Requires checks the fields Grafana's
// dashboard model needs: title, uid, schemaVersion, and panels with unique
// ids, a type, a title, a place on the grid and, unless they are rows,
// targets with an expression and a Prometheus data source.
func TestDashboard_HasWhatGrafanaSchema39Requires(t *testing.T) {
	d := readDashboard(t)
	if d.Title == "" || d.UID == "" {
		t.Errorf("title %q, uid %q: both are required", d.Title, d.UID)
	}
	if len(d.UID) > 40 {
		t.Errorf("uid %q is longer than Grafana's 40 characters", d.UID)
	}
	if d.SchemaVersion != dashboardSchemaVersion {
		t.Errorf("schemaVersion %d, want %d", d.SchemaVersion, dashboardSchemaVersion)
	}
	if len(d.Panels) == 0 {
		t.Fatal("no panels")
	}
	variables := map[string]bool{}
	for _, v := range d.Templating.List {
		variables[v.Name] = true
	}
	ids := map[int]string{}
	var check func([]grafanaPanel)
	check = func(panels []grafanaPanel) {
		for _, p := range panels {
			if p.ID <= 0 || p.Type == "" || p.Title == "" {
				t.Errorf("panel %q: id %d, type %q: id, type and title are required", p.Title, p.ID, p.Type)
			}
			if other, dup := ids[p.ID]; dup {
				t.Errorf("panels %q and %q share id %d", other, p.Title, p.ID)
			}
			ids[p.ID] = p.Title
			if g := p.GridPos; g == nil || g.W <= 0 || g.H <= 0 || g.X < 0 || g.Y < 0 || g.X+g.W > 24 {
				t.Errorf("panel %q: gridPos %+v must lie within Grafana's 24 columns", p.Title, g)
			}
			check(p.Panels)
			if p.Type == "row" {
				continue
			}
			if len(p.Targets) == 0 {
				t.Errorf("panel %q has no targets", p.Title)
			}
			for _, tg := range p.Targets {
				ds := tg.Datasource
				if ds == nil {
					ds = p.Datasource
				}
				if tg.RefID == "" || strings.TrimSpace(tg.Expr) == "" {
					t.Errorf("panel %q: a target with refId %q and expr %q: both are required", p.Title, tg.RefID, tg.Expr)
				}
				if ds == nil || ds.Type != "prometheus" || ds.UID == "" {
					t.Errorf("panel %q target %s: datasource %+v, want a prometheus one with a uid", p.Title, tg.RefID, ds)
					continue
				}
				if v, ok := strings.CutPrefix(ds.UID, "$"); ok && !variables[strings.Trim(v, "{}")] {
					t.Errorf("panel %q target %s: datasource %s is not a dashboard variable", p.Title, tg.RefID, ds.UID)
				}
			}
		}
	}
	check(d.Panels)
}

// alertExpressions reads each rule's expr from the rules file: inline
// (expr: ...) or a block scalar (expr: | or >, then the lines indented
// deeper), keyed by the rule's alert name.
func alertExpressions(t *testing.T) map[string]string {
	t.Helper()
	f, err := os.Open(alertsPath)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out := map[string]string{}
	var (
		alert     string
		alerts    int
		block     []string
		blockFrom = -1 // indentation of the expr key while reading its block
	)
	indent := func(s string) int { return len(s) - len(strings.TrimLeft(s, " ")) }
	flush := func() {
		if blockFrom >= 0 {
			out[alert] = strings.Join(block, "\n")
			block, blockFrom = nil, -1
		}
	}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		trimmed := strings.TrimSpace(line)
		if blockFrom >= 0 {
			if trimmed == "" || indent(line) > blockFrom {
				block = append(block, trimmed)
				continue
			}
			flush()
		}
		if strings.HasPrefix(trimmed, "#") {
			continue
		}
		if name, ok := strings.CutPrefix(trimmed, "- alert:"); ok {
			alert = strings.TrimSpace(name)
			alerts++
			continue
		}
		if v, ok := strings.CutPrefix(trimmed, "expr:"); ok && alert != "" {
			v = strings.TrimSpace(v)
			if v == "|" || v == ">" || v == "|-" || v == ">-" {
				blockFrom = indent(line)
				continue
			}
			out[alert] = strings.Trim(v, `'"`)
		}
	}
	flush()
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	if alerts == 0 || len(out) != alerts {
		t.Fatalf("%s: %d rules, %d expressions read: every rule needs an expr this test can read", alertsPath, alerts, len(out))
	}
	return out
}

// TestDashboardAndAlerts_QueryOnlySeriesTheServiceExports runs the whole
// service, makes it do a little of everything (launches created, redeemed
// and refused, JWKS answered 200 and 304, a rotation, a key that does not
// open), scrapes /metrics and looks up every metric name the dashboard and
// the alerting rules query, and every route pattern they select.
func TestDashboardAndAlerts_QueryOnlySeriesTheServiceExports(t *testing.T) {
	ctx := operatorContext()
	url := testDB.Fresh(t)
	proxy := pgtest.NewProxy(t, url)
	var dom *domainStack
	var audit *auditStack
	s := newStack(t, proxy.URL(url), keys.ES256, withDomain(&dom), withAudit(&dom, &audit))
	s.registerTestModule(t)
	// Launches from Tasks: one that works, one the domain refuses, one
	// while the domain is silent, one while it refuses the portal's client.
	for _, user := range []string{"Patient/p-1", "Patient/p-2"} {
		s.domainLaunch(t, "/api/v1/launch-tokens", map[string]string{"task": "Task/t-patient", "user": user})
	}
	// Their AuditEvents are delivered before the domain goes away.
	if counts := waitForOutbox(t, s, 20*time.Second); counts["delivered"] != 2 {
		status, _, body := s.apiCall(t, http.MethodGet, "/api/v1/audit-events", s.adminKey, "", "")
		t.Fatalf("AuditEvents %v: %d %s", counts, status, body)
	}
	dom.proxy.BlackHole()
	s.domainLaunch(t, "/api/v1/launch-tokens", map[string]string{"task": "Task/t-patient", "user": "Patient/p-1"})
	if err := dom.proxy.Restore(); err != nil {
		t.Fatal(err)
	}
	unregisterDomainClient(t, s)
	s.domainLaunch(t, "/api/v1/launch-tokens", map[string]string{"task": "Task/t-patient", "user": "Patient/p-1"})
	link := s.createLaunch(t, map[string]string{"module": "diary", "task": "Task/1", "user": "Patient/1"})
	// A database outage: launches refused as unavailable, 5xx answers.
	outage := s.createLaunch(t, map[string]string{"module": "diary", "task": "Task/1", "user": "Patient/1"})
	proxy.Cut()
	redeem(t, outage, nil)
	s.apiCall(t, http.MethodPost, "/api/v1/launches", s.launchKey, "application/json", `{"module":"diary","task":"Task/1","user":"Patient/1"}`)
	proxy.Restore()
	redeem(t, link, nil)
	redeem(t, link, nil) // refused: used
	if status, _, body := s.apiCall(t, http.MethodPost, "/api/v1/launch-tokens", s.launchKey, "application/json",
		`{"module":"diary","task":"Task/1","user":"Patient/1"}`); status != http.StatusCreated {
		t.Fatalf("launch token: %d %s", status, body)
	}
	resp, _ := get(t, s.http.URL+"/.well-known/jwks.json", nil)
	get(t, s.http.URL+"/.well-known/jwks.json", map[string]string{"If-None-Match": resp.Header.Get("ETag")})
	get(t, s.http.URL+"/issuers/default/jwks.json", nil)
	if status, _, body := s.apiCall(t, http.MethodPost, "/api/v1/keys/rotate", s.adminKey, "application/json", `{"ignore_publish_lead":true}`); status != http.StatusOK {
		t.Fatalf("rotate: %d %s", status, body)
	}
	if err := s.keyring.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := s.pool.Exec(ctx, `UPDATE signing_keys SET sealed_private = sealed_private || '\x00'::bytea WHERE issuer = 'default' AND state = 'next'`); err != nil {
		t.Fatal(err)
	}
	_ = s.keyring.Refresh(ctx) // refuses the next key
	// The worker has read the outbox since.
	audit.worker.Wake()
	time.Sleep(200 * time.Millisecond)
	_, body := get(t, s.http.URL+"/metrics", nil)
	exported := exportedSeriesNames(string(body))
	if !exported["portal_keys_refused_total"] {
		t.Fatal("the corrupted next key was not refused: the test no longer exercises what the rules query")
	}

	queries := dashboardQueries(readDashboard(t))
	for alert, expr := range alertExpressions(t) {
		queries["alert "+alert] = expr
	}
	where := make([]string, 0, len(queries))
	for w := range queries {
		where = append(where, w)
	}
	sort.Strings(where)
	for _, w := range where {
		names := promqlMetricNames(queries[w])
		if len(names) == 0 {
			t.Errorf("%s: no metric name found in %q", w, queries[w])
		}
		for _, name := range names {
			if !exported[name] {
				t.Errorf("%s queries %s, which the service does not export (query %q)", w, name, queries[w])
			}
		}
		// A label value renamed in the code (a route in routes.go, a
		// refusal reason, a status class) would silently empty a query.
		for _, m := range labelMatcher.FindAllStringSubmatch(queries[w], -1) {
			label := m[1]
			if label == "job" || label == "instance" || strings.Contains(m[2], "$") {
				continue // set by Prometheus, or a Grafana variable
			}
			for _, value := range strings.Split(m[2], "|") {
				if !strings.Contains(string(body), label+`="`+value+`"`) {
					t.Errorf("%s selects %s=%q, which the service did not report (query %q)", w, label, value, queries[w])
				}
			}
		}
	}
}

// labelMatcher finds the label values a query selects: label="..." or
// label=~"a|b" with plain values (no regular expression but | and the dots
// of file names).
var labelMatcher = regexp.MustCompile(`\b([a-z_]+)=~?"([^"]+)"`)

// exportedSeriesNames returns the name of every sample in a scrape in the
// Prometheus text format: what PromQL sees, so a histogram shows as its
// _bucket, _sum and _count series.
func exportedSeriesNames(scrape string) map[string]bool {
	names := map[string]bool{}
	for _, line := range strings.Split(scrape, "\n") {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if i := strings.IndexAny(line, "{ "); i > 0 {
			names[line[:i]] = true
		}
	}
	return names
}

// promqlNotMetrics are the words of PromQL that are not metric names when
// they are not followed by a parenthesis: aggregations (sum by (...)),
// operators, modifiers and the special numbers.
var promqlNotMetrics = map[string]bool{
	"sum": true, "min": true, "max": true, "avg": true, "group": true, "stddev": true, "stdvar": true,
	"count": true, "count_values": true, "bottomk": true, "topk": true, "quantile": true, "limitk": true, "limit_ratio": true,
	"by": true, "without": true, "on": true, "ignoring": true, "group_left": true, "group_right": true,
	"and": true, "or": true, "unless": true, "bool": true, "atan2": true, "offset": true,
	"inf": true, "nan": true,
}

// promqlGroupings are followed by a parenthesized list of label names.
var promqlGroupings = map[string]bool{"by": true, "without": true, "on": true, "ignoring": true, "group_left": true, "group_right": true}

// promqlMetricNames returns, sorted and once each, the metric names a
// PromQL expression selects: identifiers that are not function calls,
// keywords, label names in matchers ({...}) or grouping lists (by (...)),
// and not inside strings, ranges ([5m]), numbers or Grafana variables
// ($__rate_interval).
func promqlMetricNames(expr string) []string {
	var names []string
	isIdentStart := func(c byte) bool { return c == '_' || c == ':' || 'a' <= c|0x20 && c|0x20 <= 'z' }
	isIdent := func(c byte) bool { return isIdentStart(c) || '0' <= c && c <= '9' }
	skipString := func(i int) int { // i at the opening quote; returns past the closing one
		q := expr[i]
		for i++; i < len(expr); i++ {
			if expr[i] == '\\' && q != '`' {
				i++
				continue
			}
			if expr[i] == q {
				return i + 1
			}
		}
		return i
	}
	skipTo := func(i int, closer byte) int { // past the closer, strings skipped
		for i < len(expr) {
			switch c := expr[i]; {
			case c == '"' || c == '\'' || c == '`':
				i = skipString(i)
			case c == closer:
				return i + 1
			default:
				i++
			}
		}
		return i
	}
	for i := 0; i < len(expr); {
		c := expr[i]
		switch {
		case c == '"' || c == '\'' || c == '`':
			i = skipString(i)
		case c == '{':
			i = skipTo(i+1, '}')
		case c == '[':
			i = skipTo(i+1, ']')
		case c == '#': // a comment, to the end of the line
			for i < len(expr) && expr[i] != '\n' {
				i++
			}
		case c == '$' || '0' <= c && c <= '9' || c == '.': // a variable, a number or a duration
			for i++; i < len(expr) && (isIdent(expr[i]) || expr[i] == '.'); i++ {
			}
		case isIdentStart(c):
			start := i
			for i < len(expr) && isIdent(expr[i]) {
				i++
			}
			word := expr[start:i]
			next := i
			for next < len(expr) && strings.ContainsRune(" \t\n", rune(expr[next])) {
				next++
			}
			switch {
			case promqlGroupings[strings.ToLower(word)] && next < len(expr) && expr[next] == '(':
				i = skipTo(next+1, ')')
			case next < len(expr) && expr[next] == '(': // a function call
			case promqlNotMetrics[strings.ToLower(word)]:
			default:
				if !slices.Contains(names, word) {
					names = append(names, word)
				}
			}
		default:
			i++
		}
	}
	sort.Strings(names)
	return names
}

// TestPromQLMetricNames_SkipFunctionsLabelsRangesAndKeywords checks the
// extraction the series test relies on.
func TestPromQLMetricNames_SkipFunctionsLabelsRangesAndKeywords(t *testing.T) {
	for expr, want := range map[string][]string{
		`portal_published_keys unless portal_active_key_age_seconds`: {"portal_active_key_age_seconds", "portal_published_keys"},
		`-portal_next_rotation_seconds > 900`:                        {"portal_next_rotation_seconds"},
		`histogram_quantile(0.99, sum by (le, route) (rate(portal_http_request_duration_seconds_bucket{instance=~"$instance"}[$__rate_interval])))`: {
			"portal_http_request_duration_seconds_bucket"},
		`sum by (job) (rate(a_total{route=~"/x|/y", status_class="5xx"}[5m])) / ignoring(status) group_left sum without (x) (b_total offset 5m) > bool 0.01`: {
			"a_total", "b_total"},
		`count(up{job="a,b}"} == 0) or on() vector(0)`: {"up"},
		`rate(x_total[5m:30s]) and x_info * 1e3`:       {"x_info", "x_total"},
		`max by (issuer) (m) or min(m)`:                {"m"},
	} {
		if got := promqlMetricNames(expr); !slices.Equal(got, want) {
			t.Errorf("promqlMetricNames(%q) = %q, want %q", expr, got, want)
		}
	}
}
