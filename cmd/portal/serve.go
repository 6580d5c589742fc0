package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/ehealth-nl/portal/internal/adminevents"
	"github.com/ehealth-nl/portal/internal/apikeys"
	"github.com/ehealth-nl/portal/internal/auditoutbox"
	"github.com/ehealth-nl/portal/internal/config"
	"github.com/ehealth-nl/portal/internal/fhirdomain"
	"github.com/ehealth-nl/portal/internal/keys"
	"github.com/ehealth-nl/portal/internal/launch"
	"github.com/ehealth-nl/portal/internal/metrics"
	"github.com/ehealth-nl/portal/internal/postgres"
	"github.com/ehealth-nl/portal/internal/server"
	"github.com/ehealth-nl/portal/internal/smart"
	"github.com/ehealth-nl/portal/pkg/hti"
)

// keyAdmin gives the admin API the key listing of the store and the forced
// rotation of the rotator.
type keyAdmin struct {
	store   *keys.Store
	rotator *keys.Rotator
}

// recentKeyLifetime is how long the launch routes authenticate a key from
// memory after finding it valid in the database. A revocation takes effect
// on the next request regardless (the launch write checks the key); this
// bounds only how long a revoked key's request may still cause reads of
// its issuer's Koppeltaal domain before that write refuses it.
const recentKeyLifetime = 30 * time.Second

// retentionEvery is how often each instance applies the retention of
// launch links and records (docs/ARCHITECTURE.md, "Retention").
const retentionEvery = 5 * time.Minute

// Keys lists an issuer's keys for GET /api/v1/keys.
func (a keyAdmin) Keys(ctx context.Context, issuer string) ([]keys.Key, error) {
	return a.store.Keys(ctx, issuer)
}

// Rotate forces a rotation for POST /api/v1/keys/rotate.
func (a keyAdmin) Rotate(ctx context.Context, issuer string, ignoreLead bool) (keys.Change, error) {
	return a.rotator.Rotate(ctx, issuer, ignoreLead)
}

// The demo module: registered at start-up when PORTAL_DEMO is true.
const (
	demoModuleSlug     = "demo"
	demoModuleAudience = "Device/demo-module"
)

// setUpDemo registers the demo module (its launch endpoint is served by this
// process) and builds its verifier, which fetches this service's JWKS over
// HTTP like any module would.
func setUpDemo(ctx context.Context, env *environment, registry *launch.Registry) (*server.Demo, error) {
	cfg := env.cfg
	m := launch.Module{Slug: demoModuleSlug, Issuer: cfg.DefaultIssuer.Slug, LaunchURL: cfg.PublicURL + "/demo/module/launch",
		Audience: demoModuleAudience, DefaultDefinition: "ActivityDefinition/demo-diary", Method: launch.MethodPost, Fields: launch.FieldsKoppeltaal}
	if _, _, err := registry.Put(ctx, m, env.clock()); err != nil {
		return nil, fmt.Errorf("register the demo module: %w", err)
	}
	verifier, err := hti.NewVerifier(hti.VerifierConfig{
		JWKSURL:  cfg.PublicURL + "/.well-known/jwks.json",
		Issuer:   cfg.DefaultIssuer.ClientID,
		Audience: demoModuleAudience,
	})
	if err != nil {
		return nil, err
	}
	demo := &server.Demo{Module: demoModuleSlug, Verifier: verifier}
	if cfg.DefaultIssuer.Device != "" {
		// The default issuer is in a Koppeltaal domain (make demo-domain):
		// the demo launches the Tasks cmd/testdomain seeds there.
		demo.Tasks = map[string]string{"patient": "Task/demo-task-patient", "practitioner": "Task/demo-task-team",
			"related-person": "Task/demo-task-team"}
	}
	env.log.Info("demo enabled", "portal", cfg.PublicURL+"/", "module", m.LaunchURL, "domain", cfg.DefaultIssuer.FHIRBaseURL)
	return demo, nil
}

func serveCommand() *command {
	return &command{
		name:    "serve",
		summary: "run the HTTP service (JWKS, launches, probes), the key rotator and the keyring follower",
		usage:   "portal serve [--no-migrate]",
		help: `Applies pending migrations (unless --no-migrate; safe when several instances
start at once), creates or updates the default issuer from the environment,
makes sure every issuer has an active and a next key, rewrites keys still sealed
as v1 as v2, loads and unseals the keys, then serves HTTP until SIGINT or
SIGTERM. A key that does not open is not published and not used, and is logged
with its issuer and kid; that issuer is not ready (see /readyz), the others
serve.`,
		env: serviceEnv,
		run: serve,
	}
}

