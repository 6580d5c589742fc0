// Package migrations holds the database schema as numbered golang-migrate
// files, embedded so the binary carries its own schema.
package migrations

import "embed"

// Files holds every NNNN_name.up.sql and NNNN_name.down.sql migration.
//
//go:embed *.sql
var Files embed.FS
