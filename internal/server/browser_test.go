package server

import (
	"context"
	"errors"
	"fmt"
	"html"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/cdproto/emulation"
	"github.com/chromedp/cdproto/input"
	cdplog "github.com/chromedp/cdproto/log"
	"github.com/chromedp/cdproto/page"
	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"

	"github.com/ehealth-nl/portal/internal/keys"
	"github.com/ehealth-nl/portal/pkg/hti"
)

// chromiumPath finds Debian's Chromium. Without it the launch page cannot
// be checked in a real browser, and the test fails rather than passing.
func chromiumPath(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("PORTAL_CHROMIUM"); p != "" {
		return p
	}
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	t.Fatal("Chromium not found: the launch page is tested in a real browser. Run `make test` (it installs Debian's chromium when run as root) or `apt-get install chromium`, or set PORTAL_CHROMIUM")
	return ""
}

// browser is a headless Chromium tab that records console errors, uncaught
// exceptions and CSP violations.
type browser struct {
	ctx    context.Context
	mu     sync.Mutex
	errors []string
}

func newBrowser(t *testing.T, scriptsEnabled bool) *browser {
	t.Helper()
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chromiumPath(t)),
		chromedp.NoSandbox, // the tests may run as root
		chromedp.DisableGPU,
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
	)
	if !scriptsEnabled {
		opts = append(opts, chromedp.Flag("blink-settings", "scriptEnabled=false"))
	}
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(operatorContext(), opts...)
	ctx, cancelTab := chromedp.NewContext(allocCtx)
	ctx, cancelTimeout := context.WithTimeout(ctx, 30*time.Second)
	t.Cleanup(func() { cancelTimeout(); cancelTab(); cancelAlloc() })
	b := &browser{ctx: ctx}
	err := chromedp.Listen(ctx, func(ev any) {
		b.mu.Lock()
		defer b.mu.Unlock()
		switch ev := ev.(type) {
		case *runtime.EventExceptionThrown:
			b.errors = append(b.errors, "exception: "+ev.ExceptionDetails.Text)
		case *runtime.EventConsoleAPICalled:
			if ev.Type == runtime.ConsoleAPICalledTypeError {
				b.errors = append(b.errors, "console.error")
			}
		case *cdplog.EventEntryAdded:
			if strings.HasSuffix(ev.Entry.URL, "/favicon.ico") {
				return // the browser asks every origin for an icon; not the page's doing
			}
			if ev.Entry.Source == cdplog.EntrySourceNetwork && strings.Contains(ev.Entry.URL, "/launch/") &&
				(strings.Contains(ev.Entry.Text, "status of 410") || strings.Contains(ev.Entry.Text, "status of 404")) {
				return // the page for a used or unknown link: expected where a test opens one
			}
			if ev.Entry.Level == cdplog.EntryLevelError || strings.Contains(ev.Entry.Text, "Content Security Policy") {
				b.errors = append(b.errors, fmt.Sprintf("%s: %s (%s)", ev.Entry.Source, ev.Entry.Text, ev.Entry.URL))
			}
		}
	})
	if err != nil {
		t.Fatalf("start Chromium: %v", err)
	}
	if _, err := chromedp.Call(ctx, cdplog.Enable, cdp.Empty{}); err != nil {
		t.Fatalf("start Chromium: %v", err)
	}
	if _, err := chromedp.Call(ctx, runtime.Enable, cdp.Empty{}); err != nil {
		t.Fatalf("start Chromium: %v", err)
	}
	return b
}

// goBack is the browser's back button. It does not wait for a load event:
// a page restored from the back-forward cache fires none.
func (b *browser) goBack(t *testing.T) {
	t.Helper()
	h, err := chromedp.Call(b.ctx, page.GetNavigationHistory, cdp.Empty{})
	if err != nil {
		t.Fatal(err)
	}
	if h.CurrentIndex < 1 {
		t.Fatalf("no history entry to go back to: %+v", h.Entries)
	}
	if _, err := chromedp.Call(b.ctx, page.NavigateToHistoryEntry, page.NavigateToHistoryEntryParams{EntryID: h.Entries[h.CurrentIndex-1].ID}); err != nil {
		t.Fatal(err)
	}
}

// chromeError stands, among the selectors of waitForOneOf, for Chromium's
// own error page (such as "Confirm Form Resubmission").
const chromeError = "chrome-error"

