package fhirdomain

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ehealth-nl/portal/internal/testdomain"
)

const (
	issuer    = "portal-issuer"
	canonical = "https://module.example/fhir/ActivityDefinition/ad-1"
)

type obj = map[string]any

// task is a KT2 Task for Patient/p-1, owned by Practitioner/pr-1, that
// instantiates def (testdomain.Task: a valueCanonical when def has "://",
// a valueReference otherwise, none when "").
func task(id, def string) obj {
	return testdomain.Task(id, "ready", "order", "Patient/p-1", "Practitioner/pr-1", def)
}

// TestFixtureURLs: testdomain's fixtures repeat this package's KT2 URLs
// (it cannot import them); a drift would show here first, by name.
func TestFixtureURLs(t *testing.T) {
	extURL := func(r obj, i int) any { return r["extension"].([]any)[i].(obj)["url"] }
	ad := testdomain.ActivityDefinition("ad", "active", "Device/d", "ep")
	for name, c := range map[string]struct{ got, want any }{
		"ExtInstantiates":      {extURL(task("t", "ActivityDefinition/ad"), 0), ExtInstantiates},
		"ExtEndpoint":          {extURL(ad, 0), ExtEndpoint},
		"ExtResourceOrigin":    {extURL(ad, 1), ExtResourceOrigin},
		"ConnectionTypeSystem": {testdomain.Endpoint("ep", "active", ConnectionTypeHTI, "https://x.example")["connectionType"].(obj)["system"], ConnectionTypeSystem},
		"ClientIDSystem":       {testdomain.Device("d", "active", "c")["identifier"].([]any)[0].(obj)["system"], ClientIDSystem},
	} {
		if c.got != c.want {
			t.Errorf("%s: testdomain uses %v, this package %v", name, c.got, c.want)
		}
	}
}

type fixture struct {
	domain   *testdomain.Domain
	tokens   *smartTokens
	proxy    *recorder
	versions map[string]string // "Type/id" → meta.versionId as seeded
	stored   map[string]obj    // "Type/id" → the resource as the server stored it
}

