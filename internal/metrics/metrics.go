// Package metrics holds the portal's Prometheus metrics: what the HTTP
// layer, the launch flow, the JWKS, the key rotator and the keyring report,
// and collectors that read key ages and the database pool at scrape time.
// Domain packages do not import it; the server and the serve command feed it.
package metrics

import (
	"net/http"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/ehealth-nl/portal/internal/keys"
)

// Metrics is the set of metrics of one portal process, on its own registry.
type Metrics struct {
	registry *prometheus.Registry

	httpDuration    *prometheus.HistogramVec
	launchesCreated *prometheus.CounterVec
	launchesRedeem  prometheus.Counter
	launchesRefused *prometheus.CounterVec
	jwksRequests    *prometheus.CounterVec
	keyChanges      *prometheus.CounterVec
	keyEvents       *prometheus.CounterVec
	keysRefused     *prometheus.CounterVec
	refreshErrors   prometheus.Counter
	refreshes       prometheus.Counter
	domainTokens    *prometheus.CounterVec
	domainRequests  *prometheus.CounterVec
	domainCache     *prometheus.CounterVec
	auditDeliveries *prometheus.CounterVec
	audit           *auditCollector
}

// KeyringStatus is what the key-age collector reads at scrape time. It
// reads memory only: a scrape never waits for the database.
type KeyringStatus interface {
	Status() []keys.IssuerStatus
	Staleness() (age time.Duration, ok bool)
}

// New creates the metrics and registers them, with the Go runtime and
// process collectors, the key ages of keyring and the statistics of pool
// (either may be nil).
func New(keyring KeyringStatus, pool *pgxpool.Pool, clock func() time.Time) *Metrics {
	m := &Metrics{
		registry: prometheus.NewRegistry(),
		httpDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "portal_http_request_duration_seconds",
			Help:    "Time to answer an HTTP request, by route pattern, method and status class.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5},
		}, []string{"route", "method", "status_class"}),
		launchesCreated: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "portal_launches_created_total",
			Help: "Launches created: kind ticket (a one-time link) or token (handed to the backend).",
		}, []string{"kind"}),
		launchesRedeem: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "portal_launches_redeemed_total",
			Help: "Launch links followed successfully (a token was signed and sent to the browser).",
		}),
		launchesRefused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "portal_launches_refused_total",
			Help: "Launch requests and launch links refused, by reason.",
		}, []string{"reason"}),
		jwksRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "portal_jwks_requests_total",
			Help: "JWKS requests answered, by status (200 or 304).",
		}, []string{"status"}),
		keyChanges: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "portal_key_changes_total",
			Help: "Key lifecycle changes made by this instance, by issuer and kind (rotation, revocation, creation, expiry).",
		}, []string{"issuer", "kind"}),
		keyEvents: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "portal_key_events_observed_total",
			Help: "Key lifecycle events this instance's keyring observed, whoever made them (any instance or a command): rotation or revocation.",
		}, []string{"issuer", "kind"}),
		keysRefused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "portal_keys_refused_total",
			Help: "Key rows this instance's keyring refused (they do not open as their row describes: not published, not used), counted once per row content.",
		}, []string{"issuer"}),
		refreshErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "portal_keyring_refresh_errors_total",
			Help: "Keyring reloads that failed: the database could not be read in time (the previous keys stay in use until the maximum staleness).",
		}),
		refreshes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "portal_keyring_refreshes_total",
			Help: "Keyring reloads from the database, after a notification or a poll.",
		}),
		domainTokens: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "portal_domain_token_requests_total",
			Help: "Access tokens for a Koppeltaal domain, by issuer and outcome: fetches (success, refused, unavailable, error) and callers served from the cache (cache_hit) or by a fetch in flight (shared).",
		}, []string{"issuer", "outcome"}),
		domainRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "portal_domain_fhir_requests_total",
			Help: "Requests to a Koppeltaal domain's FHIR server, by resource type and outcome (ok, not_modified, not_found, unavailable, error).",
		}, []string{"resource", "outcome"}),
		domainCache: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "portal_domain_cache_total",
			Help: "Reads of ActivityDefinitions, Endpoints and Devices by how the cache answered: hit (no request), revalidated (the server confirmed it), miss.",
		}, []string{"resource", "outcome"}),
		auditDeliveries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "portal_audit_event_deliveries_total",
			Help: "Attempts of this instance to deliver an AuditEvent to a Koppeltaal domain, by outcome: delivered, retry (not this time; due again after a backoff) or failed (refused as invalid: for good).",
		}, []string{"outcome"}),
		audit: &auditCollector{now: clock},
	}
	if m.audit.now == nil {
		m.audit.now = time.Now
	}
	m.registry.MustRegister(m.audit, m.auditDeliveries)
	m.registry.MustRegister(m.httpDuration, m.launchesCreated, m.launchesRedeem, m.launchesRefused, m.jwksRequests,
		m.keyChanges, m.keyEvents, m.keysRefused, m.refreshErrors, m.refreshes, m.domainTokens, m.domainRequests, m.domainCache,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	if keyring != nil {
		m.registry.MustRegister(&keyAgeCollector{keyring: keyring, now: clock})
	}
	if pool != nil {
		m.registry.MustRegister(&poolCollector{pool: pool})
	}
	return m
}

