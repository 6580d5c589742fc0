package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/lestrrat-go/jwx/v2/jwa"
	"github.com/lestrrat-go/jwx/v2/jwk"
	"github.com/lestrrat-go/jwx/v2/jwt"

	"github.com/ehealth-nl/portal/internal/auditevent"
	"github.com/ehealth-nl/portal/internal/faults"
	"github.com/ehealth-nl/portal/internal/testdomain"
	"github.com/ehealth-nl/portal/tools/internal/instance"
)

// The domain issuer: a second issuer, besides the default one, that joined
// the Koppeltaal test domain with its own Device there. Its launches read
// Tasks from the domain and report each start and refusal with an
// AuditEvent (TOP-KT-011; docs/ARCHITECTURE.md, "Reporting launches"). It
// does not rotate during the run: the domain's token endpoint caches the
// portal's JWKS for a minute, longer than the scaled rotation period. The
// default issuer keeps the rotation, the revocation and the plain HTI
// launches of the soak as they were.
const (
	domainIssuer   = "kt"
	domainClientID = "portal-soak-kt"
	domainDevice   = "Device/portal-soak"
	domainModule   = "Device/mod-1"
	domainTimeout  = 2 * time.Second // PORTAL_DOMAIN_TIMEOUT
	checkerID      = "soak-checker"  // the soak's own client, which reads the AuditEvents
)

// A domain launch of each kind the domain clients ask for: Tasks the
// domain lets the user start (a token, a link), and refusals by
// authorization (403, AuditEvent outcome 4) and at resolution (422,
// outcome 8).
var (
	domainToken     = `{"issuer":"kt","task":"Task/t-patient","user":"Patient/p-1"}`
	domainLink      = `{"issuer":"kt","task":"Task/t-team","user":"Practitioner/pr-team"}`
	domainForbidden = `{"issuer":"kt","task":"Task/t-team","user":"Practitioner/pr-other"}` // careteam-not-member
	domainNoModule  = `{"issuer":"kt","task":"Task/t-noep","user":"Patient/p-1"}`           // no-endpoint
)

// domain is the running test domain: the Node process, the fault proxy in
// front of it (the instances reach the FHIR server and the token endpoint
// only through it), its own address (for the checks, past the proxy) and
// the soak's client.
type domain struct {
	box     *testdomain.Domain
	proxy   *faults.Proxy
	direct  string // http://127.0.0.1:port, the domain itself
	checker *checkerClient
	log     *os.File
}

// startDomain starts the test domain behind a fault proxy; the portal's
// client authenticates with the keys at portalJWKS. Its log (one line per
// token request) goes to logPath.
func startDomain(ctx context.Context, portalJWKS, logPath string) (*domain, error) {
	port, err := instance.FreePort()
	if err != nil {
		return nil, err
	}
	d := &domain{direct: "http://127.0.0.1:" + strconv.Itoa(port)}
	if d.proxy, err = faults.NewProxy("127.0.0.1:" + strconv.Itoa(port)); err != nil {
		return nil, err
	}
	if d.checker, err = newCheckerClient(); err != nil {
		d.proxy.Close()
		return nil, err
	}
	if d.log, err = os.Create(logPath); err != nil {
		d.close()
		return nil, err
	}
	d.box, err = testdomain.Launch(ctx, testdomain.Options{Port: port, PublicOrigin: "http://" + d.proxy.Addr(), Log: d.log,
		Clients: []testdomain.Client{{ID: domainClientID, JWKSURL: portalJWKS}, {ID: checkerID, JWKSURL: d.checker.jwksURL}}})
	if err != nil {
		d.close()
		return nil, err
	}
	return d, nil
}

// close stops the domain, the proxy and the soak's client.
func (d *domain) close() {
	if d.box != nil {
		_ = d.box.Close()
	}
	d.proxy.Close()
	if d.checker != nil {
		d.checker.close()
	}
	if d.log != nil {
		_ = d.log.Close()
	}
}

// seed stores the domain's content: a patient, two practitioners, a
// CareTeam with one of them, the module (Device/mod-1, its https Endpoint,
// ActivityDefinition/ad-1), an ActivityDefinition without an Endpoint, the
// portal's Device, and a Task for each kind of launch.
func (d *domain) seed(ctx context.Context) error {
	td := testdomain.Task
	_, err := d.box.SeedResources(ctx,
		testdomain.Patient("p-1"),
		testdomain.Practitioner("pr-team"), testdomain.Practitioner("pr-other"),
		testdomain.CareTeam("ct-1", "active", "Patient/p-1", "Practitioner/pr-team"),
		testdomain.Device("mod-1", "active", "module-1"),
		testdomain.Device(strings.TrimPrefix(domainDevice, "Device/"), "active", domainClientID),
		testdomain.Endpoint("ep-1", "active", "hti-smart-on-fhir", "https://module.example.org/kt/launch"),
		testdomain.ActivityDefinition("ad-1", "active", domainModule, "ep-1"),
		testdomain.ActivityDefinition("ad-noep", "active", domainModule),
		td("t-patient", "ready", "order", "Patient/p-1", "Patient/p-1", "ActivityDefinition/ad-1"),
		td("t-team", "ready", "proposal", "Patient/p-1", "CareTeam/ct-1", "ActivityDefinition/ad-1"),
		td("t-noep", "ready", "order", "Patient/p-1", "Patient/p-1", "ActivityDefinition/ad-noep"),
	)
	return err
}

// checkerClient is the soak's SMART backend-services client of the domain,
// registered beside the portal's: an ES384 key whose JWKS it serves on
// loopback. The checks read the AuditEvents with it, past the fault proxy.
type checkerClient struct {
	key     jwk.Key
	jwksURL string
	srv     *http.Server
	http    *http.Client
}

