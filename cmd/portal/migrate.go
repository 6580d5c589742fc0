package main

import (
	"context"
	"flag"
	"fmt"
	"strconv"

	"github.com/ehealth-nl/portal/internal/config"
	"github.com/ehealth-nl/portal/internal/postgres"
)

func migrateCommand() *command {
	env := []string{"DATABASE_URL"}
	return &command{
		name:    "migrate",
		summary: "apply, revert or show the database schema migrations",
		usage:   "portal migrate up|down|version",
		help:    "Migrations are embedded in the binary. They take an advisory lock, so\nseveral instances (or commands) may run them at once.",
		sub: []*command{
			{name: "up", summary: "apply every pending migration", usage: "portal migrate up", env: env, run: migrateUp},
			{name: "down", summary: "revert the newest N migrations (default 1)", usage: "portal migrate down [N]", env: env, run: migrateDown},
			{name: "version", summary: "print the schema version and the newest one this binary carries", usage: "portal migrate version", env: env, run: migrateVersion},
		},
	}
}

// withMigrator connects with DATABASE_URL alone: migrations need no keys.
func withMigrator(ctx context.Context, c *cli, f func(*postgres.Migrator) error) error {
	url := c.getenv("DATABASE_URL")
	if url == "" {
		return &config.Error{Var: "DATABASE_URL", Reason: "required: a PostgreSQL connection string such as postgres://portal@localhost:5432/portal"}
	}
	pool, err := postgres.Connect(ctx, url)
	if err != nil {
		return err
	}
	defer pool.Close()
	m, err := postgres.NewMigrator(pool)
	if err != nil {
		return err
	}
	err = f(m)
	if cerr := m.Close(); err == nil {
		err = cerr
	}
	return err
}

func migrateUp(ctx context.Context, c *cli, args []string) error {
	if err := wantArgs("migrate up", args, 0, ""); err != nil {
		return err
	}
	return withMigrator(ctx, c, func(m *postgres.Migrator) error {
		if err := m.Up(); err != nil {
			return err
		}
		return printVersion(c, m)
	})
}

func migrateDown(ctx context.Context, c *cli, args []string) error {
	fs := flag.NewFlagSet("migrate down", flag.ContinueOnError)
	rest, err := parseFlags(fs, args)
	if err != nil {
		return err
	}
	steps := 1
	if len(rest) > 1 {
		return usagef("migrate down: want at most one argument, the number of steps")
	}
	if len(rest) == 1 {
		if steps, err = strconv.Atoi(rest[0]); err != nil || steps < 1 {
			return usagef("migrate down: %q is not a positive number of steps", rest[0])
		}
	}
	return withMigrator(ctx, c, func(m *postgres.Migrator) error {
		if err := m.Down(steps); err != nil {
			return err
		}
		return printVersion(c, m)
	})
}

func migrateVersion(ctx context.Context, c *cli, args []string) error {
	if err := wantArgs("migrate version", args, 0, ""); err != nil {
		return err
	}
	return withMigrator(ctx, c, func(m *postgres.Migrator) error { return printVersion(c, m) })
}

func printVersion(c *cli, m *postgres.Migrator) error {
	st, err := m.Status()
	if err != nil {
		return err
	}
	dirty := ""
	if st.Dirty {
		dirty = " (dirty: a migration failed half-way; repair the schema by hand)"
	}
	fmt.Fprintf(c.stdout, "schema version %d%s; newest in this binary %d\n", st.Version, dirty, st.Latest)
	return nil
}