// seedDomain starts a test domain with KT2-shaped fixtures and a
// recording proxy in front of it.
func seedDomain(t *testing.T) *fixture {
	t.Helper()
	tokens, client := newSmartTokens(t, "portal-test")
	d := testdomain.Start(t, client)
	tokens.domain = d
	viaRef := task("task-ref", "ActivityDefinition/ad-1")
	viaRef["intent"], viaRef["status"], viaRef["owner"] = "plan", "requested", obj{"reference": "Patient/p-1"}
	noPatient := task("task-nopatient", "ActivityDefinition/ad-1")
	delete(noPatient, "for")
	big := task("task-big", "ActivityDefinition/ad-1")
	big["description"] = strings.Repeat("a long description ", 200)
	stored := d.Seed(t,
		testdomain.Patient("p-1"),
		testdomain.Practitioner("pr-1"),
		testdomain.Device("module-1", "active", "module-1"),
		testdomain.Device("dev-off", "inactive", "dev-off"),
		testdomain.Device("dev-noid", "active", ""),
		testdomain.Endpoint("ep-1", "active", ConnectionTypeHTI, "https://module.example/launch"),
		testdomain.Endpoint("ep-off", "off", ConnectionTypeHTI, "https://module.example/old"),
		testdomain.Endpoint("ep-http", "active", ConnectionTypeHTI, "http://module.example/launch"),
		testdomain.Endpoint("ep-loop", "active", ConnectionTypeHTI, "http://127.0.0.1:8443/launch"),
		testdomain.Endpoint("ep-rest", "active", "hl7-fhir-rest", "https://module.example/fhir"),
		testdomain.ActivityDefinition("ad-1", "active", "Device/module-1", "ep-off", "ep-1"),
		testdomain.ActivityDefinition("ad-retired", "retired", "Device/module-1", "ep-1"),
		testdomain.ActivityDefinition("ad-noep", "active", "Device/module-1", "ep-off", "ep-rest", "ep-missing"),
		testdomain.ActivityDefinition("ad-http", "active", "Device/module-1", "ep-http"),
		testdomain.ActivityDefinition("ad-loop", "active", "Device/module-1", "ep-loop"),
		testdomain.ActivityDefinition("ad-nodev", "active", "", "ep-1"),
		testdomain.ActivityDefinition("ad-devoff", "active", "Device/dev-off", "ep-1"),
		testdomain.ActivityDefinition("ad-devmissing", "active", "Device/nope", "ep-1"),
		testdomain.ActivityDefinition("ad-noid", "active", "Device/dev-noid", "ep-1"),
		task("task-canon", canonical+"|1.0"),
		viaRef,
		task("task-none", ""),
		task("task-admissing", "ActivityDefinition/nope"),
		task("task-canonmissing", "https://module.example/fhir/ActivityDefinition/nope"),
		task("task-retired", "ActivityDefinition/ad-retired"),
		task("task-noep", "ActivityDefinition/ad-noep"),
		task("task-http", "ActivityDefinition/ad-http"),
		task("task-loop", "ActivityDefinition/ad-loop"),
		task("task-nodev", "ActivityDefinition/ad-nodev"),
		task("task-devoff", "ActivityDefinition/ad-devoff"),
		task("task-devmissing", "ActivityDefinition/ad-devmissing"),
		task("task-noid", "ActivityDefinition/ad-noid"),
		noPatient,
		big,
	)
	f := &fixture{domain: d, tokens: tokens, proxy: newRecorder(t, d.FHIRBase), versions: map[string]string{}, stored: map[string]obj{}}
	for _, r := range stored {
		f.stored[fmt.Sprint(r["resourceType"], "/", r["id"])] = r
		meta, _ := r["meta"].(map[string]any)
		f.versions[fmt.Sprint(r["resourceType"], "/", r["id"])] = fmt.Sprint(meta["versionId"])
	}
	return f
}

// client is a Client through the recording proxy, on a clock of its own.
func (f *fixture) client(t *testing.T, mod func(*Config)) (*Client, *clock, *outcomes) {
	t.Helper()
	clk := &clock{now: time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)}
	obs := &outcomes{}
	cfg := Config{
		BaseURL: func(iss string) (string, bool) { return f.proxy.URL, iss == issuer },
		Tokens:  f.tokens, Now: clk.Now, Observe: obs.observe, Timeout: 10 * time.Second,
	}
	if mod != nil {
		mod(&cfg)
	}
	c, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return c, clk, obs
}

func traced(id string) context.Context {
	return WithTrace(context.Background(), Trace{RequestID: id, CorrelationID: "corr-" + id, TraceID: "trace-" + id})
}