// waitForOneOf waits until one of the selectors matches an element (or,
// for chromeError, Chromium shows an error page) and returns it.
func (b *browser) waitForOneOf(t *testing.T, selectors ...string) string {
	t.Helper()
	for {
		for _, sel := range selectors {
			expr := fmt.Sprintf("document.querySelectorAll(%q).length", sel)
			if sel == chromeError {
				expr = `location.protocol === "chrome-error:" ? 1 : 0`
			}
			n, err := chromedp.Run(b.ctx, chromedp.EvaluateAsDevTools[int](expr))
			if err == nil && n > 0 {
				return sel
			}
		}
		select {
		case <-b.ctx.Done():
			t.Fatalf("none of %v appeared", selectors)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// clickAt presses and releases the mouse over the element, as a user
// would; it works on a page restored from the back-forward cache, which
// the DOM domain (and so chromedp.Click) does not see.
func (b *browser) clickAt(t *testing.T, selector string) {
	t.Helper()
	expr := fmt.Sprintf(`(function () { var r = document.querySelector(%q).getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; })()`, selector)
	xy, err := chromedp.Run(b.ctx, chromedp.EvaluateAsDevTools[[]float64](expr))
	if err != nil || len(xy) != 2 {
		t.Fatalf("locate %s: %v", selector, err)
	}
	for _, typ := range []input.DispatchMouseEventType{input.DispatchMouseEventTypeMousePressed, input.DispatchMouseEventTypeMouseReleased} {
		if _, err := chromedp.Call(b.ctx, input.DispatchMouseEvent, input.DispatchMouseEventParams{Type: typ, X: xy[0], Y: xy[1], Button: input.MouseButtonLeft, Buttons: 1, ClickCount: 1}); err != nil {
			t.Fatalf("click %s: %v", selector, err)
		}
	}
}

func (b *browser) consoleErrors() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]string(nil), b.errors...)
}

// testModule is a module on its own loopback origin that records every
// launch request it receives.
type testModule struct {
	srv      *httptest.Server
	mu       sync.Mutex
	received []received
}

type received struct {
	Method      string
	ContentType string
	Form        url.Values
}

func newTestModule(t *testing.T) *testModule {
	t.Helper()
	m := &testModule{}
	m.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		if r.URL.Path == "/portal" {
			fmt.Fprintf(w, `<!doctype html><title>portal</title><h1 id="portal">portal page</h1><a id="open" href="%s">open the module</a>`, html.EscapeString(r.URL.Query().Get("link")))
			return
		}
		if r.URL.Path != "/launch" {
			http.NotFound(w, r)
			return
		}
		_ = r.ParseForm()
		m.mu.Lock()
		m.received = append(m.received, received{Method: r.Method, ContentType: r.Header.Get("Content-Type"), Form: r.PostForm})
		m.mu.Unlock()
		w.Header().Set("Cache-Control", "no-store")
		fmt.Fprint(w, `<!doctype html><title>module</title><h1 id="module">module received the launch</h1>`)
	}))
	t.Cleanup(m.srv.Close)
	return m
}

// portalPage is the URL of a page on the module's server that stands for
// the portal's own UI: a link to the launch.
func (m *testModule) portalPage(link string) string {
	return m.srv.URL + "/portal?link=" + url.QueryEscape(link)
}

func (m *testModule) launches() []received {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]received(nil), m.received...)
}