// Handler serves the metrics in the Prometheus text format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.registry, promhttp.HandlerOpts{})
}

// ObserveHTTP records one answered request. route is the route pattern
// (never the raw path: a launch link's path holds its ticket).
func (m *Metrics) ObserveHTTP(route, method string, status int, d time.Duration) {
	class := "5xx"
	switch {
	case status < 200:
		class = "1xx"
	case status < 300:
		class = "2xx"
	case status < 400:
		class = "3xx"
	case status < 500:
		class = "4xx"
	}
	m.httpDuration.WithLabelValues(route, knownMethod(method), class).Observe(d.Seconds())
}

// knownMethod keeps the label set bounded: a client may send any method
// token, and each would otherwise become a new series.
func knownMethod(m string) string {
	switch m {
	case http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodDelete, http.MethodOptions, http.MethodPatch:
		return m
	}
	return "other"
}

// LaunchCreated counts a created launch of kind "ticket" or "token".
func (m *Metrics) LaunchCreated(kind string) { m.launchesCreated.WithLabelValues(kind).Inc() }

// LaunchRedeemed counts a launch link followed successfully.
func (m *Metrics) LaunchRedeemed() { m.launchesRedeem.Inc() }

// LaunchRefused counts a refused launch request or link by reason, such as
// "invalid", "unauthenticated", "ticket_used", "ticket_expired",
// "ticket_unknown", "unavailable", "domain_unavailable",
// "domain_client_refused", or "domain_<rule>" for a refusal of a
// Koppeltaal domain's rule (e.g. domain_careteam_not_member).
func (m *Metrics) LaunchRefused(reason string) { m.launchesRefused.WithLabelValues(reason).Inc() }

// DomainToken counts an access-token outcome of the SMART client for an
// issuer (internal/smart's Outcome values).
func (m *Metrics) DomainToken(issuer, outcome string) {
	m.domainTokens.WithLabelValues(issuer, outcome).Inc()
}

// DomainRequest counts a request to a domain's FHIR server by resource
// type and outcome (internal/fhirdomain's RequestOutcome values).
func (m *Metrics) DomainRequest(resource, outcome string) {
	m.domainRequests.WithLabelValues(resource, outcome).Inc()
}

// DomainCache counts a cached read by resource type and outcome
// (internal/fhirdomain's CacheOutcome values).
func (m *Metrics) DomainCache(resource, outcome string) {
	m.domainCache.WithLabelValues(resource, outcome).Inc()
}

// JWKSServed counts a JWKS answer by status.
func (m *Metrics) JWKSServed(status int) {
	if status == http.StatusNotModified {
		m.jwksRequests.WithLabelValues("304").Inc()
		return
	}
	m.jwksRequests.WithLabelValues("200").Inc()
}

// KeyChange counts what a rotator call of this instance did.
func (m *Metrics) KeyChange(c keys.Change) {
	if c.Rotated() {
		m.keyChanges.WithLabelValues(c.Issuer, "rotation").Inc()
	}
	if c.Revoked != "" {
		m.keyChanges.WithLabelValues(c.Issuer, "revocation").Inc()
	}
	if n := len(c.Created); n > 0 {
		m.keyChanges.WithLabelValues(c.Issuer, "creation").Add(float64(n))
	}
	if n := len(c.Expired); n > 0 {
		m.keyChanges.WithLabelValues(c.Issuer, "expiry").Add(float64(n))
	}
}

