package main

import (
	"cmp"
	"context"
	"flag"
	"fmt"
	"io/fs"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/ehealth-nl/portal/internal/config"
	"github.com/ehealth-nl/portal/internal/postgres"
	"github.com/ehealth-nl/portal/migrations"
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
			{name: "down", summary: "revert the newest N migrations (default 1); says what it drops, needs --yes",
				usage: "portal migrate down [N] [--yes]",
				help: `Without --yes it prints which migrations would be reverted and what their down
files drop (tables, columns, indexes), changes nothing and exits with status 1.
Reverting drops data with the schema: take a backup first.`,
				env: env, run: migrateDown},
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
	yes := fs.Bool("yes", false, "really revert the migrations and drop what they drop")
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
		if !*yes {
			st, err := m.Status()
			if err != nil {
				return err
			}
			plan, err := downPlan(migrations.Files, st.Version, steps)
			if err != nil {
				return err
			}
			fmt.Fprintf(c.stdout, "migrate down %d would revert, newest first:\n", steps)
			for _, mg := range plan {
				fmt.Fprintf(c.stdout, "  %04d %s: %s\n", mg.version, mg.name, mg.dropSummary())
			}
			return fmt.Errorf("migrate down %d: nothing was changed; add --yes to revert and drop the above", steps)
		}
		if err := m.Down(steps); err != nil {
			return err
		}
		return printVersion(c, m)
	})
}

// downMigration is one embedded migration as migrate down would revert it.
type downMigration struct {
	version uint
	name    string   // the file name between the version and ".down.sql"
	drops   []string // what its down file drops, e.g. "table api_keys"
}

// dropSummary lists what the migration drops, or says it drops nothing.
func (d downMigration) dropSummary() string {
	if len(d.drops) == 0 {
		return "drops nothing"
	}
	return "drops " + strings.Join(d.drops, ", ")
}

// downFile is the golang-migrate name of a down migration: NNNN_name.down.sql.
var downFile = regexp.MustCompile(`^([0-9]+)_(.+)\.down\.sql$`)

// dropStatement finds what a down file drops: DROP TABLE/INDEX/VIEW/TYPE/
// FUNCTION/SEQUENCE name, and ALTER TABLE t DROP [COLUMN|CONSTRAINT] name.
var (
	dropStatement  = regexp.MustCompile(`(?i)\bDROP\s+(TABLE|INDEX|VIEW|MATERIALIZED\s+VIEW|TYPE|FUNCTION|SEQUENCE|TRIGGER)\s+(?:IF\s+EXISTS\s+)?([A-Za-z0-9_."]+)`)
	alterStatement = regexp.MustCompile(`(?is)\bALTER\s+TABLE\s+(?:IF\s+EXISTS\s+)?(?:ONLY\s+)?([A-Za-z0-9_."]+)\s+(.*?)(?:;|$)`)
	alterDrop      = regexp.MustCompile(`(?i)\bDROP\s+(COLUMN\s+|CONSTRAINT\s+)?(?:IF\s+EXISTS\s+)?([A-Za-z0-9_."]+)`)
	sqlComment     = regexp.MustCompile(`--[^\n]*`)
)

// downPlan returns the migrations that reverting steps migrations from
// schema version current would run, newest first, with what their down
// files drop. It reads the embedded files, so it describes this binary's
// migrations exactly.
func downPlan(files fs.FS, current uint, steps int) ([]downMigration, error) {
	names, err := fs.Glob(files, "*.down.sql")
	if err != nil {
		return nil, fmt.Errorf("read embedded migrations: %w", err)
	}
	var applied []downMigration
	for _, n := range names {
		m := downFile.FindStringSubmatch(n)
		if m == nil {
			continue
		}
		v, err := strconv.ParseUint(m[1], 10, 64)
		if err != nil || current == 0 || uint(v) > current {
			continue
		}
		body, err := fs.ReadFile(files, n)
		if err != nil {
			return nil, fmt.Errorf("read embedded migration %s: %w", n, err)
		}
		applied = append(applied, downMigration{version: uint(v), name: m[2], drops: drops(string(body))})
	}
	if steps > len(applied) {
		return nil, fmt.Errorf("migrate down %d: only %d migration(s) applied (schema version %d)", steps, len(applied), current)
	}
	slices.SortFunc(applied, func(a, b downMigration) int { return cmp.Compare(b.version, a.version) })
	return applied[:steps], nil
}

// drops lists what a down file drops: dropped objects first, then the
// columns and constraints its ALTER TABLE statements drop.
func drops(sql string) []string {
	sql = sqlComment.ReplaceAllString(sql, "")
	var out []string
	for _, m := range dropStatement.FindAllStringSubmatch(sql, -1) {
		out = append(out, strings.ToLower(strings.Join(strings.Fields(m[1]), " "))+" "+m[2])
	}
	for _, a := range alterStatement.FindAllStringSubmatch(sql, -1) {
		for _, d := range alterDrop.FindAllStringSubmatch(a[2], -1) {
			kind := strings.ToLower(strings.TrimSpace(d[1]))
			if kind == "" {
				kind = "column"
			}
			out = append(out, kind+" "+a[1]+"."+d[2])
		}
	}
	return out
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
