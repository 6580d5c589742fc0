// Command devdb helps the development scripts use PostgreSQL without psql:
// "devdb check URL" tells whether a server answers at URL, and
// "devdb ensure URL NAME" creates database NAME there if it is missing and
// prints its connection string, and "devdb reset URL NAME" drops and
// recreates it first. It is not part of the service.
package main

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "devdb:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	switch {
	case len(args) == 2 && args[0] == "check":
		conn, err := connect(ctx, args[1])
		if err != nil {
			return err
		}
		return conn.Close(ctx)
	case len(args) == 3 && (args[0] == "ensure" || args[0] == "reset"):
		conn, err := connect(ctx, args[1])
		if err != nil {
			return err
		}
		defer conn.Close(ctx)
		if args[0] == "reset" {
			if _, err := conn.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{args[2]}.Sanitize()+" WITH (FORCE)"); err != nil {
				return fmt.Errorf("drop database %s: %w", args[2], err)
			}
		}
		var exists bool
		if err := conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)`, args[2]).Scan(&exists); err != nil {
			return err
		}
		if !exists {
			_, err := conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{args[2]}.Sanitize())
			var pgErr *pgconn.PgError
			if err != nil && !(errors.As(err, &pgErr) && pgErr.Code == "42P04") { // created meanwhile
				return fmt.Errorf("create database %s: %w", args[2], err)
			}
		}
		u, err := url.Parse(args[1])
		if err != nil {
			return err
		}
		u.Path = "/" + args[2]
		fmt.Println(u.String())
		return nil
	}
	return errors.New("usage: devdb check URL | devdb ensure URL NAME | devdb reset URL NAME")
}

func connect(ctx context.Context, databaseURL string) (*pgx.Conn, error) {
	cfg, err := pgx.ParseConfig(databaseURL)
	if err != nil {
		return nil, errors.New("not a valid PostgreSQL URL")
	}
	cfg.ConnectTimeout = 3 * time.Second
	return pgx.ConnectConfig(ctx, cfg)
}