// KeyEventObserved counts a rotation or revocation the keyring saw, and a
// key row it refused.
func (m *Metrics) KeyEventObserved(e keys.Event) {
	if e.Kind == keys.EventRefused {
		m.keysRefused.WithLabelValues(e.Issuer).Inc()
		return
	}
	m.keyEvents.WithLabelValues(e.Issuer, string(e.Kind)).Inc()
}

// KeyringRefreshed counts a keyring reload and whether it failed.
func (m *Metrics) KeyringRefreshed(err error) {
	m.refreshes.Inc()
	if err != nil {
		m.refreshErrors.Inc()
	}
}

// keyAgeCollector reports, per issuer, how long the active key has signed,
// how long until it is due to be replaced, how many keys are published and
// refused, and how stale the keyring is.
type keyAgeCollector struct {
	keyring KeyringStatus
	now     func() time.Time
}

var (
	activeKeyAgeDesc = prometheus.NewDesc("portal_active_key_age_seconds",
		"How long the issuer's active key has been signing.", []string{"issuer"}, nil)
	nextRotationDesc = prometheus.NewDesc("portal_next_rotation_seconds",
		"Time until the issuer's active key is due to be replaced (negative when overdue).", []string{"issuer"}, nil)
	publishedKeysDesc = prometheus.NewDesc("portal_published_keys",
		"Keys in the issuer's JWKS.", []string{"issuer"}, nil)
	nextKeyDesc = prometheus.NewDesc("portal_next_key_published",
		"1 when the issuer's JWKS holds a usable next key, the one the next rotation activates; 0 otherwise.", []string{"issuer"}, nil)
	unusableKeysDesc = prometheus.NewDesc("portal_keys_unusable",
		"Key rows of the issuer that this instance refused: not published, not used.", []string{"issuer"}, nil)
	issuerReadyDesc = prometheus.NewDesc("portal_issuer_ready",
		"1 when the issuer can sign, has no refused key and a policy within the service limits, else 0.", []string{"issuer"}, nil)
	stalenessDesc = prometheus.NewDesc("portal_keyring_staleness_seconds",
		"Time since the keyring last loaded the keys from the database; past the maximum staleness it stops signing.", nil, nil)
)

// Describe sends the descriptions of the key-age metrics.
func (c *keyAgeCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- activeKeyAgeDesc
	ch <- nextRotationDesc
	ch <- publishedKeysDesc
	ch <- unusableKeysDesc
	ch <- nextKeyDesc
	ch <- issuerReadyDesc
	ch <- stalenessDesc
}

// Collect reads every issuer's key ages from the keyring.
func (c *keyAgeCollector) Collect(ch chan<- prometheus.Metric) {
	now := c.now()
	if age, ok := c.keyring.Staleness(); ok {
		ch <- prometheus.MustNewConstMetric(stalenessDesc, prometheus.GaugeValue, age.Seconds())
	}
	for _, st := range c.keyring.Status() {
		ch <- prometheus.MustNewConstMetric(publishedKeysDesc, prometheus.GaugeValue, float64(st.Published), st.Slug)
		ch <- prometheus.MustNewConstMetric(unusableKeysDesc, prometheus.GaugeValue, float64(len(st.Unusable)), st.Slug)
		next := 0.0
		if st.NextKid != "" {
			next = 1
		}
		ch <- prometheus.MustNewConstMetric(nextKeyDesc, prometheus.GaugeValue, next, st.Slug)
		ready := 0.0
		if st.Ready {
			ready = 1
		}
		ch <- prometheus.MustNewConstMetric(issuerReadyDesc, prometheus.GaugeValue, ready, st.Slug)
		if st.ActiveKid == "" {
			continue
		}
		ch <- prometheus.MustNewConstMetric(activeKeyAgeDesc, prometheus.GaugeValue, now.Sub(st.ActiveSince).Seconds(), st.Slug)
		ch <- prometheus.MustNewConstMetric(nextRotationDesc, prometheus.GaugeValue, st.NextRotation.Sub(now).Seconds(), st.Slug)
	}
}

// poolCollector reports the database pool's statistics.
type poolCollector struct {
	pool *pgxpool.Pool
}