// upgradeSeals rewrites every private key still sealed as v1 (issuer, kid,
// alg) as v2 (also key size and public key), under each issuer's key lock,
// keeping each key's KEK. A key that does not open is left as it is and
// logged: the keyring refuses it.
func upgradeSeals(ctx context.Context, env *environment) error {
	res, err := env.rotator.UpgradeSeals(ctx)
	if err != nil {
		return fmt.Errorf("upgrade sealed keys to v2: %w", err)
	}
	if len(res.Resealed) > 0 {
		env.log.Info("sealed keys upgraded to v2 (bound to issuer, kid, alg, key size and public key)", "kids", res.Resealed)
	}
	for kid, err := range res.Failed {
		env.log.Error("sealed key not upgraded to v2: it does not open as its row describes", "kid", kid, "err", err)
	}
	return nil
}

func serve(ctx context.Context, c *cli, args []string) error {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	noMigrate := fs.Bool("no-migrate", false, "do not apply pending migrations at start")
	rest, err := parseFlags(fs, args)
	if err != nil {
		return err
	}
	if len(rest) > 0 {
		return wantArgs("serve", rest, 0, "")
	}
	env, err := openEnvironment(ctx, c)
	if err != nil {
		return err
	}
	defer env.close()
	cfg, log := env.cfg, env.log

	if !*noMigrate {
		m, err := postgres.NewMigrator(env.pool)
		if err != nil {
			return err
		}
		err = m.Up()
		if cerr := m.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return err
		}
	}
	if err := env.store.UpsertDefaultIssuer(ctx, cfg.DefaultIssuer, env.clock()); err != nil {
		return err
	}
	issuers, err := env.store.Issuers(ctx)
	if err != nil {
		return err
	}
	for _, is := range issuers {
		if _, err := env.rotator.EnsureKeys(ctx, is.Slug); err != nil {
			if errors.Is(err, postgres.ErrUnavailable) {
				return fmt.Errorf("prepare keys: %w", err)
			}
			log.Error("could not prepare the keys of an issuer; it may not be able to sign", "issuer", is.Slug, "err", err)
		}
	}
	if err := upgradeSeals(ctx, env); err != nil {
		return err
	}
	keyring := newKeyring(env)
	if err := keyring.Refresh(ctx); err != nil {
		var problems *keys.RefreshProblems
		if !errors.As(err, &problems) {
			return fmt.Errorf("load signing keys: %w", err)
		}
		// Each refused key was logged with its issuer and kid; the issuers
		// concerned are not ready (see /readyz), the others serve.
		for slug, errs := range problems.Issuers {
			log.Error("issuer has key problems; see /readyz", "issuer", slug, "problems", errors.Join(errs...).Error())
		}
	}
	observed := metrics.New(keyring, env.pool, env.clock)
	keyring.OnEvent(observed.KeyEventObserved)

	domain, err := newDomainReader(cfg.Domain, keyring, observed, env.clock)
	if err != nil {
		return err
	}
	reporter, err := newAuditWorker(env, domain, observed)
	if err != nil {
		return err
	}
	registry := launch.NewRegistry(env.pool, cfg.AllowHTTPModules)
	launches := launch.NewService(env.pool, registry, keyring, launch.Config{
		PublicURL: cfg.PublicURL, TokenLifetime: cfg.TokenLifetime, TicketLifetime: cfg.TicketLifetime, IATBackdate: cfg.IATBackdate,
		Domain: domain, Site: cfg.Audit.Site, Reported: reporter.Wake,
	}, env.clock, log)
	apiKeys := apikeys.NewStore(env.pool)
	deps := server.Deps{
		Keyring:        keyring,
		Database:       env.pool,
		Launches:       launches,
		Modules:        registry,
		APIKeys:        apiKeys,
		LaunchKeys:     apikeys.NewRecent(apiKeys, recentKeyLifetime, time.Now),
		KeyAdmin:       keyAdmin{env.store, env.rotator},
		AdminEvents:    adminevents.NewStore(env.pool),
		AuditEvents:    auditoutbox.NewStore(env.pool),
		Domain:         domain,
		DefaultIssuer:  cfg.DefaultIssuer.Slug,
		Logger:         log,
		Clock:          env.clock,
		PublicURL:      cfg.PublicURL,
		JWKSMaxAge:     cfg.JWKSMaxAge,
		FrameAncestors: cfg.FrameAncestors,
		TrustedProxies: cfg.TrustedProxies,
		Metrics:        observed,
		// /metrics is served on the PORTAL_METRICS_ADDR listener only,
		// unless it is "public" (MetricsAddr empty).
		MetricsElsewhere: cfg.MetricsAddr != "",
	}
	if cfg.Demo {
		if deps.Demo, err = setUpDemo(ctx, env, registry); err != nil {
			return err
		}
	}
	handler, err := server.NewServer(deps)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", cfg.ListenAddr)
	if err != nil {
		return fmt.Errorf("PORTAL_LISTEN_ADDR: %w", err)
	}
	srv := &http.Server{
		Handler:           handler,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       2 * time.Minute,
	}

	if cfg.MetricsAddr != "" {
		mln, err := net.Listen("tcp", cfg.MetricsAddr)
		if err != nil {
			_ = ln.Close()
			return fmt.Errorf("PORTAL_METRICS_ADDR: %w", err)
		}
		msrv := &http.Server{Handler: observed.Handler(), ReadHeaderTimeout: 10 * time.Second}
		go func() { _ = msrv.Serve(mln) }()
		defer msrv.Close()
		log.Info("metrics listening", "addr", mln.Addr().String())
	}

	bgCtx, stopBackground := context.WithCancel(context.WithoutCancel(ctx))
	var background sync.WaitGroup
	background.Add(4)
	go func() { defer background.Done(); keyring.Follow(bgCtx, cfg.KeyringRefresh, observed.KeyringRefreshed) }()
	go func() { defer background.Done(); env.rotator.Run(bgCtx, cfg.RotationCheckInterval, observed.KeyChange) }()
	go func() { defer background.Done(); reporter.Run(bgCtx) }()
	go func() {
		defer background.Done()
		retention := launch.RetentionConfig{Links: cfg.LinkRetention, Launches: cfg.LaunchRetention, Every: retentionEvery}
		launch.NewStore(env.pool).KeepRetention(bgCtx, retention, env.clock, log)
	}()

	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(ln) }()
	log.Info("listening", "addr", ln.Addr().String(), "public_url", cfg.PublicURL, "default_issuer", cfg.DefaultIssuer.Slug)

	select {
	case err = <-serveErr:
	case <-ctx.Done():
		log.Info("shutting down", "timeout", cfg.ShutdownTimeout.String())
		shutdownCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cfg.ShutdownTimeout)
		err = srv.Shutdown(shutdownCtx)
		cancel()
		if serr := <-serveErr; !errors.Is(serr, http.ErrServerClosed) && err == nil {
			err = serr
		}
	}
	stopBackground()
	background.Wait()
	if errors.Is(err, http.ErrServerClosed) {
		err = nil
	}
	if err != nil {
		return fmt.Errorf("serve: %w", err)
	}
	log.Info("stopped")
	return nil
}

