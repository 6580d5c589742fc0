package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/ehealth-nl/portal/internal/postgres"
	"github.com/ehealth-nl/portal/internal/server"
)

func serveCommand() *command {
	return &command{
		name:    "serve",
		summary: "run the HTTP service (JWKS, launches, probes), the key rotator and the keyring follower",
		usage:   "portal serve [--no-migrate]",
		help: `Applies pending migrations (unless --no-migrate; safe when several instances
start at once), creates or updates the default issuer from the environment,
makes sure every issuer has an active and a next key, loads and unseals the keys
(a KEK that does not open a key stops start-up naming the kid), then serves
HTTP until SIGINT or SIGTERM.`,
		env: serviceEnv,
		run: serve,
	}
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
		return fmt.Errorf("configure default issuer %q: %w", cfg.DefaultIssuer.Slug, err)
	}
	issuers, err := env.store.Issuers(ctx)
	if err != nil {
		return err
	}
	for _, is := range issuers {
		if _, err := env.rotator.EnsureKeys(ctx, is.Slug); err != nil {
			return fmt.Errorf("prepare keys: %w", err)
		}
	}
	keyring := newKeyring(env)
	if err := keyring.Refresh(ctx); err != nil {
		return fmt.Errorf("load signing keys: %w", err)
	}

	handler := server.NewServer(server.Deps{
		Keyring:    keyring,
		Database:   env.pool,
		Logger:     log,
		JWKSMaxAge: cfg.JWKSMaxAge,
	})
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

	bgCtx, stopBackground := context.WithCancel(context.WithoutCancel(ctx))
	var background sync.WaitGroup
	background.Add(2)
	go func() { defer background.Done(); keyring.Follow(bgCtx, cfg.KeyringRefresh, nil) }()
	go func() { defer background.Done(); env.rotator.Run(bgCtx, cfg.RotationCheckInterval, nil) }()

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