// textOf waits until an element matches selector and returns its text. It
// asks the page with JavaScript (from DevTools, so it works with the
// page's scripts disabled too) rather than through the DOM domain, which
// does not notice a page restored from the back-forward cache.
func textOf(t *testing.T, b *browser, selector string) string {
	t.Helper()
	expr := fmt.Sprintf(`(function () { var e = document.querySelector(%q); return e ? "+" + e.textContent : ""; })()`, selector)
	for {
		text, err := chromedp.Run(b.ctx, chromedp.EvaluateAsDevTools[string](expr))
		if err == nil && text != "" {
			return text[1:]
		}
		select {
		case <-b.ctx.Done():
			loc, _ := chromedp.Run(context.WithoutCancel(b.ctx), chromedp.Location())
			t.Fatalf("%s never appeared (page %s): %v", selector, loc, err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// TestBrowser_LaunchPostsOnceAndNeverAgain opens a launch link from a
// portal page in headless Chromium: the page auto-submits to the module on
// another origin with exactly the module's fields, the token verifies, the
// CSP blocks nothing, and neither going back nor reloading sends a token
// again.
func TestBrowser_LaunchPostsOnceAndNeverAgain(t *testing.T) {
	s := newStack(t, testDB.Fresh(t), keys.RS512)
	mod := newTestModule(t)
	s.putModule(t, "browser", map[string]string{"launch_url": mod.srv.URL + "/launch", "audience": "Device/browser-1"})
	link := s.createLaunch(t, map[string]string{"module": "browser", "task": "Task/b1", "user": "Practitioner/dr", "patient": "Patient/p"})
	b := newBrowser(t, true)

	// The portal's page links to the launch; the user follows the link.
	if err := chromedp.Do(b.ctx, chromedp.Navigate(mod.portalPage(link)), chromedp.Click(chromedp.ID("open"))); err != nil {
		t.Fatal(err)
	}
	if got := textOf(t, b, "#module"); got != "module received the launch" {
		t.Fatalf("module page says %q", got)
	}
	got := mod.launches()
	if len(got) != 1 {
		t.Fatalf("module received %d launches, want 1", len(got))
	}
	r := got[0]
	if r.Method != http.MethodPost || r.ContentType != "application/x-www-form-urlencoded" {
		t.Fatalf("module got %s %s, want a form post", r.Method, r.ContentType)
	}
	var names []string
	for name := range r.Form {
		names = append(names, name)
	}
	slices.Sort(names)
	if !slices.Equal(names, []string{"iss", "launch"}) || r.Form.Get("iss") != "https://fhir.example.org/fhir" {
		t.Fatalf("module got fields %v (iss %q), want exactly iss and launch", names, r.Form.Get("iss"))
	}
	claims, err := s.verifier(t, "Device/browser-1").Verify(operatorContext(), r.Form.Get("launch"))
	if err != nil {
		t.Fatalf("the token the browser carried does not verify: %v", err)
	}
	if claims.Subject != "Practitioner/dr" || claims.Patient != "Patient/p" {
		t.Fatalf("claims %+v", claims)
	}

	// The auto-submit ran while the launch page was loading, so the module
	// page replaced it in the history: the launch link is not there to go
	// back to.
	history, err := chromedp.Run(b.ctx, chromedp.NavigationEntries())
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range history.Entries {
		if strings.Contains(e.URL, "/launch/") {
			t.Errorf("the launch link %s stayed in the browser history", e.URL)
		}
	}
	b.goBack(t)
	if got := textOf(t, b, "#portal"); got != "portal page" {
		t.Fatalf("going back shows %q, want the portal page", got)
	}

	// Opening the link again (a reload of the launch page, or the link from
	// the history of another tab) shows that it was used, and sends nothing.
	if err := chromedp.Do(b.ctx, chromedp.Navigate(link)); err != nil {
		t.Fatal(err)
	}
	if title := textOf(t, b, "#title"); title != "Deze link is al gebruikt" {
		t.Fatalf("opening the used link shows %q", title)
	}
	if en := textOf(t, b, "#message-en"); !strings.Contains(en, "already used") {
		t.Fatalf("opening the used link: %q", en)
	}
	if err := chromedp.Do(b.ctx, chromedp.Reload()); err != nil {
		t.Fatal(err)
	}
	if title := textOf(t, b, "#title"); title != "Deze link is al gebruikt" {
		t.Fatalf("after reloading the page says %q", title)
	}
	if n := len(mod.launches()); n != 1 {
		t.Fatalf("going back and reloading made the module receive %d launches, want 1", n)
	}
	if errs := b.consoleErrors(); len(errs) > 0 {
		t.Fatalf("console errors or CSP violations: %v", errs)
	}
}

// TestBrowser_ContinueButtonWithoutJavaScript launches with scripts off:
// following the link shows a button that redeems it, and the page that
// answers shows a continue button that posts the token to the module. It
// also pins down what the back button does then: Chromium may restore the
// submitted page from its back-forward cache (it does so for no-store
// pages since Chrome's "bfcache for Cache-Control: no-store" change), in
// which case a second press sends the same, already used token, which the
// module's verifier refuses as a replay; or it shows its own "Confirm Form
// Resubmission" page. Opening the link again shows that it was used.
func TestBrowser_ContinueButtonWithoutJavaScript(t *testing.T) {
	s := newStack(t, testDB.Fresh(t), keys.ES384)
	mod := newTestModule(t)
	s.putModule(t, "nojs", map[string]string{"launch_url": mod.srv.URL + "/launch", "audience": "Device/nojs", "fields": "all"})
	link := s.createLaunch(t, map[string]string{"module": "nojs", "task": "Task/n1", "user": "Patient/p"})
	b := newBrowser(t, false)
	if _, err := chromedp.Call(b.ctx, emulation.SetScriptExecutionDisabled, emulation.SetScriptExecutionDisabledParams{Value: true}); err != nil {
		t.Fatal(err)
	}
	// Following the link shows a button that redeems it; the page it
	// leads to shows the button that posts the token to the module.
	if err := chromedp.Do(b.ctx, chromedp.Navigate(mod.portalPage(link)), chromedp.Click(chromedp.ID("open")), chromedp.WaitVisible(chromedp.ID("proceed"))); err != nil {
		t.Fatal(err)
	}
	var redeemed int
	if err := s.pool.QueryRow(operatorContext(), `SELECT count(*) FROM launches WHERE redeemed_at IS NOT NULL`).Scan(&redeemed); err != nil || redeemed != 0 {
		t.Fatalf("following the link redeemed it without a press (%d, %v)", redeemed, err)
	}
	if err := chromedp.Do(b.ctx, chromedp.Click(chromedp.ID("proceed")), chromedp.WaitVisible(chromedp.ID("continue"))); err != nil {
		t.Fatal(err)
	}
	if n := len(mod.launches()); n != 0 {
		t.Fatalf("without JavaScript the form was submitted by itself (%d launches)", n)
	}
	if err := chromedp.Do(b.ctx, chromedp.Click(chromedp.ID("continue"))); err != nil {
		t.Fatal(err)
	}
	if got := textOf(t, b, "#module"); got != "module received the launch" {
		t.Fatalf("module page says %q", got)
	}
	got := mod.launches()
	if len(got) != 1 || got[0].Method != http.MethodPost {
		t.Fatalf("module received %+v", got)
	}
	if got[0].Form.Get("launch") != got[0].Form.Get("token") || got[0].Form.Get("iss") == "" {
		t.Fatalf("fields %v", got[0].Form)
	}
	verifier := s.verifier(t, "Device/nojs")
	if _, err := verifier.Verify(operatorContext(), got[0].Form.Get("token")); err != nil {
		t.Fatal(err)
	}

	// Going back reaches the page the redeeming post answered. Chromium
	// either restores it from its back-forward cache, or shows its own
	// "Confirm Form Resubmission" page (the answer is no-store); either way
	// nothing reaches the module by itself.
	b.goBack(t)
	restored := b.waitForOneOf(t, "#continue", "#title", chromeError)
	if n := len(mod.launches()); n != 1 {
		t.Fatalf("going back sent %d more launches", n-1)
	}
	switch restored {
	case "#continue":
		t.Log("Chromium restored the launch page from its back-forward cache")
		b.clickAt(t, "#continue")
		textOf(t, b, "#module")
		again := mod.launches()
		if len(again) != 2 || again[1].Form.Get("token") != got[0].Form.Get("token") {
			t.Fatalf("a second press should resend the very same token; module has %d launches", len(again))
		}
		if _, err := verifier.Verify(operatorContext(), again[1].Form.Get("token")); !errors.Is(err, hti.ErrReplay) {
			t.Fatalf("the resent token was not refused as a replay: %v", err)
		}
	case chromeError:
		t.Log("Chromium asks before posting the redeeming form again")
	}
	// Opening the link again shows that it was used.
	if err := chromedp.Do(b.ctx, chromedp.Navigate(link)); err != nil {
		t.Fatal(err)
	}
	if title := textOf(t, b, "#title"); title != "Deze link is al gebruikt" {
		t.Fatalf("opening the used link shows %q", title)
	}
	if errs := b.consoleErrors(); len(errs) > 0 {
		t.Fatalf("console errors or CSP violations: %v", errs)
	}
}

// TestBrowser_DemoLaunchesForEveryRole clicks through the demo a newcomer
// sees after make run: the portal page, a button per role, the demo module
// that verifies the token against the JWKS over HTTP and shows the claims.
func TestBrowser_DemoLaunchesForEveryRole(t *testing.T) {
	s := newStack(t, testDB.Fresh(t), keys.RS512, withDemo)
	b := newBrowser(t, true)
	for _, tc := range []struct{ role, sub, patient string }{
		{"patient", "Patient/demo-patient", ""},
		{"practitioner", "Practitioner/demo-practitioner", "Patient/demo-patient"},
		{"related-person", "RelatedPerson/demo-relative", "Patient/demo-patient"},
	} {
		if err := chromedp.Do(b.ctx, chromedp.Navigate(s.http.URL+"/"), chromedp.Click(chromedp.ID("launch-"+tc.role))); err != nil {
			t.Fatal(err)
		}
		if result := textOf(t, b, "#result"); !strings.Contains(result, "verified") {
			t.Fatalf("%s: demo module says %q (error: %q)", tc.role, result, textOf(t, b, "body"))
		}
		if sub := textOf(t, b, "#claim-sub"); sub != tc.sub {
			t.Errorf("%s: sub %q, want %q", tc.role, sub, tc.sub)
		}
		patient, _ := chromedp.Run(b.ctx, chromedp.EvaluateAsDevTools[string](`(document.getElementById("claim-patient") || {textContent: ""}).textContent`))
		if patient != tc.patient {
			t.Errorf("%s: patient %q, want %q", tc.role, patient, tc.patient)
		}
		if iss := textOf(t, b, "#form-iss"); iss != "https://fhir.example.org/fhir" {
			t.Errorf("%s: form iss %q", tc.role, iss)
		}
	}
	if errs := b.consoleErrors(); len(errs) > 0 {
		t.Fatalf("console errors or CSP violations: %v", errs)
	}
}

// TestBrowser_ModuleMayRedirectAfterTheLaunchPost checks the CSP
// form-action of the launch page against what real modules do: answer the
// launch post with a redirect to another origin (their login or the auth
// server). Chromium applies form-action to the redirect too, so a policy
// limited to the module's origin blocks it ("Sending form data to ...
// violates the following Content Security Policy directive").
func TestBrowser_ModuleMayRedirectAfterTheLaunchPost(t *testing.T) {
	s := newStack(t, testDB.Fresh(t), keys.ES256)
	landing := newTestModule(t) // another origin: where the module sends the browser next
	mod := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, landing.srv.URL+"/portal?link=after-redirect", http.StatusSeeOther)
	}))
	t.Cleanup(mod.Close)
	s.putModule(t, "redirects", map[string]string{"launch_url": mod.URL + "/launch", "audience": "Device/redirects"})
	link := s.createLaunch(t, map[string]string{"module": "redirects", "task": "Task/r", "user": "Patient/p"})
	b := newBrowser(t, true)
	if err := chromedp.Do(b.ctx, chromedp.Navigate(link)); err != nil {
		t.Fatal(err)
	}
	if got := textOf(t, b, "#portal"); got != "portal page" {
		t.Fatalf("after the module's redirect the browser shows %q", got)
	}
	if errs := b.consoleErrors(); len(errs) > 0 {
		t.Fatalf("console errors or CSP violations: %v", errs)
	}
}