var (
	poolConnsDesc    = prometheus.NewDesc("portal_db_pool_connections", "Database pool connections by state.", []string{"state"}, nil)
	poolMaxDesc      = prometheus.NewDesc("portal_db_pool_max_connections", "Largest size of the database pool.", nil, nil)
	poolAcquiresDesc = prometheus.NewDesc("portal_db_pool_acquires_total", "Connections acquired from the pool.", nil, nil)
	poolWaitsDesc    = prometheus.NewDesc("portal_db_pool_empty_acquires_total", "Acquires that had to wait for a connection.", nil, nil)
	poolWaitDesc     = prometheus.NewDesc("portal_db_pool_acquire_wait_seconds_total", "Time spent waiting for a connection.", nil, nil)
	poolFailedDesc   = prometheus.NewDesc("portal_db_pool_canceled_acquires_total", "Acquires canceled before a connection was free.", nil, nil)
)

// Describe sends the descriptions of the pool metrics.
func (c *poolCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{poolConnsDesc, poolMaxDesc, poolAcquiresDesc, poolWaitsDesc, poolWaitDesc, poolFailedDesc} {
		ch <- d
	}
}

// Collect reads the pool's statistics.
func (c *poolCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.pool.Stat()
	ch <- prometheus.MustNewConstMetric(poolConnsDesc, prometheus.GaugeValue, float64(s.AcquiredConns()), "acquired")
	ch <- prometheus.MustNewConstMetric(poolConnsDesc, prometheus.GaugeValue, float64(s.IdleConns()), "idle")
	ch <- prometheus.MustNewConstMetric(poolConnsDesc, prometheus.GaugeValue, float64(s.ConstructingConns()), "constructing")
	ch <- prometheus.MustNewConstMetric(poolMaxDesc, prometheus.GaugeValue, float64(s.MaxConns()))
	ch <- prometheus.MustNewConstMetric(poolAcquiresDesc, prometheus.CounterValue, float64(s.AcquireCount()))
	ch <- prometheus.MustNewConstMetric(poolWaitsDesc, prometheus.CounterValue, float64(s.EmptyAcquireCount()))
	ch <- prometheus.MustNewConstMetric(poolWaitDesc, prometheus.CounterValue, s.AcquireDuration().Seconds())
	ch <- prometheus.MustNewConstMetric(poolFailedDesc, prometheus.CounterValue, float64(s.CanceledAcquireCount()))
}

// AuditDelivery counts one attempt to deliver an AuditEvent, by outcome
// (delivered, retry, failed).
func (m *Metrics) AuditDelivery(outcome string) { m.auditDeliveries.WithLabelValues(outcome).Inc() }

// AuditOutbox records the state of the AuditEvent outbox as a delivery
// worker last read it: pending and failed events, and when the oldest
// pending one was written (zero: none pending).
func (m *Metrics) AuditOutbox(pending, failed int, oldestPending time.Time) {
	m.audit.mu.Lock()
	defer m.audit.mu.Unlock()
	m.audit.known, m.audit.pending, m.audit.failed, m.audit.oldest = true, pending, failed, oldestPending
}

// auditCollector reports the outbox as last read; the age of the oldest
// pending event is taken at scrape time, so it grows while nothing is
// delivered (or the outbox cannot be read). Nothing is reported before the
// first reading.
type auditCollector struct {
	now             func() time.Time
	mu              sync.Mutex
	known           bool
	pending, failed int
	oldest          time.Time
}

var (
	auditPendingDesc = prometheus.NewDesc("portal_audit_events_pending",
		"AuditEvents in the outbox not yet delivered to the Koppeltaal domain (outbox depth).", nil, nil)
	auditFailedDesc = prometheus.NewDesc("portal_audit_events_failed",
		"AuditEvents the domain refused as invalid, waiting for an operator (portal audit-events retry).", nil, nil)
	auditOldestDesc = prometheus.NewDesc("portal_audit_events_oldest_pending_age_seconds",
		"Age of the oldest AuditEvent not yet delivered; 0 when none is pending.", nil, nil)
)

// Describe sends the descriptions of the outbox metrics.
func (c *auditCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- auditPendingDesc
	ch <- auditFailedDesc
	ch <- auditOldestDesc
}

// Collect reports the outbox as last read.
func (c *auditCollector) Collect(ch chan<- prometheus.Metric) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.known {
		return
	}
	age := 0.0
	if !c.oldest.IsZero() {
		age = max(0, c.now().Sub(c.oldest).Seconds())
	}
	ch <- prometheus.MustNewConstMetric(auditPendingDesc, prometheus.GaugeValue, float64(c.pending))
	ch <- prometheus.MustNewConstMetric(auditFailedDesc, prometheus.GaugeValue, float64(c.failed))
	ch <- prometheus.MustNewConstMetric(auditOldestDesc, prometheus.GaugeValue, age)
}