// newCheckerClient makes the key and serves its public JWKS.
func newCheckerClient() (*checkerClient, error) {
	raw, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		return nil, err
	}
	key, err := jwk.FromRaw(raw)
	if err != nil {
		return nil, err
	}
	for k, v := range map[string]any{jwk.KeyIDKey: "soak-1", jwk.AlgorithmKey: jwa.ES384, jwk.KeyUsageKey: "sig"} {
		if err := key.Set(k, v); err != nil {
			return nil, err
		}
	}
	pub, err := key.PublicKey()
	if err != nil {
		return nil, err
	}
	set := jwk.NewSet()
	if err := set.AddKey(pub); err != nil {
		return nil, err
	}
	body, err := json.Marshal(set)
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	c := &checkerClient{key: key, jwksURL: "http://" + ln.Addr().String() + "/jwks.json", http: &http.Client{Timeout: 30 * time.Second}}
	c.srv = &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(body)
	})}
	go func() { _ = c.srv.Serve(ln) }()
	return c, nil
}

func (c *checkerClient) close() { _ = c.srv.Close() }

// accessToken gets a token with client_credentials from the domain's token
// endpoint, reached at its own address under the proxy's host name (the
// assertion's aud is the endpoint's public URL, which is what the domain
// checks).
func (c *checkerClient) accessToken(ctx context.Context, d *domain) (string, error) {
	now := time.Now()
	jti := make([]byte, 16)
	_, _ = rand.Read(jti)
	tok, err := jwt.NewBuilder().Issuer(checkerID).Subject(checkerID).Audience([]string{d.box.TokenEndpoint}).
		JwtID(hex.EncodeToString(jti)).IssuedAt(now).Expiration(now.Add(time.Minute)).Build()
	if err != nil {
		return "", err
	}
	tok.Options().Enable(jwt.FlattenAudience)
	assertion, err := jwt.Sign(tok, jwt.WithKey(jwa.ES384, c.key))
	if err != nil {
		return "", err
	}
	form := url.Values{"grant_type": {"client_credentials"}, "scope": {"system/AuditEvent.read"},
		"client_assertion_type": {"urn:ietf:params:oauth:client-assertion-type:jwt-bearer"}, "client_assertion": {string(assertion)}}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, d.direct+"/oauth2/token", strings.NewReader(form.Encode()))
	if err != nil {
		return "", err
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Host = d.proxy.Addr() // the token endpoint checks aud against the URL it was asked at
	resp, err := c.http.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	var tr struct {
		AccessToken string `json:"access_token"`
	}
	if resp.StatusCode != http.StatusOK || json.Unmarshal(body, &tr) != nil || tr.AccessToken == "" {
		return "", fmt.Errorf("token endpoint answered %d %s", resp.StatusCode, body)
	}
	return tr.AccessToken, nil
}

// domainEvent is what the checks read of one AuditEvent in the domain:
// its id and the tracing extensions that tie it to a launch.
type domainEvent struct {
	ID        string
	TraceID   string // the token's jti (a start)
	RequestID string // the request that started or refused the launch
}

// get reads a path below the FHIR base with the soak's access token, past
// the fault proxy, and returns the status and body.
func (d *domain) get(ctx context.Context, token, path string) (int, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, d.direct+"/fhir/"+path, nil)
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("Accept", "application/fhir+json")
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := d.checker.http.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, body, err
}

// hasAuditEvent tells whether the domain holds AuditEvent/<id>.
func (d *domain) hasAuditEvent(ctx context.Context, token, id string) (bool, error) {
	status, body, err := d.get(ctx, token, "AuditEvent/"+id)
	switch {
	case err != nil:
		return false, err
	case status == http.StatusOK:
		return true, nil
	case status == http.StatusNotFound:
		return false, nil
	}
	return false, fmt.Errorf("read AuditEvent/%s: %d %.300s", id, status, body)
}

// auditEvents reads every AuditEvent the domain holds, a page at a time,
// past the fault proxy, with the soak's access token.
func (d *domain) auditEvents(ctx context.Context, token string) ([]domainEvent, error) {
	const page = 1000
	var (
		out   []domainEvent
		total = -1
	)
	for offset := 0; total < 0 || offset < total; offset += page {
		status, body, err := d.get(ctx, token, fmt.Sprintf("AuditEvent?_count=%d&_offset=%d&_total=accurate&_sort=_id", page, offset))
		if err != nil {
			return nil, err
		}
		var b struct {
			ResourceType string
			Total        *int
			Entry        []struct {
				Resource struct {
					ID        string `json:"id"`
					Extension []struct {
						URL     string `json:"url"`
						ValueID string `json:"valueId"`
					} `json:"extension"`
				} `json:"resource"`
			} `json:"entry"`
		}
		if status != http.StatusOK || json.Unmarshal(body, &b) != nil || b.ResourceType != "Bundle" {
			return nil, fmt.Errorf("search AuditEvent: %d %.300s", status, body)
		}
		if b.Total == nil {
			return nil, errors.New("search AuditEvent: the Bundle has no total")
		}
		total = *b.Total
		for _, e := range b.Entry {
			ev := domainEvent{ID: e.Resource.ID}
			for _, x := range e.Resource.Extension {
				switch x.URL {
				case auditevent.ExtensionTraceID:
					ev.TraceID = x.ValueID
				case auditevent.ExtensionRequestID:
					ev.RequestID = x.ValueID
				}
			}
			out = append(out, ev)
		}
		if len(b.Entry) == 0 {
			break
		}
	}
	if len(out) != total {
		return nil, fmt.Errorf("search AuditEvent: %d events read of %d", len(out), total)
	}
	return out, nil
}