// TestBrowser_AnotherSiteCannotSpendALinkUnseen has a page of another site
// send the browser to a launch link it learnt, without any click: the
// link's page waits for a press instead of posting itself, and the link
// stays unspent.
func TestBrowser_AnotherSiteCannotSpendALinkUnseen(t *testing.T) {
	s := newStack(t, testDB.Fresh(t), keys.ES256)
	mod := newTestModule(t)
	s.putModule(t, "unseen", map[string]string{"launch_url": mod.srv.URL + "/launch", "audience": "Device/unseen"})
	link := s.createLaunch(t, map[string]string{"module": "unseen", "task": "Task/u", "user": "Patient/p"})
	// Another site: localhost, while the portal is on 127.0.0.1.
	attacker := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html")
		fmt.Fprintf(w, `<!doctype html><p id="attacker">elsewhere</p><script>location.href = %q;</script>`, link)
	}))
	t.Cleanup(attacker.Close)
	attackerURL := strings.Replace(attacker.URL, "127.0.0.1", "localhost", 1)
	b := newBrowser(t, true)
	if err := chromedp.Do(b.ctx, chromedp.Navigate(attackerURL), chromedp.WaitVisible(chromedp.ID("proceed"))); err != nil {
		t.Fatal(err)
	}
	var redeemed int
	if err := s.pool.QueryRow(operatorContext(), `SELECT count(*) FROM launches WHERE redeemed_at IS NOT NULL`).Scan(&redeemed); err != nil || redeemed != 0 {
		t.Fatalf("another site's navigation redeemed the link (%d, %v)", redeemed, err)
	}
	if n := len(mod.launches()); n != 0 {
		t.Fatalf("the module received %d launches from another site's navigation", n)
	}
	// The user who did mean to open it presses the button.
	if err := chromedp.Do(b.ctx, chromedp.Click(chromedp.ID("proceed"))); err != nil {
		t.Fatal(err)
	}
	if got := textOf(t, b, "#module"); got != "module received the launch" {
		t.Fatalf("after the press the module page says %q", got)
	}
}