// newDomainReader builds the reader of the Koppeltaal domains of issuers
// with a Device: a SMART backend-services client whose assertions the
// issuer's own active key signs through the keyring, and a FHIR client that
// uses its tokens (docs/ARCHITECTURE.md, "Launching from a Task"). Nothing
// is contacted until a launch needs it.
func newDomainReader(cfg config.DomainConfig, keyring *keys.Keyring, observed *metrics.Metrics, clock func() time.Time) (*fhirdomain.Client, error) {
	tokens, err := smart.New(smart.Config{
		Signers: keyring, Scope: cfg.Scope, Timeout: cfg.Timeout, Clock: clock,
		Observe: func(e smart.Event) { observed.DomainToken(e.Issuer, string(e.Outcome)) },
	})
	if err != nil {
		return nil, err
	}
	ttl := cfg.CacheTTL
	if ttl == 0 {
		ttl = -1 // fhirdomain: negative turns the cache off
	}
	return fhirdomain.New(fhirdomain.Config{
		BaseURL: func(issuer string) (string, bool) {
			is, err := keyring.Issuer(issuer)
			return is.FHIRBaseURL, err == nil
		},
		Tokens:         tokens,
		Timeout:        cfg.Timeout,
		CacheTTL:       ttl,
		ReadyTasksOnly: cfg.ReadyTasksOnly,
		Observe:        func(resource string, o fhirdomain.CacheOutcome) { observed.DomainCache(resource, string(o)) },
		ObserveRequest: func(resource string, o fhirdomain.RequestOutcome) { observed.DomainRequest(resource, string(o)) },
	})
}

// newAuditWorker builds this instance's AuditEvent delivery worker
// (docs/ARCHITECTURE.md, "Reporting launches"): it sends the outbox's
// events with the domain reader's SMART client, as this host and process.
func newAuditWorker(env *environment, domain *fhirdomain.Client, observed *metrics.Metrics) (*auditoutbox.Worker, error) {
	host, _ := os.Hostname()
	cfg := env.cfg.Audit
	return auditoutbox.NewWorker(env.pool, auditoutbox.Config{
		Sender: domain, Instance: fmt.Sprintf("serve:%s:%d", host, os.Getpid()),
		Poll: cfg.Poll, RetryMax: cfg.RetryMax, Retention: cfg.Retention, Clock: env.clock, Log: env.log,
		// A lease outlasts the longest attempt (the token and the PUT, each
		// tried twice within PORTAL_DOMAIN_TIMEOUT, then its recording) and
		// no more: an event whose take or outcome a database blip cut off is
		// due again when its lease ends.
		Lease:   2*env.cfg.Domain.Timeout + 15*time.Second,
		Observe: observed.AuditDelivery,
		ObserveStats: func(s auditoutbox.Stats) {
			observed.AuditOutbox(s.Pending, s.Failed, s.OldestPending)
		},
	})
}