func TestResolve(t *testing.T) {
	f := seedDomain(t)

	t.Run("both instantiates forms give the domain's values and versions", func(t *testing.T) {
		c, _, _ := f.client(t, nil)
		want := Resolution{Task: "Task/task-canon", Definition: "ActivityDefinition/ad-1", Endpoint: "Endpoint/ep-1",
			LaunchURL: "https://module.example/launch", Aud: "Device/module-1", ClientID: "module-1",
			Patient: "Patient/p-1", Owner: "Practitioner/pr-1", Intent: "order", Status: "ready",
			Versions: Versions{Task: f.versions["Task/task-canon"], ActivityDefinition: f.versions["ActivityDefinition/ad-1"],
				Endpoint: f.versions["Endpoint/ep-1"], Device: f.versions["Device/module-1"]}}
		got, err := c.Resolve(traced("both-1"), issuer, "task-canon")
		if err != nil || got != want {
			t.Fatalf("valueCanonical:\n got %+v %v\nwant %+v", got, err, want)
		}
		want.Task, want.Owner, want.Intent, want.Status = "Task/task-ref", "Patient/p-1", "plan", "requested"
		want.Versions.Task = f.versions["Task/task-ref"]
		if got, err := c.Resolve(traced("both-2"), issuer, "task-ref"); err != nil || got != want {
			t.Fatalf("valueReference:\n got %+v %v\nwant %+v", got, err, want)
		}
		for _, v := range []string{want.Versions.Task, want.Versions.ActivityDefinition, want.Versions.Endpoint, want.Versions.Device} {
			if v == "" || v == "<nil>" {
				t.Fatalf("a version is missing: %+v", want.Versions)
			}
		}
		got, err = c.Resolve(traced("both-3"), issuer, "task-loop")
		if err != nil || got.LaunchURL != "http://127.0.0.1:8443/launch" {
			t.Fatalf("http on loopback: %+v %v", got, err)
		}
		if reqs := f.proxy.with("both-1"); paths(reqs)["ActivityDefinition?"+url.Values{"url": {canonical}, "version": {"1.0"}}.Encode()] != 1 {
			t.Errorf("the canonical was not searched with url and version: %v", paths(reqs))
		}
	})

	t.Run("each broken rule has its reason", func(t *testing.T) {
		c, _, _ := f.client(t, nil)
		for taskID, want := range map[string]Reason{
			"nope":              ReasonTaskNotFound,
			"task-none":         ReasonNoInstantiates,
			"task-admissing":    ReasonDefinitionNotFound,
			"task-canonmissing": ReasonDefinitionNotFound,
			"task-retired":      ReasonDefinitionNotActive,
			"task-noep":         ReasonNoEndpoint,
			"task-http":         ReasonEndpointNotHTTPS,
			"task-nodev":        ReasonNoDevice,
			"task-devmissing":   ReasonNoDevice,
			"task-devoff":       ReasonDeviceInactive,
			"task-noid":         ReasonDeviceNoClientID,
			"task-nopatient":    ReasonTaskNoPatient,
			"..":                ReasonBadReference,
		} {
			_, err := c.Resolve(traced("rules-"+taskID), issuer, taskID)
			if got, ok := ReasonOf(err); !ok || got != want || errors.Is(err, ErrUnavailable) {
				t.Errorf("%s: %v (%q), want %q", taskID, err, got, want)
			}
		}
	})

	t.Run("Accept, Bearer and the trace headers reach the server", func(t *testing.T) {
		c, _, _ := f.client(t, func(cfg *Config) { cfg.CacheTTL = -1 })
		if _, err := c.Resolve(traced("hdr-1"), issuer, "task-ref"); err != nil {
			t.Fatal(err)
		}
		reqs := f.proxy.with("hdr-1")
		if len(reqs) != 5 { // Task, ActivityDefinition, ep-off, ep-1, Device
			t.Fatalf("%d requests: %v", len(reqs), paths(reqs))
		}
		for _, q := range reqs {
			h := q.Header
			if h.Get("Accept") != "application/fhir+json" || h.Get("X-Correlation-Id") != "corr-hdr-1" ||
				h.Get("X-Trace-Id") != "trace-hdr-1" || !strings.HasPrefix(h.Get("Authorization"), "Bearer ey") || q.Status != 200 {
				t.Errorf("%s: %d %v", q.Path, q.Status, h)
			}
		}
	})

	t.Run("a burst for one module reads its resources once", func(t *testing.T) {
		c, _, obs := f.client(t, nil)
		var wg sync.WaitGroup
		errs := make(chan error, 20)
		for range 20 {
			wg.Go(func() {
				if _, err := c.Resolve(traced("burst"), issuer, "task-canon"); err != nil {
					errs <- err
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
		got := paths(f.proxy.with("burst"))
		if got["Task/task-canon"] != 20 || got["Endpoint/ep-1"] != 1 || got["Endpoint/ep-off"] != 1 || got["Device/module-1"] != 1 || len(got) != 5 {
			t.Fatalf("requests: %v", got)
		}
		o := obs.take()
		if o["ActivityDefinition miss"] != 1 || o["ActivityDefinition hit"] != 19 || o["Device miss"] != 1 || o["Device hit"] != 19 || o["Endpoint miss"] != 2 || o["Endpoint hit"] != 38 {
			t.Fatalf("observed %v", o)
		}
	})

	t.Run("after the TTL the cache revalidates with If-None-Match", func(t *testing.T) {
		c, clk, obs := f.client(t, nil)
		if _, err := c.Resolve(traced("ttl-1"), issuer, "task-ref"); err != nil {
			t.Fatal(err)
		}
		clk.advance(DefaultCacheTTL - time.Second)
		if _, err := c.Resolve(traced("ttl-2"), issuer, "task-ref"); err != nil {
			t.Fatal(err)
		}
		if got := paths(f.proxy.with("ttl-2")); len(got) != 1 {
			t.Fatalf("within the TTL: %v", got)
		}
		obs.take()
		clk.advance(2 * time.Second)
		if _, err := c.Resolve(traced("ttl-3"), issuer, "task-ref"); err != nil {
			t.Fatal(err)
		}
		for _, q := range f.proxy.with("ttl-3") {
			if q.Path == "Task/task-ref" {
				continue
			}
			if want := `W/"` + f.versions[q.Path] + `"`; q.Header.Get("If-None-Match") != want {
				t.Errorf("%s: If-None-Match %q, want %q", q.Path, q.Header.Get("If-None-Match"), want)
			}
		}
		if o := obs.take(); o["ActivityDefinition revalidated"] != 1 || o["Endpoint revalidated"] != 2 || o["Device revalidated"] != 1 {
			t.Fatalf("observed %v", o)
		}
		// A changed Device (a new version) replaces the kept one.
		f.domain.Seed(t, testdomain.Device("module-1", "active", "module-1-renamed"))
		clk.advance(DefaultCacheTTL)
		got, err := c.Resolve(traced("ttl-4"), issuer, "task-ref")
		if err != nil || got.ClientID != "module-1-renamed" || got.Versions.Device == f.versions["Device/module-1"] {
			t.Fatalf("after a change: %+v %v", got, err)
		}
		if o := obs.take(); o["Device miss"] != 1 || o["Endpoint revalidated"] != 2 {
			t.Fatalf("observed %v", o)
		}
		restored := f.domain.Seed(t, testdomain.Device("module-1", "active", "module-1"))[0]
		f.stored["Device/module-1"] = restored
		f.versions["Device/module-1"] = fmt.Sprint(restored["meta"].(map[string]any)["versionId"])
	})

	t.Run("an oversized response is refused", func(t *testing.T) {
		c, _, _ := f.client(t, func(cfg *Config) { cfg.MaxBodyBytes = 2048 })
		if _, err := c.Task(traced("big-0"), issuer, "task-ref"); err != nil {
			t.Fatalf("a small Task: %v", err)
		}
		_, err := c.Task(traced("big-1"), issuer, "task-big")
		if !errors.Is(err, ErrTooLarge) || !errors.Is(err, ErrUnavailable) {
			t.Fatalf("a 4 kB Task with a 2 kB limit: %v", err)
		}
	})

	t.Run("a 401 draws one fresh token", func(t *testing.T) {
		c, _, _ := f.client(t, nil)
		good, err := f.tokens.Token(context.Background(), issuer)
		if err != nil {
			t.Fatal(err)
		}
		bad := good[:len(good)-4] + "AAAA" // a real token with a broken signature
		f.tokens.mu.Lock()
		f.tokens.poison, f.tokens.token = bad, ""
		f.tokens.mu.Unlock()
		calls0, inv0 := f.tokens.counts()
		if _, err := c.Task(traced("401-1"), issuer, "task-ref"); err != nil {
			t.Fatal(err)
		}
		calls, inv := f.tokens.counts()
		reqs := f.proxy.with("401-1")
		if calls-calls0 != 2 || len(inv)-len(inv0) != 1 || inv[len(inv)-1] != bad || len(reqs) != 2 ||
			reqs[0].Status != 401 || reqs[1].Status != 200 || reqs[1].Header.Get("Authorization") == "Bearer "+bad {
			t.Fatalf("token calls %d, invalidated %d, requests %+v", calls-calls0, len(inv)-len(inv0), reqs)
		}
		// A token the server keeps refusing: one retry, then unavailable.
		f.tokens.mu.Lock()
		f.tokens.always = bad
		f.tokens.mu.Unlock()
		defer func() { f.tokens.mu.Lock(); f.tokens.always = ""; f.tokens.mu.Unlock() }()
		if _, err := c.Task(traced("401-2"), issuer, "task-ref"); !errors.Is(err, ErrUnavailable) || len(f.proxy.with("401-2")) != 2 {
			t.Fatalf("always refused: %v, %d requests", err, len(f.proxy.with("401-2")))
		}
	})

	t.Run("the FHIR model keeps every element of the KT2 fixtures", func(t *testing.T) {
		c, _, _ := f.client(t, nil)
		ctx := context.Background()
		task, err := c.Task(ctx, issuer, "task-canon")
		ad, err2 := c.ActivityDefinition(ctx, issuer, "ActivityDefinition/ad-1")
		ep, err3 := c.Endpoint(ctx, issuer, "Endpoint/ep-1")
		dev, err4 := c.Device(ctx, issuer, "Device/module-1")
		if err := errors.Join(err, err2, err3, err4); err != nil {
			t.Fatal(err)
		}
		for ref, model := range map[string]any{task.Ref: task.Resource, ad.Ref: ad.Resource, ep.Ref: ep.Resource, dev.Ref: dev.Resource} {
			raw, err := json.Marshal(model)
			if err != nil {
				t.Fatal(err)
			}
			var back obj
			if err := json.Unmarshal(raw, &back); err != nil {
				t.Fatal(err)
			}
			if want := f.stored[ref]; !reflect.DeepEqual(back, want) {
				t.Errorf("%s: the model wrote\n%s\nthe server holds\n%v", ref, raw, want)
			}
		}
	})

	t.Run("an unknown issuer is a configuration error", func(t *testing.T) {
		c, _, _ := f.client(t, nil)
		_, err := c.Resolve(context.Background(), "other", "task-ref")
		if _, ok := ReasonOf(err); err == nil || ok || errors.Is(err, ErrUnavailable) {
			t.Fatalf("%v", err)
		}
	})
}

// TestUnavailable: a stopped domain and one that does not answer in time
// are ErrUnavailable, not a reason about the Task.
func TestUnavailable(t *testing.T) {
	tokens, client := newSmartTokens(t, "portal-test")
	var base string
	t.Run("domain up", func(t *testing.T) {
		d := testdomain.Start(t, client)
		tokens.domain = d
		d.Seed(t, task("task-1", "ActivityDefinition/ad-1"))
		base = d.FHIRBase
		if _, err := tokens.Token(context.Background(), issuer); err != nil {
			t.Fatal(err)
		}
	}) // the domain stops with this subtest
	c, err := New(Config{BaseURL: func(string) (string, bool) { return base, true }, Tokens: tokens})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Resolve(context.Background(), issuer, "task-1"); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("stopped domain: %v", err)
	}

	hang := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { <-r.Context().Done() }))
	t.Cleanup(hang.Close)
	c, err = New(Config{BaseURL: func(string) (string, bool) { return hang.URL, true }, Tokens: tokens, Timeout: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Resolve(context.Background(), issuer, "task-1"); !errors.Is(err, ErrUnavailable) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("a domain that does not answer: %v", err)
	}
}
